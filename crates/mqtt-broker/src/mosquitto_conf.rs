//! Mosquitto's configuration file, read as it is: `mosquitto.conf` (with its
//! `include_dir`) mapped onto a [`Config`], key by key.
//!
//! Every key is one arm of `Mapper::apply`: mapped onto a field, refused because
//! what it configures is being built elsewhere (`pending`: TLS, WebSocket, password
//! and ACL files, persistence; such an arm becomes a one-line mapping once the field
//! exists), or refused as not supported. A key is never ignored without a word: an
//! error names the file, the line and the key, and says what to do. `--print-config`
//! shows the result as TOML, so users can move over.
//!
//! What each key becomes is listed in `docs/configuration.md` ("Mosquitto's
//! configuration file").

use std::{
    collections::HashMap,
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use crate::{
    config::{Config, ConfigError, Listener},
    logging::{LogDest, LogLevel},
};

/// Issue numbers of the work that brings what pending keys configure.
/// Whether `text` looks like a Mosquitto configuration file rather than TOML: its first
/// line that is not blank or a comment is `key value` (no `=` after the key, no
/// `[section]`).
pub fn looks_like_mosquitto(text: &str) -> bool {
    let Some(line) = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    if line.starts_with('[') {
        return false;
    }
    let key_end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let rest = line.get(key_end..).unwrap_or("").trim_start();
    !rest.starts_with('=')
}

/// Reads a Mosquitto configuration file (and the files of its `include_dir`) into a
/// [`Config`].
///
/// # Errors
/// A file that cannot be read, a key that is not supported (or not yet), a value that
/// is not valid: the message names the file, line and key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
    parse(&text, path)
}

/// [`load`] from text already read; `path` names it in errors (and is where relative
/// `include_dir`s are not resolved from: Mosquitto resolves them from the working
/// directory too).
///
/// # Errors
/// As [`load`].
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut mapper = Mapper::default();
    mapper.file(text, path, true)?;
    mapper.finish()
}

/// Where a key was read: file and line.
#[derive(Clone, Debug)]
struct At {
    file: PathBuf,
    line: usize,
    key: String,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.key)
    }
}

impl At {
    fn error(&self, why: impl fmt::Display) -> ConfigError {
        ConfigError::new(format!("{self}: {why}"))
    }
}

/// The answer for a key the broker does not support.
fn unsupported(at: &At, why: &str) -> Result<(), ConfigError> {
    Err(at.error(format_args!("not supported by mqtt-broker: {why}")))
}

/// A `listener` (or the default listener of `port` / `bind_address`).
#[derive(Debug)]
struct ListenerSpec {
    at: At,
    port: u16,
    address: Option<String>,
    /// `socket_domain`: IPv4 or IPv6 only.
    domain: Option<Domain>,
    max_connections: Option<i64>,
    allow_anonymous: Option<(bool, At)>,
    /// With `per_listener_settings true`: this listener's files.
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    /// `protocol websockets`.
    websockets: bool,
    /// TLS and client certificates: Mosquitto's keys, always the listener's own.
    tls: TlsSpec,
}

/// A listener's TLS keys as read.
#[derive(Debug, Default)]
struct TlsSpec {
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cafile: Option<PathBuf>,
    capath: Option<PathBuf>,
    crlfile: Option<PathBuf>,
    require_certificate: bool,
    use_identity_as_username: bool,
    use_subject_as_username: bool,
    tls_version: Option<crate::config::TlsVersion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Domain {
    V4,
    V6,
}

/// The state of the mapping: the configuration so far, the listeners, and where each
/// field was set from (for errors found once everything is read).
#[derive(Debug, Default)]
struct Mapper {
    config: Config,
    /// `port` / `bind_address`: the default listener.
    default_listener: Option<ListenerSpec>,
    listeners: Vec<ListenerSpec>,
    /// Keys after a `listener` line apply to it.
    in_listener: bool,
    per_listener_settings: bool,
    allow_anonymous: Option<(bool, At)>,
    message_size_limit: Option<u32>,
    max_packet_size_set: bool,
    log_dest_seen: bool,
    log_type_seen: bool,
    /// Configuration key (`limits.max_inflight`) → where it was set.
    origins: HashMap<&'static str, At>,
}

impl Mapper {
    /// Reads one file; `main` for the file given (only it may `include_dir`).
    fn file(&mut self, text: &str, path: &Path, main: bool) -> Result<(), ConfigError> {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            let at = At {
                file: path.to_owned(),
                line: n + 1,
                key: key.to_owned(),
            };
            if key == "include_dir" {
                if !main {
                    return Err(at.error("only the main configuration file may include_dir"));
                }
                self.include_dir(&at, value)?;
                continue;
            }
            self.apply(&at, value)?;
        }
        Ok(())
    }

