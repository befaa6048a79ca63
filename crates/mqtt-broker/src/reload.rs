//! What a running broker can change (SIGHUP): the limits that are safe to change
//! while clients are connected, held in atomics the broker reads where it used to read
//! the configuration, and the comparison of a configuration read again with the one in
//! force, key by key, saying what was applied and what waits for a restart.
//!
//! Live: `limits.max_connections`, `max_sessions`, `max_client_id_len`,
//! `max_queued_bytes_total`, `connect_timeout`, `write_timeout`, `tcp_keepalive` (new
//! sockets), `coalesce_writes`, `retain.max_messages`, `retain.max_bytes`, `log.level` (applied by the
//! caller, which owns the log), `log.connections`, `log.subscriptions`. Everything else
//! (listeners, the limits each session holds, `retain.enabled`, `auth`, `http`, log
//! destinations) takes effect at the next start.
//!
//! Files read again: the password files, ACL files and JWT keys named by `auth` and the
//! listeners, and every TLS listener's certificate chain, key, CA and CRL files, on
//! SIGHUP and when one of them changes on disk (its modification time or length, looked
//! at every [`POLL_INTERVAL`] on a blocking thread). Connections already in stay in;
//! new ones get the new data. A file that does not read is refused, naming the file,
//! the line and the reason, and what was in force stays in force.

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tracing::{error, info};

use crate::config::Config;

/// The keys [`Live`] applies, and `log.level`, which the owner of the log applies.
const LIVE_KEYS: [&str; 13] = [
    "limits.max_connections",
    "limits.max_sessions",
    "limits.max_client_id_len",
    "limits.max_queued_bytes_total",
    "limits.connect_timeout",
    "limits.write_timeout",
    "limits.tcp_keepalive",
    "limits.coalesce_writes",
    "retain.max_messages",
    "retain.max_bytes",
    "log.level",
    "log.connections",
    "log.subscriptions",
];

/// The values a running broker can change, read with relaxed loads.
#[derive(Debug)]
pub(crate) struct Live {
    max_connections: AtomicUsize,
    max_sessions: AtomicUsize,
    max_client_id_len: AtomicUsize,
    max_queued_bytes_total: AtomicUsize,
    connect_timeout: AtomicU64,
    write_timeout: AtomicU64,
    tcp_keepalive: AtomicU64,
    coalesce_writes: AtomicBool,
    retain_max_messages: AtomicUsize,
    retain_max_bytes: AtomicUsize,
    log_connections: AtomicBool,
    log_subscriptions: AtomicBool,
}

impl Live {
    pub(crate) fn new(config: &Config) -> Self {
        let live = Self {
            max_connections: AtomicUsize::new(0),
            max_sessions: AtomicUsize::new(0),
            max_client_id_len: AtomicUsize::new(0),
            max_queued_bytes_total: AtomicUsize::new(0),
            connect_timeout: AtomicU64::new(0),
            write_timeout: AtomicU64::new(0),
            tcp_keepalive: AtomicU64::new(0),
            coalesce_writes: AtomicBool::new(false),
            retain_max_messages: AtomicUsize::new(0),
            retain_max_bytes: AtomicUsize::new(0),
            log_connections: AtomicBool::new(false),
            log_subscriptions: AtomicBool::new(false),
        };
        live.apply(config);
        live
    }

    /// Takes the live values of `config`.
    pub(crate) fn apply(&self, config: &Config) {
        let l = &config.limits;
        let r = Ordering::Relaxed;
        self.max_connections.store(l.max_connections, r);
        self.max_sessions.store(l.max_sessions, r);
        self.max_client_id_len.store(l.max_client_id_len, r);
        self.max_queued_bytes_total
            .store(l.max_queued_bytes_total, r);
        self.connect_timeout.store(l.connect_timeout, r);
        self.write_timeout.store(l.write_timeout, r);
        self.tcp_keepalive.store(l.tcp_keepalive, r);
        self.coalesce_writes.store(l.coalesce_writes, r);
        self.retain_max_messages
            .store(config.retain.max_messages, r);
        self.retain_max_bytes.store(config.retain.max_bytes, r);
        self.log_connections.store(config.log.connections, r);
        self.log_subscriptions.store(config.log.subscriptions, r);
    }

