//! The mqtt-broker server as a library: start a [`Broker`] from a [`Config`], learn its
//! addresses, shut it down.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use mqtt_broker::{Broker, Config};
//!
//! let mut config = Config::default();
//! config.listeners = vec![mqtt_broker::config::Listener { bind: "127.0.0.1:0".parse().unwrap() }];
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

pub mod auth;
pub mod config;

mod alarms;
mod broker;
mod connection;
#[cfg(unix)]
mod parking;
mod sys;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinSet};
use tracing::{debug, info, warn};

use crate::broker::Shared;
pub use crate::{auth::Auth, config::Config};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    local_addrs: Vec<SocketAddr>,
}

impl Broker {
    /// Binds every listener of `config` and starts accepting connections.
    ///
    /// # Errors
    /// If a listener cannot be bound (address in use, permission denied). A listener on
    /// `[::]` that fails because IPv6 is unavailable is skipped with a warning, as long
    /// as another listener is bound.
    /// `config.auth.allow_anonymous = false` is refused: this build has no password
    /// backend to check passwords with (see [`auth`]); [`Broker::start_with`] takes one.
    pub async fn start(config: Config) -> io::Result<Self> {
        if !config.auth.allow_anonymous {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                config::NO_PASSWORD_BACKEND,
            ));
        }
        Self::start_with(config, Auth::default()).await
    }

    /// As [`Broker::start`], with authentication and authorization backends of the
    /// caller's. With `config.auth.allow_anonymous = false`, a CONNECT without a user
    /// name is refused before `auth` is asked.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub async fn start_with(config: Config, auth: Auth) -> io::Result<Self> {
        let shared = Arc::new(Shared::new(config, auth));
        let mut tasks = JoinSet::new();
        let mut local_addrs = Vec::new();
        let mut errors = Vec::new();
        for listener in &shared.config.listeners {
            match bind(listener.bind).await {
                Ok(l) => {
                    let addr = l.local_addr()?;
                    info!(%addr, "listening");
                    local_addrs.push(addr);
                    tasks.spawn(accept_loop(Arc::clone(&shared), l));
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
        tasks.spawn(housekeeping(Arc::clone(&shared)));
        tasks.spawn(alarms::run(Arc::clone(&shared)));
        if shared.config.sys.interval > 0 {
            tasks.spawn(sys::run(
                Arc::clone(&shared),
                Duration::from_secs(shared.config.sys.interval),
            ));
        }
        if let Ok(mut addrs) = shared.local_addrs.lock() {
            addrs.clone_from(&local_addrs);
        }
        Ok(Self {
            shared,
            tasks,
            local_addrs,
        })
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

/// Periodic chores that belong to no connection: expiring retained messages.
async fn housekeeping(shared: Arc<Shared>) {
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.purge_expired_retained(),
            () = &mut shutdown => return,
        }
    }
}

/// Binds with `SO_REUSEADDR` and, for `[::]`, IPv6 only, so `0.0.0.0:1883` and
/// `[::]:1883` can both be bound, as the default configuration does.
async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // Without this, `[::]` also claims the IPv4 port and `0.0.0.0` cannot be bound.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Sockets accepted beyond `max_connections` (counting those that have not sent CONNECT
/// yet), so that a client arriving at a full broker reads CONNACK Server busy rather than
/// a closed socket. Past these, a new socket is closed at once.
const BUSY_SLACK: usize = 16;

/// Turns on TCP keep-alive probes after `idle_secs` of silence (0: off): they find
/// half-open connections whose client set no MQTT keep-alive.
fn set_tcp_keepalive(stream: &tokio::net::TcpStream, idle_secs: u64) {
    if idle_secs == 0 {
        return;
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(idle_secs))
        .with_interval(Duration::from_secs(30));
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "TCP keep-alive not set");
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Sockets that have not sent CONNECT yet count against
                    // max_connections too: past it (and a few more, kept to be told
                    // CONNACK Server busy), a new socket is closed at once.
                    let open = shared.stats.connected.load(Ordering::Relaxed)
                        + shared.stats.handshaking.load(Ordering::Relaxed);
                    if open >= shared.config.limits.max_connections + BUSY_SLACK {
                        debug!(%peer, "max_connections reached: closed before CONNECT");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    set_tcp_keepalive(&stream, shared.config.limits.tcp_keepalive);
                    connections.spawn(connection::serve(Arc::clone(&shared), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
