//! One client connection: socket ⇄ codec ⇄ the client's `ServerSession`.
//!
//! The task reads CONNECT, attaches the session (taking it over from an older
//! connection if there is one), then loops: flush what the session has to send, act on
//! its events, and wait for bytes, a wake-up from a publisher, the session's timer or
//! shutdown. Writes are batched: everything the session yields goes out in one write.

//!
//! A connection's concerns, one file each: `handshake` (CONNECT: checks,
//! authentication, attaching the session), `active_loop` (flush, act on events, write,
//! read), `publish` and `subscribe` (the packets that change the broker's state),
//! `hibernate` (idle connections: parking without a task, or hibernating in it) and
//! `close` (last words, write deadlines, releasing the session). The deadlines of idle
//! connections and of sessions without one are the timer service's (`timers`).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::BytesMut;
use mqtt_codec::{Decoder, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::{sessions::SessionHandle, shared::Shared};

mod active_loop;
mod close;
mod coalesce;
mod enhanced;
mod handshake;
mod hibernate;
mod locked;
mod publish;
mod subscribe;

pub(crate) use close::log_end;
pub(crate) use enhanced::EnhancedAuth;
pub(crate) use handshake::Handshaking;
#[cfg(unix)]
pub(crate) use hibernate::park_tcp;
pub(crate) use locked::{Locked, Unsplit};
pub(crate) use publish::will_message;
pub(crate) use subscribe::{check_filter, subscribe, unsubscribe};
use {
    active_loop::{Fed, feed, run_loop},
    close::{Outgoing, detach, flush_last, last_words, release},
    handshake::open,
    hibernate::hibernate,
    publish::publish,
};

/// Read buffer size while idle; it grows for large packets, and for busy connections up
/// to [`MAX_READ_CHUNK`].
pub(crate) const READ_CHUNK: usize = 512;

/// The most a busy connection reads at once. A read that fills the space it was given
/// doubles the next one's, from [`READ_CHUNK`] up to this: a publisher of 1 KiB messages
/// then takes about 30 per read (and its subscribers get as many per write) instead of
/// two reads per message. Measured (fan-in 16→1, 1 KiB, QoS 1, broker CPU s per million):
/// 2.2 at 8 KiB, 1.43 at 16 KiB, 1.25 at 32 KiB, 1.25 at 64 KiB; the kernel's work per
/// system call is most of a large message's cost. Half of `owned::LARGE_BUFFER`, so
/// that the messages read are not copied; one an online subscriber holds pins at most
/// this much of what the client sent (offline sessions and the retained store copy).
pub(crate) const MAX_READ_CHUNK: usize = 32 * 1024;

/// What a hibernating connection reads before it has a read buffer.
pub(crate) const FIRST_READ: usize = 16;

/// How long a new connection waits in its task (hibernating, holding no buffer) for its
/// client's first packets after CONNACK, before it may park.
const FIRST_INPUT_GRACE_MS: u64 = 500;

/// How many new connections may wait out FIRST_INPUT_GRACE_MS at once; beyond, they
/// park at once (a burst of connections then costs what it did without the grace).
const GRACE_SLOTS: usize = 1024;

/// After this long without traffic a connection gives back the memory of its buffers
/// and its session's queues.
pub(crate) const IDLE_SHRINK: std::time::Duration = std::time::Duration::from_secs(5);

/// Stop taking packets from the session once this much is waiting to be written: the
/// rest stays in the session's bounded queue until the socket drains.
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// The largest PUBLISH payload copied into a write buffer; larger ones are written from
/// where they are (`Outgoing`, vectored writes), and QoS 0 messages that large are not
/// encoded once for all their subscribers, which copies the packet for each (the
/// session's queue holds one reference to the message per subscriber instead). A copy
/// of this much costs about what the extra trip through the session does.
pub(crate) const WRITE_COPY_MAX: usize = 4 * 1024;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed the socket.
    Lost,
    /// The socket failed (a read or write error).
    Failed(std::io::Error),
    /// A write made no progress for `limits.write_timeout` (this many seconds).
    Stalled(u64),
    /// The session asked to close: the client's DISCONNECT, or the broker's (protocol
    /// error, keep-alive timeout, an administrator's kick). Boxed: `End` is held by
    /// the small futures of idle connections.
    Closed(Box<Closing>),
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

/// Who closed a connection through the protocol, and why.
#[derive(Debug)]
pub(crate) enum Closing {
    /// The client sent DISCONNECT with this reason code.
    Client(mqtt_codec::ReasonCode),
    /// The broker closed it with this reason code (sent in DISCONNECT to 5.0 clients),
    /// and what the client did wrong, when that was a protocol error.
    Server(mqtt_codec::ReasonCode, Option<Box<str>>),
}

impl std::fmt::Display for End {
    /// The reason as the disconnection's log line gives it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use mqtt_codec::ReasonCode;
        match self {
            Self::Lost => f.write_str("closed by the client"),
            Self::Failed(e) => write!(f, "socket error: {e}"),
            Self::Stalled(secs) => write!(
                f,
                "write timeout: the client read nothing for {secs} s (limits.write_timeout)"
            ),
            Self::Closed(c) => match &**c {
                Closing::Client(code) => write!(f, "client DISCONNECT: {code}"),
                Closing::Server(code, why) => {
                    match *code {
                        ReasonCode::KEEP_ALIVE_TIMEOUT => f.write_str("keep-alive timeout"),
                        ReasonCode::ADMINISTRATIVE_ACTION => {
                            f.write_str("kicked by an administrator")
                        }
                        ReasonCode::NOT_AUTHORIZED => f.write_str("not authorized"),
                        _ if why.is_some() => write!(f, "protocol error: {code}"),
                        _ => write!(f, "closed by the broker: {code}"),
                    }?;
                    match why {
                        Some(why) => write!(f, ": {why}"),
                        None => Ok(()),
                    }
                }
            },
            Self::TakenOver => f.write_str("session taken over by a new connection"),
            Self::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// A connection's byte stream, whose read and write sides each stage borrows at once.
///
/// A TCP stream splits into borrowed halves for free (`TcpStream::split`); its owned
/// halves (`into_split`) would cost every connection a 56-byte shared allocation.
/// Streams that cannot split (TLS, WebSocket) go behind [`Locked`], whose halves share
/// the stream through a lock that is never contended (`tokio::io::split` would add a
/// shared allocation per stage).
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
        park_tcp(conn, false)
    }
}

/// A stream that can be parked as a bare TCP socket (see `parking`) and rebuilt from
/// it when revived: TCP itself, and WebSocket on TCP (parked between frames).
#[cfg(unix)]
pub(crate) trait Resumable: Duplex + Sized {
    /// The stream around a socket back from parking.
    fn resumed(stream: tokio::net::TcpStream, shared: &Shared) -> Self;
}

#[cfg(unix)]
impl Resumable for tokio::net::TcpStream {
    fn resumed(stream: tokio::net::TcpStream, _: &Shared) -> Self {
        stream
    }
}

/// What the listener learnt about a connection before its first MQTT byte, and what it
/// holds for it until CONNECT is through.
pub(crate) struct Origin {
    /// The client's address (from the PROXY protocol header, if the listener takes one).
    pub(crate) peer: SocketAddr,
    /// The listener, TLS or not, WebSocket or not, a verified client certificate.
    pub(crate) transport: crate::auth::Transport,
    /// The client certificate's name, when the listener makes it the user name.
    pub(crate) identity: Option<String>,
    /// The listener makes the certificate's name the user name (`identity`; none: the
    /// client is refused).
    pub(crate) certificate_is_username: bool,
    /// When CONNECT must have been read (`limits.connect_timeout` after the socket was
    /// accepted: the TLS and WebSocket handshakes and the PROXY header included).
    pub(crate) deadline: tokio::time::Instant,
    /// Counts the socket as not through CONNECT yet.
    pub(crate) handshaking: Handshaking,
    /// Its place on its listener, against the listener's `max_connections`.
    pub(crate) slot: Option<crate::listener::ListenerSlot>,
}

impl Origin {
    /// A TCP connection accepted now on listener 0, for tests and fuzzing.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn tcp(shared: &Arc<Shared>, peer: SocketAddr) -> Self {
        Self {
            peer,
            transport: crate::auth::Transport::new(0, crate::auth::TransportKind::Tcp),
            identity: None,
            certificate_is_username: false,
            deadline: tokio::time::Instant::now() + shared.live.connect_timeout(),
            handshaking: Handshaking::new(shared),
            slot: None,
        }
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
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) generation: u64,
    pub(crate) version: ProtocolVersion,
    pub(crate) stream: S,
    pub(crate) decoder: Decoder,
    /// Its place on its listener (with a `max_connections` of its own), given back when
    /// the connection ends.
    pub(crate) slot: Option<crate::listener::ListenerSlot>,
}

