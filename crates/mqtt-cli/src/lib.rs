//! mqtt-pub, mqtt-sub and mqtt-rr: MQTT command-line tools with the flags of
//! mosquitto_pub, mosquitto_sub and mosquitto_rr.
//!
//! This library holds what the three binaries share: the connection flags, turning
//! them into [`mqtt_client::ConnectOptions`], MQTT 5.0 properties given with `-D`, the
//! `-F` output format, and error reporting with exit codes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use bytes::Bytes;
use clap::{ArgAction, Args};
use mqtt_client::{
    ByteStr, ConnectOptions, Disconnect, Message, ProtocolVersion, PublishProperties, QoS,
    ReasonCode, ReconnectOptions, Socks5Proxy, SubscribeProperties, TlsOptions, TlsVersion,
    Transport, UnsubscribeProperties, Will,
    codec::{DisconnectProperties, PayloadFormat},
};

pub mod format;
mod random_filter;
pub mod trace;

pub use random_filter::RandomFilter;

/// Exit code for an error (connection refused, network failure, bad arguments).
pub const EXIT_ERROR: u8 = 1;
/// Exit code when `-W` timed out (mosquitto_sub uses 27, ETIMEDOUT).
pub const EXIT_TIMEOUT: u8 = 27;

/// Connection flags shared by every tool (mosquitto's names and meanings).
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Host to connect to.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Port to connect to (1883, or 8883 with TLS).
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// URL: mqtt(s)://user:password@host:port/topic or ws(s)://...; sets host,
    /// port, credentials, transport and topic.
    #[arg(short = 'L', long = "url")]
    pub url: Option<String>,
    /// Client identifier (default: a random one, or the prefix and process id with -I).
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// Client identifier prefix: the identifier is this plus the process id.
    #[arg(short = 'I', long = "id-prefix")]
    pub id_prefix: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// User name and password.
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Disable clean session / clean start: keep the session on the broker.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub no_clean: bool,
    /// Session expiry interval in seconds (5.0); -1 for never.
    #[arg(
        short = 'x',
        long = "session-expiry-interval",
        allow_negative_numbers = true
    )]
    pub session_expiry: Option<i64>,
    /// Protocol version: 5, 311, 31 (or mqttv5, mqttv311, mqttv31).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// QoS for messages (and subscriptions).
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// MQTT 5.0 property: -D COMMAND NAME VALUE (user-property takes NAME and VALUE).
    #[arg(id = "property", short = 'D', long = "property", num_args = 3..=4, action = ArgAction::Append, value_names = ["COMMAND", "NAME", "VALUE"])]
    pub properties_raw: Vec<String>,
    /// The `-D` flags, one group per occurrence (filled by [`parse_args`]).
    #[arg(skip)]
    pub properties: Vec<Vec<String>>,
    /// Whether `-V` was given (filled by [`parse_args`]): mqtt-rr defaults to 5.0.
    #[arg(skip)]
    pub version_given: bool,
    /// Topic of the will.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Payload of the will.
    #[arg(long = "will-payload")]
    pub will_payload: Option<String>,
    /// QoS of the will.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub will_qos: u8,
    /// Retain the will.
    #[arg(long = "will-retain")]
    pub will_retain: bool,
    /// TLS: CA certificates, client certificate, versions, ciphers, ALPN.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// OpenSSL engine for the private key (not supported by this build: rustls has no
    /// OpenSSL engines).
    #[arg(long = "tls-engine", value_name = "ENGINE")]
    pub tls_engine: Option<String>,
    /// SHA-1 of the key password for the OpenSSL engine (not supported, as
    /// --tls-engine).
    #[arg(long = "tls-engine-kpass-sha1", value_name = "KPASS_SHA1")]
    pub tls_engine_kpass_sha1: Option<String>,
    /// Private key type: pem (the default and the only one supported) or engine (not
    /// supported, as --tls-engine).
    #[arg(long = "keyform", value_name = "pem|engine")]
    pub keyform: Option<String>,
    /// Disable Nagle's algorithm. Always the case: every TCP connection is made with
    /// TCP_NODELAY; accepted for mosquitto compatibility.
    #[arg(long = "nodelay")]
    pub nodelay: bool,
    /// TLS pre-shared key in hex (not supported by this build: rustls has no TLS-PSK).
    #[arg(long = "psk")]
    pub psk: Option<String>,
    /// TLS-PSK client identity (not supported by this build, as --psk).
    #[arg(long = "psk-identity")]
    pub psk_identity: Option<String>,
    /// Bind the outgoing connection to this local IP address or host name.
    #[arg(short = 'A', value_name = "BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// Connect through the Unix domain socket at this path instead of TCP (replaces
    /// -h and -L).
    #[arg(long = "unix", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// SOCKS5 proxy URL: socks5h://user:password@host:port, where user, password and
    /// port (1080) may be left out; the proxy resolves the broker's host name.
    #[arg(long = "proxy", value_name = "SOCKS_URL")]
    pub proxy: Option<String>,
    /// Maximum QoS 1 and 2 messages in flight (sent, not yet acknowledged); the
    /// broker's Receive Maximum (5.0) caps it further. Default 20, as mosquitto.
    #[arg(short = 'M', value_name = "MAX_INFLIGHT", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_inflight: u16,
    /// Print a packet trace (every packet sent and received) on stdout, in the words of
    /// mosquitto's tools.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Do not print error messages.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Print the version.
    #[arg(long = "version", action = ArgAction::Version)]
    pub print_version: Option<bool>,
}

