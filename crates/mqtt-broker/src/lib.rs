//! The mqtt-broker server as a library: start a [`Broker`] from a [`Config`], learn its
//! addresses, shut it down.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use mqtt_broker::{Broker, Config};
//!
//! let mut config = Config::default();
//! config.listeners = vec![mqtt_broker::config::Listener::new("127.0.0.1:0".parse().unwrap())];
//! let broker = Broker::start(config).await?;
//! println!("listening on {:?}", broker.local_addrs());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Architecture
//! One tokio task per connection drives that client's `mqtt_session::ServerSession`
//! (the protocol state machine) and does its own routing: a PUBLISH is matched against a
//! sharded subscription index (`mqtt_topics::ShardedIndex`, read locks per shard) and
//! queued on each subscriber's session, whose bounded queue is the outbox; the
//! subscriber's task is woken to write it. See `docs/architecture.md`.
//!
//! # Where each concern lives
//! - `listener/`: binding and accepting; TCP options; sockets before CONNECT; the PROXY
//!   protocol (`proxy`), TLS (`tls`, `subject`) and WebSocket (`ws`).
//! - `connection/`: one client connection, a file per concern: `handshake` (CONNECT),
//!   `active_loop`, `publish`, `subscribe`, `hibernate` (idle connections), `close`.
//! - `parking`: idle TCP connections held without a task.
//! - `timers`: every deadline no active connection waits on, in one map served by one
//!   task: idle connections' keep-alive, offline sessions' will delay and expiry,
//!   retained messages' expiry.
//! - `sessions`: the registry and what a session shares with the tasks routing to it.
//! - `router`: matching, fan-out, the overflow policy and the global memory budget.
//! - `retained`: retained messages and their streaming to new subscriptions.
//! - `shared`: the state all of the above share, statistics, time and wake-ups.
//! - [`auth`]: the authentication and authorization seams, and Mosquitto's password and
//!   ACL files behind them; [`config`]; `sys` (`$SYS`).
//! - [`store`]: the seam a durable store of retained messages and sessions plugs into.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod config;
pub mod disk;
pub mod http;
pub mod logging;
pub mod mosquitto_conf;
pub mod reload;
pub mod remote;
pub mod store;

mod connection;
mod listener;
mod owned;
#[cfg(unix)]
mod parking;
mod retained;
mod router;
mod sessions;
mod shared;
mod sys;
mod timers;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::shared::Shared;
pub use crate::{auth::Auth, config::Config};

/// The backends a broker runs with: who may connect and what they may do ([`Auth`]),
/// and where what outlives the process is kept ([`store::Store`]). An [`Auth`] alone
/// converts into one with [`store::MemoryStore`].
#[derive(Debug)]
pub struct Backends {
    /// Authentication and authorization.
    pub auth: Auth,
    /// Retained messages and persistent sessions, read back at start.
    pub store: Box<dyn store::Store>,
}

impl Default for Backends {
    fn default() -> Self {
        Auth::default().into()
    }
}

