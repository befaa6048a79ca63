//! One client connection: socket ⇄ codec ⇄ the client's `ServerSession`.
//!
//! The task reads CONNECT, attaches the session (taking it over from an older
//! connection if there is one), then loops: flush what the session has to send, act on
//! its events, and wait for bytes, a wake-up from a publisher, the session's timer or
//! shutdown. Writes are batched: everything the session yields goes out in one write.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::Poll,
};

use bytes::BytesMut;
use mqtt_codec::{
    ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Disconnect, ErrorKind, Packet,
    ProtocolVersion, QoS, ReasonCode, Subscribe, Unsubscribe,
};
use mqtt_session::{DropReason, Event, Message};
use mqtt_topics::{Filter, Matches};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::{Instant, sleep_until, timeout},
};
use tracing::{debug, info, warn};

use crate::broker::{SessionHandle, Shared, Sub};

/// Read buffer size while idle; it grows only for large packets.
const READ_CHUNK: usize = 512;

/// What a hibernating connection reads before it has a read buffer.
const FIRST_READ: usize = 16;

/// After this long without traffic a connection gives back the memory of its buffers
/// and its session's queues.
const IDLE_SHRINK: std::time::Duration = std::time::Duration::from_secs(5);

/// Stop taking packets from the session once this much is waiting to be written: the
/// rest stays in the session's bounded queue until the socket drains.
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The peer closed the socket or the network failed.
    Lost,
    /// The session asked to close (DISCONNECT received, protocol error, keep-alive).
    Closed,
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

/// A connection's byte stream, whose read and write sides each stage borrows at once.
///
/// A TCP stream splits into borrowed halves for free (`TcpStream::split`); its owned
/// halves (`into_split`) would cost every connection a 56-byte shared allocation, and
/// `tokio::io::split`, for streams that cannot split (TLS), a lock on every read and
/// write as well.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Unpin {
    /// The read side.
    type Read<'a>: AsyncRead + Unpin
    where
        Self: 'a;
    /// The write side.
    type Write<'a>: AsyncWrite + Unpin
    where
        Self: 'a;
    /// Both sides, usable together.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);

    /// Parks an idle connection without a task (see `parking`). Streams that cannot
    /// park hibernate in their task.
    fn park(conn: Conn<Self>) -> Park<Self>
    where
        Self: Sized,
    {
        Park::Hibernate(conn)
    }
}

impl Duplex for tokio::net::TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }

    #[cfg(unix)]
    fn park(conn: Conn<Self>) -> Park<Self> {
        park_tcp(conn)
    }
}

/// What became of a connection asked to park.
pub(crate) enum Park<S> {
    /// Parked, or lost on the way: its task has nothing left to do.
    Done,
    /// The session had something to send after all: back to work.
    Busy(Conn<S>),
    /// It cannot park (taken over, shutting down, this stream, no parking): it
    /// hibernates in its task, which finds out why.
    Hibernate(Conn<S>),
}

/// What a connection keeps for its whole life once CONNECT is accepted. The task holds
/// it as one value, and the hibernate stage takes it by one reference: an `async fn`
/// stores each of its arguments twice, for as long as it runs.
pub(crate) struct Conn<S> {
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    stream: S,
    decoder: Decoder,
}

/// Serves one accepted socket until it closes.
///
/// Every stage but hibernation runs boxed and owns what it needs (read buffer, held
/// deliveries), so the task itself stays small: a future is as large as its largest
/// await point plus what lives across all of them, and the idle one is what most
/// connections sit in. The arguments go straight into the boxed CONNECT stage, so the
/// task keeps a pointer to it rather than the arguments themselves.
pub(crate) fn serve<S: Duplex>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
) -> impl Future<Output = ()> {
    let open = Box::pin(open(shared, stream, peer));
    async move {
        // The connection moves into `live` in a scope of its own, so that the future
        // does not keep it twice.
        let living = match open.await {
            Some((conn, rbuf)) => live(conn, rbuf, true),
            None => return,
        };
        living.await;
    }
}

/// Serves a connection parked without a task (see `parking`), woken by its socket or
/// its session's signal, from where `hibernate` would have gone on.
#[cfg(unix)]
pub(crate) async fn resume(
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    parked: Box<crate::parking::Parked>,
) {
    let crate::parking::Parked {
        stream,
        generation,
        version,
        decoder,
        alarm,
        ..
    } = *parked;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            debug!(client = %handle.client_id, error = %e, "a parked connection could not resume");
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            release(&shared, &handle, generation, &End::Lost);
            return;
        }
    };
    let mut conn = Conn {
        shared,
        handle,
        generation,
        version,
        stream,
        decoder,
    };
    match woken(&conn, alarm.map(|(at, _)| at)) {
        Ok(()) => live(conn, BytesMut::new(), false).await,
        Err(end) => Box::pin(detach(&mut conn, end)).await,
    }
}

/// A connection's life after CONNECT: active stretches, and idle ones parked (when the
/// stream can park) or hibernating in the task, until it ends. (Not an `async fn`, which
/// would keep its arguments twice.)
#[allow(clippy::manual_async_fn)]
fn live<S: Duplex>(
    mut conn: Conn<S>,
    mut rbuf: BytesMut,
    mut first_stretch: bool,
) -> impl Future<Output = ()> {
    async move {
        let end = loop {
            // The active state (buffers, a select over several futures: over a kilobyte)
            // lives on the heap only while the connection is active; an idle connection's
            // task holds just the small `hibernate` future, or is gone, parked.
            let active = Box::pin(active(&mut conn, rbuf, std::mem::take(&mut first_stretch)));
            if !active.await {
                return;
            }
            let busy;
            (conn, busy) = match S::park(conn) {
                Park::Done => return,
                Park::Busy(back) => (back, true),
                Park::Hibernate(back) => (back, false),
            };
            if busy {
                rbuf = BytesMut::new();
                continue;
            }
            match hibernate(&mut conn).await {
                Ok(read) => rbuf = read,
                Err(end) => break end,
            }
        };
        Box::pin(detach(&mut conn, end)).await;
    }
}