/// User name and password (`-u`, `-P`), shared by every tool that connects,
/// mqtt-bench included.
#[derive(Args, Debug, Clone, Default)]
pub struct CredentialArgs {
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
}

impl CredentialArgs {
    /// The user name and password for a CONNECT of `version`: an error, before
    /// connecting, for a password without a user name where the version forbids it.
    pub fn for_version(
        &self,
        version: ProtocolVersion,
    ) -> Result<(Option<&str>, Option<&[u8]>), Failure> {
        let password = self.password.as_deref().map(str::as_bytes);
        if self.username.is_none() && password.is_some() && !version.is_v5() {
            // Caught here, before connecting: the codec cannot encode this CONNECT.
            let kind = mqtt_client::codec::ErrorKind::PasswordWithoutUsername;
            let rule = kind.rule(version).unwrap_or("MQTT-3.1.2-22");
            return Err(Failure::new(format!(
                "{kind} is not allowed in MQTT {} [{rule}]: give a user name (-u) too, or use -V 5",
                version_name(version)
            )));
        }
        Ok((self.username.as_deref(), password))
    }
}

/// TLS flags (mosquitto's names), shared by every tool that connects, mqtt-bench
/// included.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificates (PEM file) to trust; turns TLS on.
    #[arg(long = "cafile")]
    pub cafile: Option<PathBuf>,
    /// Directory of CA certificates (PEM) to trust; turns TLS on.
    #[arg(long = "capath")]
    pub capath: Option<PathBuf>,
    /// Client certificate (PEM), with --key.
    #[arg(long = "cert")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with --cert.
    #[arg(long = "key")]
    pub key: Option<PathBuf>,
    /// Do not check that the server certificate names the host.
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// Trust the operating system's CA certificates; turns TLS on.
    #[arg(long = "tls-use-os-certs")]
    pub tls_use_os_certs: bool,
    /// Speak only this TLS version: tlsv1.3 or tlsv1.2 (tlsv1.1 is not supported by
    /// rustls).
    #[arg(long = "tls-version", value_parser = parse_tls_version)]
    pub tls_version: Option<TlsVersion>,
    /// TLS cipher suites to offer, an OpenSSL-style list separated by ':' (OpenSSL or
    /// IANA names, e.g. ECDHE-ECDSA-AES128-GCM-SHA256:TLS_AES_256_GCM_SHA384).
    #[arg(long = "ciphers")]
    pub ciphers: Option<String>,
    /// ALPN protocol to offer in the TLS handshake, for brokers serving several
    /// protocols on one port.
    #[arg(long = "tls-alpn", value_name = "PROTOCOL")]
    pub tls_alpn: Option<String>,
}