    /// `include_dir DIR`: every `*.conf` file in it, in alphabetical order, here.
    fn include_dir(&mut self, at: &At, dir: &str) -> Result<(), ConfigError> {
        if dir.is_empty() {
            return Err(at.error("needs a directory"));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| at.error(format_args!("{dir}: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| at.error(format_args!("{}: {e}", file.display())))?;
            self.file(&text, &file, false)?;
        }
        Ok(())
    }

    /// The listener that listener-scoped keys go to: the last `listener`, or the
    /// default one (created on first use).
    fn listener(&mut self, at: &At) -> &mut ListenerSpec {
        if self.in_listener {
            if let Some(last) = self.listeners.last_mut() {
                return last;
            }
        }
        self.default_listener.get_or_insert_with(|| ListenerSpec {
            at: at.clone(),
            port: 1883,
            address: None,
            domain: None,
            max_connections: None,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            websockets: false,
            tls: TlsSpec::default(),
        })
    }

    /// Notes that `field` was set at `at`.
    fn set(&mut self, field: &'static str, at: &At) {
        self.origins.insert(field, at.clone());
    }

    /// One `key value` line.
    fn apply(&mut self, at: &At, value: &str) -> Result<(), ConfigError> {
        let c = &mut self.config;
        match at.key.as_str() {
            // Listeners.
            "listener" => {
                let mut words = value.split_whitespace();
                let port = parse_num::<u16>(at, words.next().unwrap_or(""))?;
                let address = words.next().map(str::to_owned);
                if port == 0 {
                    return unsupported(at, "a Unix socket listener (port 0)");
                }
                self.listeners.push(ListenerSpec {
                    at: at.clone(),
                    port,
                    address,
                    domain: None,
                    max_connections: None,
                    allow_anonymous: None,
                    password_file: None,
                    acl_file: None,
                    websockets: false,
                    tls: TlsSpec::default(),
                });
                self.in_listener = true;
            }
            "port" => {
                let port = parse_num::<u16>(at, value)?;
                let was = self.in_listener;
                self.in_listener = false;
                self.listener(at).port = port;
                self.in_listener = was;
            }
            "bind_address" => {
                let was = self.in_listener;
                self.in_listener = false;
                self.listener(at).address = Some(word(at, value)?.to_owned());
                self.in_listener = was;
            }
            "socket_domain" => {
                let domain = match value {
                    "ipv4" => Domain::V4,
                    "ipv6" => Domain::V6,
                    _ => return Err(at.error("expected ipv4 or ipv6")),
                };
                self.listener(at).domain = Some(domain);
            }
            "protocol" => match value {
                "mqtt" => {}
                "websockets" => self.listener(at).websockets = true,
                _ => return Err(at.error("expected mqtt or websockets")),
            },
            "max_connections" => {
                let n = parse_num::<i64>(at, value)?;
                self.listener(at).max_connections = Some(n);
            }
            "per_listener_settings" => {
                self.per_listener_settings = parse_bool(at, value)?;
            }

            // Who may connect.
            "allow_anonymous" => {
                let allow = parse_bool(at, value)?;
                if self.per_listener_settings && self.in_listener {
                    self.listener(at).allow_anonymous = Some((allow, at.clone()));
                } else {
                    self.allow_anonymous = Some((allow, at.clone()));
                }
            }
            "allow_zero_length_clientid" => {
                c.auth.allow_zero_length_client_id = parse_bool(at, value)?;
                self.set("auth.allow_zero_length_client_id", at);
            }
            // With per_listener_settings, a file after `listener` is that listener's
            // (one before any is the default listener's); without, every file line sets
            // the one for all listeners, wherever it is.
            "password_file" | "acl_file" => {
                let path = PathBuf::from(value);
                let password = at.key == "password_file";
                if self.per_listener_settings {
                    let spec = self.listener(at);
                    let slot = if password {
                        &mut spec.password_file
                    } else {
                        &mut spec.acl_file
                    };
                    *slot = Some(path);
                } else if password {
                    self.config.auth.password_file = Some(path);
                    self.set("auth.password_file", at);
                } else {
                    self.config.auth.acl_file = Some(path);
                    self.set("auth.acl_file", at);
                }
            }
            // TLS: the listener's own keys, as in Mosquitto.
            "certfile" | "keyfile" | "cafile" | "capath" | "crlfile" => {
                let path = Some(PathBuf::from(value));
                let tls = &mut self.listener(at).tls;
                match at.key.as_str() {
                    "certfile" => tls.certfile = path,
                    "keyfile" => tls.keyfile = path,
                    "cafile" => tls.cafile = path,
                    "capath" => tls.capath = path,
                    _ => tls.crlfile = path,
                }
            }
            "require_certificate" => {
                self.listener(at).tls.require_certificate = parse_bool(at, value)?;
            }
            "use_identity_as_username" => {
                self.listener(at).tls.use_identity_as_username = parse_bool(at, value)?;
            }
            "use_subject_as_username" => {
                self.listener(at).tls.use_subject_as_username = parse_bool(at, value)?;
            }
            "tls_version" => {
                let version = match value {
                    "tlsv1.2" => crate::config::TlsVersion::Tls12,
                    "tlsv1.3" => crate::config::TlsVersion::Tls13,
                    "tlsv1.1" | "tlsv1" => {
                        return unsupported(at, "TLS before 1.2 (tls_version tlsv1.2 or tlsv1.3)");
                    }
                    _ => return Err(at.error("expected tlsv1.2 or tlsv1.3")),
                };
                self.listener(at).tls.tls_version = Some(version);
            }
            "ciphers" | "ciphers_tls1.3" | "dhparamfile" => {
                return unsupported(
                    at,
                    "choosing ciphers: the broker offers only ECDHE with AES-GCM or ChaCha20-Poly1305 (rustls); remove the line",
                );
            }
            "tls_engine" | "tls_keyform" | "tls_engine_kpass_sha1" | "psk_hint" | "psk_file" => {
                return unsupported(at, "OpenSSL engines and pre-shared keys; remove the line");
            }

            // Persistence.
            "persistence" => {
                c.persistence.mode = if parse_bool(at, value)? {
                    crate::config::PersistenceMode::Sync
                } else {
                    crate::config::PersistenceMode::Memory
                };
                self.set("persistence.mode", at);
            }
            // The store's file: `persistence_location` is its directory,
            // `persistence_file` its name (a redb file, not Mosquitto's format).
            "persistence_location" => {
                let name = c
                    .persistence
                    .path
                    .file_name()
                    .map_or_else(|| "mqtt-broker.redb".into(), ToOwned::to_owned);
                c.persistence.path = PathBuf::from(value).join(name);
                self.set("persistence.path", at);
            }
            "persistence_file" => {
                let dir = c
                    .persistence
                    .path
                    .parent()
                    .map(ToOwned::to_owned)
                    .unwrap_or_default();
                c.persistence.path = dir.join(value);
                self.set("persistence.path", at);
            }
            "autosave_interval" | "autosave_on_changes" => {
                tracing::info!(
                    "{}:{}: {} is not needed: the store writes as it goes (docs/durability.md)",
                    at.file.display(),
                    at.line,
                    at.key
                );
            }

            // Limits.
            "max_queued_messages" => {
                c.limits.max_queued_messages = match parse_num::<usize>(at, value)? {
                    0 => usize::MAX,
                    n => n,
                };
                self.set("limits.max_queued_messages", at);
            }
            "max_queued_bytes" => {
                c.limits.max_queued_bytes = match parse_num::<usize>(at, value)? {
                    0 => usize::MAX,
                    n => n,
                };
                self.set("limits.max_queued_bytes", at);
            }
            "max_inflight_messages" => {
                c.limits.max_inflight = match parse_num::<u16>(at, value)? {
                    0 => u16::MAX,
                    n => n,
                };
                self.set("limits.max_inflight", at);
            }
            "max_packet_size" => {
                c.limits.max_packet_size = match parse_num::<u32>(at, value)? {
                    0 => 268_435_455,
                    n => n,
                };
                self.max_packet_size_set = true;
                self.set("limits.max_packet_size", at);
            }
            "message_size_limit" => {
                self.message_size_limit = match parse_num::<u32>(at, value)? {
                    0 => None,
                    n => Some(n),
                };
                self.set("limits.max_packet_size", at);
            }
            "max_keepalive" => {
                c.limits.max_keep_alive = parse_num::<u16>(at, value)?;
                self.set("limits.max_keep_alive", at);
            }
            "persistent_client_expiration" => {
                c.limits.persistent_client_expiration = parse_duration(at, value)?;
                self.set("limits.persistent_client_expiration", at);
            }
            "queue_qos0_messages" => {
                c.limits.queue_qos0_messages = parse_bool(at, value)?;
                self.set("limits.queue_qos0_messages", at);
            }
            "max_topic_alias" => {
                c.limits.topic_alias_maximum = parse_num::<u16>(at, value)?;
                self.set("limits.topic_alias_maximum", at);
            }
            "retain_available" => {
                c.retain.enabled = parse_bool(at, value)?;
                self.set("retain.enabled", at);
            }
            "sys_interval" => {
                c.sys.interval = parse_num::<u64>(at, value)?;
                self.set("sys.interval", at);
            }

            // Logging.
            "log_dest" => self.log_dest(at, value)?,
            "log_type" => self.log_type(at, value)?,
            "connection_messages" => {
                c.log.connections = parse_bool(at, value)?;
                self.set("log.connections", at);
            }
            "log_timestamp" => {
                if !parse_bool(at, value)? {
                    return unsupported(
                        at,
                        "log lines always carry a timestamp (use log_dest syslog to leave it to the daemon)",
                    );
                }
            }

            // The process.
            "pid_file" => {
                c.process.pid_file = Some(PathBuf::from(word(at, value)?));
                self.set("process.pid_file", at);
            }
            "user" => {
                return unsupported(
                    at,
                    "the broker does not change user; start it as that user (systemd: User=, see deploy/)",
                );
            }

            _ => {
                return unsupported(
                    at,
                    "unknown key; remove the line (docs/configuration.md lists the Mosquitto keys that are read)",
                );
            }
        }
        Ok(())
    }

    /// `log_dest stderr | stdout | syslog | file PATH | none`; repeated lines add
    /// destinations, as in Mosquitto.
    fn log_dest(&mut self, at: &At, value: &str) -> Result<(), ConfigError> {
        let log = &mut self.config.log;
        if !self.log_dest_seen {
            log.dest.clear();
            self.log_dest_seen = true;
        }
        let (kind, rest) = match value.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (value, ""),
        };
        let dest = match kind {
            "stderr" => LogDest::Stderr,
            "stdout" => LogDest::Stdout,
            "syslog" => LogDest::Syslog,
            "file" => {
                if rest.is_empty() {
                    return Err(at.error("log_dest file needs a path"));
                }
                if log.file.as_deref().is_some_and(|f| f != Path::new(rest)) {
                    return unsupported(at, "a second log file");
                }
                log.file = Some(PathBuf::from(rest));
                LogDest::File
            }
            "none" => {
                log.dest.clear();
                self.origins.insert("log.dest", at.clone());
                return Ok(());
            }
            "topic" => return unsupported(at, "logging to $SYS/broker/log"),
            "dlt" => return unsupported(at, "logging to DLT"),
            _ => return Err(at.error("expected stderr, stdout, syslog, file PATH or none")),
        };
        if !log.dest.contains(&dest) {
            log.dest.push(dest);
        }
        self.origins.insert("log.dest", at.clone());
        Ok(())
    }

    /// `log_type`: the most detailed type named sets the level; `subscribe` /
    /// `unsubscribe` turn on their lines.
    fn log_type(&mut self, at: &At, value: &str) -> Result<(), ConfigError> {
        let log = &mut self.config.log;
        let level = match value {
            "none" | "error" => LogLevel::Error,
            "warning" => LogLevel::Warn,
            "notice" | "information" => LogLevel::Info,
            "debug" | "all" => {
                if value == "all" {
                    log.subscriptions = true;
                }
                LogLevel::Debug
            }
            "subscribe" | "unsubscribe" => {
                log.subscriptions = true;
                self.origins.insert("log.subscriptions", at.clone());
                return Ok(());
            }
            // The WebSocket library's own messages: the broker's WebSocket layer logs
            // through its connection lines.
            "websockets" => return Ok(()),
            _ => {
                return Err(at.error(
                    "expected error, warning, notice, information, debug, subscribe, unsubscribe, none or all",
                ));
            }
        };
        log.level = if self.log_type_seen {
            log.level.max(level)
        } else {
            level
        };
        self.log_type_seen = true;
        self.origins.insert("log.level", at.clone());
        Ok(())
    }

    /// Builds the listeners and checks the whole.
    fn finish(mut self) -> Result<Config, ConfigError> {
        if let Some(limit) = self.message_size_limit {
            // A payload limit: the packet may carry a topic and properties besides.
            let packet = limit.saturating_add(65_536);
            let l = &mut self.config.limits;
            l.max_packet_size = if self.max_packet_size_set {
                l.max_packet_size.min(packet)
            } else {
                packet
            };
        }
        let specs: Vec<ListenerSpec> = self
            .default_listener
            .take()
            .into_iter()
            .chain(std::mem::take(&mut self.listeners))
            .collect();
        // Without listeners Mosquitto 2 listens on the loopback only, and lets anonymous
        // clients in ("local only mode").
        let local_only = specs.is_empty();
        let mut listeners = Vec::new();
        let mut max_connections: Option<usize> = None;
        let mut anonymous: Vec<(bool, Option<At>)> = Vec::new();
        for spec in &specs {
            for bind in resolve(spec)? {
                let mut l = listener(bind);
                if spec.websockets {
                    l.protocol = crate::config::Protocol::WebSockets;
                }
                let tls = &spec.tls;
                l.certfile.clone_from(&tls.certfile);
                l.keyfile.clone_from(&tls.keyfile);
                l.cafile.clone_from(&tls.cafile);
                l.capath.clone_from(&tls.capath);
                l.crlfile.clone_from(&tls.crlfile);
                if tls.require_certificate {
                    l.require_certificate = crate::config::ClientCertificates::Required;
                }
                l.use_identity_as_username = tls.use_identity_as_username;
                l.use_subject_as_username = tls.use_subject_as_username;
                l.tls_version = tls.tls_version;
                if let Err((key, why)) = l.check() {
                    return Err(spec.at.error(format_args!("listener: {key}: {why}")));
                }
                if self.per_listener_settings {
                    // Mosquitto 2: a listener that does not say lets no anonymous
                    // client in, and has no password or ACL file but its own.
                    l.allow_anonymous = Some(spec.allow_anonymous.as_ref().is_some_and(|a| a.0));
                    l.password_file.clone_from(&spec.password_file);
                    l.acl_file.clone_from(&spec.acl_file);
                }
                listeners.push(l);
            }
            if let Some(n) = spec.max_connections {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                max_connections = Some(max_connections.unwrap_or(0).saturating_add(n));
            }
            if self.per_listener_settings {
                let (allow, at) = match &spec.allow_anonymous {
                    Some((allow, at)) => (*allow, Some(at.clone())),
                    None => (false, Some(spec.at.clone())),
                };
                anonymous.push((allow, at));
            }
        }
        if local_only {
            listeners = vec![
                listener(SocketAddr::from(([127, 0, 0, 1], 1883))),
                listener(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 1883))),
            ];
        }
        self.config.listeners = listeners;
        if let Some(n) = max_connections {
            self.config.limits.max_connections = n;
        }
        // allow_anonymous: Mosquitto 2's default is false, unless no listener is
        // configured; with per_listener_settings each listener says for itself (above).
        let (allow, at) = match self.allow_anonymous.take() {
            Some((allow, at)) => (allow, Some(at)),
            None if self.per_listener_settings => (true, None),
            None => (local_only, specs.first().map(|s| s.at.clone())),
        };
        self.config.auth.allow_anonymous = allow;
        // Anonymous clients refused where no password file could let anyone in: say
        // where, and what to do.
        let passwords = |spec: &ListenerSpec| {
            spec.password_file.is_some() || self.config.auth.password_file.is_some()
        };
        let refused_at = if self.per_listener_settings {
            specs
                .iter()
                .find(|spec| {
                    !spec.allow_anonymous.as_ref().is_some_and(|a| a.0) && !passwords(spec)
                })
                .map(|spec| {
                    spec.allow_anonymous
                        .as_ref()
                        .map_or_else(|| spec.at.clone(), |a| a.1.clone())
                })
        } else if !allow && self.config.auth.password_file.is_none() && !local_only {
            at
        } else {
            None
        };
        if let Some(at) = refused_at {
            return Err(ConfigError::new(format!(
                "{}:{}: clients without a user name are refused here (allow_anonymous false, Mosquitto 2's default once a listener is configured) and no password_file lets anyone else in: add a password_file, or `allow_anonymous true`",
                at.file.display(),
                at.line
            )));
        }
        self.config
            .validate()
            .map_err(|(key, why)| match self.origins.get(key.as_str()) {
                Some(at) => at.error(format_args!("{key}: {why}")),
                None => ConfigError::new(format!("{key}: {why}")),
            })?;
        Ok(self.config)
    }
}

