//! Export and restore: the whole session state survives a round trip through its
//! encoding, and a restored session carries on where the old one stopped.

use bytes::Bytes;
use mqtt_codec::{
    ByteStr, ProtocolVersion, QoS, Subscription, SubscriptionId, SubscriptionOptions, Will,
};
use mqtt_session::{
    ClientSession, Duration, Event, Instant, Limits, Message, ServerSession, StateError,
    testing::Pair,
};

fn options() -> mqtt_session::ClientOptions {
    let mut o =
        mqtt_session::ClientOptions::new(ProtocolVersion::V5, ByteStr::from_static("mover"));
    o.clean_start = false;
    o.session_expiry_interval = 600;
    o.will = Some(Will {
        topic: ByteStr::from_static("bye"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: mqtt_codec::WillProperties {
            will_delay_interval: Some(30),
            ..Default::default()
        },
    });
    o
}

fn payloads(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m, _) => Some(String::from_utf8_lossy(&m.payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// A pair with messages in every state: in flight both ways, QoS 2 half done, queued
/// with an expiry, a subscription, a will.
fn busy_pair() -> Pair {
    let mut pair = Pair::new(options(), Limits::default());
    pair.connect();
    let sub = Subscription {
        filter: ByteStr::from_static("a/#"),
        options: SubscriptionOptions::new(QoS::ExactlyOnce),
    };
    let props = mqtt_codec::SubscribeProperties {
        subscription_identifier: SubscriptionId::new(7),
        ..Default::default()
    };
    pair.client.subscribe(vec![sub], props);
    pair.drive();
    let Some(Event::Subscribe(s)) = pair
        .server_events
        .iter()
        .find(|e| matches!(e, Event::Subscribe(_)))
        .cloned()
    else {
        panic!()
    };
    pair.server
        .suback(&s, vec![mqtt_codec::ReasonCode::GRANTED_QOS_2]);
    pair.drive();
    for (p, q) in [
        ("1", QoS::ExactlyOnce),
        ("2", QoS::AtLeastOnce),
        ("3", QoS::ExactlyOnce),
    ] {
        pair.server
            .deliver(
                pair.now,
                Message::new(
                    ByteStr::from_static("a/b"),
                    Bytes::from_static(p.as_bytes()),
                    q,
                ),
            )
            .unwrap();
        pair.client
            .publish(
                pair.now,
                Message::new(
                    ByteStr::from_static("up"),
                    Bytes::from_static(p.as_bytes()),
                    q,
                ),
            )
            .unwrap();
    }
    // Let some of it through, then lose the connection.
    pair.drive_limited(5);
    pair.cut();
    let mut expiring = Message::new(
        ByteStr::from_static("a/c"),
        Bytes::from_static(b"4"),
        QoS::AtLeastOnce,
    );
    expiring.properties.message_expiry_interval = Some(100);
    pair.server.deliver(pair.now, expiring).unwrap();
    pair
}

#[test]
fn server_state_round_trips_byte_for_byte() {
    let pair = busy_pair();
    let now = pair.now;
    let bytes = pair.server.export(now);
    let restored = ServerSession::restore(Limits::default(), &bytes, now).unwrap();
    assert_eq!(restored.export(now), bytes);
    assert_eq!(restored.subscriptions(), pair.server.subscriptions());
    assert_eq!(restored.pending_messages(), pair.server.pending_messages());
    // Stored times are relative: exported 10 s later, the deadlines moved 10 s.
    let later = now + Duration::from_secs(10);
    let moved = ServerSession::restore(Limits::default(), &bytes, later).unwrap();
    assert_eq!(
        moved.poll_timeout(),
        pair.server
            .poll_timeout()
            .map(|t| t + Duration::from_secs(10))
    );
}

#[test]
fn client_state_round_trips_byte_for_byte() {
    let pair = busy_pair();
    let bytes = pair.client.export(pair.now);
    let restored = ClientSession::restore(options(), &bytes, pair.now).unwrap();
    assert_eq!(restored.export(pair.now), bytes);
    assert_eq!(restored.pending_messages(), pair.client.pending_messages());
}

#[test]
fn restored_sessions_finish_every_exchange_exactly_once() {
    let mut pair = busy_pair();
    // Move both ends through their encodings, as a broker restart and a client restart
    // would. The harness keeps the events of both lives.
    let now = pair.now;
    pair.server = ServerSession::restore(Limits::default(), &pair.server.export(now), now).unwrap();
    pair.client = ClientSession::restore(options(), &pair.client.export(now), now).unwrap();
    pair.connect();
    assert!(pair.error.is_none(), "{:?}", pair.error);
    let count = |events: &[Event], p: &str| payloads(events).iter().filter(|x| *x == p).count();
    for p in ["1", "3"] {
        assert_eq!(
            count(&pair.client_events, p),
            1,
            "QoS 2 down {p}: {:?}",
            payloads(&pair.client_events)
        );
        assert_eq!(
            count(&pair.server_events, p),
            1,
            "QoS 2 up {p}: {:?}",
            payloads(&pair.server_events)
        );
    }
    assert!(count(&pair.client_events, "2") >= 1);
    assert!(count(&pair.server_events, "2") >= 1);
    assert_eq!(
        count(&pair.client_events, "4"),
        1,
        "queued message delivered after restore"
    );
    assert_eq!(pair.server.subscriptions().len(), 1);
}

#[test]
fn bad_state_is_refused_not_panicked_on() {
    let pair = busy_pair();
    let bytes = pair.server.export(pair.now);
    assert_eq!(
        ServerSession::restore(Limits::default(), b"nope", Instant::ZERO).unwrap_err(),
        StateError::NotSessionState
    );
    assert_eq!(
        ClientSession::restore(options(), &bytes, Instant::ZERO).unwrap_err(),
        StateError::WrongRole
    );
    let mut newer = bytes.to_vec();
    newer[4] = 2;
    assert_eq!(
        ServerSession::restore(Limits::default(), &newer, Instant::ZERO).unwrap_err(),
        StateError::UnsupportedFormat(2)
    );
    // Every truncation and every single-byte change is an error or a valid session,
    // never a panic.
    for cut in 0..bytes.len() {
        assert!(ServerSession::restore(Limits::default(), &bytes[..cut], Instant::ZERO).is_err());
    }
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0xFF;
        let _ = ServerSession::restore(Limits::default(), &b, Instant::ZERO);
    }
}