/// Serves one socket accepted on the listener of index `listener` (in
/// `Config::listeners`) until it closes.
///
/// Every stage but hibernation runs boxed and owns what it needs (read buffer, held
/// deliveries), so the task itself stays small: a future is as large as its largest
/// await point plus what lives across all of them, and the idle one is what most
/// connections sit in. The arguments go straight into the boxed CONNECT stage, so the
/// task keeps a pointer to it rather than the arguments themselves.
pub(crate) fn serve<S: Duplex>(
    shared: Arc<Shared>,
    stream: S,
    origin: Origin,
) -> impl Future<Output = ()> {
    let open = Box::pin(open(shared, stream, origin));
    async move {
        // The connection moves into `live` in a scope of its own, so that the future
        // does not keep it twice.
        let living = match open.await {
            Some((conn, rbuf)) => live(conn, rbuf, true, None),
            None => return,
        };
        living.await;
    }
}

/// Serves a connection parked without a task (see `parking`), woken by its socket or
/// its session's signal, from where `hibernate` would have gone on.
#[cfg(unix)]
pub(crate) async fn resume<S: Resumable>(
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
        slot,
        ..
    } = *parked;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => S::resumed(stream, &shared),
        Err(e) => {
            debug!(client = %handle.client_id, error = %e, "a parked connection could not resume");
            log_end(&shared, &handle.client_id, &End::Failed(e));
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            release(&shared, &handle, generation, &End::Lost);
            return;
        }
    };
    // The connection moves into `live` in a scope of its own, so that this future does
    // not keep a second place for it.
    let living = {
        let conn = Conn {
            shared,
            handle,
            generation,
            version,
            stream,
            decoder,
            slot,
        };
        let ended = woken(&conn, alarm.map(|(at, _)| at)).err();
        live(conn, BytesMut::new(), false, ended)
    };
    living.await;
}

