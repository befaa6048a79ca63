//! Model test: random publishes in both directions over a link that is cut at random
//! points and reconnected. Whatever happens, QoS 1 messages arrive at least once, QoS 2
//! messages exactly once, QoS 0 at most once, and each direction delivers messages in the
//! order they were published (first arrivals; QoS 1 may repeat an earlier message).

use std::collections::HashMap;

use bytes::Bytes;
use mqtt_codec::{ByteStr, ProtocolVersion, QoS};
use mqtt_session::{ClientOptions, Duration, Event, Limits, Message, testing::Pair};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    ClientPublish(QoS),
    ServerPublish(QoS),
    Drive(usize),
    Cut,
    Reconnect,
    Wait(u64),
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => qos().prop_map(Op::ClientPublish),
        4 => qos().prop_map(Op::ServerPublish),
        3 => (0..8usize).prop_map(Op::Drive),
        1 => Just(Op::Cut),
        1 => Just(Op::Reconnect),
        1 => (0..3000u64).prop_map(Op::Wait),
    ]
}

fn received(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m, _) => std::str::from_utf8(&m.payload).ok()?.parse().ok(),
            _ => None,
        })
        .collect()
}

fn check(direction: &str, sent: &[(u32, QoS)], got: &[u32]) -> Result<(), TestCaseError> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for n in got {
        *counts.entry(*n).or_default() += 1;
    }
    for (n, qos) in sent {
        let c = counts.get(n).copied().unwrap_or(0);
        match qos {
            QoS::AtMostOnce => {
                prop_assert!(c <= 1, "{direction}: QoS 0 message {n} arrived {c} times");
            }
            QoS::AtLeastOnce => prop_assert!(c >= 1, "{direction}: QoS 1 message {n} lost"),
            QoS::ExactlyOnce => {
                prop_assert!(c == 1, "{direction}: QoS 2 message {n} arrived {c} times");
            }
        }
    }
    // First arrivals in publication order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<u32> = got.iter().copied().filter(|n| seen.insert(*n)).collect();
    prop_assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "{direction}: out of order: {firsts:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivery_guarantees_survive_cuts(
        version in prop_oneof![Just(ProtocolVersion::V3_1_1), Just(ProtocolVersion::V5)],
        ops in proptest::collection::vec(op(), 1..60),
        window in 1u16..4,
    ) {
        let mut options = ClientOptions::new(version, ByteStr::from_static("model"));
        options.clean_start = false;
        options.session_expiry_interval = u32::MAX;
        options.keep_alive = 0;
        options.limits.max_inflight = window;
        let server_limits = Limits { max_inflight: window, receive_maximum: window, ..Limits::default() };
        let mut pair = Pair::new(options, server_limits);
        pair.connect();

        let mut next = 0u32;
        let (mut up, mut down) = (Vec::new(), Vec::new());
        let mut link = true;
        for op in ops {
            match op {
                Op::ClientPublish(qos) => {
                    next += 1;
                    let m = Message::new(ByteStr::from_static("up"), Bytes::from(next.to_string()), qos);
                    if pair.client.publish(pair.now, m).is_ok() {
                        up.push((next, qos));
                    }
                }
                Op::ServerPublish(qos) => {
                    next += 1;
                    let m = Message::new(ByteStr::from_static("down"), Bytes::from(next.to_string()), qos);
                    if pair.server.deliver(pair.now, m).is_ok() {
                        down.push((next, qos));
                    }
                }
                Op::Drive(k) => { pair.drive_limited(k); }
                Op::Cut => { pair.cut(); link = false; }
                Op::Reconnect => {
                    if !link {
                        pair.connect();
                        link = true;
                    }
                }
                Op::Wait(ms) => pair.advance(Duration::from_millis(ms)),
            }
            prop_assert!(pair.error.is_none(), "protocol error: {:?}", pair.error);
        }
        if !link || !pair.client.is_connected() {
            pair.cut();
            pair.connect();
        }
        pair.drive();
        prop_assert!(pair.error.is_none(), "protocol error: {:?}", pair.error);

        check("client to server", &up, &received(&pair.server_events))?;
        check("server to client", &down, &received(&pair.client_events))?;
    }
}