impl From<Auth> for Backends {
    fn from(auth: Auth) -> Self {
        Self {
            auth,
            store: Box::new(store::MemoryStore),
        }
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    local_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    /// The configuration in force: the one started with, and the live keys of each
    /// reload since (boxed: a `Broker` is a small handle).
    effective: Box<std::sync::Mutex<Config>>,
    /// The password and ACL files, JWT keys and TLS files a reload reads again.
    files: Arc<reload::Files>,
}

impl Broker {
    /// Binds every listener of `config` and starts accepting connections, with the
    /// password and ACL files `config.auth` and the listeners name ([`Auth::from_files`];
    /// none: anyone may connect and do anything).
    ///
    /// # Errors
    /// If a listener cannot be bound (address in use, permission denied), or its TLS
    /// files cannot be read or do not fit together (the error names the listener, the
    /// key and the file). An IPv6 listener that fails because IPv6 is unavailable is
    /// skipped with a warning, as long as another listener is bound.
    /// If a password or ACL file cannot be read or has a malformed line
    /// ([`io::ErrorKind::InvalidData`], naming the file, line and reason).
    /// `allow_anonymous = false` on a listener without a password file is refused
    /// ([`io::ErrorKind::InvalidInput`]): nothing could check the passwords.
    pub async fn start(config: Config) -> io::Result<Self> {
        if let Some(key) = config.anonymous_without_passwords() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key}: {}", config::NO_PASSWORD_BACKEND),
            ));
        }
        let (password_file, acl_file, jwt) = (
            config.auth.password_file.clone(),
            config.auth.acl_file.clone(),
            config.auth.jwt.clone(),
        );
        let (auth, files, jwt) = read_auth_files(move || {
            let mut files = reload::Files::default();
            let jwt = match jwt {
                Some(jwt) => {
                    let jwt = Arc::new(auth::Jwt::load(&jwt)?);
                    files.add(jwt.clone());
                    Some(jwt)
                }
                None => None,
            };
            let authenticator: Box<dyn auth::Authenticator> = match password_file {
                Some(path) => {
                    let file = Arc::new(auth::PasswordFile::load(path)?);
                    files.add(file.clone());
                    Box::new(file)
                }
                None => Box::new(auth::Anonymous),
            };
            let authorizer: Box<dyn auth::Authorizer> = match acl_file {
                Some(path) => {
                    let file = Arc::new(auth::AclFile::load(path)?);
                    files.add(file.clone());
                    Box::new(file)
                }
                None => Box::new(auth::AllowAll),
            };
            Ok((
                Auth {
                    authenticator,
                    authorizer,
                },
                files,
                jwt,
            ))
        })
        .await?;
        let store = open_store(&config.persistence, &config.limits).await?;
        Self::start_inner(config, Backends { auth, store }, files, jwt).await
    }

    /// As [`Broker::start`], with backends of the caller's: an [`Auth`] (authentication
    /// and authorization), or [`Backends`] with a [`store::Store`] as well, whose
    /// retained messages and sessions are read back before the listeners open. With
    /// `allow_anonymous = false`, a CONNECT without a user name is refused before the
    /// authenticator is asked. `config.auth`'s files are not read (they are what
    /// [`Broker::start`] makes its [`Auth`] of); a listener's own `password_file` and
    /// `acl_file` replace these backends on that listener.
    ///
    /// # Errors
    /// As [`Broker::start`], and if the store cannot be read ([`store::Store::load`]).
    pub async fn start_with(config: Config, backends: impl Into<Backends>) -> io::Result<Self> {
        Self::start_inner(config, backends.into(), reload::Files::default(), None).await
    }

    /// As [`Broker::start_with`]; `files` are the broker's backends' files a reload
    /// reads again, to which the listeners' own are added, and `jwt` is `auth.jwt`'s
    /// verifier.
    async fn start_inner(
        config: Config,
        backends: Backends,
        files: reload::Files,
        jwt: Option<Arc<auth::Jwt>>,
    ) -> io::Result<Self> {
        let listeners = config.listeners.clone();
        let (per_listener, jwts, mut files) = read_auth_files(move || {
            let mut files = files;
            // A listener's own `jwt`, else `auth`'s unless it has a password file.
            let jwts = listeners
                .iter()
                .map(|l| match &l.jwt {
                    Some(config) => {
                        let own = Arc::new(auth::Jwt::load(config)?);
                        files.add(own.clone());
                        Ok(Some(own))
                    }
                    None if l.password_file.is_some() => Ok(None),
                    None => Ok(jwt.clone()),
                })
                .collect::<Result<Vec<_>, auth::AuthFileError>>()?;
            let per_listener = listeners
                .iter()
                .map(|l| {
                    let authenticator = match &l.password_file {
                        Some(path) => {
                            let file = Arc::new(auth::PasswordFile::load(path)?);
                            files.add(file.clone());
                            Some(Box::new(file) as Box<dyn auth::Authenticator>)
                        }
                        None => None,
                    };
                    let authorizer = match &l.acl_file {
                        Some(path) => {
                            let file = Arc::new(auth::AclFile::load(path)?);
                            files.add(file.clone());
                            Some(Box::new(file) as Box<dyn auth::Authorizer>)
                        }
                        None => None,
                    };
                    Ok::<auth::ListenerBackends, _>((authenticator, authorizer))
                })
                .collect::<Result<Vec<_>, auth::AuthFileError>>()?;
            Ok((per_listener, jwts, files))
        })
        .await?;
        let scram = read_scram_files(&config).await?;
        // Each SCRAM file once, however many listeners share it.
        let mut seen: Vec<&Arc<auth::ScramFile>> = Vec::new();
        for file in scram.iter().flatten() {
            if !seen.iter().any(|f| Arc::ptr_eq(f, file)) {
                files.add(file.clone());
                seen.push(file);
            }
        }
        let shared = Arc::new(
            Shared::new(config, backends)
                .with_listener_backends(per_listener)
                .with_jwt(jwts)
                .with_scram(scram),
        );
        // Reading the store is file I/O: on a blocking thread.
        let restoring = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || restoring.restore())
            .await
            .map_err(io::Error::other)?
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the store ({:?}) could not be read: {e}", shared.store),
                )
            })?;
        // Certificates and keys are read before anything is served.
        let endpoints = shared
            .config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| listener::Endpoint::new(i, l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for endpoint in endpoints.iter().filter(|e| e.is_tls()) {
            files.add(endpoint.clone());
        }
        let files = Arc::new(files);
        let mut tasks = JoinSet::new();
        let mut local_addrs = Vec::new();
        let mut errors = Vec::new();
        for (listener, endpoint) in shared.config.listeners.iter().zip(endpoints) {
            match listener::bind(listener.bind).await {
                Ok(l) => {
                    let addr = l.local_addr()?;
                    info!(%addr, transport = %endpoint.kind(), "listening");
                    if !addr.ip().is_loopback()
                        && shared.config.auth.allow_anonymous
                        && !listener.certificate_is_username()
                    {
                        warn!(
                            %addr,
                            "this listener is reachable from the network and lets anonymous \
                             clients in: set auth.allow_anonymous = false with a password \
                             backend, authenticate clients by certificate \
                             (use_identity_as_username), or bind to a loopback address"
                        );
                    }
                    local_addrs.push(addr);
                    tasks.spawn(listener::accept_loop(Arc::clone(&shared), l, endpoint));
                }
                Err(e) if listener.bind.is_ipv6() => {
                    warn!(addr = %listener.bind, error = %e, "IPv6 listener not started");
                    errors.push(e);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", listener.bind))),
            }
        }
        if local_addrs.is_empty() {
            return Err(errors
                .pop()
                .unwrap_or_else(|| io::Error::other("no listener configured")));
        }
        let http_addr = match shared.config.http.bind {
            Some(bind) => {
                let l = http::bind(bind)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("http.bind {bind}: {e}")))?;
                let addr = l.local_addr()?;
                info!(%addr, "HTTP listening (metrics, admin API, dashboard)");
                tasks.spawn(http::serve(Arc::clone(&shared), l));
                Some(addr)
            }
            None => None,
        };
        tasks.spawn(timers::run(Arc::clone(&shared)));
        if !files.is_empty() {
            tasks.spawn(reload::watch(
                Arc::clone(&files),
                shared.shutdown.subscribe(),
            ));
        }
        if shared.config.sys.interval > 0 {
            tasks.spawn(sys::run(
                Arc::clone(&shared),
                Duration::from_secs(shared.config.sys.interval),
            ));
        }
        if let Ok(mut addrs) = shared.local_addrs.lock() {
            addrs.clone_from(&local_addrs);
        }
        let effective = Box::new(std::sync::Mutex::new(shared.config.clone()));
        Ok(Self {
            shared,
            tasks,
            local_addrs,
            http_addr,
            effective,
            files,
        })
    }

    /// Subscribes a subscriber that is not a local session (a bridge link, a cluster
    /// peer) to `filter`, with at most `qos`: every message routed to a matching topic
    /// from then on is handed to `forward` (see [`remote`]).
    ///
    /// # Errors
    /// If `filter` is not a valid topic filter, or is a shared subscription.
    pub fn subscribe_remote(
        &self,
        filter: &str,
        qos: mqtt_codec::QoS,
        forward: Arc<dyn remote::Forward>,
    ) -> Result<remote::RemoteSubscription, remote::InvalidFilter> {
        self.shared.subscribe_remote(filter, qos, forward)
    }

    /// Ends a subscription made with [`Broker::subscribe_remote`].
    pub fn unsubscribe_remote(&self, subscription: remote::RemoteSubscription) {
        self.shared.unsubscribe_remote(subscription);
    }

    /// Publishes a message that came from elsewhere (a bridge, a cluster peer) to this
    /// broker's subscribers, retaining it if it says so; `origin`, the subscription of
    /// the peer it came from, is not sent it back. Returns how many subscribers (local
    /// sessions, shared groups and remote subscribers) it went to.
    pub fn publish(
        &self,
        message: mqtt_session::Message,
        origin: Option<&remote::RemoteSubscription>,
    ) -> usize {
        let mut routes = router::Routes::default();
        let from = origin.map_or(0, remote::RemoteSubscription::key);
        self.shared
            .route(from, message, &mut routes, self.shared.now())
    }

    /// Applies what can change in a running broker from `new` (a configuration read
    /// again, on SIGHUP): the live limits (see [`reload`]) at once; the rest is
    /// reported as waiting for a restart. `log.level` is reported applied: the caller,
    /// which owns the log, applies it.
    pub fn reload(&self, new: &Config) -> reload::Reloaded {
        let mut effective = self
            .effective
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reloaded = reload::split(reload::changes(&effective, new));
        *effective = reload::merged(&effective, new);
        self.shared.live.apply(&effective);
        reloaded
    }

    /// Reads again every password and ACL file, JWT key file and TLS listener's files
    /// the broker started with (on SIGHUP; a change on disk is found by itself within
    /// [`reload::POLL_INTERVAL`]). Each file that reads is in force for the next
    /// CONNECT and the next TLS handshake; a file that does not is refused, and the one
    /// in force stays. No connection is dropped. The outcome is also logged.
    ///
    /// # Cancel safety
    /// Cancel safe: the files are read on a blocking thread, which finishes the reload
    /// if the future is dropped.
    pub async fn reload_files(&self) -> Vec<reload::FileReload> {
        let files = Arc::clone(&self.files);
        let done = tokio::task::spawn_blocking(move || files.reload(false))
            .await
            .unwrap_or_default();
        reload::log(&done);
        done
    }

    /// The HTTP listener's address, if `http.bind` is set (useful with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, sends DISCONNECT 0x8B (Server shutting down) to 5.0 clients,
    /// flushes, and closes every connection.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future part-way leaves connections closing on
    /// their own.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        // Connections wait on their session's signal, not on the shutdown watch.
        self.shared.stop_connections();
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        // The accept loops end once their connections have; connections revived from
        // parking have tasks of their own, taken until none is left.
        let mut tasks = std::mem::take(&mut self.tasks);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() {
                    #[cfg(unix)]
                    if let Some(parking) = self.shared.parking() {
                        tasks = parking.take_tasks();
                        if !tasks.is_empty() {
                            continue;
                        }
                    }
                    break;
                },
                () = &mut deadline => {
                    warn!("connections still open after 5 s; closing them");
                    tasks.abort_all();
                    break;
                }
            }
        }
        // Nothing parks or revives any more, and the parking thread ends.
        #[cfg(unix)]
        if let Some(parking) = self.shared.parking() {
            parking.close();
        }
    }
}

