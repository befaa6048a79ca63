//! The end of a connection: last words read by the client, write deadlines, and
//! releasing the session, whose timers (will delay, expiry) the timer service runs from
//! then on (see `timers`).

use std::{
    io::IoSlice,
    sync::{Arc, atomic::Ordering},
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{Disconnect, Packet, ProtocolVersion, ReasonCode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};
use tracing::{debug, info};

use crate::{sessions::SessionHandle, shared::Shared};

use super::*;

/// Writes what the session still has to send; true if anything was written.
pub(crate) async fn flush_last<W: AsyncWrite + Unpin>(
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

/// The connection is over: release the session, whose timers (will delay, session
/// expiry) run while it has no connection.
pub(crate) async fn detach<S: Duplex>(conn: &mut Conn<S>, end: End) {
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
        End::Lost | End::Failed(_) | End::Stalled(_) | End::Closed(_) => {}
    }
    if !out.is_empty()
        && write_or_stall(&mut wr, &out, shared.write_timeout())
            .await
            .is_ok()
    {
        last_words(&mut rd, &mut wr).await;
    }
    // Bounded: a TLS or WebSocket layer may still owe bytes a client that stopped
    // reading never takes.
    let _ = timeout(DRAIN, wr.shutdown()).await;
    log_end(shared, &handle.client_id, &end);
    if !matches!(end, End::TakenOver) {
        release(shared, handle, generation, &end);
    }
}

/// The disconnection's log line: the client and why (`info`, or `debug` with
/// `log.connections = false`).
pub(crate) fn log_end(shared: &Shared, client: &str, end: &End) {
    if shared.live.log_connections() {
        info!(client = %client, "disconnected: {end}");
    } else {
        debug!(client = %client, "disconnected: {end}");
    }
}

/// Tells the session its connection `generation` is gone (unless taken over
/// meanwhile), and hands its timers to the timer service: what is due at once (a will
/// without a delay) is done here, the rest when its deadline passes, unless a new
/// connection takes the session first.
pub(crate) fn release(
    shared: &Arc<Shared>,
    handle: &Arc<SessionHandle>,
    generation: u64,
    _end: &End,
) {
    {
        let mut cell = handle.lock();
        if cell.generation != generation {
            return;
        }
        let now = shared.now();
        cell.restore_encoded(now);
        cell.session.connection_lost(now);
        // Messages this connection read and did not route: unacknowledged, they are
        // its client's to send again. Their QoS 2 identifiers are released, so that
        // those resends are taken as new messages, not as duplicates of messages never
        // routed.
        if cell.session.forget_received() > 0 {
            forget_released_unrouted(&mut cell);
        }
        shared.record_session_and_messages(handle, &mut cell, false);
        // A session that outlives its connection keeps what it holds, not the capacity
        // of the queues it used: an offline session with nothing queued keeps no queues.
        cell.session.shrink_idle();
        shared.account(&mut cell);
    }
    crate::timers::offline(shared, handle, Some(generation));
}

/// How long a closing connection reads (and discards) what the client still sends, so
/// that it gets to read our last packet.
pub(crate) const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes like a server that wants its last words read: after the DISCONNECT (or
/// whatever was written last), the write side is shut down (FIN), and what the client
/// still sends is read and discarded until it closes too or [`DRAIN`] passes. Closing
/// with unread input would send a reset instead, and a client writing at that moment
/// could lose the reason code before reading it.
pub(crate) async fn last_words<R, W>(rd: &mut R, wr: &mut W)
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

/// What a flush has for the socket: encoded packets, and the payloads of large PUBLISH
/// packets, which are not copied after their head but written from where they are (the
/// read buffer they came in), in one vectored write with the rest. A 16 KiB message
/// was copied twice on its way out (encoded into the write buffer, and into the
/// subscriber's buffer of encoded packets), which was most of the broker's own
/// instructions for it.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// The encoded packets, payloads of the large ones left out.
    pub(crate) buf: BytesMut,
    /// Payloads to write after `buf[..at]`, as `(at, payload)`, in order.
    tails: Vec<(usize, Bytes)>,
    /// Their bytes.
    tail_len: usize,
}

impl Outgoing {
    /// Bytes to write.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() + self.tail_len
    }

    /// Whether there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.tails.is_empty()
    }

    /// Encodes `packet` for `version`; the payload of a PUBLISH of `WRITE_COPY_MAX`
    /// bytes or more stays where it is when the stream takes vectored writes.
    #[inline]
    pub(crate) fn push(
        &mut self,
        packet: &Packet,
        version: ProtocolVersion,
        vectored: bool,
    ) -> Result<(), mqtt_codec::EncodeError> {
        match packet {
            Packet::Publish(publish) if vectored && publish.payload.len() >= WRITE_COPY_MAX => {
                publish.borrowed().encode_head(version, &mut self.buf)?;
                self.tail_len += publish.payload.len();
                self.tails.push((self.buf.len(), publish.payload.clone()));
                Ok(())
            }
            packet => packet.encode(version, &mut self.buf).map(drop),
        }
    }

    /// Forgets what was written, keeping the buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.tails.clear();
        self.tail_len = 0;
    }

    /// Writes everything, as [`write_or_stall`] does.
    pub(crate) async fn write_or_stall<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        stall: std::time::Duration,
    ) -> std::io::Result<()> {
        if self.tails.is_empty() {
            return write_or_stall(wr, &self.buf, stall).await;
        }
        let mut slices = Vec::with_capacity(2 * self.tails.len() + 1);
        let mut at = 0;
        for (until, payload) in &self.tails {
            if let Some(part) = self.buf.get(at..*until).filter(|p| !p.is_empty()) {
                slices.push(IoSlice::new(part));
            }
            slices.push(IoSlice::new(payload));
            at = *until;
        }
        if let Some(rest) = self.buf.get(at..).filter(|r| !r.is_empty()) {
            slices.push(IoSlice::new(rest));
        }
        let mut left = self.len();
        let mut slices = &mut slices[..];
        while left > 0 {
            match ready_or_timeout(stall, wr.write_vectored(slices)).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) if n <= left => {
                    left -= n;
                    IoSlice::advance_slices(&mut slices, n);
                }
                Ok(Ok(_)) => return Err(std::io::ErrorKind::InvalidData.into()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(stalled(stall)),
            }
        }
        flush_or_stall(wr, stall).await
    }
}

