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
        let (password_file, acl_file) = (
            config.auth.password_file.clone(),
            config.auth.acl_file.clone(),
        );
        let auth = read_auth_files(move || {
            Auth::from_files(password_file.as_deref(), acl_file.as_deref())
        })
        .await?;
        let store = open_store(&config.persistence).await?;
        Self::start_with(config, Backends { auth, store }).await
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
        let listeners = config.listeners.clone();
        let per_listener = read_auth_files(move || {
            listeners
                .iter()
                .map(|l| {
                    let authenticator = l
                        .password_file
                        .as_deref()
                        .map(auth::PasswordFile::load)
                        .transpose()?
                        .map(|a| Box::new(a) as Box<dyn auth::Authenticator>);
                    let authorizer = l
                        .acl_file
                        .as_deref()
                        .map(auth::AclFile::load)
                        .transpose()?
                        .map(|a| Box::new(a) as Box<dyn auth::Authorizer>);
                    Ok::<auth::ListenerBackends, _>((authenticator, authorizer))
                })
                .collect::<Result<Vec<_>, auth::AuthFileError>>()
        })
        .await?;
        let shared =
            Arc::new(Shared::new(config, backends.into()).with_listener_backends(per_listener));
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
        let mut matches = mqtt_topics::Matches::default();
        let from = origin.map_or(0, remote::RemoteSubscription::key);
        self.shared
            .route(from, message, &mut matches, self.shared.now())
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
async fn open_store(p: &config::PersistenceConfig) -> io::Result<Box<dyn store::Store>> {
    let commit = match p.mode {
        config::PersistenceMode::Memory => return Ok(Box::new(store::MemoryStore)),
        config::PersistenceMode::Sync => disk::Commit::Sync,
        config::PersistenceMode::Batch => {
            disk::Commit::Batch(Duration::from_millis(p.batch_ms.max(1)))
        }
    };
    let path = p.path.clone();
    tokio::task::spawn_blocking(move || disk::DiskStore::open(&path, commit))
        .await
        .map_err(io::Error::other)?
        .map(|s| Box::new(s) as Box<dyn store::Store>)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("persistence.path: {e}")))
}