impl TlsArgs {
    /// Whether these flags turn TLS on (a CA file, a CA directory or the system's
    /// CA certificates).
    pub fn enabled(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some() || self.tls_use_os_certs
    }

    /// The TLS settings these flags describe.
    pub fn options(&self) -> Result<TlsOptions, Failure> {
        Ok(TlsOptions {
            ca_file: self.cafile.clone(),
            ca_path: self.capath.clone(),
            client_cert: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => return Err(Failure::new("--cert and --key must be given together")),
            },
            insecure_skip_hostname: self.insecure,
            version: self.tls_version,
            ciphers: self.ciphers.clone(),
            alpn_protocols: self
                .tls_alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            ..TlsOptions::default()
        })
    }

    /// The flags again, as command-line arguments (for a tool that starts helper
    /// processes of itself).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let paths = [
            ("--cafile", &self.cafile),
            ("--capath", &self.capath),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ];
        for (flag, path) in paths {
            if let Some(p) = path {
                a.push(flag.into());
                a.push(p.clone().into_os_string());
            }
        }
        if self.insecure {
            a.push("--insecure".into());
        }
        if self.tls_use_os_certs {
            a.push("--tls-use-os-certs".into());
        }
        if let Some(v) = self.tls_version {
            a.push("--tls-version".into());
            a.push(
                match v {
                    TlsVersion::Tls13 => "tlsv1.3",
                    TlsVersion::Tls12 => "tlsv1.2",
                }
                .into(),
            );
        }
        if let Some(c) = &self.ciphers {
            a.push("--ciphers".into());
            a.push(c.into());
        }
        if let Some(p) = &self.tls_alpn {
            a.push("--tls-alpn".into());
            a.push(p.into());
        }
        a
    }
}

/// Parses the command line of a tool whose arguments flatten [`ConnectArgs`] as
/// `conn`; `-D` groups are split per occurrence.
pub fn parse_args<T: clap::Parser>(conn: impl FnOnce(&mut T) -> &mut ConnectArgs) -> T {
    let matches = match T::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => usage_exit(&e),
    };
    let mut args = match T::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => usage_exit(&e),
    };
    let groups = matches
        .get_occurrences::<String>("property")
        .map(|occ| occ.map(|o| o.cloned().collect()).collect())
        .unwrap_or_default();
    let c = conn(&mut args);
    c.properties = groups;
    c.version_given =
        matches.value_source("version") == Some(clap::parser::ValueSource::CommandLine);
    args
}

/// Prints a clap outcome and exits: 0 for `--help` and `--version`, 1 for a usage error
/// (as mosquitto's tools; clap's own code is 2).
fn usage_exit(e: &clap::Error) -> ! {
    let _ = e.print();
    let code = if e.use_stderr() { EXIT_ERROR } else { 0 };
    std::process::exit(i32::from(code))
}

/// A client identifier for a tool that was given none: `tool-` and 12 random hex
/// digits (21 bytes for the longest tool name, within the 23 every 3.1.1 broker must
/// accept), so two processes never share one, even with the same process id in two
/// containers.
pub fn random_client_id(tool: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the operating system's random source once per
    // process; the time and the process id make two calls in one process differ too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    format!("{tool}-{:012x}", h.finish() & 0xFFFF_FFFF_FFFF)
}