/// Writes all of `buf`, or fails when the client takes nothing of it for `stall`: a
/// client that stops reading cannot pin its connection (task, socket, queue) for ever.
pub(crate) async fn write_or_stall<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut buf: &[u8],
    stall: std::time::Duration,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        match ready_or_timeout(stall, wr.write(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => buf = buf.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled(stall)),
        }
    }
    flush_or_stall(wr, stall).await
}

/// Runs `io` to completion, or gives up after `stall`. The timer is armed only when
/// `io` cannot complete at once: a socket with room takes the write on the first poll,
/// and a timer per write (a clock reading and an entry in the timer wheel) would cost
/// more than the write's own bookkeeping at one message a wake-up.
async fn ready_or_timeout<F: Future>(
    stall: std::time::Duration,
    io: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut io = std::pin::pin!(io);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(io.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => timeout(stall, io).await,
    }
}

/// Flushes `wr`, or fails after `stall`.
async fn flush_or_stall<W: AsyncWrite + Unpin>(
    wr: &mut W,
    stall: std::time::Duration,
) -> std::io::Result<()> {
    // TLS and WebSocket streams may hold back what they took (a record, a frame) until
    // flushed. A TCP stream's flush does nothing and is ready at once: no timer.
    ready_or_timeout(stall, wr.flush())
        .await
        .unwrap_or_else(|_| Err(stalled(stall)))
}

fn stalled(stall: std::time::Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the client read nothing for {} s", stall.as_secs()),
    )
}

/// After [`ServerSession::forget_received`](mqtt_session::ServerSession::forget_received):
/// the store's list of QoS 2 identifiers received but not yet routed keeps only those
/// still awaiting PUBREL (another connection's, routing still).
pub(crate) fn forget_released_unrouted(cell: &mut crate::sessions::SessionCell) {
    let session = &cell.session;
    if let Some(x) = cell.extra.as_mut() {
        x.unrouted.retain(|&id| session.awaits_pubrel(id));
    }
    cell.shrink_extra();
}
