//! Logging: at which level (changed on SIGHUP), in which format (text or JSON lines),
//! and where to (stderr, stdout, a file reopened on SIGHUP for logrotate, syslog,
//! journald); and the one-line summaries of packets that `-v` logs.
//!
//! What is logged at which level:
//! - `info`: the version at start, listeners, one line per connection (client id,
//!   address, protocol, clean flag, keep-alive, user name) and per disconnection (with
//!   its reason), what SIGHUP reloaded, warnings' context;
//! - `debug` (`-v`): one line per packet in and out. The lines are built only when the
//!   level is on: `tracing`'s macros check a cached level first, so the per-packet path
//!   costs one comparison when it is off.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard},
};

use mqtt_codec::Packet;
use serde::{Deserialize, Serialize};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::MakeWriter, layer::SubscriberExt, reload,
    util::SubscriberInitExt,
};

/// `[log]`: level, format and destinations of the broker's log.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The level: `error`, `warn`, `info` (default), `debug` (one line per packet) or
    /// `trace`. `-v` and `--log-level` override it; `RUST_LOG` overrides both.
    pub level: LogLevel,
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Where lines go: any of `stderr` (default), `stdout`, `file` (needs `file`),
    /// `syslog` (`/dev/log`) and `journald`; empty for nowhere.
    pub dest: Vec<LogDest>,
    /// The file for `dest = ["file"]`, opened for appending and reopened on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// One line per connection and disconnection at `info` (Mosquitto's
    /// `connection_messages`); `false` moves them to `debug`.
    pub connections: bool,
    /// One line per SUBSCRIBE and UNSUBSCRIBE at `info` (Mosquitto's `log_type
    /// subscribe` / `unsubscribe`); otherwise they are `debug` packet lines only.
    pub subscriptions: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
            dest: vec![LogDest::Stderr],
            file: None,
            connections: true,
            subscriptions: false,
        }
    }
}

impl LogConfig {
    /// Checks what types cannot: a `file` destination names its file.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.dest.contains(&LogDest::File) && self.file.is_none() {
            return Err((
                "log.file",
                "dest \"file\" needs the file's path in log.file",
            ));
        }
        Ok(())
    }
}

/// A log level.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Connections, disconnections, start and reload (the default).
    Info,
    /// Every packet in and out.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// The filter: this level for the broker, at most `warn` for the libraries it uses
    /// (so `-v` shows our packets, not an HTTP library's internals).
    fn directives(self) -> String {
        let others = self.min(Self::Warn);
        format!("{},mqtt_broker={}", others.as_str(), self.as_str())
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level name that is not one.
#[derive(Debug)]
pub struct InvalidLevel(String);

impl fmt::Display for InvalidLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid log level `{}`: expected error, warn, info, debug or trace",
            self.0
        )
    }
}

impl std::error::Error for InvalidLevel {}