    /// `limits.max_connections`.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
    /// `limits.max_sessions`.
    pub(crate) fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }
    /// `limits.max_client_id_len`.
    pub(crate) fn max_client_id_len(&self) -> usize {
        self.max_client_id_len.load(Ordering::Relaxed)
    }
    /// `limits.max_queued_bytes_total`.
    pub(crate) fn max_queued_bytes_total(&self) -> usize {
        self.max_queued_bytes_total.load(Ordering::Relaxed)
    }
    /// `limits.connect_timeout`.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.load(Ordering::Relaxed))
    }
    /// `limits.write_timeout`, in seconds.
    pub(crate) fn write_timeout_secs(&self) -> u64 {
        self.write_timeout.load(Ordering::Relaxed)
    }
    /// `limits.coalesce_writes`.
    pub(crate) fn coalesce_writes(&self) -> bool {
        self.coalesce_writes.load(Ordering::Relaxed)
    }
    /// `limits.tcp_keepalive`, in seconds.
    pub(crate) fn tcp_keepalive(&self) -> u64 {
        self.tcp_keepalive.load(Ordering::Relaxed)
    }
    /// `retain.max_messages`.
    pub(crate) fn retain_max_messages(&self) -> usize {
        self.retain_max_messages.load(Ordering::Relaxed)
    }
    /// `retain.max_bytes`.
    pub(crate) fn retain_max_bytes(&self) -> usize {
        self.retain_max_bytes.load(Ordering::Relaxed)
    }
    /// `log.connections`.
    pub(crate) fn log_connections(&self) -> bool {
        self.log_connections.load(Ordering::Relaxed)
    }
    /// `log.subscriptions`.
    pub(crate) fn log_subscriptions(&self) -> bool {
        self.log_subscriptions.load(Ordering::Relaxed)
    }
}

/// One key whose value changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key, dotted (`limits.max_connections`).
    pub key: String,
    /// Its value in force, as TOML (`"absent"` if it had none).
    pub from: String,
    /// Its value in the file read again.
    pub to: String,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys changed and applied now.
    pub applied: Vec<Change>,
    /// Keys changed that take effect at the next start.
    pub need_restart: Vec<Change>,
    /// The files read again ([`crate::Broker::reload_files`]): password and ACL files,
    /// JWT keys, TLS certificates.
    pub files: Vec<FileReload>,
}

/// The outcome of reading one file-backed setting again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReload {
    /// What it is: `auth.password_file /etc/mqtt/passwd`, `listeners[1] TLS`.
    pub what: String,
    /// `None`: read and in force. `Some`: refused, with why (the file, the line if
    /// any, the reason); what was in force stays.
    pub error: Option<String>,
}

impl fmt::Display for FileReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => write!(f, "{}: reloaded", self.what),
            Some(e) => write!(
                f,
                "{}: not reloaded, the one in force stays: {e}",
                self.what
            ),
        }
    }
}

/// How often the files a reload reads are looked at for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A setting read from files that a running broker can read again.
pub(crate) trait Reloadable: Send + Sync + fmt::Debug {
    /// What it is, for the log (`auth.acl_file /etc/mqtt/acl`).
    fn name(&self) -> String;
    /// The files it reads, to look at for a change.
    fn files(&self) -> Vec<PathBuf>;
    /// Reads its files again and puts them in force; on an error (naming the file,
    /// the line if any and the reason) what was in force stays. Blocking.
    fn reload(&self) -> Result<(), String>;
}

/// `Reloadable` for an authentication file backend of one file, with a `path()` and a
/// `reload()` that keeps what it had on an error.
macro_rules! one_file_backend {
    ($($backend:ty => $what:literal),+ $(,)?) => {$(
        impl Reloadable for $backend {
            fn name(&self) -> String {
                format!(concat!($what, " {}"), self.path().display())
            }
            fn files(&self) -> Vec<PathBuf> {
                vec![self.path().to_owned()]
            }
            fn reload(&self) -> Result<(), String> {
                Self::reload(self).map_err(|e| e.to_string())
            }
        }
    )+};
}

one_file_backend! {
    crate::auth::PasswordFile => "password_file",
    crate::auth::AclFile => "acl_file",
    crate::auth::ScramFile => "scram_file",
    crate::auth::Jwt => "jwt keys",
}

/// A file's modification time and length, `None` if it cannot be read: what tells a
/// change without reading it.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Every file-backed setting of a broker, with its files' stamps when last read.
#[derive(Debug, Default)]
pub(crate) struct Files {
    items: Vec<Arc<dyn Reloadable>>,
    /// One list of stamps per item; held while reloading, so SIGHUP and the poll take
    /// turns.
    stamps: Mutex<Vec<Vec<Stamp>>>,
}

impl Files {
    /// Adds `item`, read just now.
    pub(crate) fn add(&mut self, item: Arc<dyn Reloadable>) {
        let stamps = item.files().iter().map(|p| stamp(p)).collect();
        self.stamps
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stamps);
        self.items.push(item);
    }

    /// Whether there is nothing to reload.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reads every item again (SIGHUP), or only those whose files changed since they
    /// were last read (`only_changed`: the poll). Blocking.
    pub(crate) fn reload(&self, only_changed: bool) -> Vec<FileReload> {
        let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut done = Vec::new();
        for (item, before) in self.items.iter().zip(stamps.iter_mut()) {
            let now: Vec<Stamp> = item.files().iter().map(|p| stamp(p)).collect();
            if only_changed && now == *before {
                continue;
            }
            // Stamped before reading: a write during the read is seen at the next look.
            *before = now;
            done.push(FileReload {
                what: item.name(),
                error: item.reload().err(),
            });
        }
        done
    }
}

