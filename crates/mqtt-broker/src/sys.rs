//! `$SYS/broker/...`: the broker's own statistics, published (retained) on an interval,
//! under the topic names Mosquitto uses. Wildcards at the first level never match them
//! ([MQTT-4.7.2-1]); subscribe to `$SYS/#`.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use mqtt_codec::{ByteStr, QoS};
use mqtt_session::Message;
use mqtt_topics::Matches;

use crate::broker::Shared;

/// The key `$SYS` messages are routed from (no session has it).
const BROKER_KEY: u64 = 0;

/// Publishes the statistics every `interval` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, interval: Duration) {
    let started = tokio::time::Instant::now();
    let mut matches = Matches::default();
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
        let values: [(&str, String); 16] = [
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
                "$SYS/broker/subscriptions/count",
                shared.index.len().to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                shared.retained_count().to_string(),
            ),
        ];
        for (topic, value) in values {
            let Ok(topic) = ByteStr::try_from(topic) else {
                continue;
            };
            let mut m = Message::new(topic, Bytes::from(value), QoS::AtMostOnce);
            m.retain = true;
            shared.route(BROKER_KEY, &m, &mut matches);
        }
    }
}