impl FromStr for LogLevel {
    type Err = InvalidLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return Err(InvalidLevel(s.to_owned())),
        })
    }
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z  INFO mqtt_broker: client connected client=...`
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogDest {
    /// Standard error.
    Stderr,
    /// Standard output.
    Stdout,
    /// `log.file`, reopened on SIGHUP (for logrotate).
    File,
    /// The local syslog daemon, through `/dev/log` (RFC 3164 lines, facility daemon).
    Syslog,
    /// systemd's journal, with the fields as journal fields.
    Journald,
}

/// What can be changed in the running log: its level and its files (reopened).
#[derive(Debug)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    files: Vec<ReopenFile>,
    /// `RUST_LOG` was set: it decides the level, whatever the configuration says.
    env_filter: bool,
    level: Mutex<LogLevel>,
}

/// Why logging could not start.
#[derive(Debug)]
pub struct LogError(String);

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LogError {}

type Boxed = Box<
    dyn Layer<tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>>
        + Send
        + Sync,
>;

/// Starts logging as `config` says, at `level`; `RUST_LOG`, if set, decides the level
/// instead. A destination that cannot be had (no `/dev/log`, no journal) is replaced
/// by stderr with a line saying so; a file that cannot be opened is an error.
pub fn init(config: &LogConfig, level: LogLevel) -> Result<Logging, LogError> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let env_filter = env.is_some();
    let filter = match env {
        Some(directives) => {
            EnvFilter::try_new(&directives).map_err(|e| LogError(format!("RUST_LOG: {e}")))?
        }
        None => EnvFilter::new(level.directives()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let json = config.format == LogFormat::Json;
    let mut layers: Vec<Boxed> = Vec::new();
    let mut files = Vec::new();
    let mut fallback = Vec::new();
    for dest in &config.dest {
        match dest {
            LogDest::Stderr => {
                let ansi = io::IsTerminal::is_terminal(&io::stderr());
                layers.push(fmt_layer(json, ansi, false, io::stderr));
            }
            LogDest::Stdout => {
                let ansi = io::IsTerminal::is_terminal(&io::stdout());
                layers.push(fmt_layer(json, ansi, false, io::stdout));
            }
            LogDest::File => {
                let path = config.file.as_deref().unwrap_or(Path::new(""));
                let file = ReopenFile::open(path)
                    .map_err(|e| LogError(format!("log file {}: {e}", path.display())))?;
                files.push(file.clone());
                layers.push(fmt_layer(json, false, false, file));
            }
            LogDest::Syslog => match Syslog::connect() {
                Ok(syslog) => layers.push(fmt_layer(json, false, true, syslog)),
                Err(e) => fallback.push(format!("syslog (/dev/log): {e}")),
            },
            LogDest::Journald => match tracing_journald::layer() {
                Ok(journal) => {
                    layers.push(Box::new(
                        journal.with_syslog_identifier("mqtt-broker".into()),
                    ));
                }
                Err(e) => fallback.push(format!("journald: {e}")),
            },
        }
    }
    if !fallback.is_empty() && layers.is_empty() {
        let ansi = io::IsTerminal::is_terminal(&io::stderr());
        layers.push(fmt_layer(json, ansi, false, io::stderr));
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| LogError(format!("logging already started: {e}")))?;
    for why in fallback {
        tracing::warn!("log destination unavailable, logging to stderr instead: {why}");
    }
    Ok(Logging {
        filter: handle,
        files,
        env_filter,
        level: Mutex::new(level),
    })
}

fn fmt_layer<W>(json: bool, ansi: bool, no_time: bool, writer: W) -> Boxed
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match (json, no_time) {
        (true, false) => Box::new(layer.json()),
        (true, true) => Box::new(layer.json().without_time()),
        (false, false) => Box::new(layer),
        (false, true) => Box::new(layer.without_time()),
    }
}

impl Logging {
    /// Sets the level; what it was before, or `None` if unchanged (or if `RUST_LOG`
    /// decides it: then nothing changes).
    pub fn set_level(&self, level: LogLevel) -> Option<LogLevel> {
        let mut current = self
            .level
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.env_filter || *current == level {
            return None;
        }
        let before = *current;
        if self
            .filter
            .reload(EnvFilter::new(level.directives()))
            .is_err()
        {
            return None;
        }
        *current = level;
        Some(before)
    }

    /// Whether `RUST_LOG` decides the level.
    pub fn level_from_env(&self) -> bool {
        self.env_filter
    }

    /// Reopens the log files (after logrotate moved them away); how many.
    pub fn reopen(&self) -> io::Result<usize> {
        for file in &self.files {
            file.reopen()?;
        }
        Ok(self.files.len())
    }
}

/// A log file, reopened on request: logrotate moves the file away and signals the
/// broker, which then writes to a new file of the same name.
#[derive(Clone, Debug)]
struct ReopenFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl ReopenFile {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(Self::open_file(path)?)),
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn reopen(&self) -> io::Result<()> {
        let new = Self::open_file(&self.path)?;
        *self.lock() = new;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One line being written to a log file, under the file's lock.
struct FileLine<'a>(MutexGuard<'a, File>);

impl Write for FileLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for ReopenFile {
    type Writer = FileLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        FileLine(self.lock())
    }
}

/// The local syslog daemon's socket: each line one datagram, `<priority>mqtt-broker[pid]: line`
/// (RFC 3164 without a timestamp, which the daemon adds), facility daemon. Sent without
/// blocking: a line the daemon cannot take at once is lost rather than stall the broker.
#[derive(Debug)]
struct Syslog {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    pid: u32,
}

impl Syslog {
    #[cfg(unix)]
    fn connect() -> io::Result<Self> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect("/dev/log")?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            pid: std::process::id(),
        })
    }

    #[cfg(not(unix))]
    fn connect() -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "syslog needs a Unix system",
        ))
    }
}

/// One syslog line, sent when dropped.
struct SyslogLine<'a> {
    syslog: &'a Syslog,
    line: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        while self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        #[cfg(unix)]
        let _ = self.syslog.socket.send(&self.line);
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        self.line(3 * 8 + 6)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        // Facility daemon (3); severity by level.
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        self.line(3 * 8 + severity)
    }
}

impl Syslog {
    fn line(&self, priority: u8) -> SyslogLine<'_> {
        let mut line = Vec::with_capacity(128);
        let _ = write!(line, "<{priority}>mqtt-broker[{}]: ", self.pid);
        SyslogLine { syslog: self, line }
    }
}

/// A packet in one line, as Mosquitto's debug log shows it: its type and the fields
/// that identify it, never its payload (`PUBLISH (d0, q1, r0, m7, 'a/b', ... (12
/// bytes))`). Formatted only when the line is logged.
pub(crate) struct Summary<'a>(pub(crate) &'a Packet);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Packet::Publish(p) => write!(
                f,
                "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                u8::from(p.dup),
                p.qos_pid.qos() as u8,
                u8::from(p.retain),
                p.qos_pid.packet_id().map_or(0, |id| id.get()),
                p.topic,
                p.payload.len()
            ),
            Packet::Connect(c) => write!(f, "CONNECT ({}, '{}')", c.version, c.client_id),
            Packet::ConnAck(a) => write!(f, "CONNACK ({})", a.reason_code),
            Packet::PubAck(a) => write!(f, "PUBACK (m{}, {})", a.packet_id, a.reason_code),
            Packet::PubRec(a) => write!(f, "PUBREC (m{}, {})", a.packet_id, a.reason_code),
            Packet::PubRel(a) => write!(f, "PUBREL (m{}, {})", a.packet_id, a.reason_code),
            Packet::PubComp(a) => write!(f, "PUBCOMP (m{}, {})", a.packet_id, a.reason_code),
            Packet::Subscribe(s) => {
                write!(f, "SUBSCRIBE (m{}", s.packet_id)?;
                for t in &s.subscriptions {
                    write!(f, ", '{}' q{}", t.filter, t.options.qos as u8)?;
                }
                f.write_str(")")
            }
            Packet::SubAck(s) => write!(
                f,
                "SUBACK (m{}, {} codes)",
                s.packet_id,
                s.reason_codes.len()
            ),
            Packet::Unsubscribe(u) => {
                write!(f, "UNSUBSCRIBE (m{}", u.packet_id)?;
                for t in &u.filters {
                    write!(f, ", '{t}'")?;
                }
                f.write_str(")")
            }
            Packet::UnsubAck(u) => write!(f, "UNSUBACK (m{})", u.packet_id),
            Packet::PingReq => f.write_str("PINGREQ"),
            Packet::PingResp => f.write_str("PINGRESP"),
            Packet::Disconnect(d) => write!(f, "DISCONNECT ({})", d.reason_code),
            Packet::Auth(a) => write!(f, "AUTH ({})", a.reason_code),
        }
    }
}