/// A connection's life after CONNECT: active stretches, and idle ones parked (when the
/// stream can park) or hibernating in the task, until it ends; or, `ended`, only its
/// end (a revived connection that was taken over meanwhile). (Not an `async fn`, which
/// would keep its arguments twice.)
#[allow(clippy::manual_async_fn)]
pub(crate) fn live<S: Duplex>(
    mut conn: Conn<S>,
    mut rbuf: BytesMut,
    mut first_stretch: bool,
    ended: Option<End>,
) -> impl Future<Output = ()> {
    async move {
        if let Some(end) = ended {
            Box::pin(detach(&mut conn, end)).await;
            return;
        }
        // A new connection waits for its client's first packets in its own task for
        // FIRST_INPUT_GRACE_MS before it may park: most clients subscribe or publish right
        // after CONNACK, and a parked connection takes a thread hop to read them, which
        // let a later PUBLISH from another client overtake this one's SUBSCRIBE.
        let mut grace = first_stretch;
        let end = loop {
            // The active state (buffers, a select over several futures: over a kilobyte)
            // lives on the heap only while the connection is active; an idle connection's
            // task holds just the small `hibernate` future, or is gone, parked.
            let active = Box::pin(active(&mut conn, rbuf, std::mem::take(&mut first_stretch)));
            if !active.await {
                return;
            }
            // At most GRACE_SLOTS connections wait so at once: in a burst of new
            // connections the rest park at once, and the burst leaves no peak behind.
            if std::mem::take(&mut grace) {
                let in_grace = &conn.shared.stats.in_grace;
                if in_grace.fetch_add(1, Ordering::Relaxed) < GRACE_SLOTS {
                    let woke = hibernate(&mut conn, true).await;
                    conn.shared.stats.in_grace.fetch_sub(1, Ordering::Relaxed);
                    match woke {
                        // Input: back to work. Woken by the grace's end or a signal: on
                        // to parking, which finds out whether there is something to send.
                        Ok(Some(read)) => {
                            rbuf = read;
                            continue;
                        }
                        Ok(None) => {}
                        Err(end) => break end,
                    }
                } else {
                    in_grace.fetch_sub(1, Ordering::Relaxed);
                }
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
            match hibernate(&mut conn, false).await {
                Ok(read) => rbuf = read.unwrap_or_default(),
                Err(end) => break end,
            }
        };
        Box::pin(detach(&mut conn, end)).await;
    }
}

/// One active stretch of a connection, from `rbuf` (bytes read and not yet decoded) on:
/// true when it goes idle (holding nothing: no bytes, no held delivery), false when the
/// connection is over and has been detached.
pub(crate) async fn active<S: Duplex>(
    conn: &mut Conn<S>,
    mut rbuf: BytesMut,
    first_stretch: bool,
) -> bool {
    let step = {
        let Conn {
            shared,
            handle,
            generation,
            version,
            stream,
            decoder,
            ..
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
pub(crate) fn woken<S>(conn: &Conn<S>, alarm: Option<mqtt_session::Instant>) -> Result<(), End> {
    let mut cell = conn.handle.lock();
    if cell.generation != conn.generation {
        drop(cell);
        conn.handle.notify.notify_one();
        return Err(End::TakenOver);
    }
    let now = conn.shared.now();
    if alarm.is_some_and(|at| now >= at) {
        cell.handle_timeout(now);
    }
    Ok(())
}

/// How an active stretch of a connection ended.
#[derive(Debug)]
pub(crate) enum Step {
    /// The connection is over.
    Ended(End),
    /// Nothing happened for IDLE_SHRINK, or nothing after CONNACK: hibernate until
    /// something does.
    Idle,
}

#[cfg(test)]
mod tests;
