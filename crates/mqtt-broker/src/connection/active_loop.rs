//! The active loop: flush what the session sends, act on its events, write, then wait
//! for input, a wake-up or the timer.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    task::Poll,
};

use bytes::BytesMut;
use mqtt_codec::{Decoder, Packet, ProtocolVersion, QoS, ReasonCode};
use mqtt_session::{DropReason, Event};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    time::{Instant, sleep_until},
};
use tracing::{debug, warn};

use crate::{logging::Summary, retained::pump_retained, sessions::SessionHandle, shared::Shared};

use super::*;

/// One in this many batches with QoS 1/2 PUBLISH packets has its acknowledgement
/// latency measured: two clock readings, for a histogram, not for every batch.
const ACK_SAMPLE: u32 = 16;

/// Messages a connection routes before it lets other tasks on its thread run: well
/// under a subscriber's default queue (`limits.max_queued_messages`, 1,000), so that a
/// subscriber on the same thread takes its share before its queue fills.
const ROUTED_PER_YIELD: usize = 256;

/// PUBLISH packets decoded into the session at a time: the rest of what a read brought
/// waits in the read buffer until these are routed. Each message decoded waits in the
/// session's event queue and then in the loop's (about 190 bytes in all), and a busy
/// publisher's read holds up to a thousand: its queues then took kilobytes that every
/// batch wrote afresh, and with many connections (1000 pairs) that memory was cold each
/// time (callgrind's cache simulation with a 2 MiB last level: 2.6 write misses per
/// message there). In batches of this many the same few hundred bytes are reused while
/// they are in the cache. The acknowledgements of a read still go out in one write.
const DECODE_BATCH: usize = 32;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_loop<R, W>(
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
    let mut out = Outgoing::default();
    // Large payloads go out from where they are, in vectored writes, where the stream
    // takes those (TCP; see `Outgoing`).
    let vectored = wr.is_write_vectored();
    let mut events = Vec::new();
    let mut routes = crate::router::Routes::default();
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
    // The input of this batch came with a wake-up from the I/O driver (as what a
    // hibernating or parked connection read before going active did).
    let mut yield_before_routing = !rbuf.is_empty();
    // Woken by the session's signal (something to send) after a flush that sent more
    // than one packet: a busy subscriber, which yields once before it flushes (below).
    let mut yield_before_flush = false;
    let mut last_flush = 0u64;
    let mut coalescing = coalesce::Coalescing::default();
    // The acknowledgements of the PUBLISH packets of a batch, decided as they are routed.
    let mut verdicts = Vec::new();
    // How much the next read asks for: grows while reads fill it (see MAX_READ_CHUNK).
    let mut chunk = READ_CHUNK;
    // Messages routed since this task last let others run (see ROUTED_PER_YIELD).
    let mut routed_since_yield = 0usize;
    // Who the client is, for authorization: fixed for the connection, taken at the
    // first flush.
    let mut principal = None;
    // Why the session asked to close, once it has (see `End::Closed`).
    let mut closing = None;
    let mut why = None;
    // Batches with QoS 1/2 PUBLISH packets, of which one in ACK_SAMPLE has the time to
    // its acknowledgements measured (`Stats::ack_latency`), from when it is routed.
    let mut ack_batches: u32 = 0;
    let mut ack_started: Option<std::time::Instant> = None;
    // `sync` persistence (docs/durability.md): the acknowledgements of a batch wait,
    // while the loop goes on reading, for the commit holding what the batch changed;
    // and a write with this session's QoS 2 exchange moving on, or with the SUBACK of
    // subscriptions the store keeps, waits for the commit holding its state. `None`
    // (memory, batch): nothing waits.
    let mut commits = shared.commits.clone();
    let mut held: VecDeque<(
        crate::store::Ticket,
        QoS,
        Option<mqtt_codec::PacketId>,
        ReasonCode,
    )> = VecDeque::new();
    let mut hold_write = false;
    // The capacity of the buffer the bytes in `rbuf` were read into (see `feed`).
    let mut read_into = rbuf.capacity();
    // Bytes already read (behind CONNECT, or on waking) may hold more packets.
    let mut undecoded = match feed(shared, handle, generation, decoder, rbuf, read_into, chunk) {
        Fed::TakenOver => return Step::Ended(End::TakenOver),
        fed => fed == Fed::Batch,
    };
    loop {
        if shared.is_shutting_down() {
            return Step::Ended(End::Shutdown);
        }
        // A writer woken by its session's signal after a flush of more than one packet (a
        // busy subscriber) lets the other tasks ready on its thread run once before it
        // flushes: the signal put it first in line (tokio's LIFO slot), ahead of publishers
        // whose input is already read, and it would write each one's batch on its own.
        // Fan-in 16 -> 1 at QoS 0 then writes 5.5 times per 1,000 messages instead of 20.
        // Fan-out 1 -> 100 is where it matters most: each subscriber's write carries what
        // its publisher's reads brought meanwhile, and the generator, reading 100 sockets,
        // keeps pace only while those writes are large. An earlier policy stopped yielding
        // for 64 to 1,024 flushes after two yields in a row that brought nothing (a
        // subscriber of one publisher gains nothing by them): fan-out fell into small
        // writes, 5 messages each, and cost 0.23-0.32 CPU s per million deliveries where
        // yielding every time costs 0.11-0.17, while 1000 pairs, fan-in and shared
        // subscriptions cost the same either way (docs/benchmarks.md).
        //
        // A subscriber of a sustained stream of small batches waits longer, for the
        // timer's next tick (`coalesce`).
        if std::mem::take(&mut yield_before_flush) {
            if shared.live.coalesce_writes() && coalescing.should_wait(shared.elapsed()) {
                shared
                    .stats
                    .writes_coalesced
                    .fetch_add(1, Ordering::Relaxed);
                // Cut short by a signal: a delivery through the session's queue, or
                // encoded packets past half of what may wait (`router::ENCODED_BYTES`).
                tokio::select! {
                    biased;
                    () = handle.notify.notified() => {}
                    () = tokio::time::sleep(coalesce::WAIT) => {}
                }
                // The signal this wait took may have been the broker's stop, which is
                // looked for only at the top of the loop.
                if shared.is_shutting_down() {
                    return Step::Ended(End::Shutdown);
                }
            } else if last_flush > 1 {
                tokio::task::yield_now().await;
            }
        }
        // 1. Flush: take what the session has to send and its events, under the lock.
        let mut more = false;
        // One clock reading for the turn: the session's flush and the routing below take
        // the same time unless the task yields between them.
        let elapsed = shared.elapsed();
        let mut now = Shared::session_time(elapsed);
        let deadline = {
            let mut cell = handle.lock();
            if cell.generation != generation {
                // The signal that woke this loop may have been meant for the connection
                // that took over: pass it on.
                drop(cell);
                handle.notify.notify_one();
                return Step::Ended(End::TakenOver);
            }
            if principal.is_none() {
                principal = Some(cell.principal.clone());
            }
            // A deadline that passed (the token's, or keep-alive's) is acted on here too:
            // a client whose input never runs dry never lets this loop reach its wait,
            // where the timer is.
            if cell.session.poll_timeout().is_some_and(|at| now >= at) {
                cell.handle_timeout(now);
            }
            // Counted here and added once: the counters are shared by every connection.
            // Packets encoded for many subscribers go first: the session had no QoS 0
            // message queued and no control packet waiting when they came (see
            // `ServerSession::takes_encoded_publish`).
            let before = out.len();
            let encoded = u64::from(cell.take_encoded(&mut out.buf));
            let mut sent_qos = [encoded, 0, 0];
            let mut sent_bytes = [(out.len() - before) as u64, 0, 0];
            if encoded > 0 {
                debug!(client = %handle.client_id, count = encoded, "sent QoS 0 PUBLISH packets encoded for all their subscribers");
            }
            let (mut publishes, mut packets) = (encoded, encoded);
            let mut qos2_flow = false;
            while let Some(p) = cell.session.poll_transmit(now) {
                if commits.is_some() {
                    qos2_flow |= match &p {
                        Packet::PubRel(_) | Packet::PubComp(_) => true,
                        Packet::Publish(p) => p.qos_pid.qos() == QoS::ExactlyOnce,
                        _ => false,
                    };
                }
                if let Packet::Publish(publish) = &p {
                    publishes += 1;
                    let qos = publish.qos_pid.qos() as usize;
                    if let (Some(n), Some(b)) = (sent_qos.get_mut(qos), sent_bytes.get_mut(qos)) {
                        *n += 1;
                        *b += publish.payload.len() as u64;
                    }
                }
                packets += 1;
                debug!(client = %handle.client_id, "sent {}", Summary(&p));
                if out.push(&p, version, vectored).is_err() {
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
            last_flush = packets;
            if packets > 0 {
                let qos0_only =
                    sent_qos[1] + sent_qos[2] == 0 && cell.session.pending_messages() == 0;
                coalescing.wrote(elapsed, packets, out.len() - before, qos0_only);
                shared
                    .stats
                    .messages_sent
                    .fetch_add(packets, Ordering::Relaxed);
                if publishes > 0 {
                    shared
                        .stats
                        .publish_sent
                        .fetch_add(publishes, Ordering::Relaxed);
                    shared.stats.add_by_qos(sent_qos, sent_bytes, false);
                }
            }
            let mut polled = 0usize;
            while let Some(e) = cell.session.poll_event() {
                polled += 1;
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
                    e @ Event::Closed { .. } => {
                        why = why.or(cell.take_close_why());
                        events.push(e);
                    }
                    e => events.push(e),
                }
            }
            if shared.durable && (packets > 0 || polled > 0) {
                shared.session_changed(handle, &cell);
                hold_write |= qos2_flow && cell.recorded.is_some();
            }
            if shared.pages {
                shared.page_in_if_low(handle, &mut cell);
            }
            shared.account(&mut cell);
            cell.session.poll_timeout()
        };
        if !events.is_empty() {
            settle = false;
        }
        // 2. Act on events outside the session lock (after a yield if the input came
        // with a wake-up: see the read below).
        if std::mem::take(&mut yield_before_routing)
            && events.iter().any(|e| matches!(e, Event::Message(..)))
        {
            tokio::task::yield_now().await;
            now = shared.now();
        }
        let mut again = false;
        let mut closed = false;
        let mut received = 0;
        let (mut received_qos, mut received_bytes) = ([0u64; 3], [0u64; 3]);
        // Topics are counted only while a dashboard watches.
        let sample_topics = shared.dashboard.watching();
        // A durable store commits the copies of these messages together with the
        // packet identifiers of the QoS 2 ones (`CellExtra::unrouted`): both or
        // neither, or a crash could lose a message its publisher will not send again,
        // or deliver twice one it will.
        {
            let group = if shared.durable && events.iter().any(|e| matches!(e, Event::Message(..)))
            {
                shared.store.group()
            } else {
                None
            };
            for event in events.drain(..) {
                match event {
                    Event::Message(m, arrival) => {
                        received += 1;
                        let qos = m.qos;
                        if sample_topics {
                            shared.dashboard.sample(&m.topic);
                        }
                        if let (Some(n), Some(b)) = (
                            received_qos.get_mut(qos as usize),
                            received_bytes.get_mut(qos as usize),
                        ) {
                            *n += 1;
                            *b += m.payload.len() as u64;
                        }
                        if qos != QoS::AtMostOnce && verdicts.is_empty() {
                            // The first QoS 1/2 message of the batch: sampled?
                            if ack_batches % ACK_SAMPLE == 0 {
                                ack_started = Some(std::time::Instant::now());
                            }
                            ack_batches = ack_batches.wrapping_add(1);
                        }
                        let verdict = publish(
                            shared,
                            handle,
                            principal.as_ref().and_then(Option::as_deref),
                            m,
                            &mut routes,
                            now,
                        );
                        if qos != QoS::AtMostOnce {
                            verdicts.push((qos, arrival.packet_id, verdict));
                        }
                    }
                    Event::Subscribe(s) => {
                        // The SUBACK, queued in the session now, is written at the next
                        // flush: this batch's write waits for the commit first (below).
                        let kept = subscribe(shared, handle, generation, version, &s, &mut backlog);
                        hold_write |= kept && commits.is_some();
                        again = true;
                    }
                    Event::Unsubscribe(u) => {
                        // As SUBACK: the UNSUBACK waits for the commit (below).
                        let kept =
                            unsubscribe(shared, handle, generation, version, &u, &mut backlog);
                        hold_write |= kept && commits.is_some();
                        again = true;
                    }
                    Event::PeerDisconnected(d) => {
                        closing.get_or_insert(Closing::Client(d.reason_code));
                        closed = true;
                    }
                    Event::Closed { reason } => {
                        closing.get_or_insert(Closing::Server(reason, why.take()));
                        closed = true;
                    }
                    // 5.0 re-authentication ([MQTT-4.12.1-1]): answered or refused in the
                    // session, written below.
                    Event::Auth(auth) => {
                        enhanced::reauthenticate(shared, handle, generation, *auth);
                        again = true;
                    }
                    // The will of a connection this one replaced ([MQTT-3.1.2-8]).
                    Event::Will(will) => {
                        shared.route(handle.key, will_message(*will), &mut routes, now);
                    }
                    _ => {}
                }
            }
            if group.is_some() {
                let mut cell = handle.lock();
                // Not after a takeover: what is listed then is the new connection's.
                let own = cell.generation == generation;
                if let Some(extra) = cell
                    .extra
                    .as_mut()
                    .filter(|e| own && !e.unrouted.is_empty())
                {
                    // Routed: the identifiers are written with the next export, in the
                    // commit that holds the copies (or a later one).
                    extra.unrouted.clear();
                    shared.session_changed(handle, &cell);
                }
            }
        }
        if !verdicts.is_empty() && commits.is_some() {
            // Held until the commit holding what they changed (docs/durability.md).
            let ticket = shared.store.ticket();
            held.extend(
                verdicts
                    .drain(..)
                    .map(|(qos, packet_id, reason)| (ticket, qos, packet_id, reason)),
            );
        }
        if !held.is_empty() {
            if let Some(rx) = &mut commits {
                let c = *rx.borrow_and_update();
                while let Some(&(ticket, qos, packet_id, reason)) = held.front() {
                    if c.covers(ticket) {
                        verdicts.push((qos, packet_id, reason));
                    } else if c.failed(ticket) && version.is_v5() {
                        // Not on disk: 5.0 says so; 3.x waits for the retry.
                        let reason = if reason.is_error() {
                            reason
                        } else {
                            ReasonCode::QUOTA_EXCEEDED
                        };
                        verdicts.push((qos, packet_id, reason));
                    } else {
                        break;
                    }
                    held.pop_front();
                }
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
            } else {
                // Taken over meanwhile: no acknowledgement on the new connection, but a
                // refused QoS 2 message frees its identifier all the same.
                for (qos, packet_id, reason) in verdicts.drain(..) {
                    cell.session.settle_publish_unsent(qos, packet_id, reason);
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
            shared.stats.add_by_qos(received_qos, received_bytes, true);
            // A publisher whose input never runs dry would otherwise route for as long
            // as tokio's budget of reads lasts (with large reads, tens of thousands of
            // messages), while its subscribers' tasks wait on this thread and their
            // queues fill.
            routed_since_yield += received as usize;
            if routed_since_yield >= ROUTED_PER_YIELD {
                routed_since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        // Retained messages of new subscriptions, as the session's queue has room.
        if !backlog.is_empty() && pump_retained(shared, handle, &mut backlog) {
            again = true;
        }
        // The rest of the read, a batch at a time (see DECODE_BATCH).
        let decoding = std::mem::take(&mut undecoded) && !closed;
        if decoding {
            match feed(shared, handle, generation, decoder, rbuf, read_into, chunk) {
                Fed::TakenOver => return Step::Ended(End::TakenOver),
                fed => undecoded = fed == Fed::Batch,
            }
        }
        // 3. Write, after the events were acted on: a message is routed (ownership taken,
        // [MQTT-4.3.2-4], [MQTT-4.3.3-8]) before its acknowledgement goes out, and a write
        // failing on a dying connection cannot lose messages already taken from the
        // session. When the loop comes straight back (the next batch of the read is
        // decoded, or what was acted on has answers to encode), what is ready waits for
        // them, up to a write's worth: a read's acknowledgements go out in one write.
        let mut lost = None;
        let write =
            !out.is_empty() && (closed || !(decoding || again) || out.len() >= WRITE_HIGH_WATER);
        if write && std::mem::take(&mut hold_write) {
            // This session's QoS 2 state (a packet identifier given, PUBREL sent or
            // PUBCOMP answered), or the subscriptions a SUBACK queued since the last
            // flush grants, are on disk before the peer can see it.
            if let Some(rx) = &mut commits {
                let ticket = shared.store.ticket();
                let _ = rx.wait_for(|c| c.covers(ticket)).await;
            }
        }
        if write {
            shared
                .stats
                .bytes_sent
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            lost = match out.write_or_stall(wr, shared.write_timeout()).await {
                Ok(()) => {
                    if let Some(started) = ack_started.take() {
                        shared.stats.ack_latency.observe(started.elapsed());
                    }
                    None
                }
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        shared.stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                        Some(End::Stalled(shared.live.write_timeout_secs()))
                    } else {
                        Some(End::Failed(e))
                    }
                }
            };
            out.clear();
            if out.buf.capacity() > 2 * WRITE_HIGH_WATER {
                // A burst's buffer (a packet larger than a batch) is given back; a busy
                // connection keeps one batch's from batch to batch, which spares it
                // growing again (realloc copies) every time, and gives it back when
                // idle (see below).
                out = Outgoing::default();
            }
        }
        if let Some(end) = lost {
            return Step::Ended(end);
        }
        if closed {
            // Write the DISCONNECT the session may have queued, then close so that the
            // client gets to read it.
            flush_last(shared, handle, generation, version, wr).await;
            last_words(rd, wr).await;
            let closing = closing.unwrap_or(Closing::Server(ReasonCode::UNSPECIFIED_ERROR, None));
            return Step::Ended(End::Closed(Box::new(closing)));
        }
        if again || more || decoding {
            continue;
        }
        if (fresh || (settle && input)) && backlog.is_empty() && rbuf.is_empty() && held.is_empty()
        {
            // A new connection with nothing more to do after CONNACK goes idle at once
            // (it waits for its first packets in its task, see `live`): clients that
            // connect and wait (most, on a broker with many) never hold the active
            // state, and a burst of connections does not leave its peak behind. So does
            // a woken one whose input needed only an answer (`settle`).
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
        // Input already waiting is taken without suspending. Input that comes while this
        // task waits arrives with a wake-up from the I/O driver, which may have readied
        // other connections in the same poll, whose packets were as likely sent first
        // (a new subscriber's SUBSCRIBE, ahead of this client's PUBLISH): before routing
        // what it read, this task then yields once, so that they are taken first, as a
        // single-threaded broker would.
        //
        // The wait below polls its branches in the order written (`biased`), with no
        // random number drawn for every wait: the timer first, which is ready only when
        // due and is then moved on, so that keep-alive and credential expiry are
        // enforced even while a delivery signal is waiting at every wait (a subscriber
        // of a steady stream); then input, then the signal.
        let room = rbuf.capacity() - rbuf.len();
        let ready = {
            let mut read = std::pin::pin!(rd.read_buf(rbuf));
            std::future::poll_fn(|cx| {
                Poll::Ready(match read.as_mut().poll(cx) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                })
            })
            .await
        };
        let read = match ready {
            Some(read) => Some(read),
            None => tokio::select! {
                biased;
                () = &mut timer => {
                    let mut cell = handle.lock();
                    let now = shared.now();
                    // A deadline that passed (the keep-alive) leaves a DISCONNECT and an
                    // event to act on before any shrinking.
                    let due = cell.session.poll_timeout().is_some_and(|at| now >= at);
                    cell.handle_timeout(now);
                    if !due && shrink_at.is_some_and(|at| Instant::now() >= at) {
                        cell.session.shrink_idle();
                        cell.shrink_encoded();
                        drop(cell);
                        if backlog.is_empty() && rbuf.is_empty() && held.is_empty() {
                            return Step::Idle;
                        }
                        if rbuf.is_empty() {
                            *rbuf = BytesMut::new();
                        }
                        chunk = READ_CHUNK;
                        out = Outgoing::default();
                        events = Vec::new();
                        routes = crate::router::Routes::default();
                        shrunk = true;
                    }
                    None
                }
                read = rd.read_buf(rbuf) => {
                    yield_before_routing = true;
                    Some(read)
                }
                () = handle.notify.notified() => {
                    // Not the client's input: a fresh connection still goes idle once
                    // its grace has passed (a stray permit left by the connection it
                    // replaced would otherwise keep it active for IDLE_SHRINK).
                    last_activity = Instant::now();
                    shrunk = false;
                    yield_before_flush = true;
                    None
                }
                () = commit_changed(&mut commits, !held.is_empty()) => None,
            },
        };
        if let Some(read) = read {
            last_activity = Instant::now();
            shrunk = false;
            fresh = false;
            input = true;
            match read {
                Ok(0) => return Step::Ended(End::Lost),
                Err(e) => return Step::Ended(End::Failed(e)),
                Ok(n) => {
                    shared
                        .stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n >= room {
                        // The client had more to say than there was room for.
                        chunk = (chunk * 2).min(MAX_READ_CHUNK);
                    } else if rbuf.len() < room / 4 * 3
                        && room > 2 * READ_CHUNK
                        && rbuf.len() <= MAX_READ_CHUNK
                    {
                        // A buffer a quarter unused or more: what is kept of it (a queued
                        // message) would pin the whole buffer, so the bytes move to one
                        // of their size and the large one is freed (nothing was decoded
                        // from it yet). Reads that fill their buffer, a busy client's,
                        // are not copied, nor the start of a large packet.
                        let mut small = BytesMut::with_capacity(READ_CHUNK.max(rbuf.len()));
                        small.extend_from_slice(rbuf);
                        rbuf.clear();
                        std::mem::swap(rbuf, &mut small);
                    }
                }
            }
            read_into = rbuf.capacity();
            match feed(shared, handle, generation, decoder, rbuf, read_into, chunk) {
                Fed::TakenOver => return Step::Ended(End::TakenOver),
                fed => undecoded = fed == Fed::Batch,
            }
        }
    }
}

/// What [`feed`] did with the bytes read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Every complete packet is in the session, and the buffer has room for the next
    /// read.
    All,
    /// DECODE_BATCH PUBLISH packets are in the session and more bytes wait in the
    /// buffer: route these, then feed again before reading.
    Batch,
    /// Another connection took the session over.
    TakenOver,
}

/// Decodes the complete packets in `rbuf` into the session, up to DECODE_BATCH PUBLISH
/// packets, then, if none is left, makes room for the next read of `chunk` bytes.
/// `buffer` is the capacity of the buffer they were read into (what a kept message
/// would pin, see `owned`).
pub(crate) fn feed(
    shared: &Shared,
    handle: &SessionHandle,
    generation: u64,
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    buffer: usize,
    chunk: usize,
) -> Fed {
    let mut cell = handle.lock();
    if cell.generation != generation {
        return Fed::TakenOver;
    }
    let now = shared.now();
    let mut received = 0;
    let mut publishes = 0;
    // The largest packet in this batch.
    let mut largest = 0;
    loop {
        if publishes == DECODE_BATCH && !rbuf.is_empty() {
            drop(cell);
            shared
                .stats
                .messages_received
                .fetch_add(received, Ordering::Relaxed);
            return Fed::Batch;
        }
        let before = rbuf.len();
        match decoder.decode(rbuf) {
            Ok(Some(mut packet)) => {
                received += 1;
                debug!(client = %handle.client_id, "received {}", Summary(&packet));
                largest = largest.max(before - rbuf.len());
                match &mut packet {
                    Packet::Publish(p) => {
                        publishes += 1;
                        crate::owned::own_publish_from(p, buffer);
                    }
                    Packet::Subscribe(s) => crate::owned::own_subscribe(s),
                    _ => {}
                }
                if matches!(&packet, Packet::Publish(p) if p.retain)
                    && !shared.config.retain.enabled
                    && cell.session.version().is_v5()
                {
                    // [MQTT-3.2.2-14]: CONNACK said Retain Available 0; a retained
                    // PUBLISH is answered with DISCONNECT 0x9A (Retain not supported),
                    // here, where it is known to come from this connection.
                    let why = "retained messages are not supported (Retain Available 0)";
                    cell.session
                        .disconnect_explained(ReasonCode::RETAIN_NOT_SUPPORTED, why);
                    cell.set_close_why(why.into());
                    break;
                }
                // A new inbound QoS 2 message of a persistent session: its packet
                // identifier is not written until its copies are routed (see
                // `CellExtra::unrouted`).
                let new_qos2 = match &packet {
                    Packet::Publish(p) if shared.durable && cell.recorded.is_some() => {
                        p.packet_id().filter(|&id| {
                            p.qos() == QoS::ExactlyOnce && !cell.session.awaits_pubrel(id)
                        })
                    }
                    _ => None,
                };
                let result = cell.session.handle_packet(now, packet);
                if let Some(id) = new_qos2.filter(|&id| cell.session.awaits_pubrel(id)) {
                    cell.extra_mut().unrouted.push(id);
                }
                if let Err(e) = result {
                    cell.session.disconnect(e.reason);
                    cell.set_close_why(match e.rule {
                        Some(rule) => format!("{} [{rule}]", e.what).into(),
                        None => e.what.into(),
                    });
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                // [MQTT-4.13.1-1]: close, with DISCONNECT and the reason in 5.0.
                let why = e.to_string();
                cell.session.disconnect_explained(e.reason_code(), &why);
                cell.set_close_why(why.into());
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
    let keep = 4 * chunk.max(READ_CHUNK);
    if rbuf.is_empty() && (rbuf.capacity() > keep || largest > keep) {
        // A large packet's buffer is given back once it is read.
        *rbuf = BytesMut::with_capacity(chunk);
    } else {
        rbuf.reserve(chunk);
    }
    Fed::All
}

/// Returns when the store's commits move on, if `wanted` (acknowledgements are held);
/// never otherwise.
async fn commit_changed(
    commits: &mut Option<tokio::sync::watch::Receiver<crate::store::Commits>>,
    wanted: bool,
) {
    if let (true, Some(rx)) = (wanted, commits.as_mut()) {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}
