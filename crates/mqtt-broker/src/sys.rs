//! `$SYS/broker/...`: the broker's own statistics, published (retained) on an interval,
//! under the topic names Mosquitto uses. Wildcards at the first level never match them
//! ([MQTT-4.7.2-1]); subscribe to `$SYS/#`.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use mqtt_codec::{ByteStr, QoS};
use mqtt_session::Message;

use crate::shared::Shared;

/// The key `$SYS` messages are routed from (no session has it).
const BROKER_KEY: u64 = 0;

/// Exponentially-weighted per-minute rates over 1, 5 and 15 minutes, as Mosquitto's
/// `$SYS/broker/load/...` topics report them.
#[derive(Debug, Default)]
struct Load {
    previous: u64,
    averages: [f64; 3],
}

impl Load {
    const WINDOWS: [(&'static str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

    /// Folds in the counter's new value, `interval` seconds after the last.
    fn update(&mut self, current: u64, interval: f64) {
        let per_minute = current.saturating_sub(self.previous) as f64 * 60.0 / interval;
        self.previous = current;
        for (avg, (_, window)) in self.averages.iter_mut().zip(Self::WINDOWS) {
            let keep = (-interval / window).exp();
            *avg = *avg * keep + per_minute * (1.0 - keep);
        }
    }
}

/// Whether `topic` is in the broker's own `$SYS` tree, where clients may neither
/// publish nor leave a will.
pub(crate) fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Publishes the statistics every `interval` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    let started = tokio::time::Instant::now();
    let mut routes = crate::router::Routes::default();
    let mut loads: [(&str, Load); 7] = [
        ("messages/received", Load::default()),
        ("messages/sent", Load::default()),
        ("bytes/received", Load::default()),
        ("bytes/sent", Load::default()),
        ("publish/received", Load::default()),
        ("publish/sent", Load::default()),
        ("connections", Load::default()),
    ];
    let mut tick = tokio::time::interval(interval);
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        let s = &shared.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
        let connected = s.connected.load(Ordering::Relaxed);
        let sessions = shared.session_count();
        let values: [(&str, String); 27] = [
            (
                "$SYS/broker/version",
                format!("mqtt-rs mqtt-broker {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            ("$SYS/broker/clients/active", connected.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                sessions.saturating_sub(connected).to_string(),
            ),
            ("$SYS/broker/clients/total", sessions.to_string()),
            (
                "$SYS/broker/clients/maximum",
                s.max_connected.load(Ordering::Relaxed).to_string(),
            ),
            ("$SYS/broker/messages/received", load(&s.messages_received)),
            ("$SYS/broker/messages/sent", load(&s.messages_sent)),
            ("$SYS/broker/bytes/received", load(&s.bytes_received)),
            ("$SYS/broker/bytes/sent", load(&s.bytes_sent)),
            (
                "$SYS/broker/publish/messages/received",
                load(&s.publish_received),
            ),
            ("$SYS/broker/publish/messages/sent", load(&s.publish_sent)),
            (
                "$SYS/broker/publish/messages/dropped",
                load(&s.publish_dropped),
            ),
            (
                "$SYS/broker/publish/messages/dropped/queue full",
                load(&s.dropped_queue_full),
            ),
            (
                "$SYS/broker/publish/messages/dropped/memory budget",
                load(&s.dropped_memory_budget),
            ),
            (
                "$SYS/broker/publish/messages/dropped/offline",
                load(&s.dropped_offline),
            ),
            (
                "$SYS/broker/publish/messages/refused",
                load(&s.publish_refused),
            ),
            ("$SYS/broker/clients/refused", load(&s.connections_refused)),
            (
                "$SYS/broker/clients/write timeouts",
                load(&s.write_timeouts),
            ),
            (
                "$SYS/broker/clients/writes coalesced",
                load(&s.writes_coalesced),
            ),
            (
                "$SYS/broker/subscriptions/refused",
                load(&s.subscriptions_refused),
            ),
            (
                "$SYS/broker/store/queued bytes",
                shared.queued_total.load(Ordering::Relaxed).to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                shared.index.len().to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                shared.retained_count().to_string(),
            ),
            (
                "$SYS/broker/retained messages/bytes",
                shared.retained_bytes().to_string(),
            ),
            (
                "$SYS/broker/retained messages/refused",
                load(&s.retained_refused),
            ),
        ];
        let counters = [
            &s.messages_received,
            &s.messages_sent,
            &s.bytes_received,
            &s.bytes_sent,
            &s.publish_received,
            &s.publish_sent,
            &s.connections_total,
        ];
        let mut load_values = Vec::with_capacity(loads.len() * 3);
        for ((name, load), counter) in loads.iter_mut().zip(counters) {
            load.update(counter.load(Ordering::Relaxed), interval.as_secs_f64());
            for (avg, (window, _)) in load.averages.iter().zip(Load::WINDOWS) {
                load_values.push((
                    format!("$SYS/broker/load/{name}/{window}"),
                    format!("{avg:.2}"),
                ));
            }
        }
        let all = values
            .into_iter()
            .map(|(t, v)| (t.to_owned(), v))
            .chain(load_values);
        for (topic, value) in all {
            let Ok(topic) = ByteStr::try_from(topic) else {
                continue;
            };
            let mut m = Message::new(topic, Bytes::from(value), QoS::AtMostOnce);
            m.retain = true;
            shared.route(BROKER_KEY, m, &mut routes, shared.now());
        }
    }
}
