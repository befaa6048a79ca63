//! The throughput scenarios: publishers and subscribers as a plan, run over real
//! connections, with every delivery checked.
//!
//! Publishers send as fast as the protocol lets them: at QoS 1 and 2 up to `inflight`
//! unacknowledged messages each (the broker's PUBACK or PUBREC frees a slot), at QoS 0
//! as fast as TCP takes them. An optional end-to-end window (`--window`) also limits how
//! far a publisher may run ahead of its subscribers; without it, a broker that cannot
//! keep up must push back or drop, and a drop fails the run.
//!
//! Two limits bound a run further: `--rate` paces the publishers (the total rate split
//! evenly between them, each one's messages spread evenly over time, the publishers
//! offset from one another), and `--duration` stops them after that long; the run then
//! checks and reports what was sent.
//!
//! Pacing needs a finer clock than tokio's timer, whose 1 ms granularity would release
//! a millisecond's messages at once (at 500,000 msg/s, bursts of 500) and measure the
//! broker draining the burst rather than its latency (see the latency module). A
//! [`Pacer`] thread of its own releases messages against [`Instant`] every
//! [`PACE_TICK`] or so, and wakes just the publishers whose turn came; each sends what
//! was released to it in one write.
//!
//! Every payload carries its send time ([`Stamp`]); each subscriber counts the delay
//! to its arrival in a [`Histogram`], so every run reports delivery latency. It means
//! most at a rate the broker keeps up with: saturated, it is mostly queueing.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::{BufMut, BytesMut};
use mqtt_codec::{Packet, PacketId, ProtocolVersion, PubComp, PubRel, QoS};
use tokio::{sync::Notify, task::JoinSet};

use crate::{
    hist::Histogram,
    target::Dialer,
    wire::{self, Conn, Stamp, WireError},
};

/// How often, at most, the pacer releases messages: 10 times finer than tokio's timer,
/// and coarse enough that a publisher at a high rate sends a few messages per write
/// rather than one (a write per message would make the generator the bottleneck).
pub(crate) const PACE_TICK: Duration = Duration::from_micros(100);

/// Who publishes what and who listens.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// One topic per publisher.
    pub(crate) publishers: Vec<String>,
    /// Messages each publisher sends.
    pub(crate) per_publisher: u32,
    /// One filter per subscriber.
    pub(crate) subscribers: Vec<String>,
    /// The subscribers form one shared-subscription group: each message reaches one.
    pub(crate) shared: bool,
    /// Which publishers each subscriber hears (ignored when `shared`).
    pub(crate) hears: Vec<Vec<usize>>,
}

impl Plan {
    /// Deliveries each message of `publisher` makes.
    fn fan(&self, publisher: usize) -> u64 {
        if self.shared {
            1
        } else {
            self.hears.iter().filter(|h| h.contains(&publisher)).count() as u64
        }
    }

    /// Deliveries the whole run makes.
    pub(crate) fn expected_deliveries(&self) -> u64 {
        (0..self.publishers.len())
            .map(|p| self.fan(p) * u64::from(self.per_publisher))
            .sum()
    }
}

/// How the load is applied.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) qos: QoS,
    pub(crate) version: ProtocolVersion,
    pub(crate) size: usize,
    pub(crate) inflight: u16,
    /// End-to-end limit on messages a publisher has out (sent, not yet delivered to every
    /// subscriber that hears it); 0 for none.
    pub(crate) window: u32,
    pub(crate) timeout: Duration,
    /// Fail when no delivery happened for this long.
    pub(crate) stall: Duration,
    pub(crate) name: String,
    /// Publishers stop after this long (the plan's count, if reached first, too).
    pub(crate) duration: Option<Duration>,
    /// Messages per second, all publishers together.
    pub(crate) rate: Option<u32>,
    /// Subscribers keep a session that outlives their connection (`--clean false`).
    pub(crate) persistent_subscribers: bool,
}

