//! `GET /metrics`: the broker's statistics in Prometheus' (OpenMetrics) text format.
//!
//! Nothing is kept for Prometheus alone: the counters are those `$SYS` reads (relaxed
//! atomics the connection tasks add to once per batch), read when a scrape comes, by a
//! `prometheus_client` collector. Queue depths are a histogram built at scrape time
//! from every session's queue (each locked in turn, as a delivery would); the
//! acknowledgement latency is a histogram of atomic buckets that the connection tasks
//! sample.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::shared::Shared;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the queue depth buckets, in messages.
const DEPTH_BOUNDS: [f64; 8] = [
    0.0,
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// A latency histogram of fixed buckets, each an atomic counter: observing costs two
/// relaxed increments and no lock.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// One per bound of [`LATENCY_BOUNDS`], and one beyond.
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Sum (seconds), count, and the buckets (not cumulative) with `+Inf` last.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// The registry served at `/metrics`: one collector reading the broker's state.
pub(crate) fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("mqtt");
    registry.register_collector(Box::new(BrokerCollector {
        shared: Arc::clone(shared),
    }));
    registry
}

/// `/metrics` as text.
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Reads the broker's counters and gauges when a scrape comes.
#[derive(Debug)]
struct BrokerCollector {
    shared: Arc<Shared>,
}