impl Drop for Broker {
    /// A broker dropped without [`Broker::shutdown`] closes its connections at once: the
    /// accept loops' tasks go with it, and so do the tasks of connections revived from
    /// parking (which hold the shared state, so nothing else would end them).
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(parking) = self.shared.parking() {
            parking.close();
        }
    }
}

/// Reads password and ACL files on a blocking thread: a malformed one is
/// [`io::ErrorKind::InvalidData`], naming the file, the line and the reason.
/// Reads the SCRAM credentials of each listener (its `scram_file`, else
/// `auth.scram_file`; one file named twice is read once), on a blocking thread.
async fn read_scram_files(config: &Config) -> io::Result<Vec<Option<Arc<auth::ScramFile>>>> {
    let global = config.auth.scram_file.clone();
    let paths: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.scram_file.clone().or_else(|| global.clone()))
        .collect();
    read_auth_files(move || {
        let mut read: Vec<(std::path::PathBuf, Arc<auth::ScramFile>)> = Vec::new();
        paths
            .into_iter()
            .map(|path| {
                let Some(path) = path else { return Ok(None) };
                if let Some((_, file)) = read.iter().find(|(p, _)| *p == path) {
                    return Ok(Some(Arc::clone(file)));
                }
                let file = Arc::new(auth::ScramFile::load(&path)?);
                read.push((path, Arc::clone(&file)));
                Ok(Some(file))
            })
            .collect()
    })
    .await
}