/// Parks an idle TCP connection (see `parking`): its socket leaves tokio for the
/// parking poll, and what the task held goes into the session.
///
/// Parking and reviving happen under the session's lock, and whatever gives the
/// session something to do wakes it through [`Shared::wake`], which revives a parked
/// connection. So a connection parks only if the session has nothing to send at that
/// moment; it does not rely on the session's signal, which may have been taken by the
/// task of a connection taken over or gone (they pass it on, but perhaps too late).
#[cfg(unix)]
fn park_tcp(conn: Conn<tokio::net::TcpStream>) -> Park<tokio::net::TcpStream> {
    let (shared, handle) = (Arc::clone(&conn.shared), Arc::clone(&conn.handle));
    let Some(parking) = shared.start_parking() else {
        return Park::Hibernate(conn);
    };
    let mut cell = handle.lock();
    if shared.is_shutting_down() || cell.generation != conn.generation {
        return Park::Hibernate(conn);
    }
    if cell.session.has_outgoing() || cell.encoded_len() > 0 {
        // Something came while the task decided to go idle.
        return Park::Busy(conn);
    }
    let token = match parking.register(&conn.stream, &handle) {
        Ok(token) => token,
        Err(e) => {
            debug!(client = %handle.client_id, error = %e, "a connection could not park");
            return Park::Hibernate(conn);
        }
    };
    // As `hibernate` does: what the session holds in its empty queues goes.
    cell.session.shrink_idle();
    cell.shrink_encoded();
    let Conn {
        generation,
        version,
        stream,
        decoder,
        ..
    } = conn;
    let alarm = cell
        .session
        .poll_timeout()
        .map(|at| (at, shared.alarms.set(at, &handle)));
    match stream.into_std() {
        Ok(stream) => {
            cell.park(crate::parking::Parking::parked(
                token, stream, generation, version, decoder, alarm,
            ));
        }
        Err(e) => {
            // The socket is closed (and out of the poll with it).
            drop(cell);
            parking.unregister(token);
            if let Some((at, id)) = alarm {
                shared.alarms.cancel(at, id);
            }
            debug!(client = %handle.client_id, error = %e, "a connection was lost parking");
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            release(&shared, &handle, generation, &End::Lost);
        }
    }
    Park::Done
}

/// One active stretch of a connection, from `rbuf` (bytes read and not yet decoded) on:
/// true when it goes idle (holding nothing: no bytes, no held delivery), false when the
/// connection is over and has been detached.
async fn active<S: Duplex>(conn: &mut Conn<S>, mut rbuf: BytesMut, first_stretch: bool) -> bool {
    let step = {
        let Conn {
            shared,
            handle,
            generation,
            version,
            stream,
            decoder,
        } = &mut *conn;
        let (mut rd, mut wr) = stream.halves();
        run_loop(
            shared,
            handle,
            *generation,
            *version,
            &mut rd,
            &mut wr,
            &mut rbuf,
            decoder,
            first_stretch,
        )
        .await
    };
    let end = match step {
        Step::Idle => return true,
        Step::Ended(end) => end,
    };
    detach(conn, end).await;
    false
}

/// A hibernating or parked connection was signalled: `Err` if it was taken over (the
/// signal, perhaps meant for the new connection, is passed on); otherwise its keep-alive
/// deadline (`alarm`), if passed, is handled and it goes active.
fn woken<S>(conn: &Conn<S>, alarm: Option<mqtt_session::Instant>) -> Result<(), End> {
    let mut cell = conn.handle.lock();
    if cell.generation != conn.generation {
        drop(cell);
        conn.handle.notify.notify_one();
        return Err(End::TakenOver);
    }
    let now = conn.shared.now();
    if alarm.is_some_and(|at| now >= at) {
        cell.session.handle_timeout(now);
    }
    Ok(())
}

/// Reads CONNECT (refusing what does not decode) and attaches the session; `None` if the
/// connection ends here. Also returns the bytes read behind CONNECT.
async fn open<S: Duplex>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
) -> Option<(Conn<S>, BytesMut)> {
    /// Counts the socket in `Stats::handshaking` until CONNECT is through, however
    /// `open` ends.
    struct Handshaking<'a>(&'a Shared);
    impl Drop for Handshaking<'_> {
        fn drop(&mut self) {
            self.0.stats.handshaking.fetch_sub(1, Ordering::Relaxed);
        }
    }
    shared.stats.handshaking.fetch_add(1, Ordering::Relaxed);
    let counted = Handshaking(&shared);
    let mut decoder = Decoder::new();
    decoder.set_max_packet_size(shared.config.limits.max_packet_size);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let connect = match timeout(
        shared.config.connect_timeout(),
        read_packet(&mut stream, &mut rbuf, &mut decoder),
    )
    .await
    {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(_)) => {
            debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(e)) => {
            refuse_undecodable(&mut stream, &e, peer).await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    let (handle, generation, version) = attach(&shared, &mut stream, *connect, peer).await?;
    drop(counted);
    let conn = Conn {
        shared,
        handle,
        generation,
        version,
        stream,
        decoder,
    };
    // Packets the client sent right behind CONNECT may already be in `rbuf`.
    Some((conn, rbuf))
}

/// Reads until one packet is decoded; `None` at end of stream.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decoder.decode(rbuf)? {
            return Ok(Some(p));
        }
        rbuf.reserve(READ_CHUNK);
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// A first packet that does not decode: answer with CONNACK where the spec asks for one.
async fn refuse_undecodable<W: AsyncWrite + Unpin>(wr: &mut W, e: &DecodeError, peer: SocketAddr) {
    debug!(%peer, error = %e, "invalid CONNECT");
    let reply = match e.kind() {
        // [MQTT-3.1.2-2] in 3.1.1: an unsupported level gets return code 1.
        ErrorKind::UnsupportedProtocolLevel(level) if level < 5 => Some(ProtocolVersion::V3_1_1),
        ErrorKind::UnsupportedProtocolLevel(_) => Some(ProtocolVersion::V5),
        _ => None,
    };
    if let Some(version) = reply {
        let mut out = BytesMut::new();
        let ack = Packet::from(ConnAck::new(
            false,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ));
        if ack.encode(version, &mut out).is_ok() {
            let _ = wr.write_all(&out).await;
        }
    }
    let _ = wr.shutdown().await;
}