/// The QoS labels, in the order of the `*_qos` counters.
const QOS: [&str; 3] = ["0", "1", "2"];

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// A counter family with one label.
fn counters<'l>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &'l str,
    values: impl IntoIterator<Item = (&'l str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn by_qos(cs: &[AtomicU64; 3]) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    QOS.into_iter().zip(cs.iter().map(load))
}

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shared = &self.shared;
        let s = &shared.stats;
        let connected = s.connected.load(Ordering::Relaxed);
        let sessions = shared.session_count();
        gauge(
            &mut e,
            "connections",
            "Clients connected now.",
            None,
            int(connected),
        )?;
        gauge(
            &mut e,
            "connections_max",
            "The most clients connected at once since start.",
            None,
            int(s.max_connected.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut e,
            "connections_handshaking",
            "Sockets accepted that have not been through CONNECT yet.",
            None,
            int(s.handshaking.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut e,
            "connections_accepted",
            "Connections accepted (CONNACK success).",
            None,
            load(&s.connections_total),
        )?;
        counter(
            &mut e,
            "connections_refused",
            "CONNECTs refused for a limit (connections, sessions, client identifier).",
            None,
            load(&s.connections_refused),
        )?;
        counter(
            &mut e,
            "write_timeouts",
            "Connections closed because the client read nothing for limits.write_timeout.",
            None,
            load(&s.write_timeouts),
        )?;
        counter(
            &mut e,
            "writes_coalesced",
            "Writes to a subscriber of a sustained stream of small batches that waited for more (limits.coalesce_writes).",
            None,
            load(&s.writes_coalesced),
        )?;
        gauge(
            &mut e,
            "sessions",
            "Sessions kept, connected or not.",
            None,
            int(sessions),
        )?;
        gauge(
            &mut e,
            "sessions_offline",
            "Sessions kept without a connection.",
            None,
            int(sessions.saturating_sub(connected)),
        )?;
        gauge(
            &mut e,
            "subscriptions",
            "Subscriptions in the index.",
            None,
            int(shared.index.len()),
        )?;
        counter(
            &mut e,
            "subscriptions_refused",
            "Filters refused for limits.max_subscriptions or by the authorizer.",
            None,
            load(&s.subscriptions_refused),
        )?;
        gauge(
            &mut e,
            "retained_messages",
            "Retained messages stored (the broker's $SYS topics included).",
            None,
            int(shared.retained_count()),
        )?;
        gauge(
            &mut e,
            "retained",
            "Memory the clients' retained messages are charged against retain.max_bytes.",
            Some(&Unit::Bytes),
            int(shared.retained_bytes()),
        )?;
        counter(
            &mut e,
            "retained_refused",
            "Retained messages routed but not retained (retain.max_messages or max_bytes).",
            None,
            load(&s.retained_refused),
        )?;
        counters(
            &mut e,
            "publish_received",
            "PUBLISH packets received, by QoS.",
            None,
            "qos",
            by_qos(&s.publish_received_qos),
        )?;
        counters(
            &mut e,
            "publish_sent",
            "PUBLISH packets sent, by QoS.",
            None,
            "qos",
            by_qos(&s.publish_sent_qos),
        )?;
        counters(
            &mut e,
            "publish_received",
            "Payload bytes of the PUBLISH packets received, by QoS.",
            Some(&Unit::Bytes),
            "qos",
            by_qos(&s.payload_received_qos),
        )?;
        counters(
            &mut e,
            "publish_sent",
            "Payload bytes of the PUBLISH packets sent, by QoS (QoS 0 packets encoded once for many subscribers count whole).",
            Some(&Unit::Bytes),
            "qos",
            by_qos(&s.payload_sent_qos),
        )?;
        counter(
            &mut e,
            "publish_refused",
            "PUBLISH packets refused to their sender (to $SYS/, or by the authorizer).",
            None,
            load(&s.publish_refused),
        )?;
        counter(
            &mut e,
            "packets_received",
            "MQTT packets received.",
            None,
            load(&s.messages_received),
        )?;
        counter(
            &mut e,
            "packets_sent",
            "MQTT packets sent.",
            None,
            load(&s.messages_sent),
        )?;
        counter(
            &mut e,
            "received",
            "Bytes read from clients.",
            Some(&Unit::Bytes),
            load(&s.bytes_received),
        )?;
        counter(
            &mut e,
            "sent",
            "Bytes written to clients.",
            Some(&Unit::Bytes),
            load(&s.bytes_sent),
        )?;
        let (full, budget, offline) = (
            load(&s.dropped_queue_full),
            load(&s.dropped_memory_budget),
            load(&s.dropped_offline),
        );
        let expired = load(&s.publish_dropped).saturating_sub(full + budget + offline);
        counters(
            &mut e,
            "messages_dropped",
            "Messages not delivered to a subscriber, by reason.",
            None,
            "reason",
            [
                ("queue_full", full),
                ("memory_budget", budget),
                ("offline", offline),
                ("expired", expired),
            ],
        )?;
        gauge(
            &mut e,
            "queued",
            "Memory all sessions' queues and in-flight messages take (against limits.max_queued_bytes_total).",
            Some(&Unit::Bytes),
            int(shared.queued_total.load(Ordering::Relaxed)),
        )?;
        // Queue depths, now: every session's queued and in-flight messages.
        let mut depths = [0u64; DEPTH_BOUNDS.len() + 1];
        let (mut sum, mut count) = (0u64, 0u64);
        for handle in shared.handles() {
            let pending = handle.lock().session.pending_messages();
            let i = DEPTH_BOUNDS
                .iter()
                .position(|&b| pending as f64 <= b)
                .unwrap_or(DEPTH_BOUNDS.len());
            if let Some(d) = depths.get_mut(i) {
                *d += 1;
            }
            sum = sum.saturating_add(pending as u64);
            count += 1;
        }
        let buckets: Vec<(f64, u64)> = DEPTH_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(depths)
            .collect();
        e.encode_descriptor(
            "session_queue_depth",
            "Sessions by the messages they hold (queued and in flight), at scrape time.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)?;
        if let Some(commits) = shared.store.commits() {
            let c = *commits.borrow();
            counter(
                &mut e,
                "store_commits",
                "Commits of the disk store (a write transaction and its fsync each).",
                None,
                c.count,
            )?;
            let total = ConstCounter::new(c.micros_total as f64 / 1e6);
            total.encode(e.encode_descriptor(
                "store_commit",
                "Time spent committing, in all: with mqtt_store_commits_total, the mean commit latency.",
                Some(&Unit::Seconds),
                total.metric_type(),
            )?)?;
            let last = ConstGauge::new(c.last_micros as f64 / 1e6);
            last.encode(e.encode_descriptor(
                "store_commit_last",
                "The last commit's latency.",
                Some(&Unit::Seconds),
                last.metric_type(),
            )?)?;
            gauge(
                &mut e,
                "store_failing",
                "1 while the store cannot write (acknowledgements of what must be kept are withheld), else 0.",
                None,
                i64::from(c.failed > c.committed),
            )?;
        }
        let (sum, count, buckets) = s.ack_latency.snapshot();
        e.encode_descriptor(
            "publish_ack_latency",
            "From reading a QoS 1/2 PUBLISH to writing its PUBACK / PUBREC (routing included), sampled.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        Ok(())
    }
}
