//! Listeners: binding sockets and accepting connections, with what comes before a
//! client's first MQTT byte: TCP options, the count of sockets against
//! `max_connections` (the broker's and the listener's), the PROXY protocol header
//! (`proxy`), the TLS handshake (`tls`) and the WebSocket upgrade (`ws`), all within
//! `limits.connect_timeout` of the accept. Each stream then goes to `connection::serve`
//! (anything implementing `connection::Duplex`): a TCP stream as it is, the others
//! behind `connection::Locked`.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout_at,
};
use tracing::{debug, warn};

use crate::{
    auth::{Transport, TransportKind},
    config::{Listener, Protocol},
    connection::{self, Handshaking, Locked, Origin},
    shared::Shared,
};

mod proxy;
mod subject;
mod tls;
mod ws;

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

// TLS connections hibernate in their task when idle: rustls' state cannot leave it.
impl connection::Unsplit for TlsStream {}
impl connection::Unsplit for ws::WsStream<TlsStream> {}

/// A WebSocket connection on TCP parks as its bare socket when its frames are at rest
/// (nothing part-read or part-written, nothing owed): its frame state is then only
/// defaults, rebuilt when it is revived (`connection::Resumable`).
impl connection::Unsplit for ws::WsStream<TcpStream> {
    fn park(conn: connection::Conn<Locked<Self>>) -> connection::Park<Locked<Self>> {
        #[cfg(unix)]
        {
            use connection::{Conn, Park};
            let Conn {
                shared,
                handle,
                generation,
                version,
                stream,
                decoder,
                slot,
            } = conn;
            let ws = stream.into_inner();
            let limit = ws.limit();
            let rewrap = |conn: Conn<TcpStream>| Conn {
                shared: conn.shared,
                handle: conn.handle,
                generation: conn.generation,
                version: conn.version,
                stream: Locked::new(Self::resumed(conn.stream, limit)),
                decoder: conn.decoder,
                slot: conn.slot,
            };
            if !ws.at_rest() {
                return Park::Hibernate(Conn {
                    shared,
                    handle,
                    generation,
                    version,
                    stream: Locked::new(ws),
                    decoder,
                    slot,
                });
            }
            let bare = Conn {
                shared,
                handle,
                generation,
                version,
                stream: ws.into_inner(),
                decoder,
                slot,
            };
            match connection::park_tcp(bare, true) {
                Park::Done => Park::Done,
                Park::Busy(conn) => Park::Busy(rewrap(conn)),
                Park::Hibernate(conn) => Park::Hibernate(rewrap(conn)),
            }
        }
        #[cfg(not(unix))]
        connection::Park::Hibernate(conn)
    }
}

/// What a parked WebSocket connection is revived as.
#[cfg(unix)]
pub(crate) type ParkedWebSocket = Locked<ws::WsStream<TcpStream>>;

#[cfg(unix)]
impl connection::Resumable for ParkedWebSocket {
    fn resumed(stream: TcpStream, shared: &Shared) -> Self {
        let limit = ws::frame_limit(shared.config.limits.max_packet_size);
        Self::new(ws::WsStream::resumed(stream, limit))
    }
}

/// A listener's settings as its accept loop uses them, with its TLS configuration
/// loaded.
pub(crate) struct Endpoint {
    /// Its position in `Config::listeners`.
    index: usize,
    kind: TransportKind,
    tls: Option<tls::Tls>,
    websocket_path: Box<str>,
    proxy_protocol: bool,
    certificate_is_username: bool,
    max_connections: Option<usize>,
    /// Sockets open on it, counted only when it has a `max_connections`.
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("index", &self.index)
            .field("kind", &self.kind)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Reads the listener's certificates and keys (at start, before anything is
    /// served); the error names the listener, the key and the file.
    pub(crate) fn new(index: usize, listener: &Listener) -> Result<Self, String> {
        let tls = if listener.is_tls() {
            Some(
                tls::Tls::load(listener)
                    .map_err(|e| format!("listeners[{index}] ({}): {e}", listener.bind))?,
            )
        } else {
            None
        };
        let kind = match (listener.protocol, listener.is_tls()) {
            (Protocol::Mqtt, false) => TransportKind::Tcp,
            (Protocol::Mqtt, true) => TransportKind::Tls,
            (Protocol::WebSockets, false) => TransportKind::WebSocket,
            (Protocol::WebSockets, true) => TransportKind::WebSocketTls,
        };
        Ok(Self {
            index,
            kind,
            tls,
            websocket_path: listener.websocket_path().into(),
            proxy_protocol: listener.proxy_protocol,
            certificate_is_username: listener.certificate_is_username(),
            max_connections: listener.max_connections,
            open: Arc::default(),
        })
    }

    /// What carries MQTT on it.
    pub(crate) fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Whether it has TLS files a reload reads again.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A place for one more socket: `Err` past its `max_connections`.
    fn take_slot(&self) -> Result<Option<ListenerSlot>, ()> {
        let Some(max) = self.max_connections else {
            return Ok(None);
        };
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(());
        }
        Ok(Some(ListenerSlot(Arc::clone(&self.open))))
    }
}

/// A TLS listener's certificate chain, key, CA and CRL files, read again on a reload.
impl crate::reload::Reloadable for Endpoint {
    fn name(&self) -> String {
        format!("listeners[{}] ({}) TLS files", self.index, self.kind)
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        self.tls.as_ref().map(tls::Tls::files).unwrap_or_default()
    }

    fn reload(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }
}