/// What a run measured and found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    /// Messages published (each delivered to every subscriber that hears it).
    pub(crate) sent: u64,
    pub(crate) elapsed: Duration,
    /// Delay from each message's send time to each delivery of it.
    pub(crate) latency: Histogram,
    /// Everything wrong with the deliveries; empty for a clean run.
    pub(crate) faults: Vec<String>,
}

/// Per-publisher state shared with the subscribers.
#[derive(Debug, Default)]
struct Progress {
    /// Deliveries of this publisher's messages so far (all subscribers).
    delivered: AtomicU64,
    /// Messages this publisher has sent so far.
    sent: AtomicU64,
    /// Woken when deliveries move on, for a publisher waiting on its window.
    moved: Notify,
}

/// Run-wide state.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    load: Load,
    progress: Vec<Progress>,
    /// Deliveries each message of each publisher makes.
    fans: Vec<u64>,
    /// Publishers that have sent all they will send, every message acknowledged.
    finished: AtomicUsize,
    delivered: AtomicU64,
    /// For a shared group: which messages of each publisher arrived anywhere.
    seen: Vec<Vec<AtomicU64>>,
    start: Notify,
    started: AtomicBool,
    stop: AtomicBool,
    stopped: Notify,
    epoch: Instant,
    /// Releases messages under `--rate`; started with the load.
    pacer: Option<Arc<Pacer>>,
}

/// What one subscriber found.
#[derive(Debug, Default)]
struct SubReport {
    faults: Vec<String>,
    latency: Histogram,
}