/// A listener of ours for `bind` (one place, for the fields listeners gain).
fn listener(bind: SocketAddr) -> Listener {
    Listener::new(bind)
}

/// The addresses of a listener: its address (resolved if a host name) or every
/// address, IPv4 and IPv6, as `socket_domain` allows.
fn resolve(spec: &ListenerSpec) -> Result<Vec<SocketAddr>, ConfigError> {
    let wanted = |a: &SocketAddr| match spec.domain {
        Some(Domain::V4) => a.is_ipv4(),
        Some(Domain::V6) => a.is_ipv6(),
        None => true,
    };
    let addrs: Vec<SocketAddr> = match &spec.address {
        None => [
            SocketAddr::from(([0, 0, 0, 0], spec.port)),
            SocketAddr::from(([0u16; 8], spec.port)),
        ]
        .into_iter()
        .filter(wanted)
        .collect(),
        Some(host) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let mut found: Vec<SocketAddr> = (host, spec.port)
                .to_socket_addrs()
                .map_err(|e| spec.at.error(format_args!("{host}: {e}")))?
                .filter(wanted)
                .collect();
            found.sort();
            found.dedup();
            found
        }
    };
    if addrs.is_empty() {
        return Err(spec
            .at
            .error("no address left for this listener (socket_domain)"));
    }
    Ok(addrs)
}