async fn read_auth_files<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, auth::AuthFileError> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(io::Error::other)?
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The store `[persistence]` asks for, opened on a blocking thread: [`store::MemoryStore`]
/// for `mode = "memory"`, a [`disk::DiskStore`] otherwise.
async fn open_store(
    p: &config::PersistenceConfig,
    l: &config::LimitsConfig,
) -> io::Result<Box<dyn store::Store>> {
    let commit = match p.mode {
        config::PersistenceMode::Memory => return Ok(Box::new(store::MemoryStore)),
        config::PersistenceMode::Sync => disk::Commit::Sync,
        config::PersistenceMode::Batch => {
            disk::Commit::Batch(Duration::from_millis(p.batch_ms.max(1)))
        }
    };
    let path = p.path.clone();
    // What a session's queue holds in memory (its window) is read at start; the rest
    // of a backlog stays on disk until the session has room for it.
    let window = (
        usize::from(l.max_inflight),
        l.max_queued_messages,
        l.max_queued_bytes,
    );
    tokio::task::spawn_blocking(move || {
        disk::DiskStore::open(&path, commit).map(|s| s.with_window(window.0, window.1, window.2))
    })
    .await
    .map_err(io::Error::other)?
    .map(|s| Box::new(s) as Box<dyn store::Store>)
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("persistence.path: {e}")))
}