/// Connects everyone, calls `measure_start` once all are ready, runs the load until every
/// delivery is in (or the run fails), calls `measure_end`, and reports. `progress` is
/// called with deliveries so far and expected, or in a run with a duration, with
/// milliseconds so far and the duration's.
pub(crate) async fn run(
    plan: Plan,
    load: Load,
    measure_start: impl FnOnce(),
    measure_end: impl FnOnce(),
    progress: impl Fn(u64, u64),
) -> Result<Outcome, String> {
    let expected = plan.expected_deliveries();
    let seen = if plan.shared {
        (0..plan.publishers.len())
            .map(|_| {
                (0..plan.per_publisher.div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let pacer = load.rate.map(|rate| {
        let publishers = plan.publishers.len();
        Arc::new(Pacer {
            rate: f64::from(rate.max(1)),
            publishers: publishers.max(1) as u64,
            total: (publishers as u64).saturating_mul(u64::from(plan.per_publisher)),
            released: AtomicU64::new(0),
            wake: (0..publishers).map(|_| Notify::new()).collect(),
            done: AtomicBool::new(false),
        })
    });
    let shared = Arc::new(Shared {
        pacer,
        progress: (0..plan.publishers.len())
            .map(|_| Progress::default())
            .collect(),
        fans: (0..plan.publishers.len()).map(|p| plan.fan(p)).collect(),
        finished: AtomicUsize::new(0),
        plan,
        load,
        delivered: AtomicU64::new(0),
        seen,
        start: Notify::new(),
        started: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stopped: Notify::new(),
        epoch: Instant::now(),
    });

    // Subscribers first, each subscribed before any publisher starts.
    let mut subscribers = Vec::new();
    for (i, filter) in shared.plan.subscribers.iter().enumerate() {
        let id = format!("{}-sub-{i}-{}", shared.load.name, std::process::id());
        let conn = connect_spread(&shared.load, i, &id, shared.load.persistent_subscribers).await?;
        let mut conn = conn;
        conn.subscribe(filter, shared.load.qos)
            .await
            .map_err(|e| format!("subscriber {i}: {e}"))?;
        subscribers.push(conn);
    }
    let mut publishers = Vec::new();
    for i in 0..shared.plan.publishers.len() {
        let id = format!("{}-pub-{i}-{}", shared.load.name, std::process::id());
        let conn =
            connect_spread(&shared.load, shared.plan.subscribers.len() + i, &id, false).await?;
        publishers.push(conn);
    }

    let mut sub_tasks = JoinSet::new();
    for (i, conn) in subscribers.into_iter().enumerate() {
        let s = shared.clone();
        sub_tasks.spawn(async move { subscriber(s, i, conn).await });
    }
    let mut pub_tasks = JoinSet::new();
    for (i, conn) in publishers.into_iter().enumerate() {
        let s = shared.clone();
        pub_tasks.spawn(async move { publisher(s, i, conn).await });
    }

    measure_start();
    let began = Instant::now();
    // Stops the pacer however the run ends.
    let _pacing = shared.pacer.clone().map(|p| p.start(began)).transpose()?;
    shared.started.store(true, Ordering::Release);
    shared.start.notify_waiters();

    let mut faults = Vec::new();
    let mut last = 0;
    let mut last_move = Instant::now();
    let timed = shared.load.duration;
    let timeout = shared.load.timeout + timed.unwrap_or_default();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let delivered = shared.delivered.load(Ordering::Acquire);
        // With a duration, what is expected is known once every publisher is done.
        let expected = match timed {
            None => Some(expected),
            Some(d) => {
                progress(
                    began.elapsed().min(d).as_millis() as u64,
                    d.as_millis() as u64,
                );
                let done = shared.finished.load(Ordering::Acquire) == shared.progress.len();
                done.then(|| sent_deliveries(&shared))
            }
        };
        if let Some(expected) = expected {
            if timed.is_none() {
                progress(delivered, expected);
            }
            if delivered >= expected {
                break;
            }
        }
        let expected = expected.map_or_else(|| "?".to_owned(), |e| e.to_string());
        if delivered != last {
            last = delivered;
            last_move = Instant::now();
        }
        if last_move.elapsed() >= shared.load.stall {
            faults.push(format!(
                "stalled: no delivery for {:?} at {delivered} of {expected}",
                shared.load.stall
            ));
            break;
        }
        if began.elapsed() >= timeout {
            faults.push(format!(
                "timed out after {timeout:?} at {delivered} of {expected}"
            ));
            break;
        }
        if let Some(fault) = finished_with_error(&mut pub_tasks) {
            faults.push(fault);
            break;
        }
    }
    let elapsed = began.elapsed();
    measure_end();

    // A short grace period: anything arriving now beyond the expected count is a
    // duplicate the check must see.
    if faults.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    for p in &shared.progress {
        p.moved.notify_one();
    }
    while let Some(r) = pub_tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => faults.push(e),
            Err(e) => faults.push(format!("a publisher task failed: {e}")),
        }
    }
    let mut latency = Histogram::default();
    while let Some(r) = sub_tasks.join_next().await {
        match r {
            Ok(report) => {
                faults.extend(report.faults);
                latency.merge(&report.latency);
            }
            Err(e) => faults.push(format!("a subscriber task failed: {e}")),
        }
    }
    let delivered = shared.delivered.load(Ordering::Acquire);
    let expected = if timed.is_some() {
        sent_deliveries(&shared)
    } else {
        expected
    };
    if delivered < expected && faults.is_empty() {
        faults.push(format!(
            "{} of {expected} deliveries missing",
            expected - delivered
        ));
    }
    if delivered > expected {
        faults.push(format!("{} deliveries too many", delivered - expected));
    }
    if shared.plan.shared {
        let missing: u64 = shared
            .seen
            .iter()
            .zip(&shared.progress)
            .map(|(bits, progress)| {
                let got: u64 = bits
                    .iter()
                    .map(|b| u64::from(b.load(Ordering::Relaxed).count_ones()))
                    .sum();
                progress.sent.load(Ordering::Acquire).saturating_sub(got)
            })
            .sum();
        if missing > 0 {
            faults.push(format!("{missing} messages reached no member of the group"));
        }
    }
    let sent = shared
        .progress
        .iter()
        .map(|p| p.sent.load(Ordering::Acquire))
        .sum();
    Ok(Outcome {
        expected,
        delivered,
        sent,
        elapsed,
        latency,
        faults,
    })
}

/// Deliveries the messages sent so far make.
fn sent_deliveries(shared: &Shared) -> u64 {
    shared
        .progress
        .iter()
        .zip(&shared.fans)
        .map(|(p, fan)| p.sent.load(Ordering::Acquire) * fan)
        .sum()
}

/// Releases messages under `--rate`, from a thread of its own: message `j` of the run
/// (all publishers together, taking turns: publisher `j % P` sends it) is due `j / rate`
/// seconds after the start. Sleeping on the thread and reading [`Instant`] on waking,
/// it releases every message due by then and wakes the publishers that have one.
#[derive(Debug)]
struct Pacer {
    /// Messages per second, all publishers together.
    rate: f64,
    publishers: u64,
    /// Messages in the whole run; the pacer stops there.
    total: u64,
    /// Messages released so far (their indices are below this).
    released: AtomicU64,
    /// One per publisher: woken when a message of its is released.
    wake: Vec<Notify>,
    /// Set when the run is over.
    done: AtomicBool,
}

/// The running pacer thread: stops it when dropped.
#[derive(Debug)]
struct Pacing {
    pacer: Arc<Pacer>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Pacing {
    fn drop(&mut self) {
        self.pacer.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Pacer {
    /// Starts releasing messages, the first at `start`.
    fn start(self: Arc<Self>, start: Instant) -> Result<Pacing, String> {
        let pacer = self.clone();
        let thread = thread::Builder::new()
            .name("bench-pacer".to_owned())
            .spawn(move || pacer.run(start))
            .map_err(|e| format!("cannot start the pacer thread: {e}"))?;
        Ok(Pacing {
            pacer: self,
            thread: Some(thread),
        })
    }

    fn run(&self, start: Instant) {
        let mut released = 0u64;
        while !self.done.load(Ordering::Acquire) && released < self.total {
            let due = (start.elapsed().as_secs_f64() * self.rate).floor() as u64 + 1;
            let due = due.min(self.total);
            if due > released {
                self.released.store(due, Ordering::Release);
                if due - released >= self.publishers {
                    self.wake.iter().for_each(Notify::notify_one);
                } else {
                    for j in released..due {
                        if let Some(n) = self.wake.get((j % self.publishers) as usize) {
                            n.notify_one();
                        }
                    }
                }
                released = due;
            }
            // Until the next message is due, but at least a tick (so a high rate is
            // released in small batches, not one message at a time) and at most 10 ms
            // (so the end of the run is seen soon).
            let next = start + Duration::from_secs_f64(released as f64 / self.rate);
            let wait = next
                .saturating_duration_since(Instant::now())
                .clamp(PACE_TICK, Duration::from_millis(10));
            thread::sleep(wait);
        }
    }

    /// Messages publisher `index` may have sent by now.
    fn allowed(&self, index: usize) -> u64 {
        let released = self.released.load(Ordering::Acquire);
        let i = index as u64;
        if released > i {
            (released - i - 1) / self.publishers + 1
        } else {
            0
        }
    }
}

/// A publisher task that ended with an error, if one did.
fn finished_with_error(tasks: &mut JoinSet<Result<(), String>>) -> Option<String> {
    match tasks.try_join_next()? {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("a publisher task failed: {e}")),
    }
}

/// Connects client number `n`, taking the source addresses in turn; with a session
/// that outlives the connection if `persistent`.
async fn connect_spread(load: &Load, n: usize, id: &str, persistent: bool) -> Result<Conn, String> {
    let source = match load.sources.len() {
        0 => None,
        len => load.sources.get(n % len).copied(),
    };
    Conn::connect(
        &load.dialer,
        source,
        id,
        60,
        wire::READ_BUFFER,
        load.version,
        persistent,
    )
    .await
    .map_err(|e| format!("{id}: {e}"))
}

/// Appends one PUBLISH carrying `stamp`, encoded by hand: the hot path of the generator.
fn put_publish(
    out: &mut BytesMut,
    version: ProtocolVersion,
    topic: &[u8],
    qos: QoS,
    pid: u16,
    stamp: Stamp,
    size: usize,
) {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    // 5.0: an empty property list, its length a single 0.
    let props_len = usize::from(version.is_v5());
    let body = 2 + topic.len() + id_len + props_len + size.max(Stamp::LEN);
    out.put_u8(0x30 | ((qos as u8) << 1));
    let mut len = body;
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    if id_len > 0 {
        out.put_u16(pid);
    }
    if props_len > 0 {
        out.put_u8(0);
    }
    stamp.write(size, out);
}

/// Packet identifier slots of one publisher: free, waiting for PUBACK/PUBREC, or
/// waiting for PUBCOMP.
#[derive(Debug)]
struct Slots {
    free: Vec<u16>,
    state: Vec<u8>,
}

impl Slots {
    const FREE: u8 = 0;
    const SENT: u8 = 1;
    const RELEASED: u8 = 2;

    fn new(n: u16) -> Self {
        Self {
            free: (1..=n).rev().collect(),
            state: vec![Self::FREE; usize::from(n) + 1],
        }
    }

    fn in_use(&self) -> usize {
        self.state.len() - 1 - self.free.len()
    }

    /// Moves `pid` from `from` to `to`; false if it was not in `from`.
    fn step(&mut self, pid: PacketId, from: u8, to: u8) -> bool {
        let Some(s) = self.state.get_mut(usize::from(pid.get())) else {
            return false;
        };
        if *s != from {
            return false;
        }
        *s = to;
        if to == Self::FREE {
            self.free.push(pid.get());
        }
        true
    }
}

async fn publisher(shared: Arc<Shared>, index: usize, mut conn: Conn) -> Result<(), String> {
    let fail = |e: WireError| format!("publisher {index}: {e}");
    wait_for_start(&shared).await;
    let topic = shared
        .plan
        .publishers
        .get(index)
        .cloned()
        .unwrap_or_default();
    let Some(progress) = shared.progress.get(index) else {
        return Ok(());
    };
    let qos = shared.load.qos;
    let fan = shared.plan.fan(index);
    let window = u64::from(shared.load.window) * fan;
    let mut count = shared.plan.per_publisher;
    let start = Instant::now();
    let deadline = shared.load.duration.map(|d| start + d);
    let pacer = shared.pacer.as_deref();
    let mut slots = Slots::new(shared.load.inflight.max(1));
    let mut sent = 0u32;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        // Send what the window, the slots and the pace allow, in one write.
        let mut blocked_on_window = false;
        let mut blocked_on_pace = false;
        while sent < count && conn.out.len() < 32 * 1024 {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                // Time is up: what was sent is all there is.
                count = sent;
                break;
            }
            if window > 0 {
                let out = (u64::from(sent) * fan)
                    .saturating_sub(progress.delivered.load(Ordering::Acquire));
                if out >= window {
                    blocked_on_window = true;
                    break;
                }
            }
            if pacer.is_some_and(|p| u64::from(sent) >= p.allowed(index)) {
                blocked_on_pace = true;
                break;
            }
            let pid = if qos == QoS::AtMostOnce {
                0
            } else {
                match slots.free.pop() {
                    Some(pid) => {
                        if let Some(s) = slots.state.get_mut(usize::from(pid)) {
                            *s = Slots::SENT;
                        }
                        pid
                    }
                    None => break,
                }
            };
            let stamp = Stamp {
                publisher: index as u32,
                seq: sent,
                sent_ns: now.saturating_duration_since(shared.epoch).as_nanos() as u64,
            };
            put_publish(
                &mut conn.out,
                shared.load.version,
                topic.as_bytes(),
                qos,
                pid,
                stamp,
                shared.load.size,
            );
            sent += 1;
        }
        let wrote = !conn.out.is_empty();
        conn.flush().await.map_err(fail)?;
        progress.sent.store(u64::from(sent), Ordering::Release);
        if sent == count && slots.in_use() == 0 {
            break;
        }
        // Take the acknowledgements that are there, without waiting.
        let mut read = conn.try_read().map_err(fail)? > 0;
        while let Some(packet) = conn.buffered_packet().map_err(fail)? {
            acknowledge(&mut slots, &mut conn, packet).map_err(fail)?;
        }
        if wrote || read {
            continue;
        }
        // Nothing moved: wait for acknowledgements, the window, the next message's
        // turn or the end of the run's time.
        let wake = deadline.filter(|_| sent < count);
        let wake_at = tokio::time::Instant::from_std(wake.unwrap_or(start));
        let turn = async {
            match pacer.and_then(|p| p.wake.get(index)) {
                Some(n) if blocked_on_pace => n.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.read() => { r.map_err(fail)?; read = true; }
            () = progress.moved.notified(), if blocked_on_window => {}
            () = turn => {}
            () = tokio::time::sleep_until(wake_at), if wake.is_some() => {}
            () = shared.stopped.notified() => {}
        }
        if read {
            while let Some(packet) = conn.buffered_packet().map_err(fail)? {
                acknowledge(&mut slots, &mut conn, packet).map_err(fail)?;
            }
        }
    }
    if sent == count && slots.in_use() == 0 {
        shared.finished.fetch_add(1, Ordering::AcqRel);
    }
    // Wait for the stop signal so the subscribers' duplicate check still has a sender.
    while !shared.stop.load(Ordering::Acquire) {
        shared.stopped.notified().await;
    }
    conn.close().await;
    Ok(())
}

/// One acknowledgement from the broker to a publisher.
fn acknowledge(slots: &mut Slots, conn: &mut Conn, packet: Packet) -> Result<(), WireError> {
    let ok = match packet {
        Packet::PubAck(ack) => slots.step(ack.packet_id, Slots::SENT, Slots::FREE),
        Packet::PubRec(rec) => {
            let ok = slots.step(rec.packet_id, Slots::SENT, Slots::RELEASED);
            if ok {
                conn.queue(&Packet::PubRel(PubRel::new(rec.packet_id)));
            }
            ok
        }
        Packet::PubComp(comp) => slots.step(comp.packet_id, Slots::RELEASED, Slots::FREE),
        Packet::PingResp => true,
        other => return Err(WireError::Unexpected(format!("{other:?}"))),
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::Unexpected(
            "an acknowledgement for a packet identifier not in flight".to_owned(),
        ))
    }
}

async fn wait_for_start(shared: &Shared) {
    while !shared.started.load(Ordering::Acquire) {
        let notified = shared.start.notified();
        if shared.started.load(Ordering::Acquire) {
            break;
        }
        notified.await;
    }
}

/// Per-publisher sequence check of one subscriber.
#[derive(Debug)]
struct Sequence {
    /// The next sequence number expected (non-shared) or one past the last seen (shared).
    next: Vec<u32>,
    delivered: Vec<u64>,
}

async fn subscriber(shared: Arc<Shared>, index: usize, mut conn: Conn) -> SubReport {
    let mut report = SubReport::default();
    let publishers = shared.plan.publishers.len();
    let mut seq = Sequence {
        next: vec![0; publishers],
        delivered: vec![0; publishers],
    };
    let hears: Vec<bool> = (0..publishers)
        .map(|p| shared.plan.shared || shared.plan.hears.get(index).is_some_and(|h| h.contains(&p)))
        .collect();
    let max_faults = 10;
    let mut fault = |report: &mut SubReport, text: String| {
        if report.faults.len() < max_faults {
            report.faults.push(format!("subscriber {index}: {text}"));
        }
    };
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            r = conn.read() => {
                if let Err(e) = r {
                    fault(&mut report, e.to_string());
                    break;
                }
            }
            () = shared.stopped.notified() => break,
        }
        // One clock reading per read: what it brought arrived together.
        let arrived_ns = shared.epoch.elapsed().as_nanos() as u64;
        let mut batch = 0u64;
        loop {
            let packet = match conn.buffered_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    fault(&mut report, e.to_string());
                    return report;
                }
            };
            match packet {
                Packet::Publish(p) => {
                    match p.packet_id() {
                        Some(pid) if p.qos() == QoS::AtLeastOnce => {
                            conn.queue(&Packet::PubAck(mqtt_codec::PubAck::new(pid)));
                        }
                        Some(pid) => conn.queue(&Packet::PubRec(mqtt_codec::PubRec::new(pid))),
                        None => {}
                    }
                    let Some(stamp) = Stamp::read(&p.payload) else {
                        fault(&mut report, "a payload without a stamp".to_owned());
                        continue;
                    };
                    let p_index = stamp.publisher as usize;
                    if !hears.get(p_index).copied().unwrap_or(false) {
                        fault(
                            &mut report,
                            format!("a message of publisher {p_index}, not subscribed to"),
                        );
                        continue;
                    }
                    check_sequence(&shared, &mut seq, stamp, &mut report, &mut fault);
                    report
                        .latency
                        .record(arrived_ns.saturating_sub(stamp.sent_ns));
                    batch += 1;
                }
                Packet::PubRel(rel) => {
                    conn.queue(&Packet::PubComp(PubComp::new(rel.packet_id)));
                }
                Packet::PingResp => {}
                other => fault(&mut report, format!("unexpected {other:?}")),
            }
        }
        if let Err(e) = conn.flush().await {
            fault(&mut report, e.to_string());
            break;
        }
        if batch > 0 {
            for (p, n) in seq.delivered.iter_mut().enumerate() {
                if *n > 0 {
                    if let Some(progress) = shared.progress.get(p) {
                        progress.delivered.fetch_add(*n, Ordering::AcqRel);
                        progress.moved.notify_one();
                    }
                    *n = 0;
                }
            }
            shared.delivered.fetch_add(batch, Ordering::AcqRel);
        }
    }
    conn.close().await;
    report
}