fn word<'a>(at: &At, value: &'a str) -> Result<&'a str, ConfigError> {
    if value.is_empty() {
        return Err(at.error("needs a value"));
    }
    Ok(value)
}

fn parse_num<T: std::str::FromStr>(at: &At, value: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    value
        .parse()
        .map_err(|e| at.error(format_args!("`{value}`: {e}")))
}

fn parse_bool(at: &At, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(at.error(format_args!("`{value}`: expected true or false"))),
    }
}

/// Mosquitto's durations: a number with `h`, `d`, `w`, `m` (months) or `y`; seconds.
fn parse_duration(at: &At, value: &str) -> Result<u32, ConfigError> {
    let invalid = || {
        at.error(format_args!(
            "`{value}`: expected a number followed by h, d, w, m or y"
        ))
    };
    let unit = value.chars().last().ok_or_else(invalid)?;
    let number: u64 = value
        .get(..value.len() - unit.len_utf8())
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid)?;
    let hour = 3600u64;
    let secs = match unit {
        'h' => hour,
        'd' => 24 * hour,
        'w' => 7 * 24 * hour,
        'm' => 30 * 24 * hour,
        'y' => 365 * 24 * hour,
        _ => return Err(invalid()),
    };
    Ok(u32::try_from(number.saturating_mul(secs)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        super::parse(text, Path::new("/etc/mosquitto/mosquitto.conf")).map_err(|e| e.to_string())
    }

    #[test]
    fn detection_by_content() {
        assert!(looks_like_mosquitto("# c\n\nlistener 1883\n"));
        assert!(looks_like_mosquitto("pid_file /run/m.pid\n"));
        assert!(!looks_like_mosquitto("[limits]\nmax_inflight = 1\n"));
        assert!(!looks_like_mosquitto("# c\nkey = 1\n"));
        assert!(!looks_like_mosquitto("key=1\n"));
        assert!(!looks_like_mosquitto("[[listeners]]\n"));
        assert!(!looks_like_mosquitto("# only comments\n"));
    }

    #[test]
    fn no_listener_is_loopback_and_anonymous_as_mosquitto_2() {
        let c = parse("sys_interval 5\n").unwrap();
        let binds: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
        assert_eq!(binds, ["127.0.0.1:1883", "[::1]:1883"]);
        assert!(c.auth.allow_anonymous);
        assert_eq!(c.sys.interval, 5);
    }

    #[test]
    fn listeners_and_their_settings() {
        let c = parse(
            "per_listener_settings false\nallow_anonymous true\n\
             listener 1884\nmax_connections 10\n\
             listener 1885 127.0.0.1\nmax_connections 5\n\
             listener 1886\nsocket_domain ipv6\n",
        )
        .unwrap();
        let binds: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
        assert_eq!(
            binds,
            ["0.0.0.0:1884", "[::]:1884", "127.0.0.1:1885", "[::]:1886"]
        );
        assert_eq!(c.limits.max_connections, 15);
    }

    #[test]
    fn a_listener_without_allow_anonymous_needs_a_password_file() {
        let err = parse("\nlistener 1883\n").unwrap_err();
        assert!(
            err.starts_with("/etc/mosquitto/mosquitto.conf:2: "),
            "{err}"
        );
        assert!(err.contains("allow_anonymous true"), "{err}");
        assert!(err.contains("password_file"), "{err}");
    }

    #[test]
    fn persistence_keys_map_onto_the_durable_store() {
        let c = parse(
            "allow_anonymous true\npersistence true\npersistence_location /var/lib/mosquitto/\n\
             persistence_file broker.redb\nautosave_interval 60\nautosave_on_changes false\n",
        )
        .unwrap();
        assert_eq!(c.persistence.mode, crate::config::PersistenceMode::Sync);
        assert_eq!(
            c.persistence.path,
            PathBuf::from("/var/lib/mosquitto/broker.redb")
        );
    }

    #[test]
    fn pending_and_unknown_keys_name_file_line_and_key() {
        let err = parse("allow_anonymous true\n\n  bogus_key 1\n").unwrap_err();
        assert!(
            err.starts_with("/etc/mosquitto/mosquitto.conf:3: bogus_key: not supported by mqtt-broker: unknown key"),
            "{err}"
        );
        let err = parse("max_inflight_messages many\n").unwrap_err();
        assert!(
            err.starts_with("/etc/mosquitto/mosquitto.conf:1: max_inflight_messages: `many`"),
            "{err}"
        );
    }

    #[test]
    fn values_are_mapped() {
        let c = parse(
            "allow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 1000\n\
             max_inflight_messages 20\nmax_packet_size 100000\nmax_keepalive 120\n\
             retain_available false\npersistent_client_expiration 2d\n\
             allow_zero_length_clientid false\nlog_dest file /tmp/m.log\nlog_dest stderr\n\
             log_type warning\nlog_type debug\nlog_type subscribe\nconnection_messages false\n\
             pid_file /run/x.pid\nmessage_size_limit 1000\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_queued_messages, usize::MAX);
        assert_eq!(c.limits.max_queued_bytes, 1000);
        assert_eq!(c.limits.max_inflight, 20);
        assert_eq!(c.limits.max_packet_size, 66_536);
        assert_eq!(c.limits.max_keep_alive, 120);
        assert!(!c.retain.enabled);
        assert_eq!(c.limits.persistent_client_expiration, 2 * 86_400);
        assert!(!c.auth.allow_zero_length_client_id);
        assert_eq!(c.log.dest, [LogDest::File, LogDest::Stderr]);
        assert_eq!(c.log.file.as_deref(), Some(Path::new("/tmp/m.log")));
        assert_eq!(c.log.level, LogLevel::Debug);
        assert!(c.log.subscriptions);
        assert!(!c.log.connections);
        assert_eq!(c.process.pid_file.as_deref(), Some(Path::new("/run/x.pid")));
    }

    #[test]
    fn an_invalid_value_found_late_names_where_it_was_set() {
        let err = parse("allow_anonymous true\n\nmax_packet_size 10\n").unwrap_err();
        assert_eq!(
            err,
            "/etc/mosquitto/mosquitto.conf:3: max_packet_size: limits.max_packet_size: must be at least 64 bytes"
        );
    }

    #[test]
    fn per_listener_settings_give_each_listener_its_own_auth() {
        let c = parse(
            "per_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\n\
             listener 1884 127.0.0.1\npassword_file /etc/mosquitto/pw\nacl_file /etc/mosquitto/acl\n",
        )
        .unwrap();
        let [open, closed] = &c.listeners[..] else {
            panic!("{:?}", c.listeners)
        };
        assert_eq!(open.allow_anonymous, Some(true));
        assert_eq!(open.password_file, None);
        assert_eq!(closed.allow_anonymous, Some(false));
        assert_eq!(
            closed.password_file.as_deref(),
            Some(Path::new("/etc/mosquitto/pw"))
        );
        assert_eq!(
            closed.acl_file.as_deref(),
            Some(Path::new("/etc/mosquitto/acl"))
        );
        // A listener refusing anonymous clients without a password file is named.
        let err = parse(
            "per_listener_settings true\nlistener 1883\nallow_anonymous true\nlistener 1884\nallow_anonymous false\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("/etc/mosquitto/mosquitto.conf:5: "),
            "{err}"
        );
    }

    #[test]
    fn global_password_and_acl_files() {
        let c = parse(
            "listener 1883\nallow_anonymous false\npassword_file /etc/mosquitto/pw\nacl_file /etc/mosquitto/acl\n",
        )
        .unwrap();
        assert!(!c.auth.allow_anonymous);
        assert_eq!(
            c.auth.password_file.as_deref(),
            Some(Path::new("/etc/mosquitto/pw"))
        );
        assert_eq!(
            c.auth.acl_file.as_deref(),
            Some(Path::new("/etc/mosquitto/acl"))
        );
        assert_eq!(c.listeners[0].password_file, None);
    }
}
