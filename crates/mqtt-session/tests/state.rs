//! Export and restore: the whole session state survives a round trip through its
//! encoding, and a restored session carries on where the old one stopped.

use bytes::Bytes;
use mqtt_codec::{
    ByteStr, Connect, Packet, ProtocolVersion, QoS, RetainHandling, Subscription, SubscriptionId,
    SubscriptionOptions, Will,
};
use mqtt_session::{
    ClientSession, Duration, Event, Instant, Limits, Message, ServerSession, StateError,
    SubscriptionRecord, testing::Pair,
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

// The detached form (a store keeping each message as its own record): the session
// without its messages, and the messages by id, give back the same session.
#[test]
fn server_state_detached_round_trips_to_the_same_session() {
    let pair = busy_pair();
    let now = pair.now;
    let whole = pair.server.export(now);
    let detached = pair.server.export_detached(now, &[]);
    assert!(detached.len() < whole.len(), "the messages are left out");
    let mut messages = Vec::new();
    pair.server
        .for_each_message(|id, at, m| messages.push((id, at, m)));
    assert!(
        messages.len() >= 2,
        "in flight and queued: {}",
        messages.len()
    );
    let restored = ServerSession::restore(Limits::default(), &whole, now).unwrap();
    let mut rebuilt = ServerSession::restore(Limits::default(), &whole, now).unwrap();
    rebuilt
        .restore_detached(&detached, now, messages.clone())
        .unwrap();
    assert_eq!(rebuilt.export(now), restored.export(now));
    // An in-flight message missing from the records is refused, not made up.
    let mut rebuilt = ServerSession::restore(Limits::default(), &whole, now).unwrap();
    assert!(
        rebuilt
            .restore_detached(&detached, now, messages.into_iter().skip(1))
            .is_err()
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

// ---- a session restored from storage (`ServerSession::restored`) ----------------------

fn stored_subscription() -> SubscriptionRecord {
    SubscriptionRecord {
        filter: ByteStr::from_static("a/#"),
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        },
        identifier: SubscriptionId::new(7),
    }
}

fn connect(version: ProtocolVersion, clean_start: bool) -> Connect {
    let mut c = Connect::new(version, ByteStr::from_static("mover"));
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(600);
    c
}

// A restored session is a persistent session whose connection is gone: it holds its
// subscriptions and keeps messages routed to it, and Clean Start 0 resumes it with
// Session Present 1 and sends them.
#[test]
fn a_restored_session_resumes_with_its_subscriptions() {
    let now = Instant::from_millis(5_000);
    let at = now + Duration::from_secs(600);
    let mut pair = Pair::new(options(), Limits::default());
    pair.now = now;
    pair.server = ServerSession::restored(
        ByteStr::from_static("mover"),
        Limits::default(),
        ProtocolVersion::V5,
        600,
        Some(at),
        [stored_subscription()],
    );
    let server = &pair.server;
    assert!(!server.is_connected());
    assert_eq!(server.version(), ProtocolVersion::V5);
    assert_eq!(server.session_expiry(), 600);
    assert_eq!(
        (server.expires_at(), server.poll_timeout()),
        (Some(at), Some(at))
    );
    assert_eq!(
        server.subscriptions().iter().collect::<Vec<_>>(),
        [stored_subscription()]
    );
    assert!(server.would_resume(now, &connect(ProtocolVersion::V5, false)));

    let kept = Message::new(
        ByteStr::from_static("a/b"),
        Bytes::from_static(b"kept"),
        QoS::AtLeastOnce,
    );
    pair.server.deliver(now, kept).unwrap();
    pair.connect();
    assert!(pair.error.is_none(), "{:?}", pair.error);
    let present = pair.server_sent.iter().find_map(|p| match p {
        Packet::ConnAck(c) => Some(c.session_present),
        _ => None,
    });
    assert_eq!(present, Some(true));
    assert_eq!(payloads(&pair.client_events), ["kept"]);
    assert_eq!(
        pair.server.subscriptions().iter().collect::<Vec<_>>(),
        [stored_subscription()]
    );
    assert_eq!(
        pair.server.expires_at(),
        None,
        "connected: no expiry running"
    );
}

// Its timer is the deadline it was given: the session expires there, and a CONNECT
// after that starts anew, as with any session that expired.
#[test]
fn a_restored_session_expires_at_its_deadline() {
    let now = Instant::from_millis(1_000);
    let at = now + Duration::from_secs(30);
    let mut server = ServerSession::restored(
        ByteStr::from_static("mover"),
        Limits::default(),
        ProtocolVersion::V3_1_1,
        30,
        Some(at),
        [stored_subscription()],
    );
    server.handle_timeout(Instant::from_millis(at.as_millis() - 1));
    assert!(server.poll_event().is_none());
    assert!(server.would_resume(now, &connect(ProtocolVersion::V3_1_1, false)));
    server.handle_timeout(at);
    assert!(matches!(server.poll_event(), Some(Event::SessionExpired)));
    assert_eq!(server.poll_timeout(), None);
    let c = connect(ProtocolVersion::V3_1_1, false);
    assert!(!server.would_resume(at, &c));
    let ack = server.accept(at, &c, Default::default());
    assert!(!ack.session_present);
    assert!(server.subscriptions().is_empty());
}

// Clean Start 1 replaces a restored session like any other; without a deadline one
// never expires.
#[test]
fn a_restored_session_gives_way_to_clean_start_and_may_never_expire() {
    let now = Instant::from_millis(1_000);
    let mut server = ServerSession::restored(
        ByteStr::from_static("mover"),
        Limits::default(),
        ProtocolVersion::V5,
        u32::MAX,
        None,
        [stored_subscription()],
    );
    assert_eq!(server.poll_timeout(), None);
    let years = now + Duration::from_secs(100 * 365 * 24 * 3600);
    server.handle_timeout(years);
    assert!(server.poll_event().is_none());
    assert!(server.would_resume(years, &connect(ProtocolVersion::V5, false)));
    let ack = server.accept(
        years,
        &connect(ProtocolVersion::V5, true),
        Default::default(),
    );
    assert!(!ack.session_present);
    assert!(server.subscriptions().is_empty());
    assert_eq!(server.session_expiry(), 600);
}