/// Logs what reading files again did: each success at info, each refusal at error.
pub(crate) fn log(reloads: &[FileReload]) {
    for r in reloads {
        if r.error.is_some() {
            error!("{r}");
        } else {
            info!("{r}");
        }
    }
}

/// Looks at `files` every [`POLL_INTERVAL`] (on a blocking thread) and reads again
/// those that changed, until `shutdown` says so.
pub(crate) async fn watch(files: Arc<Files>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let files = Arc::clone(&files);
        if let Ok(done) = tokio::task::spawn_blocking(move || files.reload(true)).await {
            log(&done);
        }
    }
}

/// The keys that differ between `old` and `new`, dotted, with both values.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    if let (Ok(old), Ok(new)) = (toml::Value::try_from(old), toml::Value::try_from(new)) {
        flatten("", &old, &mut a);
        flatten("", &new, &mut b);
    }
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            from: a.get(k).cloned().unwrap_or_else(|| "absent".into()),
            to: b.get(k).cloned().unwrap_or_else(|| "absent".into()),
        })
        .collect()
}

/// Tables become dotted keys; anything else (arrays included) is one value.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v.to_string());
        }
    }
}

/// Splits `changes` into what [`Live`] (and the log's owner) applies and the rest.
pub(crate) fn split(changes: Vec<Change>) -> Reloaded {
    let (applied, need_restart) = changes
        .into_iter()
        .partition(|c| LIVE_KEYS.contains(&c.key.as_str()));
    Reloaded {
        applied,
        need_restart,
        files: Vec::new(),
    }
}

/// The configuration in force after applying `new`'s live keys to `old`.
pub(crate) fn merged(old: &Config, new: &Config) -> Config {
    let mut merged = old.clone();
    merged.limits.max_connections = new.limits.max_connections;
    merged.limits.max_sessions = new.limits.max_sessions;
    merged.limits.max_client_id_len = new.limits.max_client_id_len;
    merged.limits.max_queued_bytes_total = new.limits.max_queued_bytes_total;
    merged.limits.connect_timeout = new.limits.connect_timeout;
    merged.limits.write_timeout = new.limits.write_timeout;
    merged.limits.tcp_keepalive = new.limits.tcp_keepalive;
    merged.limits.coalesce_writes = new.limits.coalesce_writes;
    merged.retain.max_messages = new.retain.max_messages;
    merged.retain.max_bytes = new.retain.max_bytes;
    merged.log.level = new.log.level;
    merged.log.connections = new.log.connections;
    merged.log.subscriptions = new.log.subscriptions;
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_apply_and_the_rest_waits() {
        let old = Config::default();
        let mut new = old.clone();
        new.limits.max_connections = 5;
        new.log.level = crate::logging::LogLevel::Debug;
        new.limits.max_inflight = 7;
        new.listeners.clear();
        let r = split(changes(&old, &new));
        let applied: Vec<&str> = r.applied.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(applied, ["limits.max_connections", "log.level"]);
        assert_eq!(r.applied[0].from, "100000");
        assert_eq!(r.applied[0].to, "5");
        let later: Vec<&str> = r.need_restart.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(later, ["limits.max_inflight", "listeners"]);
        let m = merged(&old, &new);
        assert!(split(changes(&m, &new)).applied.is_empty(), "all applied");
        let live = Live::new(&old);
        live.apply(&m);
        assert_eq!(live.max_connections(), 5);
    }

    // Every live key, changed, is applied and in force after the merge: a key added to
    // LIVE_KEYS but not to `merged` (or `Live`) would be logged as applied and not be.
    #[test]
    fn every_live_key_is_merged_and_applied() {
        let old = Config::default();
        let mut new = old.clone();
        let l = &mut new.limits;
        l.max_connections += 1;
        l.max_sessions += 1;
        l.max_client_id_len += 1;
        l.max_queued_bytes_total += 1;
        l.connect_timeout += 1;
        l.write_timeout += 1;
        l.tcp_keepalive += 1;
        l.coalesce_writes = !l.coalesce_writes;
        new.retain.max_messages += 1;
        new.retain.max_bytes += 1;
        new.log.level = crate::logging::LogLevel::Debug;
        new.log.connections = !new.log.connections;
        new.log.subscriptions = !new.log.subscriptions;
        let r = split(changes(&old, &new));
        assert_eq!(r.applied.len(), LIVE_KEYS.len(), "every live key changed");
        assert!(r.need_restart.is_empty());
        let m = merged(&old, &new);
        assert!(split(changes(&m, &new)).applied.is_empty(), "all merged");
        let live = Live::new(&old);
        live.apply(&m);
        assert_eq!(live.coalesce_writes(), new.limits.coalesce_writes);
        assert_eq!(live.write_timeout_secs(), new.limits.write_timeout);
    }

    #[test]
    fn every_live_key_is_a_key() {
        let mut keys = BTreeMap::new();
        flatten(
            "",
            &toml::Value::try_from(Config::default()).unwrap(),
            &mut keys,
        );
        for k in LIVE_KEYS {
            assert!(keys.contains_key(k), "{k}");
        }
    }
}