/// Checks one delivery's place in its publisher's sequence.
fn check_sequence(
    shared: &Shared,
    seq: &mut Sequence,
    stamp: Stamp,
    report: &mut SubReport,
    fault: &mut impl FnMut(&mut SubReport, String),
) {
    let p = stamp.publisher as usize;
    let (Some(next), Some(delivered)) = (seq.next.get_mut(p), seq.delivered.get_mut(p)) else {
        return;
    };
    *delivered += 1;
    if shared.plan.shared {
        // A member sees a subsequence: increasing, with gaps; the group sees each once.
        if stamp.seq < *next {
            fault(
                report,
                format!("publisher {p}: message {} after {}", stamp.seq, *next - 1),
            );
        }
        *next = stamp.seq.wrapping_add(1);
        let word = (stamp.seq / 64) as usize;
        if let Some(bits) = shared.seen.get(p).and_then(|b| b.get(word)) {
            let bit = 1u64 << (stamp.seq % 64);
            if bits.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                fault(
                    report,
                    format!("publisher {p}: message {} twice", stamp.seq),
                );
            }
        }
        return;
    }
    if stamp.seq == *next {
        *next += 1;
    } else if stamp.seq > *next {
        fault(
            report,
            format!(
                "publisher {p}: message {} arrived when {} was due ({} lost or reordered)",
                stamp.seq,
                *next,
                stamp.seq - *next
            ),
        );
        *next = stamp.seq.wrapping_add(1);
    } else {
        fault(
            report,
            format!(
                "publisher {p}: message {} again (duplicate or reordered), after {}",
                stamp.seq,
                *next - 1
            ),
        );
    }
}