fn parse_tls_version(s: &str) -> Result<TlsVersion, String> {
    match s {
        "tlsv1.3" => Ok(TlsVersion::Tls13),
        "tlsv1.2" => Ok(TlsVersion::Tls12),
        "tlsv1.1" | "tlsv1" => Err(format!(
            "{s} is not supported: rustls speaks TLS 1.2 and 1.3 only (use tlsv1.2 or tlsv1.3)"
        )),
        _ => Err(format!("unknown TLS version {s:?}: use tlsv1.3 or tlsv1.2")),
    }
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "5" | "mqttv5" | "50" => Ok(ProtocolVersion::V5),
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "31" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        _ => Err(format!(
            "unknown protocol version {s:?}: use 5, 311 or 31 (or mqttv5, mqttv311, mqttv31)"
        )),
    }
}

/// The version's name as people write it: 3.1, 3.1.1 or 5.0.
fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), caught from the moment this is made, so a
/// tool can disconnect cleanly (no will) and exit 0, as mosquitto's tools do.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (on the current tokio runtime).
    pub fn new() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let f = |e: std::io::Error| Failure::new(format!("cannot handle signals: {e}"));
            Ok(Self {
                int: signal(SignalKind::interrupt()).map_err(f)?,
                term: signal(SignalKind::terminate()).map_err(f)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the next signal.
    ///
    /// # Cancel safety
    /// Cancel safe: a signal that arrives while nobody waits is kept for the next call.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A user-facing error: printed as `Error: ...`, exits with `code`.
#[derive(Debug)]
pub struct Failure {
    /// The message.
    pub message: String,
    /// The exit code.
    pub code: u8,
}

impl Failure {
    /// An error with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: EXIT_ERROR,
        }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::new(e.to_string())
    }
}

/// Reports the outcome of a tool's main function.
pub fn finish(result: Result<(), Failure>, quiet: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !quiet && !f.message.is_empty() {
                eprintln!("Error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

/// MQTT 5.0 properties from `-D`, grouped by the packet they go in.
#[derive(Debug, Default, Clone)]
pub struct Properties {
    /// For CONNECT.
    pub connect: mqtt_client::ConnectProperties,
    /// For PUBLISH.
    pub publish: PublishProperties,
    /// For SUBSCRIBE.
    pub subscribe: SubscribeProperties,
    /// For UNSUBSCRIBE.
    pub unsubscribe: UnsubscribeProperties,
    /// For the will.
    pub will: mqtt_client::WillProperties,
    /// For DISCONNECT.
    pub disconnect: DisconnectProperties,
}

impl Properties {
    /// The DISCONNECT to end a connection normally with, carrying the `-D disconnect`
    /// properties.
    pub fn disconnect_packet(&self) -> Disconnect {
        let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
        d.properties = self.disconnect.clone();
        d
    }
}

/// The property names `-D` knows (mosquitto's spelling), and the commands (packets)
/// MQTT 5.0 allows each in, as the client sends them.
const PROPERTY_PLACES: &[(&str, &[&str])] = &[
    ("payload-format-indicator", &["publish", "will"]),
    ("message-expiry-interval", &["publish", "will"]),
    ("content-type", &["publish", "will"]),
    ("response-topic", &["publish", "will"]),
    ("correlation-data", &["publish", "will"]),
    ("subscription-identifier", &["subscribe"]),
    ("session-expiry-interval", &["connect", "disconnect"]),
    ("authentication-method", &["connect", "auth"]),
    ("authentication-data", &["connect", "auth"]),
    ("request-problem-information", &["connect"]),
    ("will-delay-interval", &["will"]),
    ("request-response-information", &["connect"]),
    ("reason-string", &["disconnect", "auth"]),
    ("receive-maximum", &["connect"]),
    ("topic-alias-maximum", &["connect"]),
    ("topic-alias", &["publish"]),
    (
        "user-property",
        &[
            "connect",
            "publish",
            "subscribe",
            "unsubscribe",
            "disconnect",
            "will",
            "auth",
        ],
    ),
    ("maximum-packet-size", &["connect"]),
];

/// The commands `-D` knows.
const PROPERTY_COMMANDS: &[&str] = &[
    "connect",
    "publish",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "will",
    "auth",
];

fn s(name: &str, v: &str) -> Result<ByteStr, Failure> {
    ByteStr::try_from(v)
        .map_err(|e| Failure::new(format!("invalid value {v:?} for property {name}: {e}")))
}

fn num<T: std::str::FromStr>(name: &str, v: &str, range: &str) -> Result<T, Failure> {
    v.parse().map_err(|_| {
        Failure::new(format!(
            "invalid value {v:?} for property {name}: expected {range}"
        ))
    })
}

fn flag(name: &str, v: &str) -> Result<bool, Failure> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Failure::new(format!(
            "invalid value {v:?} for property {name}: expected 0 or 1"
        ))),
    }
}

