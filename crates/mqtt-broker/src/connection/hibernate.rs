//! Idle connections: parked without a task (TCP, see `parking`), or hibernating in
//! their task with no buffer, until something wakes them.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::Poll,
};

use bytes::BytesMut;
use tokio::io::ReadBuf;
use tracing::debug;

use super::*;

/// Parks an idle TCP connection (see `parking`): its socket leaves tokio for the
/// parking poll, and what the task held goes into the session.
///
/// Parking and reviving happen under the session's lock, and whatever gives the
/// session something to do wakes it through [`Shared::wake`], which revives a parked
/// connection. So a connection parks only if the session has nothing to send at that
/// moment; it does not rely on the session's signal, which may have been taken by the
/// task of a connection taken over or gone (they pass it on, but perhaps too late).
#[cfg(unix)]
pub(crate) fn park_tcp(
    conn: Conn<tokio::net::TcpStream>,
    websocket: bool,
) -> Park<tokio::net::TcpStream> {
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
        slot,
        ..
    } = conn;
    let alarm = cell
        .session
        .poll_timeout()
        .map(|at| (at, shared.timers.alarm(at, &handle)));
    match stream.into_std() {
        Ok(stream) => {
            cell.park(crate::parking::Parking::parked(
                token, stream, generation, version, decoder, alarm, slot, websocket,
            ));
        }
        Err(e) => {
            // The socket is closed (and out of the poll with it).
            drop(cell);
            parking.unregister(token);
            if let Some((at, id)) = alarm {
                shared.timers.cancel_alarm(at, id);
            }
            debug!(client = %handle.client_id, error = %e, "a connection was lost parking");
            log_end(&shared, &handle.client_id, &End::Failed(e));
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            release(&shared, &handle, generation, &End::Lost);
        }
    }
    Park::Done
}

/// Waits, holding no buffer, until the client sends something, the session has
/// something to send, or its timer fires (or, with `grace`, a new connection's
/// FIRST_INPUT_GRACE_MS has passed). `Ok(Some(bytes))`: the client sent something, fed
/// to the session already (the bytes left are a packet's start, perhaps none); `Ok(None)`:
/// a signal woke it. Either way, go active (or, at the end of a grace, try parking). A single signal wakes it for everything but the socket: a publisher, the
/// session's keep-alive deadline (through `Shared::timers`), and shutdown
/// (`Shared::stop_connections`); this keeps the future idle connections sit in small:
/// no select, no timer of its own.
pub(crate) async fn hibernate<S: Duplex>(
    conn: &mut Conn<S>,
    grace: bool,
) -> Result<Option<BytesMut>, End> {
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
        // A new connection's grace (see `live`) ends with a wake-up too.
        let until =
            grace.then(|| shared.now() + mqtt_session::Duration::from_millis(FIRST_INPUT_GRACE_MS));
        match (cell.session.poll_timeout(), until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    let alarm = alarm.map(|at| (at, shared.timers.alarm(at, &conn.handle)));
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
        shared.timers.cancel_alarm(at, id);
    }
    match woke {
        None => woken(conn, alarm.map(|(at, _)| at)).map(|()| None),
        Some(Ok(0)) => Err(End::Lost),
        Some(Err(e)) => Err(End::Failed(e)),
        Some(Ok(n)) => {
            shared
                .stats
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
            let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
            rbuf.extend_from_slice(first.get(..n).unwrap_or_default());
            let buffer = rbuf.capacity();
            // What is left undecoded, the active stage decodes first.
            match feed(
                shared,
                &conn.handle,
                conn.generation,
                &mut conn.decoder,
                &mut rbuf,
                buffer,
                READ_CHUNK,
            ) {
                Fed::TakenOver => Err(End::TakenOver),
                Fed::All | Fed::Batch => Ok(Some(rbuf)),
            }
        }
    }
}