/// A socket's place on a listener with a `max_connections` of its own, given back when
/// the connection ends (it goes with the connection, parked or not).
#[derive(Debug)]
pub(crate) struct ListenerSlot(Arc<AtomicUsize>);

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

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
fn set_tcp_keepalive(stream: &TcpStream, idle_secs: u64) {
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

pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
) {
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
                    if open >= shared.live.max_connections() + BUSY_SLACK {
                        debug!(%peer, "max_connections reached: closed before CONNECT");
                        continue;
                    }
                    // The listener's own limit closes at once, as Mosquitto's does.
                    let Ok(slot) = endpoint.take_slot() else {
                        debug!(%peer, listener = endpoint.index, "the listener's max_connections reached: closed");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    set_tcp_keepalive(&stream, shared.live.tcp_keepalive());
                    let origin = Origin {
                        peer,
                        transport: Transport::new(endpoint.index, endpoint.kind),
                        identity: None,
                        certificate_is_username: endpoint.certificate_is_username,
                        deadline: tokio::time::Instant::now() + shared.live.connect_timeout(),
                        handshaking: Handshaking::new(&shared),
                        slot,
                    };
                    let shared = Arc::clone(&shared);
                    match endpoint.kind {
                        TransportKind::Tcp if !endpoint.proxy_protocol => {
                            connections.spawn(connection::serve(shared, stream, origin));
                        }
                        TransportKind::Tcp => {
                            connections.spawn(serve_proxied(shared, Arc::clone(&endpoint), stream, origin));
                        }
                        TransportKind::Tls => {
                            connections.spawn(serve_tls(shared, Arc::clone(&endpoint), stream, origin));
                        }
                        TransportKind::WebSocket => {
                            connections.spawn(serve_ws(shared, Arc::clone(&endpoint), stream, origin));
                        }
                        TransportKind::WebSocketTls => {
                            connections.spawn(serve_wss(shared, Arc::clone(&endpoint), stream, origin));
                        }
                    }
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

// Each transport has a function of its own, so that a connection's task is only as
// large as its own stream needs. What comes before MQTT runs boxed: the task keeps a
// pointer to it while it runs, and nothing after.

/// TCP behind a load balancer: the PROXY header, then MQTT.
async fn serve_proxied(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    mut stream: TcpStream,
    mut origin: Origin,
) {
    if Box::pin(proxied(&endpoint, &mut stream, &mut origin)).await {
        connection::serve(shared, stream, origin).await;
    }
}

async fn serve_tls(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    stream: TcpStream,
    origin: Origin,
) {
    if let Some((stream, origin)) = Box::pin(tls_prelude(&endpoint, stream, origin)).await {
        connection::serve(shared, Locked::new(stream), origin).await;
    }
}

async fn serve_ws(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    mut stream: TcpStream,
    mut origin: Origin,
) {
    let limit = ws::frame_limit(shared.config.limits.max_packet_size);
    let upgraded = Box::pin(async {
        if !proxied(&endpoint, &mut stream, &mut origin).await {
            return None;
        }
        upgrade(&endpoint, stream, &origin, limit).await
    })
    .await;
    if let Some(stream) = upgraded {
        connection::serve(shared, Locked::new(stream), origin).await;
    }
}

async fn serve_wss(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    stream: TcpStream,
    origin: Origin,
) {
    let limit = ws::frame_limit(shared.config.limits.max_packet_size);
    let upgraded = Box::pin(async {
        let (stream, origin) = tls_prelude(&endpoint, stream, origin).await?;
        let stream = upgrade(&endpoint, stream, &origin, limit).await?;
        Some((stream, origin))
    })
    .await;
    if let Some((stream, origin)) = upgraded {
        connection::serve(shared, Locked::new(stream), origin).await;
    }
}

/// Reads the PROXY protocol header if the listener takes one: the client's address
/// replaces the load balancer's. False if the connection ends here.
async fn proxied(endpoint: &Endpoint, stream: &mut TcpStream, origin: &mut Origin) -> bool {
    if !endpoint.proxy_protocol {
        return true;
    }
    let from = origin.peer;
    match timeout_at(origin.deadline, proxy::read_header(stream)).await {
        Ok(Ok(Some(client))) => {
            origin.peer = client;
            true
        }
        // LOCAL (the balancer's own health check) or an unknown family: the socket's
        // address stands.
        Ok(Ok(None)) => true,
        Ok(Err(e)) => {
            debug!(peer = %from, error = %e, "closed: no valid PROXY protocol header");
            false
        }
        Err(_) => {
            debug!(peer = %from, "closed: no PROXY protocol header within the connect timeout");
            false
        }
    }
}

/// The PROXY header if any, then the TLS handshake; the client certificate's name goes
/// into `origin`.
async fn tls_prelude(
    endpoint: &Endpoint,
    mut stream: TcpStream,
    mut origin: Origin,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Origin)> {
    if !proxied(endpoint, &mut stream, &mut origin).await {
        return None;
    }
    let tls = endpoint.tls.as_ref()?;
    match timeout_at(origin.deadline, tls.accept(stream)).await {
        Ok(Ok((stream, client))) => {
            origin.transport.client_certificate = client.verified;
            origin.identity = client.name;
            Some((stream, origin))
        }
        Ok(Err(e)) => {
            debug!(peer = %origin.peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(peer = %origin.peer, "TLS handshake not done within the connect timeout");
            None
        }
    }
}

/// The WebSocket upgrade, within the connect timeout.
async fn upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    endpoint: &Endpoint,
    stream: S,
    origin: &Origin,
    limit: u64,
) -> Option<ws::WsStream<S>> {
    match timeout_at(
        origin.deadline,
        ws::accept(stream, &endpoint.websocket_path, limit),
    )
    .await
    {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(peer = %origin.peer, error = %e, "WebSocket upgrade refused");
            None
        }
        Err(_) => {
            debug!(peer = %origin.peer, "WebSocket upgrade not done within the connect timeout");
            None
        }
    }
}