/// Parses the `-D` flags: `COMMAND NAME VALUE`, or `COMMAND user-property KEY VALUE`.
/// A property is accepted in the packets MQTT 5.0 allows it in (as a client sends
/// them); an error names the command, the property or the value that is wrong.
pub fn parse_properties(
    args: &[Vec<String>],
    version: ProtocolVersion,
) -> Result<Properties, Failure> {
    let mut p = Properties::default();
    if !args.is_empty() && !version.is_v5() {
        return Err(Failure::new("-D (properties) needs MQTT 5.0: add -V 5"));
    }
    for a in args {
        let (cmd, name, value, extra) = match a.as_slice() {
            [c, n, v] => (c.as_str(), n.as_str(), v.as_str(), None),
            [c, n, k, v] => (c.as_str(), n.as_str(), k.as_str(), Some(v.as_str())),
            _ => return Err(Failure::new("-D takes COMMAND NAME VALUE")),
        };
        if !PROPERTY_COMMANDS.contains(&cmd) {
            return Err(Failure::new(format!(
                "-D: unknown command {cmd:?}: use one of {}",
                PROPERTY_COMMANDS.join(", ")
            )));
        }
        let Some((_, places)) = PROPERTY_PLACES.iter().find(|(n, _)| *n == name) else {
            return Err(Failure::new(format!("-D {cmd}: unknown property {name:?}")));
        };
        if !places.contains(&cmd) {
            return Err(Failure::new(format!(
                "-D {cmd}: property {name} is not allowed in {} (only in {})",
                cmd.to_uppercase(),
                places
                    .iter()
                    .map(|c| c.to_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if name == "user-property" {
            let Some(v) = extra else {
                return Err(Failure::new(format!(
                    "-D {cmd} user-property takes a name and a value"
                )));
            };
            let pair = [(s(name, value)?, s(name, v)?)];
            match cmd {
                "connect" => p.connect.user_properties.extend(pair),
                "publish" => p.publish.user_properties.extend(pair),
                "subscribe" => p.subscribe.user_properties.extend(pair),
                "unsubscribe" => p.unsubscribe.user_properties.extend(pair),
                "disconnect" => p.disconnect.user_properties.extend(pair),
                "will" => p.will.user_properties.extend(pair),
                _ => return Err(Failure::new(AUTH_UNSUPPORTED)),
            }
            continue;
        }
        if extra.is_some() {
            return Err(Failure::new(format!(
                "-D {cmd} {name} takes one value, not two"
            )));
        }
        const U32: &str = "a number from 0 to 4294967295";
        const U16: &str = "a number from 0 to 65535";
        const NZ16: &str = "a number from 1 to 65535";
        const NZ32: &str = "a number from 1 to 4294967295";
        let format = |v: &str| -> Result<PayloadFormat, Failure> {
            match v {
                "0" => Ok(PayloadFormat::Unspecified),
                "1" => Ok(PayloadFormat::Utf8),
                _ => Err(Failure::new(format!(
                    "invalid value {v:?} for property {name}: expected 0 or 1"
                ))),
            }
        };
        let bytes = |v: &str| Bytes::copy_from_slice(v.as_bytes());
        match (cmd, name) {
            ("connect", "session-expiry-interval") => {
                p.connect.session_expiry_interval = Some(num(name, value, U32)?);
            }
            ("connect", "receive-maximum") => {
                p.connect.receive_maximum = Some(num(name, value, NZ16)?);
            }
            ("connect", "maximum-packet-size") => {
                p.connect.maximum_packet_size = Some(num(name, value, NZ32)?);
            }
            ("connect", "topic-alias-maximum") => {
                p.connect.topic_alias_maximum = Some(num(name, value, U16)?);
            }
            ("connect", "request-problem-information") => {
                p.connect.request_problem_information = Some(flag(name, value)?);
            }
            ("connect", "request-response-information") => {
                p.connect.request_response_information = Some(flag(name, value)?);
            }
            ("connect", "authentication-method") => {
                p.connect.authentication_method = Some(s(name, value)?);
            }
            ("connect", "authentication-data") => {
                p.connect.authentication_data = Some(bytes(value));
            }
            ("publish", "response-topic") => {
                let topic = s(name, value)?;
                mqtt_client::codec::topic::validate_topic_name(&topic).map_err(|e| {
                    Failure::new(format!("invalid value {value:?} for property {name}: {e}"))
                })?;
                p.publish.response_topic = Some(topic);
            }
            ("publish", "correlation-data") => p.publish.correlation_data = Some(bytes(value)),
            ("publish", "content-type") => p.publish.content_type = Some(s(name, value)?),
            ("publish", "message-expiry-interval") => {
                p.publish.message_expiry_interval = Some(num(name, value, U32)?);
            }
            ("publish", "payload-format-indicator") => {
                p.publish.payload_format_indicator = Some(format(value)?);
            }
            // The session chooses topic aliases itself: check the value, use none.
            ("publish", "topic-alias") => {
                num::<std::num::NonZeroU16>(name, value, NZ16)?;
            }
            ("subscribe", "subscription-identifier") => {
                p.subscribe.subscription_identifier = Some(
                    mqtt_client::codec::SubscriptionId::new(num(
                        name,
                        value,
                        "a number from 1 to 268435455",
                    )?)
                    .ok_or_else(|| {
                        Failure::new(format!(
                            "invalid value {value:?} for property {name}: expected a number from 1 to 268435455"
                        ))
                    })?,
                );
            }
            ("will", "will-delay-interval") => {
                p.will.will_delay_interval = Some(num(name, value, U32)?);
            }
            ("will", "message-expiry-interval") => {
                p.will.message_expiry_interval = Some(num(name, value, U32)?);
            }
            ("will", "payload-format-indicator") => {
                p.will.payload_format_indicator = Some(format(value)?);
            }
            ("will", "content-type") => p.will.content_type = Some(s(name, value)?),
            ("will", "response-topic") => p.will.response_topic = Some(s(name, value)?),
            ("will", "correlation-data") => p.will.correlation_data = Some(bytes(value)),
            ("disconnect", "session-expiry-interval") => {
                p.disconnect.session_expiry_interval = Some(num(name, value, U32)?);
            }
            ("disconnect", "reason-string") => p.disconnect.reason_string = Some(s(name, value)?),
            _ => return Err(Failure::new(AUTH_UNSUPPORTED)),
        }
    }
    Ok(p)
}

/// What `-D auth ...` answers: the property is valid MQTT, but these tools send no AUTH.
const AUTH_UNSUPPORTED: &str = "-D auth: these tools send no AUTH packet (enhanced authentication \
takes -D connect authentication-method and authentication-data)";

/// The QoS of `-q`.
pub fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

impl ConnectArgs {
    /// Builds the connection options; returns them and the topic given in a `-L` URL.
    pub fn options(
        &self,
        tool: &str,
        properties: &Properties,
    ) -> Result<(ConnectOptions, Option<String>), Failure> {
        if self.psk.is_some() || self.psk_identity.is_some() {
            return Err(Failure::new(PSK_UNSUPPORTED));
        }
        let engine_key = self.keyform.as_deref().is_some_and(|k| k != "pem");
        if self.tls_engine.is_some() || self.tls_engine_kpass_sha1.is_some() || engine_key {
            if let Some(k) = self
                .keyform
                .as_deref()
                .filter(|k| *k != "engine" && *k != "pem")
            {
                return Err(Failure::new(format!(
                    "Invalid keyform \"{k}\". Must be pem or engine."
                )));
            }
            return Err(Failure::new(ENGINE_UNSUPPORTED));
        }
        if self.unix.is_some() && self.url.is_some() {
            return Err(Failure::new("--unix replaces -L: give only one of them"));
        }
        let mut url_topic = None;
        let mut o = match &self.url {
            Some(url) => {
                // The path of an mqtt(s) URL is the topic, as mosquitto's -L.
                let (base, topic) = split_url_topic(url);
                url_topic = topic;
                ConnectOptions::from_url(&base)?
            }
            None => ConnectOptions::new(self.host.clone(), 1883),
        };
        if self.tls.enabled() && o.transport_kind() == Transport::Tcp {
            o = o.transport(Transport::Tls);
            if self.url.is_none() {
                o = o.set_port(8883);
            }
        }
        if let Some(port) = self.port {
            o = o.set_port(port);
        }
        o = o.tls(self.tls.options()?);
        if let Some(local) = &self.bind_address {
            o = o.bind_address(local.clone());
        }
        if let Some(proxy) = &self.proxy {
            o = o.proxy(Socks5Proxy::from_url(proxy)?);
        }
        if let Some(path) = &self.unix {
            o = unix_socket(o, path)?;
        }
        // -M: the outgoing window; the session may hold that many in flight, and the
        // driver takes new messages while fewer are pending.
        o.limits_mut().max_inflight = self.max_inflight;
        // -D connect limits: the session announces its own limits in CONNECT, so
        // they go there (a topic alias maximum is what lets a broker send aliases).
        let announced = &properties.connect;
        let limits = o.limits_mut();
        if let Some(n) = announced.topic_alias_maximum {
            limits.topic_alias_maximum = n;
        }
        if let Some(n) = announced.receive_maximum {
            limits.receive_maximum = n.get();
        }
        if let Some(n) = announced.maximum_packet_size {
            limits.max_packet_size = n.get();
        }
        o = o.max_pending(usize::from(self.max_inflight).max(64));
        let id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", std::process::id()),
            (None, None) => random_client_id(tool),
        };
        if self.no_clean && self.id.is_none() && self.id_prefix.is_none() {
            return Err(Failure::new(
                "you must provide a client id (-i) if you are using -c",
            ));
        }
        if self.debug {
            o = trace::enable(o, &id, self.version);
        }
        o = o
            .version(self.version)
            .client_id(id)
            .keep_alive(self.keepalive)
            .clean_start(!self.no_clean)
            .properties(properties.connect.clone())
            .connect_timeout(Duration::from_secs(10))
            // Command-line tools report a lost connection instead of retrying.
            .reconnect(ReconnectOptions {
                enabled: false,
                ..ReconnectOptions::default()
            });
        let expiry = match self.session_expiry {
            Some(-1) => Some(u32::MAX),
            Some(x) => Some(
                u32::try_from(x).map_err(|_| Failure::new("-x must be -1 or 0 to 4294967294"))?,
            ),
            None if self.no_clean => Some(u32::MAX),
            None => properties.connect.session_expiry_interval,
        };
        if let Some(x) = expiry {
            o = o.session_expiry(x);
        }
        match self.credentials.for_version(self.version)? {
            (Some(user), password) => o = o.credentials(user, password)?,
            (None, Some(password)) => o = o.password(password),
            (None, None) => {}
        }
        if let Some(topic) = &self.will_topic {
            o = o.will(Will {
                topic: ByteStr::try_from(topic.as_str())
                    .map_err(|e| Failure::new(format!("will topic {topic:?}: {e}")))?,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
                qos: qos(self.will_qos),
                retain: self.will_retain,
                properties: properties.will.clone(),
            });
        } else if self.will_payload.is_some() {
            return Err(Failure::new("--will-payload needs --will-topic"));
        }
        Ok((o, url_topic))
    }
}

/// What `--psk` and `--psk-identity` answer.
pub const PSK_UNSUPPORTED: &str = "TLS-PSK (--psk, --psk-identity) is not supported by this build: \
its TLS library, rustls, has no external pre-shared keys. Use certificates (--cafile, --cert, --key) instead.";

/// What `--tls-engine`, `--tls-engine-kpass-sha1` and `--keyform engine` answer.
pub const ENGINE_UNSUPPORTED: &str = "OpenSSL engines (--tls-engine, --tls-engine-kpass-sha1, \
--keyform engine) are not supported by this build: its TLS library is rustls, not OpenSSL. \
Use a PEM private key file (--key) instead.";

#[cfg(unix)]
fn unix_socket(o: ConnectOptions, path: &std::path::Path) -> Result<ConnectOptions, Failure> {
    Ok(o.unix_socket(path))
}

#[cfg(not(unix))]
fn unix_socket(_: ConnectOptions, _: &std::path::Path) -> Result<ConnectOptions, Failure> {
    Err(Failure::new(
        "--unix needs a system with Unix domain sockets",
    ))
}

/// Splits `mqtt://host:port/topic` into the broker URL and the topic (mqtt and mqtts
/// only: for WebSocket the path is the HTTP path).
fn split_url_topic(url: &str) -> (String, Option<String>) {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("mqtt://") || lower.starts_with("mqtts://")) {
        return (url.to_owned(), None);
    }
    let start = url.find("://").map_or(0, |i| i + 3);
    match url.get(start..).and_then(|rest| rest.find('/')) {
        Some(i) => {
            let cut = start + i;
            let topic = url.get(cut + 1..).unwrap_or("");
            (
                url.get(..cut).unwrap_or(url).to_owned(),
                (!topic.is_empty()).then(|| topic.to_owned()),
            )
        }
        None => (url.to_owned(), None),
    }
}

/// Connects, mapping errors to mosquitto-like messages.
///
/// A refused connection exits with the broker's code, as mosquitto's tools do: the
/// CONNACK return code in 3.1 and 3.1.1 (5 for not authorised), the reason code in 5.0
/// (135).
pub async fn connect(
    options: ConnectOptions,
) -> Result<(mqtt_client::Client, mqtt_client::Connection), Failure> {
    let version = options.protocol_version();
    mqtt_client::connect(options).await.map_err(|e| {
        let mut f = Failure::new(capitalise(&e.to_string()));
        if let mqtt_client::ConnectError::Refused { reason, .. } = &e {
            f.code = refused_exit_code(*reason, version);
        }
        f
    })
}

/// The exit code for a refused connection: the code the broker sent, in its version.
pub fn refused_exit_code(reason: ReasonCode, version: ProtocolVersion) -> u8 {
    let code = if version.is_v5() {
        reason.0
    } else {
        mqtt_client::ConnAck::v3_return_code(reason)
    };
    // A refusal is never a success.
    if code == 0 { EXIT_ERROR } else { code }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A message for `topic` with the `-D publish` properties.
pub fn message(
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: &Properties,
) -> Result<Message, Failure> {
    let mut m = mqtt_client::message(topic, payload, qos, retain)?;
    m.properties = properties.publish.clone().into();
    Ok(m)
}