async fn send_connack<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    code: ReasonCode,
) {
    let mut out = BytesMut::new();
    if Packet::from(ConnAck::new(false, code))
        .encode(version, &mut out)
        .is_ok()
    {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
}

/// Checks CONNECT, finds or creates the session, takes it over, accepts the connection.
async fn attach<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wr: &mut W,
    mut connect: Connect,
    peer: SocketAddr,
) -> Option<(Arc<SessionHandle>, u64, ProtocolVersion)> {
    let version = connect.version;
    let mut properties = ConnAckProperties::default();
    if connect.client_id.is_empty() {
        // [MQTT-3.1.3-8] (3.1.1): an empty id needs Clean Session; 3.1 needs an id.
        if version == ProtocolVersion::V3_1
            || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
        {
            send_connack(wr, version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).await;
            return None;
        }
        connect.client_id = shared.assign_client_id();
        if version.is_v5() {
            // [MQTT-3.2.2-16]
            properties.assigned_client_identifier = Some(connect.client_id.clone());
        }
    }
    if connect.username.is_none() && !shared.config.auth.allow_anonymous {
        send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
        return None;
    }
    if let Some(will) = &connect.will {
        // A will may not publish to `$SYS/` either (topics beginning with `$` are the
        // server's, section 4.7.2), nor anywhere the client may not publish: refused as
        // a PUBLISH there would be.
        if crate::sys::is_sys_topic(&will.topic)
            || !shared
                .auth
                .authorizer
                .may_publish(&connect.client_id, &will.topic)
        {
            debug!(%peer, topic = %will.topic, "will topic not authorized");
            send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
    }
    let credentials = crate::auth::Credentials {
        client_id: &connect.client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
    };
    if let Err(code) = shared.auth.authenticator.authenticate(&credentials).await {
        info!(client = %connect.client_id, %peer, reason = %code, "connection refused");
        send_connack(wr, version, code).await;
        return None;
    }
    if version.is_v5() && connect.properties.authentication_method.is_some() {
        // [MQTT-4.12.0-1] (5.0): no extended authentication method is supported.
        send_connack(wr, version, ReasonCode::BAD_AUTHENTICATION_METHOD).await;
        return None;
    }
    if version.is_v5()
        && !shared.config.retain.enabled
        && connect.will.as_ref().is_some_and(|w| w.retain)
    {
        // [MQTT-3.2.2-13] (5.0): a retained will needs retained messages.
        send_connack(wr, version, ReasonCode::RETAIN_NOT_SUPPORTED).await;
        return None;
    }
    let connected = shared.stats.connected.fetch_add(1, Ordering::Relaxed) + 1;
    if connected > shared.config.limits.max_connections {
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
        send_connack(wr, version, ReasonCode::SERVER_BUSY).await;
        return None;
    }
    shared
        .stats
        .max_connected
        .fetch_max(connected, Ordering::Relaxed);
    shared
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    if !shared.config.retain.enabled {
        properties.retain_available = Some(false);
    }

    // What outlives this packet gets its own memory: slices of the read buffer would keep
    // the whole buffer alive for as long as the session lives.
    detach_from_read_buffer(&mut connect);
    let now = shared.now();
    let (handle, generation, stale_filters, old_version) = loop {
        let handle = shared.session(&connect.client_id);
        let mut cell = handle.lock();
        if cell.gone {
            // It expired and left the registry since the lookup: the next one makes a
            // new session.
            continue;
        }
        // [MQTT-3.1.4-3]: a second connection with the same id takes the session over.
        let taking_over = cell.session.is_connected();
        cell.generation += 1;
        // The old connection, if parked, is revived to say goodbye.
        #[cfg(unix)]
        let old = cell.take_parked();
        cell.restore_encoded(now);
        cell.session.connection_lost(now);
        let stale: Vec<_> = if connect.clean_start {
            cell.session
                .subscriptions()
                .iter()
                .map(|r| r.filter.clone())
                .collect()
        } else {
            Vec::new()
        };
        let old_version = cell.session.version();
        cell.session.accept(now, &connect, properties);
        shared.account(&mut cell);
        if taking_over {
            info!(client = %connect.client_id, %peer, "session taken over");
        }
        let generation = cell.generation;
        drop(cell);
        #[cfg(unix)]
        if let Some(old) = old {
            shared.revive(&handle, old);
        }
        break (handle, generation, stale, old_version);
    };
    if !stale_filters.is_empty() {
        shared.unsubscribe_all(&handle, stale_filters.iter(), old_version);
    }
    handle.notify.notify_waiters();
    debug!(client = %connect.client_id, %peer, %version, "connected");
    Some((handle, generation, version))
}

/// Copies the strings and bytes of CONNECT that the session keeps (client identifier,
/// will) out of the shared read buffer.
fn detach_from_read_buffer(connect: &mut Connect) {
    fn own(s: &mut mqtt_codec::ByteStr) {
        if let Ok(copy) = mqtt_codec::ByteStr::try_from(s.as_str()) {
            *s = copy;
        }
    }
    own(&mut connect.client_id);
    if let Some(will) = &mut connect.will {
        own(&mut will.topic);
        will.payload = bytes::Bytes::copy_from_slice(&will.payload);
        let p = &mut will.properties;
        for s in [&mut p.content_type, &mut p.response_topic]
            .into_iter()
            .flatten()
        {
            own(s);
        }
        if let Some(data) = &mut p.correlation_data {
            *data = bytes::Bytes::copy_from_slice(data);
        }
        for (k, v) in &mut p.user_properties {
            own(k);
            own(v);
        }
    }
}

/// How an active stretch of a connection ended.
#[derive(Debug)]
enum Step {
    /// The connection is over.
    Ended(End),
    /// Nothing happened for IDLE_SHRINK, or nothing after CONNACK: hibernate until
    /// something does.
    Idle,
}

/// Waits, holding no buffer, until the client sends something, the session has
/// something to send, or its timer fires. `Ok` with the bytes read (perhaps none): go
/// active. A single signal wakes it for everything but the socket: a publisher, the
/// session's keep-alive deadline (through `Shared::alarms`), and shutdown
/// (`Shared::stop_connections`); this keeps the future idle connections sit in small:
/// no select, no timer of its own.
async fn hibernate<S: Duplex>(conn: &mut Conn<S>) -> Result<BytesMut, End> {
    let shared = &*conn.shared;
    if shared.is_shutting_down() {
        return Err(End::Shutdown);
    }
    // Registered before the last look at the session, so that a signal in between (a
    // takeover's included) is not missed.
    let notified = conn.handle.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let alarm = {
        let mut cell = conn.handle.lock();
        if cell.generation != conn.generation {
            return Err(End::TakenOver);
        }
        // Whatever the session still holds in its empty queues goes: a connection that
        // hibernates right after CONNACK has not been through the idle shrink.
        cell.session.shrink_idle();
        cell.shrink_encoded();
        cell.session.poll_timeout()
    };
    let alarm = alarm.map(|at| (at, shared.alarms.set(at, &conn.handle)));
    // The first bytes land here, and the read buffer is allocated once they have. Small:
    // a PINGREQ fits, and the active stage reads whatever follows.
    let mut first = [0u8; FIRST_READ];
    let woke = {
        let stream = &mut conn.stream;
        std::future::poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            let mut buf = ReadBuf::new(&mut first);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(read) => Poll::Ready(Some(read.map(|()| buf.filled().len()))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    if let Some((at, id)) = alarm {
        shared.alarms.cancel(at, id);
    }
    match woke {
        None => woken(conn, alarm.map(|(at, _)| at)).map(|()| BytesMut::new()),
        Some(Ok(0) | Err(_)) => Err(End::Lost),
        Some(Ok(n)) => {
            shared
                .stats
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
            let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
            rbuf.extend_from_slice(first.get(..n).unwrap_or_default());
            if feed(
                shared,
                &conn.handle,
                conn.generation,
                &mut conn.decoder,
                &mut rbuf,
            ) {
                Err(End::TakenOver)
            } else {
                Ok(rbuf)
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_loop<R, W>(
    shared: &Arc<Shared>,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    first_stretch: bool,
) -> Step
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut events = Vec::new();
    let mut matches = Matches::default();
    // One timer for the whole active stretch, moved only when it must fire earlier: a
    // new timer per wait costs a registration and a removal in the timer wheel each time
    // the loop waits. Firing early is harmless: the session finds nothing due.
    let timer = sleep_until(Instant::now() + std::time::Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut last_activity = Instant::now();
    let mut shrunk = false;
    // Nothing has happened since CONNECT (true only on the first stretch).
    let mut fresh = first_stretch;
    // A woken connection goes back to sleep as soon as what woke it was input that asks
    // for nothing more (a PINGREQ, an acknowledgement): an idle client's ping then costs
    // a wake-up, not IDLE_SHRINK of the active state. A delivery written, or a packet
    // that does something (an event), keeps it awake as before.
    let mut settle = !first_stretch;
    let mut input = !rbuf.is_empty();
    let mut backlog = VecDeque::new();
    // The acknowledgements of the PUBLISH packets of a batch, decided as they are routed.
    let mut verdicts = Vec::new();
    // Bytes already read (behind CONNECT, or on waking) may hold more packets.
    if feed(shared, handle, generation, decoder, rbuf) {
        return Step::Ended(End::TakenOver);
    }
    loop {
        if shared.is_shutting_down() {
            return Step::Ended(End::Shutdown);
        }
        // 1. Flush: take what the session has to send and its events, under the lock.
        let mut more = false;
        let deadline = {
            let mut cell = handle.lock();
            if cell.generation != generation {
                // The signal that woke this loop may have been meant for the connection
                // that took over: pass it on.
                drop(cell);
                handle.notify.notify_one();
                return Step::Ended(End::TakenOver);
            }
            let now = shared.now();
            // Counted here and added once: the counters are shared by every connection.
            // Packets encoded for many subscribers go first: the session had no QoS 0
            // message queued and no control packet waiting when they came (see
            // `ServerSession::takes_encoded_publish`).
            let encoded = u64::from(cell.take_encoded(&mut out));
            let (mut publishes, mut packets) = (encoded, encoded);
            while let Some(p) = cell.session.poll_transmit(now) {
                publishes += u64::from(matches!(p, Packet::Publish(_)));
                packets += 1;
                if p.encode(version, &mut out).is_err() {
                    warn!(client = %handle.client_id, "a packet did not encode and was dropped");
                }
                if out.len() >= WRITE_HIGH_WATER {
                    more = true;
                    break;
                }
            }
            if publishes > 0 {
                settle = false;
            }
            if packets > 0 {
                shared
                    .stats
                    .messages_sent
                    .fetch_add(packets, Ordering::Relaxed);
                if publishes > 0 {
                    shared
                        .stats
                        .publish_sent
                        .fetch_add(publishes, Ordering::Relaxed);
                }
            }
            while let Some(e) = cell.session.poll_event() {
                match e {
                    // Settled here, under the lock already held: a shared-subscription
                    // message acknowledged or dropped needs no redelivery.
                    Event::Delivered { id, .. } => cell.settle_shared(&[id]),
                    Event::Dropped { id, reason } => {
                        cell.settle_shared(&[id]);
                        if reason == DropReason::QueueFull {
                            // A queued QoS 0 message made room for a QoS 1/2 one.
                            shared.overflow(handle, reason, false);
                        }
                    }
                    e => events.push(e),
                }
            }
            shared.account(&mut cell);
            cell.session.poll_timeout()
        };
        if !events.is_empty() {
            settle = false;
        }
        // 2. Act on events outside the session lock.
        let mut again = false;
        let mut closed = false;
        let mut received = 0;
        // One clock reading for the batch: routing reads it for every message otherwise.
        let now = shared.now();
        for event in events.drain(..) {
            match event {
                Event::Message(m, arrival) => {
                    received += 1;
                    let qos = m.qos;
                    let verdict = publish(shared, handle, m, &mut matches, now);
                    if qos != QoS::AtMostOnce {
                        verdicts.push((qos, arrival.packet_id, verdict));
                    }
                }
                Event::Subscribe(s) => {
                    subscribe(shared, handle, generation, version, &s, &mut backlog);
                    again = true;
                }
                Event::Unsubscribe(u) => {
                    unsubscribe(shared, handle, generation, version, &u);
                    again = true;
                }
                Event::PeerDisconnected(_) | Event::Closed { .. } => closed = true,
                // The will of a connection this one replaced ([MQTT-3.1.2-8]).
                Event::Will(will) => {
                    shared.route(handle.key, will_message(*will), &mut matches, now);
                }
                _ => {}
            }
        }
        if !verdicts.is_empty() {
            // The acknowledgements, in the order the messages came ([MQTT-4.6.0-2]), and
            // only for the connection they came on.
            let mut cell = handle.lock();
            if cell.generation == generation {
                for (qos, packet_id, reason) in verdicts.drain(..) {
                    cell.session.settle_publish(qos, packet_id, reason);
                }
            }
            verdicts.clear();
            again = true;
        }
        if received > 0 {
            shared
                .stats
                .publish_received
                .fetch_add(received, Ordering::Relaxed);
        }
        // Retained messages of new subscriptions, as the session's queue has room.
        if !backlog.is_empty() && pump_retained(shared, handle, &mut backlog) {
            again = true;
        }
        // 3. Write, after the events were acted on: a message is routed (ownership taken,
        // [MQTT-4.3.2-4], [MQTT-4.3.3-8]) before its acknowledgement goes out, and a write
        // failing on a dying connection cannot lose messages already taken from the
        // session.
        let mut lost = false;
        if !out.is_empty() {
            shared
                .stats
                .bytes_sent
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            lost = match write_or_stall(wr, &out, shared.write_timeout()).await {
                Ok(()) => false,
                Err(e) => {
                    debug!(client = %handle.client_id, error = %e, "write failed");
                    true
                }
            };
            out.clear();
            if out.capacity() > 4 * READ_CHUNK {
                // Keep idle connections small: a burst's buffer is given back.
                out = BytesMut::new();
            }
        }
        if lost {
            return Step::Ended(End::Lost);
        }
        if closed {
            // Write the DISCONNECT the session may have queued, then close so that the
            // client gets to read it.
            flush_last(shared, handle, generation, version, wr).await;
            last_words(rd, wr).await;
            return Step::Ended(End::Closed);
        }
        if again || more {
            continue;
        }
        if (fresh || (settle && input)) && backlog.is_empty() && rbuf.is_empty() {
            // A new connection with nothing more to do after CONNACK hibernates at once:
            // clients that connect and wait (most, on a broker with many) never hold the
            // active state, and a burst of connections does not leave its peak behind.
            // So does a woken one whose input needed only an answer (`settle`).
            return Step::Idle;
        }
        // 4. Wait for input. A connection idle for IDLE_SHRINK gives back its buffers'
        // and queues' memory once.
        let session_deadline = deadline.map(|d| shared.deadline(d));
        let shrink_at = (!shrunk).then(|| last_activity + IDLE_SHRINK);
        let wake = match (session_deadline, shrink_at) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a
                .or(b)
                .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600)),
        };
        if timer.is_elapsed() || wake < timer.deadline() {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            read = rd.read_buf(rbuf) => {
                last_activity = Instant::now();
                shrunk = false;
                fresh = false;
                input = true;
                match read {
                    Ok(0) | Err(_) => return Step::Ended(End::Lost),
                    Ok(n) => {
                        shared.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                if feed(shared, handle, generation, decoder, rbuf) {
                    return Step::Ended(End::TakenOver);
                }
            }
            () = handle.notify.notified() => {
                last_activity = Instant::now();
                shrunk = false;
                fresh = false;
            }
            () = &mut timer => {
                let mut cell = handle.lock();
                let now = shared.now();
                // A deadline that passed (the keep-alive) leaves a DISCONNECT and an event
                // to act on before any shrinking.
                let due = cell.session.poll_timeout().is_some_and(|at| now >= at);
                cell.session.handle_timeout(now);
                if !due && shrink_at.is_some_and(|at| Instant::now() >= at) {
                    cell.session.shrink_idle();
                    cell.shrink_encoded();
                    drop(cell);
                    if backlog.is_empty() && rbuf.is_empty() {
                        return Step::Idle;
                    }
                    if rbuf.is_empty() {
                        *rbuf = BytesMut::new();
                    }
                    out = BytesMut::new();
                    events = Vec::new();
                    matches = Matches::default();
                    shrunk = true;
                }
            }
        }
    }
}

/// Decodes every complete packet in `rbuf` into the session. Returns true if the session
/// was taken over by another connection.
fn feed(
    shared: &Shared,
    handle: &SessionHandle,
    generation: u64,
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
) -> bool {
    let mut cell = handle.lock();
    if cell.generation != generation {
        return true;
    }
    let now = shared.now();
    let mut received = 0;
    loop {
        match decoder.decode(rbuf) {
            Ok(Some(packet)) => {
                received += 1;
                if matches!(&packet, Packet::Publish(p) if p.retain)
                    && !shared.config.retain.enabled
                    && cell.session.version().is_v5()
                {
                    // [MQTT-3.2.2-14]: CONNACK said Retain Available 0; a retained
                    // PUBLISH is answered with DISCONNECT 0x9A (Retain not supported),
                    // here, where it is known to come from this connection.
                    cell.session.disconnect_explained(
                        ReasonCode::RETAIN_NOT_SUPPORTED,
                        "retained messages are not supported (Retain Available 0)",
                    );
                    break;
                }
                if let Err(e) = cell.session.handle_packet(now, packet) {
                    debug!(client = %handle.client_id, error = %e, "protocol error");
                    cell.session.disconnect(e.reason);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                debug!(client = %handle.client_id, error = %e, "malformed packet");
                // [MQTT-4.13.1-1]: close, with DISCONNECT and the reason in 5.0.
                cell.session
                    .disconnect_explained(e.reason_code(), &e.to_string());
                break;
            }
        }
    }
    drop(cell);
    if received > 0 {
        shared
            .stats
            .messages_received
            .fetch_add(received, Ordering::Relaxed);
    }
    if rbuf.is_empty() && rbuf.capacity() > 4 * READ_CHUNK {
        // Idle connections keep a small buffer: a burst's growth is given back.
        *rbuf = BytesMut::with_capacity(READ_CHUNK);
    } else {
        rbuf.reserve(READ_CHUNK);
    }
    false
}

/// Writes what the session still has to send; true if anything was written.
async fn flush_last<W: AsyncWrite + Unpin>(
    shared: &Shared,
    handle: &SessionHandle,
    generation: u64,
    version: ProtocolVersion,
    wr: &mut W,
) -> bool {
    let mut out = BytesMut::new();
    {
        let mut cell = handle.lock();
        if cell.generation != generation {
            // Taken over meanwhile: what the session has is the new connection's.
            return false;
        }
        let now = shared.now();
        let encoded = u64::from(cell.take_encoded(&mut out));
        let (mut publishes, mut packets) = (encoded, encoded);
        while let Some(p) = cell.session.poll_transmit(now) {
            publishes += u64::from(matches!(p, Packet::Publish(_)));
            packets += 1;
            let _ = p.encode(version, &mut out);
        }
        shared.account(&mut cell);
        let stats = &shared.stats;
        stats.messages_sent.fetch_add(packets, Ordering::Relaxed);
        stats.publish_sent.fetch_add(publishes, Ordering::Relaxed);
    }
    !out.is_empty()
        && write_or_stall(wr, &out, shared.write_timeout())
            .await
            .is_ok()
}

/// The connection is over: release the session, and keep its timers (will delay,
/// session expiry) running while it has no connection.
async fn detach<S: Duplex>(conn: &mut Conn<S>, end: End) {
    let Conn {
        shared,
        handle,
        generation,
        version,
        stream,
        ..
    } = conn;
    let (generation, version) = (*generation, *version);
    let (mut rd, mut wr) = stream.halves();
    shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    let mut out = BytesMut::new();
    match end {
        End::TakenOver => {
            // [MQTT-3.1.4-3]: tell the old client why, in 5.0.
            if version.is_v5() {
                let _ = Packet::from(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER))
                    .encode(version, &mut out);
            }
        }
        End::Shutdown => {
            let mut cell = handle.lock();
            if cell.generation == generation {
                cell.session.disconnect(ReasonCode::SERVER_SHUTTING_DOWN);
                cell.take_encoded(&mut out);
                let now = shared.now();
                while let Some(p) = cell.session.poll_transmit(now) {
                    let _ = p.encode(version, &mut out);
                }
            }
        }
        End::Lost | End::Closed => {}
    }
    if !out.is_empty()
        && write_or_stall(&mut wr, &out, shared.write_timeout())
            .await
            .is_ok()
    {
        last_words(&mut rd, &mut wr).await;
    }
    let _ = wr.shutdown().await;
    if !matches!(end, End::TakenOver) {
        release(shared, handle, generation, &end);
    }
}

/// Tells the session its connection `generation` is gone (unless taken over
/// meanwhile), and runs its timers without one.
fn release(shared: &Arc<Shared>, handle: &Arc<SessionHandle>, generation: u64, end: &End) {
    {
        let mut cell = handle.lock();
        if cell.generation != generation {
            return;
        }
        let now = shared.now();
        cell.restore_encoded(now);
        cell.session.connection_lost(now);
        // A session that outlives its connection keeps what it holds, not the capacity
        // of the queues it used: an offline session with nothing queued keeps no queues.
        cell.session.shrink_idle();
        shared.account(&mut cell);
    }
    debug!(client = %handle.client_id, ?end, "disconnected");
    tokio::spawn(idle(Arc::clone(shared), Arc::clone(handle), generation));
}

/// How long a closing connection reads (and discards) what the client still sends, so
/// that it gets to read our last packet.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes like a server that wants its last words read: after the DISCONNECT (or
/// whatever was written last), the write side is shut down (FIN), and what the client
/// still sends is read and discarded until it closes too or [`DRAIN`] passes. Closing
/// with unread input would send a reset instead, and a client writing at that moment
/// could lose the reason code before reading it.
async fn last_words<R, W>(rd: &mut R, wr: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = timeout(DRAIN, wr.shutdown()).await;
    let mut sink = [0u8; 512];
    let _ = timeout(DRAIN, async {
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Writes all of `buf`, or fails when the client takes nothing of it for `stall`: a
/// client that stops reading cannot pin its connection (task, socket, queue) for ever.
async fn write_or_stall<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut buf: &[u8],
    stall: std::time::Duration,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        match timeout(stall, wr.write(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => buf = buf.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing for {} s", stall.as_secs()),
                ));
            }
        }
    }
    Ok(())
}

/// Runs the timers of a session with no connection: publishes the will when due, and
/// forgets the session when it expires. Stops when a new connection takes the session.
async fn idle(shared: Arc<Shared>, handle: Arc<SessionHandle>, generation: u64) {
    let mut matches = Matches::default();
    loop {
        let (deadline, events) = {
            let mut cell = handle.lock();
            if cell.generation != generation {
                // A new connection has the session, and the wake-up that brought us
                // here may have been meant for it.
                drop(cell);
                handle.notify.notify_one();
                return;
            }
            if cell.gone {
                return;
            }
            let events: Vec<Event> = std::iter::from_fn(|| cell.session.poll_event()).collect();
            (cell.session.poll_timeout(), events)
        };
        for event in events {
            match event {
                Event::Will(will) => {
                    let now = shared.now();
                    shared.route(handle.key, will_message(*will), &mut matches, now);
                }
                Event::SessionExpired => {
                    shared.remove_session(&handle, generation);
                    return;
                }
                Event::Dropped { id, .. } => handle.lock().settle_shared(&[id]),
                _ => {}
            }
        }
        let Some(deadline) = deadline else { return };
        tokio::select! {
            () = sleep_until(shared.deadline(deadline)) => {
                let mut cell = handle.lock();
                if cell.generation != generation {
                    return;
                }
                cell.session.handle_timeout(shared.now());
            }
            () = handle.notify.notified() => {}
        }
    }
}

/// A PUBLISH from the client, taken by its session: authorized, retained and routed
/// here. Returns the reason code of its acknowledgement (5.0 PUBACK / PUBREC; 3.x
/// clients are acknowledged regardless, see `ServerSession::settle_publish`).
fn publish(
    shared: &Shared,
    from: &SessionHandle,
    message: Message,
    matches: &mut Matches<u64, Sub>,
    now: mqtt_session::Instant,
) -> ReasonCode {
    // `$SYS/` is the broker's own (topics beginning with `$` are the server's, section
    // 4.7.2): a client may not publish there, nor forge its statistics for others.
    if crate::sys::is_sys_topic(&message.topic)
        || !shared
            .auth
            .authorizer
            .may_publish(&from.client_id, &message.topic)
    {
        shared.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
        debug!(client = %from.client_id, topic = %message.topic, "PUBLISH not authorized");
        return ReasonCode::NOT_AUTHORIZED;
    }
    if shared.route(from.key, message, matches, now) == 0 {
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    } else {
        ReasonCode::SUCCESS
    }
}

/// The application message a will publishes ([MQTT-3.1.2-14], [MQTT-3.1.2-15] in 5.0:
/// retained as the will asked), with its properties in order ([MQTT-3.1.3-10]).
fn will_message(will: mqtt_codec::Will) -> Message {
    let p = will.properties;
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: mqtt_codec::PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..Default::default()
        }
        .into(),
    }
}

/// SUBSCRIBE: checks each filter, updates the index, answers, sends retained messages.
fn subscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    s: &Subscribe,
    backlog: &mut VecDeque<RetainedBacklog>,
) {
    // Under the session's lock, so that a takeover cannot fall between the index and
    // the session: the index takes no session lock, so the order is safe.
    let mut cell = handle.lock();
    if cell.generation != generation {
        // Polled just before another connection took the session over: its SUBACK
        // could only go to that one, so it goes with this connection, as the session
        // does with the requests it still held (`connection_lost`).
        return;
    }
    // First the verdict on every filter (syntax, authorization, then the session's
    // quota), then the index for those granted: a refused filter never reaches it.
    let mut codes = Vec::with_capacity(s.subscriptions.len());
    let mut filters = Vec::with_capacity(s.subscriptions.len());
    for sub in &s.subscriptions {
        let Ok(filter) = Filter::parse(&sub.filter, version) else {
            codes.push(ReasonCode::TOPIC_FILTER_INVALID);
            filters.push(None);
            continue;
        };
        if !shared
            .auth
            .authorizer
            .may_subscribe(&handle.client_id, &sub.filter)
        {
            // 3.x has one failure code, 0x80, which the codec writes for any error.
            codes.push(ReasonCode::NOT_AUTHORIZED);
            filters.push(None);
            continue;
        }
        codes.push(ReasonCode(sub.options.qos.min(QoS::ExactlyOnce) as u8));
        filters.push(Some(filter));
    }
    cell.session.limit_subscriptions(s, &mut codes);
    let mut retained_for = Vec::new();
    for ((sub, filter), code) in s.subscriptions.iter().zip(filters).zip(&codes) {
        let Some(filter) = filter.filter(|_| !code.is_error()) else {
            continue;
        };
        let mut options = sub.options;
        options.qos = options.qos.min(QoS::ExactlyOnce);
        let value = Sub {
            handle: Arc::clone(handle),
            options,
            identifier: s.properties.subscription_identifier,
        };
        let existed = shared.index.subscribe(filter, handle.key, value).is_some();
        // [MQTT-3.3.1-9] .. [MQTT-3.3.1-11]: retained messages by Retain Handling;
        // none for shared subscriptions.
        let shared_sub = matches!(filter, Filter::Shared(_));
        let send = match options.retain_handling {
            mqtt_codec::RetainHandling::SendAtSubscribe => true,
            mqtt_codec::RetainHandling::SendIfNew => !existed,
            mqtt_codec::RetainHandling::DoNotSend => false,
        };
        if send && !shared_sub {
            retained_for.push((
                sub.filter.clone(),
                options,
                s.properties.subscription_identifier,
            ));
        }
    }
    cell.session.suback(s, codes);
    drop(cell);
    backlog.extend(
        retained_for
            .into_iter()
            .map(|(filter, options, identifier)| RetainedBacklog {
                filter,
                qos: options.qos,
                identifier,
                shard: 0,
                cursor: None,
                delivered: 0,
                restarts: 0,
            }),
    );
}

/// A subscription's retained messages still to send: streamed in batches that fit the
/// session's queue, resuming the store's iteration where the last batch stopped.
#[derive(Debug)]
pub(crate) struct RetainedBacklog {
    filter: mqtt_codec::ByteStr,
    qos: QoS,
    identifier: Option<mqtt_codec::SubscriptionId>,
    /// Which of the filter's retained-store shards is being streamed (an index into
    /// `Shared::retained_shards`).
    shard: usize,
    cursor: Option<mqtt_topics::Cursor>,
    /// Sent so far from this shard, to skip when the iteration must start over.
    delivered: usize,
    restarts: u32,
}

/// Restarts from scratch (re-sending, never missing) before falling back to skipping by
/// count under constant churn of the retained store.
const MAX_RETAINED_RESTARTS: u32 = 8;

/// Sends the next batch of retained messages that fits in the session's queue. Returns
/// true if it sent any (call again after writing them).
fn pump_retained(
    shared: &Shared,
    handle: &SessionHandle,
    backlog: &mut VecDeque<RetainedBacklog>,
) -> bool {
    let Some(entry) = backlog.front_mut() else {
        return false;
    };
    let mut cell = handle.lock();
    let room = cell.session.queue_room().min(256);
    if room == 0 {
        return false;
    }
    let Ok(filter) = mqtt_topics::TopicFilter::new(&entry.filter) else {
        backlog.pop_front();
        return true;
    };
    let now = shared.now();
    let shards = shared.retained_shards(&entry.filter);
    let Some(store) = shards
        .clone()
        .nth(entry.shard)
        .and_then(|i| shared.retained_shard_read(i))
    else {
        backlog.pop_front();
        return true;
    };
    let mut iter = match entry.cursor.and_then(|c| store.resume(filter, c)) {
        Some(it) => it,
        None => {
            let mut it = store.matching(filter);
            if entry.cursor.is_some() {
                // The store changed shape since the last batch: start again, re-sending
                // what was sent (a retained message twice is harmless; one missed is not)
                // unless it keeps changing.
                entry.restarts += 1;
                if entry.restarts > MAX_RETAINED_RESTARTS {
                    it.by_ref().take(entry.delivered).for_each(drop);
                } else {
                    entry.delivered = 0;
                }
            }
            it
        }
    };
    let mut sent = 0;
    let mut finished = true;
    for found in iter.by_ref() {
        if let Some(mut m) = shared.retained_copy(found.value(), now) {
            m.qos = m.qos.min(entry.qos);
            m.retain = true;
            m.properties
                .set_subscription_identifiers(entry.identifier.into_iter().collect());
            if cell.session.deliver(now, m).is_err() {
                shared.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent += 1;
        entry.delivered += 1;
        if sent == room {
            finished = false;
            break;
        }
    }
    entry.cursor = Some(iter.cursor());
    if finished || iter.cursor().is_done() {
        // This shard is done: on to the filter's next one, or to the next subscription.
        entry.shard += 1;
        entry.cursor = None;
        entry.delivered = 0;
        entry.restarts = 0;
        if entry.shard >= shards.len() {
            backlog.pop_front();
        }
    }
    true
}

/// UNSUBSCRIBE: removes the filters and answers.
fn unsubscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    u: &Unsubscribe,
) {
    // As in `subscribe`: under the lock, and only for the session's own connection.
    let mut cell = handle.lock();
    if cell.generation != generation {
        return;
    }
    let codes = u
        .filters
        .iter()
        .map(|f| match Filter::parse(f, version) {
            Ok(filter) if shared.index.unsubscribe(filter, &handle.key).is_some() => {
                ReasonCode::SUCCESS
            }
            Ok(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
        })
        .collect::<Vec<_>>();
    let codes = if version.is_v5() { codes } else { Vec::new() };
    cell.session.unsuback(u, codes);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mqtt_codec::{ByteStr, Decoder, Packet, ProtocolVersion};

    use crate::{Config, broker::Shared};

    /// A connection costs its task (tokio's header and trailer, about 100 bytes, plus the
    /// future, padded to a multiple of 128 bytes: the future is the largest of its await
    /// points plus what lives across them all, so every busy stage is boxed and only
    /// `hibernate` stays inline) and its session. An idle TCP connection parks and has no
    /// task; other streams hibernate in theirs. These bounds, taken on a TCP stream, keep
    /// a change from quietly growing what every client costs. A future above about 408
    /// bytes makes the task 640.
    #[test]
    fn what_an_idle_connection_holds_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared::new(Config::default(), Default::default()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = || async { tokio::net::TcpStream::connect(addr).await.unwrap() };
            let mut conn = super::Conn {
                shared: shared.clone(),
                handle: shared.session(&ByteStr::from_static("probe")),
                generation: 0,
                version: ProtocolVersion::V3_1_1,
                stream: stream().await,
                decoder: Decoder::new(),
            };
            let hibernating = super::hibernate(&mut conn);
            let hibernate = size_of_val(&hibernating);
            drop(hibernating);
            let serving = super::serve(shared.clone(), stream().await, addr);
            let serve = size_of_val(&serving);
            drop(serving);
            #[cfg(unix)]
            {
                let socket = std::net::TcpStream::connect(addr).unwrap();
                let parked = crate::parking::Parking::parked(
                    1,
                    socket,
                    0,
                    ProtocolVersion::V3_1_1,
                    Decoder::new(),
                    None,
                );
                let resuming = super::resume(shared.clone(), conn.handle.clone(), parked);
                let resume = size_of_val(&resuming);
                assert!(resume <= 408, "resume future: {resume} B");
            }
            let session = size_of::<mqtt_session::ServerSession>();
            assert!(hibernate <= 168, "hibernate future: {hibernate} B");
            assert!(serve <= 304, "serve future: {serve} B");
            assert!(session <= 144, "ServerSession: {session} B");
            let handle = size_of::<crate::broker::SessionHandle>();
            assert!(handle <= 304, "SessionHandle: {handle} B");
        });
    }

    /// A connected client, speaking raw packets.
    #[cfg(unix)]
    struct Client {
        stream: tokio::net::TcpStream,
        decoder: Decoder,
        buf: bytes::BytesMut,
        version: ProtocolVersion,
    }

    #[cfg(unix)]
    impl Client {
        /// Connects as `id` (Clean Session 0, keep-alive 60 s) and reads CONNACK.
        async fn connect(addr: std::net::SocketAddr, version: ProtocolVersion, id: &str) -> Self {
            let mut connect =
                mqtt_codec::Connect::new(version, ByteStr::try_from(id.to_owned()).unwrap());
            connect.clean_start = false;
            connect.keep_alive = 60;
            connect.properties.session_expiry_interval = Some(60);
            let mut client = Self {
                stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
                decoder: Decoder::with_version(version),
                buf: bytes::BytesMut::new(),
                version,
            };
            client.send(connect.into()).await;
            assert!(matches!(client.next().await, Some(Packet::ConnAck(_))));
            client
        }

        async fn send(&mut self, packet: Packet) {
            use tokio::io::AsyncWriteExt;
            let mut out = bytes::BytesMut::new();
            packet.encode(self.version, &mut out).unwrap();
            self.stream.write_all(&out).await.unwrap();
        }

        /// Subscribes to `filter` (SUBACK read), then disconnects: the session keeps
        /// the subscription.
        async fn subscribe_and_leave(mut self, filter: &'static str, qos: mqtt_codec::QoS) {
            use mqtt_codec::{Disconnect, PacketId, ReasonCode, Subscribe};
            let subscribe = Subscribe::new(PacketId::MIN, ByteStr::from_static(filter), qos);
            self.send(subscribe.into()).await;
            assert!(matches!(self.next().await, Some(Packet::SubAck(_))));
            self.send(Disconnect::new(ReasonCode::SUCCESS).into()).await;
            assert!(self.next().await.is_none());
        }

        /// The next packet; `None` once the broker closes the connection.
        async fn next(&mut self) -> Option<Packet> {
            use tokio::io::AsyncReadExt;
            tokio::time::timeout(std::time::Duration::from_secs(5), async {
                loop {
                    if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                        return Some(p);
                    }
                    if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                        return None;
                    }
                }
            })
            .await
            .expect("a packet or the end in time")
        }
    }

    /// Connections served on a loopback port, as the broker's accept loop serves them.
    #[cfg(unix)]
    async fn serving(config: Config) -> (Arc<Shared>, std::net::SocketAddr) {
        let shared = Arc::new(Shared::new(config, Default::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(super::serve(Arc::clone(&serving), stream, peer));
            }
        });
        (shared, addr)
    }

    /// Waits until `id`'s connection is parked (or fails after 2 s).
    #[cfg(unix)]
    async fn parked(shared: &Shared, id: &'static str) {
        let handle = shared.session(&ByteStr::from_static(id));
        for _ in 0..200 {
            if handle.lock().is_parked() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{id} did not park");
    }

    /// An idle connection parks without a task right after CONNACK and comes back for
    /// each thing that would have woken its task: a packet from its client, a message
    /// routed to its session, a takeover, and shutdown.
    #[cfg(unix)]
    #[test]
    fn a_parked_connection_wakes_for_its_socket_and_its_session() {
        use bytes::Bytes;
        use mqtt_codec::{Publish, QoS, ReasonCode};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (shared, addr) = serving(Config::default()).await;
            let v5 = ProtocolVersion::V5;

            // Its own socket: SUBSCRIBE is read and answered.
            let sub = Client::connect(addr, v5, "sub").await;
            parked(&shared, "sub").await;
            sub.subscribe_and_leave("t", QoS::AtMostOnce).await;
            // Back with the subscription kept, parked again at once.
            let mut sub = Client::connect(addr, v5, "sub").await;
            parked(&shared, "sub").await;

            // Its session: a message routed to it is written.
            let mut publ = Client::connect(addr, ProtocolVersion::V3_1_1, "pub").await;
            publ.send(Publish::new(ByteStr::from_static("t"), Bytes::from_static(b"hi")).into())
                .await;
            match sub.next().await {
                Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hi"),
                other => panic!("expected the PUBLISH, got {other:?}"),
            }

            // Its peer closing: the session learns that its connection is gone.
            let gone = Client::connect(addr, v5, "gone").await;
            parked(&shared, "gone").await;
            drop(gone);
            let handle = shared.session(&ByteStr::from_static("gone"));
            for _ in 0..200 {
                if !handle.lock().session.is_connected() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(!handle.lock().session.is_connected(), "still connected");

            // A takeover: the parked connection says goodbye with 0x8E.
            let mut old = Client::connect(addr, v5, "twice").await;
            parked(&shared, "twice").await;
            let mut new = Client::connect(addr, v5, "twice").await;
            match old.next().await {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
                }
                other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
            }
            assert!(old.next().await.is_none());

            // Shutdown: the parked connection says goodbye with 0x8B.
            parked(&shared, "twice").await;
            shared.stop_connections();
            match new.next().await {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN);
                }
                other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
            }
        });
    }

    /// A subscriber that has not acknowledged a full in-flight window has nothing to
    /// send until it does: it parks, and its acknowledgement revives it for the next
    /// message.
    #[cfg(unix)]
    #[test]
    fn a_connection_parks_behind_a_full_window() {
        use bytes::Bytes;
        use mqtt_codec::{PacketId, PubAck, Publish, QoS, QosPid};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut config = Config::default();
            config.limits.max_inflight = 1;
            let (shared, addr) = serving(config).await;
            let v311 = ProtocolVersion::V3_1_1;
            let sub = Client::connect(addr, v311, "slow").await;
            sub.subscribe_and_leave("w", QoS::AtLeastOnce).await;
            // Two messages wait in the offline session.
            let mut publ = Client::connect(addr, v311, "pub").await;
            for (n, payload) in [(1, "one"), (2, "two")] {
                let mut p = Publish::new(
                    ByteStr::from_static("w"),
                    Bytes::from_static(payload.as_bytes()),
                );
                p.qos_pid = QosPid::new(QoS::AtLeastOnce, PacketId::new(n).unwrap());
                publ.send(p.into()).await;
                assert!(matches!(publ.next().await, Some(Packet::PubAck(_))));
            }
            // Back: the first is sent, the second waits behind the window of one.
            let mut sub = Client::connect(addr, v311, "slow").await;
            let Some(Packet::Publish(first)) = sub.next().await else {
                panic!("the first message");
            };
            assert_eq!(&first.payload[..], b"one");
            parked(&shared, "slow").await;
            // The acknowledgement revives it, and the second message follows.
            sub.send(PubAck::new(first.qos_pid.packet_id().unwrap()).into())
                .await;
            match sub.next().await {
                Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"two"),
                other => panic!("expected the second message, got {other:?}"),
            }
        });
    }

    /// A SUBSCRIBE or UNSUBSCRIBE that a connection polled just before another one took
    /// its session over changes nothing: not the index, not the session, and no
    /// acknowledgement is queued for the new connection. The same requests from the
    /// session's own connection do.
    #[test]
    fn requests_polled_before_a_takeover_change_nothing() {
        use mqtt_codec::{Connect, PacketId, QoS, Subscribe, Unsubscribe};
        use mqtt_topics::{Matches, TopicName};

        let v = ProtocolVersion::V3_1_1;
        let shared = Arc::new(Shared::new(Config::default(), Default::default()));
        let handle = shared.session(&ByteStr::from_static("c"));
        let now = shared.now();
        let current = {
            let mut cell = handle.lock();
            cell.generation += 2;
            let connect = Connect::new(v, ByteStr::from_static("c"));
            cell.session.accept(now, &connect, Default::default());
            cell.generation
        };
        let stale = current - 1;
        let subscribed = || {
            let mut m = Matches::new();
            shared.index.matches(TopicName::new("t/x").unwrap(), &mut m);
            m.subscription_count()
        };
        let acks = || {
            let mut cell = handle.lock();
            std::iter::from_fn(|| cell.session.poll_transmit(now))
                .filter(|p| matches!(p, Packet::SubAck(_) | Packet::UnsubAck(_)))
                .count()
        };
        let sub = Subscribe::new(PacketId::MIN, ByteStr::from_static("t/#"), QoS::AtLeastOnce);
        let unsub = Unsubscribe {
            packet_id: PacketId::MIN,
            filters: vec![ByteStr::from_static("t/#")],
            properties: Default::default(),
        };
        let mut backlog = std::collections::VecDeque::new();

        super::subscribe(&shared, &handle, stale, v, &sub, &mut backlog);
        assert_eq!((subscribed(), acks()), (0, 0), "a stale SUBSCRIBE");
        super::subscribe(&shared, &handle, current, v, &sub, &mut backlog);
        assert_eq!(
            (subscribed(), acks()),
            (1, 1),
            "the connection's own SUBSCRIBE"
        );
        super::unsubscribe(&shared, &handle, stale, v, &unsub);
        assert_eq!((subscribed(), acks()), (1, 0), "a stale UNSUBSCRIBE");
        super::unsubscribe(&shared, &handle, current, v, &unsub);
        assert_eq!(
            (subscribed(), acks()),
            (0, 1),
            "the connection's own UNSUBSCRIBE"
        );
    }
}
