//! Listeners: binding sockets and accepting connections, with what applies before a
//! client says anything (TCP options, the count of sockets against `max_connections`).
//! Today TCP; TLS and WebSocket listeners hand their streams to `connection::serve` the
//! same way (anything implementing `connection::Duplex`).

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinSet};
use tracing::{debug, warn};

use crate::{connection, shared::Shared};

/// Binds with `SO_REUSEADDR` and, for `[::]`, IPv6 only, so `0.0.0.0:1883` and
/// `[::]:1883` can both be bound, as the default configuration does.
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
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

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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
