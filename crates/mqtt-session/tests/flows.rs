//! Scenario tests of every flow, both ends, through the `Pair` harness: real encoded
//! bytes, virtual time, no sockets.

use bytes::Bytes;
use mqtt_codec::{
    ByteStr, Disconnect, Packet, PacketId, ProtocolVersion, PubAck, Publish, PublishProperties,
    QoS, QosPid, ReasonCode, Subscribe, Subscription, SubscriptionOptions, Will, WillProperties,
};
use mqtt_session::{
    ClientOptions, ClientSession, DropReason, Duration, Event, Instant, Limits, Message,
    ServerSession, testing::Pair,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn options(version: ProtocolVersion) -> ClientOptions {
    let mut o = ClientOptions::new(version, ByteStr::from_static("c1"));
    // A session that survives the connection, so resumption can be tested.
    o.clean_start = false;
    o.session_expiry_interval = 3600;
    o
}

fn msg(topic: &'static str, payload: &'static str, qos: QoS) -> Message {
    Message::new(
        ByteStr::from_static(topic),
        Bytes::from_static(payload.as_bytes()),
        qos,
    )
}

fn connected(version: ProtocolVersion) -> Pair {
    let mut pair = Pair::new(options(version), Limits::default());
    pair.connect();
    assert!(pair.client.is_connected(), "{:?}", pair.client_events);
    pair.take_client_events();
    pair.take_server_events();
    pair
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

/// Whether a message was reported dropped for `reason`.
fn dropped_for(events: &[Event], reason: DropReason) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Dropped { reason: r, .. } if *r == reason))
}

/// A new message from the server reaches the client at once: nothing is left in
/// flight to hold it.
fn a_new_message_goes_out(pair: &mut Pair, qos: QoS) {
    pair.server.deliver(pair.now, msg("t", "new", qos)).unwrap();
    pair.drive();
    assert_eq!(
        payloads(&pair.client_events).last().map(String::as_str),
        Some("new")
    );
}

fn delivered(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Delivered { .. }))
        .count()
}

// ---- connecting --------------------------------------------------------------------

#[test]
fn connect_each_version() {
    for version in [ProtocolVersion::V3_1, V311, V5] {
        let mut pair = Pair::new(options(version), Limits::default());
        pair.connect();
        let Some(Event::Connected(ack)) = pair.client_events.first() else {
            panic!("{version}: {:?}", pair.client_events);
        };
        assert!(
            !ack.session_present,
            "{version}: first connection has no session"
        );
        assert!(pair.client.is_connected());
        assert!(pair.server.is_connected());
        assert_eq!(pair.server.version(), version);
    }
}

// 5.0 MQTT-3.2.2-2, 5.0 MQTT-3.2.2-3, 3.1.1 MQTT-3.2.2-2: Session Present tells whether
// the server kept the session.
#[test]
fn session_present_on_resume_and_not_on_clean_start() {
    for version in [V311, V5] {
        let mut pair = connected(version);
        pair.cut();
        pair.connect();
        let Some(Event::Connected(ack)) = pair.client_events.first() else {
            panic!()
        };
        assert!(ack.session_present, "{version}");

        let mut o = options(version);
        o.clean_start = true;
        let mut fresh = Pair::new(o, Limits::default());
        fresh.connect();
        fresh.cut();
        // A 5.0 client that started clean with a Session Expiry Interval resumes its
        // session afterwards; a 3.1.1 Clean Session is clean on every connection.
        fresh.connect();
        let Some(Event::Connected(ack)) = fresh.client_events.last() else {
            panic!()
        };
        assert_eq!(
            ack.session_present,
            version == V5,
            "{version}: resume only a session that outlives the connection"
        );
    }
}

// 3.1 has no Session Present (its CONNACK's first byte is unused and 0): a 3.1 client
// that asked for Clean Session 0 keeps its session state and resends what was not
// acknowledged, as a duplicate, rather than taking the 0 for "no session".
#[test]
fn v3_1_clean_session_0_keeps_the_session_without_session_present() {
    let mut pair = connected(ProtocolVersion::V3_1);
    pair.client
        .publish(pair.now, msg("t", "again", QoS::AtLeastOnce))
        .unwrap();
    // The PUBLISH reaches the server; its PUBACK is lost with the connection.
    pair.drive_limited(1);
    pair.cut();
    pair.client_sent.clear();
    pair.connect();
    let Some(Event::Connected(ack)) = pair.client_events.first() else {
        panic!("{:?}", pair.client_events)
    };
    assert!(!ack.session_present, "3.1 says nothing of a session");
    let dups: Vec<bool> = pair
        .client_sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.dup),
            _ => None,
        })
        .collect();
    assert_eq!(dups, [true], "resent in the kept session, DUP set");
    assert_eq!(delivered(&pair.client_events), 1);
}

// ---- QoS flows, client to server ----------------------------------------------------

// 5.0 MQTT-4.3.1-1, 5.0 MQTT-4.3.2-1, 5.0 MQTT-4.3.2-2, 5.0 MQTT-4.3.2-4,
// 5.0 MQTT-4.3.3-1, 5.0 MQTT-4.3.3-2, 5.0 MQTT-4.3.3-4, 5.0 MQTT-4.3.3-8,
// 5.0 MQTT-4.3.3-11, 5.0 MQTT-3.3.4-1: the packets each QoS exchanges.
#[test]
fn qos_flows_client_to_server() {
    for version in [ProtocolVersion::V3_1, V311, V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut pair = connected(version);
            pair.client.publish(pair.now, msg("a/b", "x", qos)).unwrap();
            pair.drive();
            assert_eq!(payloads(&pair.server_events), ["x"], "{version} {qos}");
            let client_types: Vec<_> = pair.client_sent.iter().map(Packet::packet_type).collect();
            let server_types: Vec<_> = pair.server_sent.iter().map(Packet::packet_type).collect();
            use mqtt_codec::PacketType::*;
            let (c, s) = match qos {
                QoS::AtMostOnce => (vec![Connect, Publish], vec![ConnAck]),
                QoS::AtLeastOnce => (vec![Connect, Publish], vec![ConnAck, PubAck]),
                QoS::ExactlyOnce => (
                    vec![Connect, Publish, PubRel],
                    vec![ConnAck, PubRec, PubComp],
                ),
            };
            assert_eq!((client_types, server_types), (c, s), "{version} {qos}");
            let expect_delivered = usize::from(qos != QoS::AtMostOnce);
            assert_eq!(
                delivered(&pair.client_events),
                expect_delivered,
                "{version} {qos}"
            );
            let Packet::Publish(p) = &pair.client_sent[1] else {
                panic!()
            };
            assert!(!p.dup);
            assert_eq!(p.qos(), qos);
            assert_eq!(p.packet_id().is_some(), qos != QoS::AtMostOnce);
        }
    }
}

#[test]
fn qos_flows_server_to_client() {
    for version in [V311, V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut pair = connected(version);
            pair.server
                .deliver(pair.now, msg("t", "down", qos))
                .unwrap();
            pair.drive();
            assert_eq!(payloads(&pair.client_events), ["down"], "{version} {qos}");
            assert_eq!(
                delivered(&pair.server_events),
                usize::from(qos != QoS::AtMostOnce)
            );
            assert_eq!(pair.server.pending_messages(), 0);
        }
    }
}

// 5.0 MQTT-2.2.1-3, 5.0 MQTT-2.2.1-4, 3.1.1 MQTT-2.3.1-2: identifiers never reused while in flight.
#[test]
fn packet_ids_are_not_reused_while_in_flight() {
    for version in [V311, V5] {
        let mut o = options(version);
        o.limits.max_inflight = 100;
        let mut pair = Pair::new(o, Limits::default());
        pair.connect();
        // Let 100 QoS 1 messages go out but acknowledge none of them.
        for i in 0..100 {
            pair.client
                .publish(
                    pair.now,
                    msg("t", if i % 2 == 0 { "a" } else { "b" }, QoS::AtLeastOnce),
                )
                .unwrap();
        }
        let mut ids = Vec::new();
        while let Some(p) = pair.client.poll_transmit(pair.now) {
            if let Packet::Publish(p) = p {
                ids.push(p.packet_id().unwrap());
            }
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ids.len(), 100);
        assert_eq!(unique.len(), 100);
    }
}

// ---- exactly once, at least once, across lost connections ---------------------------

/// Publishes one message at `qos` from `from_client` (else from the server), cuts the
/// link after `k` packets, reconnects, and returns (times delivered, completions).
fn cut_after(version: ProtocolVersion, qos: QoS, from_client: bool, k: usize) -> (usize, usize) {
    let mut pair = connected(version);
    if from_client {
        pair.client
            .publish(pair.now, msg("t", "once", qos))
            .unwrap();
    } else {
        pair.server
            .deliver(pair.now, msg("t", "once", qos))
            .unwrap();
    }
    pair.drive_limited(k);
    pair.cut();
    pair.now = pair.now + Duration::from_secs(1);
    pair.connect();
    pair.drive();
    let (receiver, sender) = if from_client {
        (&pair.server_events, &pair.client_events)
    } else {
        (&pair.client_events, &pair.server_events)
    };
    (payloads(receiver).len(), delivered(sender))
}

// 5.0 MQTT-4.4.0-1, 3.1.1 MQTT-4.4.0-1: resend unacknowledged PUBLISH and PUBREL on
// resumption; 5.0 MQTT-4.3.3-10: a resent QoS 2 PUBLISH is not delivered again.
#[test]
fn disconnect_at_every_step_of_qos1_and_qos2() {
    for version in [V311, V5] {
        for from_client in [true, false] {
            for k in 0..6 {
                let (got, done) = cut_after(version, QoS::AtLeastOnce, from_client, k);
                assert!(
                    got >= 1,
                    "{version} QoS 1 client={from_client} cut after {k}: lost"
                );
                assert_eq!(
                    done, 1,
                    "{version} QoS 1 client={from_client} cut after {k}"
                );
                let (got, done) = cut_after(version, QoS::ExactlyOnce, from_client, k);
                assert_eq!(
                    got, 1,
                    "{version} QoS 2 client={from_client} cut after {k}: not exactly once"
                );
                assert_eq!(
                    done, 1,
                    "{version} QoS 2 client={from_client} cut after {k}"
                );
            }
        }
    }
}

// 5.0 MQTT-4.6.0-1, 3.1.1 MQTT-4.6.0-1: resends keep the original order, with DUP set;
// 5.0 MQTT-4.3.3-6: no PUBLISH is resent after its PUBREL.
#[test]
fn resends_keep_order_and_set_dup() {
    for version in [V311, V5] {
        let mut pair = connected(version);
        for p in ["1", "2", "3"] {
            pair.client
                .publish(pair.now, msg("t", p, QoS::ExactlyOnce))
                .unwrap();
        }
        pair.client
            .publish(pair.now, msg("t", "4", QoS::AtLeastOnce))
            .unwrap();
        // Five packets cross: PUBLISH 1, PUBREC 1, PUBLISH 2, PUBREC 2, PUBLISH 3. PUBLISH 4
        // is written but lost with the link.
        pair.drive_limited(5);
        pair.cut();
        pair.client_sent.clear();
        pair.connect();
        let resent: Vec<_> = pair
            .client_sent
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => {
                    Some((String::from_utf8_lossy(&p.payload).into_owned(), p.dup))
                }
                Packet::PubRel(_) => Some(("PUBREL".to_owned(), false)),
                _ => None,
            })
            .collect();
        assert_eq!(
            resent[..4],
            [
                ("PUBREL".to_owned(), false),
                ("PUBREL".to_owned(), false),
                ("3".to_owned(), true),
                ("4".to_owned(), true)
            ]
        );
        assert_eq!(payloads(&pair.server_events), ["1", "2", "3", "4"]);
    }
}

// 5.0 MQTT-3.3.4-9: a resumed session resends no more unacknowledged PUBLISH packets
// than the new connection's Receive Maximum; the rest follow as acknowledgements come,
// in order. 5.0 MQTT-3.1.2-25: one that no longer fits the new Maximum Packet Size is
// dropped as if sent, and its place in the window is freed.
#[test]
fn a_resumed_session_resends_within_the_new_limits() {
    let mut pair = connected(V5);
    let big: &'static str = Box::leak("x".repeat(300).into_boxed_str());
    for p in ["0", "1", "2", big, "4", "5", "6", "7", "8", "9"] {
        pair.server
            .deliver(pair.now, msg("t", p, QoS::AtLeastOnce))
            .unwrap();
    }
    // All ten written, none delivered: lost with the link.
    pair.drive_limited(0);
    pair.cut();
    // The client comes back (a new client session, Clean Start 0) with `receive_maximum`
    // and a Maximum Packet Size of 100 bytes; CONNECT crosses, and the server answers
    // CONNACK and what its window allows.
    let come_back = |pair: &mut Pair, receive_maximum: u16| {
        let mut o = options(V5);
        o.limits.receive_maximum = receive_maximum;
        o.limits.max_packet_size = 100;
        pair.client = ClientSession::new(o);
        pair.server_sent.clear();
        pair.open();
        pair.drive_limited(1);
    };
    come_back(&mut pair, 2);
    let resent = |sent: &[Packet]| -> Vec<(String, bool)> {
        sent.iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => {
                    Some((String::from_utf8_lossy(&p.payload).into_owned(), p.dup))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        resent(&pair.server_sent),
        [("0".to_owned(), true), ("1".to_owned(), true)]
    );
    // Lost again before anything crossed; back with a Receive Maximum of 3: what waited
    // on the last connection is decided anew.
    pair.cut();
    come_back(&mut pair, 3);
    assert_eq!(
        resent(&pair.server_sent),
        [
            ("0".to_owned(), true),
            ("1".to_owned(), true),
            ("2".to_owned(), true)
        ]
    );
    pair.drive();
    assert!(pair.error.is_none(), "{:?}", pair.error);
    assert!(pair.client.is_connected());
    assert_eq!(
        payloads(&pair.client_events),
        ["0", "1", "2", "4", "5", "6", "7", "8", "9"]
    );
    assert!(resent(&pair.server_sent).iter().all(|(_, dup)| *dup));
    let events = pair.take_server_events();
    assert!(dropped_for(&events, DropReason::TooLarge), "{events:?}");
    assert_eq!(delivered(&events), 9);
    // Nothing is left in flight: new messages go out at once.
    a_new_message_goes_out(&mut pair, QoS::AtLeastOnce);
}

// 5.0 MQTT-3.3.2-6: a PUBLISH sent again on a resumed session carries what is left of
// its Message Expiry Interval, not what it had when first sent; one that expired
// meanwhile is not sent again. A QoS 2 one gets PUBREL instead: the client may hold
// its identifier (4.3.3), and a later message given it would be taken for a duplicate.
#[test]
fn resends_carry_what_is_left_of_their_expiry() {
    let mut pair = connected(V5);
    for (p, expiry, qos) in [
        ("long", 100, QoS::AtLeastOnce),
        ("short", 10, QoS::AtLeastOnce),
        ("short2", 10, QoS::ExactlyOnce),
    ] {
        let mut m = msg("t", p, qos);
        m.properties.message_expiry_interval = Some(expiry);
        pair.server.deliver(pair.now, m).unwrap();
    }
    // All written, none delivered: lost with the link.
    pair.drive_limited(0);
    pair.cut();
    pair.advance(Duration::from_secs(40));
    pair.take_server_events();
    pair.server_sent.clear();
    pair.connect();
    let resent: Vec<(String, Option<u32>)> = pair
        .server_sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.properties.message_expiry_interval,
            )),
            Packet::PubRel(_) => Some(("PUBREL".to_owned(), None)),
            _ => None,
        })
        .collect();
    assert_eq!(
        resent,
        [("long".to_owned(), Some(60)), ("PUBREL".to_owned(), None)]
    );
    let events = pair.take_server_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(
                e,
                Event::Dropped {
                    reason: DropReason::Expired,
                    ..
                }
            ))
            .count(),
        2,
        "{events:?}"
    );
    // The exchange completes (the client answers PUBCOMP): nothing is left in flight.
    a_new_message_goes_out(&mut pair, QoS::ExactlyOnce);
}

/// What a server refuses before resuming a session (its client may not read it) is
/// neither resent nor sent: queued or in flight, it is dropped and reported. A QoS 2
/// one already sent gets PUBREL instead, releasing the identifier the client may hold,
/// and an exchange past PUBREC, which holds no message, goes on.
#[test]
fn messages_refused_before_a_resume_are_not_sent() {
    for version in [V311, V5] {
        let mut pair = connected(version);
        // A QoS 2 exchange left waiting for PUBCOMP: driven until the server writes
        // PUBREL, which goes out first below.
        pair.server
            .deliver(pair.now, msg("secret/0", "0", QoS::ExactlyOnce))
            .unwrap();
        while !pair
            .server_sent
            .iter()
            .any(|p| matches!(p, Packet::PubRel(_)))
        {
            assert_eq!(pair.drive_limited(1), 1);
        }
        // Four in flight, written after that PUBREL and lost with the link.
        for (topic, qos) in [
            ("ok/1", QoS::AtLeastOnce),
            ("secret/1", QoS::AtLeastOnce),
            ("ok/2", QoS::ExactlyOnce),
            ("secret/2", QoS::ExactlyOnce),
        ] {
            pair.server
                .deliver(pair.now, msg(topic, topic, qos))
                .unwrap();
        }
        pair.drive_limited(1);
        pair.cut();
        // Two queued while offline.
        for topic in ["ok/3", "secret/3"] {
            pair.server
                .deliver(pair.now, msg(topic, topic, QoS::AtLeastOnce))
                .unwrap();
        }
        // With the QoS 2 exchange waiting for PUBCOMP.
        assert_eq!(pair.server.pending_messages(), 7, "{version}");
        pair.take_server_events();
        pair.take_client_events();
        let refused = pair
            .server
            .drop_messages_where(|m| m.topic.starts_with("secret/"));
        assert_eq!(refused.len(), 3, "{version}");
        let events = pair.take_server_events();
        let mut dropped = Vec::new();
        while let Some(e) = pair.server.poll_event() {
            dropped.push(e);
        }
        dropped.extend(events);
        assert_eq!(dropped.len(), 3, "{version} {dropped:?}");
        assert!(dropped.iter().all(|e| matches!(
            e,
            Event::Dropped {
                reason: DropReason::NotAuthorized,
                ..
            }
        )));
        pair.server_sent.clear();
        pair.connect();
        let sent: Vec<_> = pair
            .server_sent
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.to_string()),
                Packet::PubRel(_) => Some("PUBREL".to_owned()),
                _ => None,
            })
            .collect();
        // Resent in order, secret/2 as its PUBREL, then the new one; the client's
        // answers move ok/2 on after.
        assert_eq!(
            sent[..5],
            ["PUBREL", "ok/1", "ok/2", "PUBREL", "ok/3"],
            "{version}"
        );
        assert!(sent.iter().all(|t| !t.starts_with("secret/")), "{sent:?}");
        assert!(
            payloads(&pair.take_client_events())
                .iter()
                .all(|p| !p.starts_with("secret/")),
            "{version}"
        );
        assert_eq!(pair.server.pending_messages(), 0, "{version}");
        assert_eq!(pair.server.queued_bytes(), 0, "{version}");
        assert_eq!(pair.server.held_bytes(), 0, "{version}");
    }
}

// ---- flow control --------------------------------------------------------------------

// 5.0 MQTT-3.3.4-7, 5.0 MQTT-3.3.4-9, 5.0 MQTT-4.9.0-2: no more in flight than Receive
// Maximum; 5.0 MQTT-4.9.0-3, 5.0 MQTT-3.3.4-8: other packets are not held back.
#[test]
fn receive_maximum_bounds_the_window() {
    let limits = Limits {
        receive_maximum: 2,
        ..Limits::default()
    };
    let mut pair = Pair::new(options(V5), limits);
    pair.connect();
    for p in ["1", "2", "3", "4", "5"] {
        pair.client
            .publish(pair.now, msg("t", p, QoS::AtLeastOnce))
            .unwrap();
    }
    // Write what may be written, deliver nothing yet.
    pair.drive_limited(0);
    let publishes = |pair: &Pair| {
        pair.client_sent
            .iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count()
    };
    assert_eq!(
        publishes(&pair),
        2,
        "only Receive Maximum PUBLISH packets before acknowledgements"
    );
    // A PINGREQ still goes out while the window is full.
    pair.now = pair.now + Duration::from_secs(60);
    pair.client.handle_timeout(pair.now);
    pair.drive_limited(0);
    assert!(matches!(pair.client_sent.last(), Some(Packet::PingReq)));
    pair.drive();
    assert_eq!(payloads(&pair.server_events), ["1", "2", "3", "4", "5"]);
}

#[test]
fn exceeding_our_receive_maximum_is_a_protocol_error() {
    let limits = Limits {
        receive_maximum: 1,
        ..Limits::default()
    };
    let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
    let connect = mqtt_codec::Connect::new(V5, ByteStr::from_static("c"));
    let ack = server.accept(Instant::ZERO, &connect, Default::default());
    assert_eq!(ack.properties.receive_maximum.map(|v| v.get()), Some(1));
    let publish = |id: u16| {
        let mut p = Publish::new(ByteStr::from_static("t"), Bytes::new());
        p.qos_pid = QosPid::ExactlyOnce(PacketId::new(id).unwrap());
        Packet::Publish(p)
    };
    server.handle_packet(Instant::ZERO, publish(1)).unwrap();
    let err = server.handle_packet(Instant::ZERO, publish(2)).unwrap_err();
    assert_eq!(err.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    // 5.0 MQTT-4.13.1-1: the server closes with a DISCONNECT carrying the reason.
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
    assert!(
        matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );
}

/// A 3.1.1 client is told no Receive Maximum, yet the server keeps one entry per QoS 2
/// message awaiting PUBREL: our Receive Maximum caps them too, and beyond it the
/// connection is closed (3.1.1 has no DISCONNECT from the server). A PUBREL makes room.
#[test]
fn qos2_awaiting_pubrel_is_capped_for_3_1_1_clients_too() {
    for v in [ProtocolVersion::V3_1, V311] {
        let limits = Limits {
            receive_maximum: 3,
            ..Limits::default()
        };
        let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
        let connect = mqtt_codec::Connect::new(v, ByteStr::from_static("c"));
        server.accept(Instant::ZERO, &connect, Default::default());
        let publish = |id: u16| {
            let mut p = Publish::new(ByteStr::from_static("t"), Bytes::new());
            p.qos_pid = QosPid::ExactlyOnce(PacketId::new(id).unwrap());
            Packet::Publish(p)
        };
        for id in 1..=3 {
            server.handle_packet(Instant::ZERO, publish(id)).unwrap();
        }
        // A duplicate of one awaiting PUBREL is answered again, not counted.
        server.handle_packet(Instant::ZERO, publish(2)).unwrap();
        let rel = mqtt_codec::PubRel::new(PacketId::new(1).unwrap());
        server.handle_packet(Instant::ZERO, rel.into()).unwrap();
        server.handle_packet(Instant::ZERO, publish(4)).unwrap();
        let err = server.handle_packet(Instant::ZERO, publish(5)).unwrap_err();
        assert_eq!(err.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "{v}");
        let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
        assert!(
            !sent.iter().any(|p| matches!(p, Packet::Disconnect(_))),
            "{v}: no DISCONNECT before 5.0"
        );
    }
}

/// A connection taken over between reading a packet and acting on its events must not
/// hand its DISCONNECT to the connection that took over (the broker would close the new
/// one at once), nor its SUBSCRIBE (the new one would get a SUBACK for a packet
/// identifier it never used). What the old connection published is still delivered.
#[test]
fn a_new_connection_does_not_inherit_the_old_ones_requests() {
    for version in [V311, V5] {
        let mut server = ServerSession::new(ByteStr::from_static("c"), Limits::default());
        let mut connect = mqtt_codec::Connect::new(version, ByteStr::from_static("c"));
        connect.clean_start = false;
        server.accept(Instant::ZERO, &connect, Default::default());
        let mut p = Publish::new(ByteStr::from_static("t"), Bytes::from_static(b"last"));
        p.qos_pid = QosPid::AtLeastOnce(PacketId::new(1).unwrap());
        server
            .handle_packet(Instant::ZERO, Packet::Publish(p))
            .unwrap();
        let subscribe = Subscribe::new(
            PacketId::new(2).unwrap(),
            ByteStr::from_static("more"),
            QoS::AtLeastOnce,
        );
        server
            .handle_packet(Instant::ZERO, Packet::Subscribe(subscribe))
            .unwrap();
        server
            .handle_packet(Instant::ZERO, Packet::Disconnect(Disconnect::default()))
            .unwrap();
        // Taken over before the old connection polled its events.
        server.connection_lost(Instant::ZERO);
        server.accept(Instant::ZERO, &connect, Default::default());
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            events.iter().all(|e| !matches!(
                e,
                Event::PeerDisconnected(_) | Event::Closed { .. } | Event::Subscribe(_)
            )),
            "{version}: {events:?}"
        );
        assert_eq!(payloads(&events), ["last"], "{version}");
        assert!(server.is_connected());
    }
}

/// A server session that settles acknowledgements itself (`defer_publish_acks`, as a
/// broker does), with a 5.0 client's persistent session accepted, and that CONNECT.
fn deferring_server() -> (ServerSession, mqtt_codec::Connect) {
    let limits = Limits {
        defer_publish_acks: true,
        ..Limits::default()
    };
    let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
    let mut connect = mqtt_codec::Connect::new(V5, ByteStr::from_static("c"));
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    server.accept(Instant::ZERO, &connect, Default::default());
    (server, connect)
}

/// The connection's own QoS 1 message `id`, settled as routed, gets its PUBACK.
fn assert_own_message_acknowledged(server: &mut ServerSession, id: u16) {
    server
        .handle_packet(Instant::ZERO, raw_publish(id, QoS::AtLeastOnce))
        .unwrap();
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    for e in &events {
        if let Event::Message(m, arrival) = e {
            server.settle_publish(m.qos, arrival.packet_id, ReasonCode::SUCCESS);
        }
    }
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
    assert!(
        sent.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id.get() == id)),
        "{sent:?}"
    );
}

/// A PUBLISH to `t` with packet identifier `id`, as a client sends it.
fn raw_publish(id: u16, qos: QoS) -> Packet {
    let mut p = Publish::new(ByteStr::from_static("t"), Bytes::from_static(b"m"));
    p.qos_pid = QosPid::new(qos, PacketId::new(id).unwrap());
    Packet::Publish(p)
}

/// A server that decides acknowledgements itself (`defer_publish_acks`) and is taken
/// over between reading PUBLISH packets and settling them: the messages kept are
/// acknowledged on no connection (the new one's client may use those identifiers for
/// other messages), and a refused QoS 2 one, or those it drops (`forget_received`:
/// another client resumed the session), release their QoS 2 identifiers, so that the
/// resends are new messages, not duplicates of messages never delivered.
#[test]
fn a_taken_over_connections_messages_are_not_acknowledged_on_the_next() {
    // Dropped, settled as routed, settled as refused.
    for (forget, verdict) in [
        (true, ReasonCode::SUCCESS),
        (false, ReasonCode::SUCCESS),
        (false, ReasonCode::NOT_AUTHORIZED),
    ] {
        let case = format!("forget {forget}, {verdict:?}");
        let (mut server, connect) = deferring_server();
        server
            .handle_packet(Instant::ZERO, raw_publish(1, QoS::AtLeastOnce))
            .unwrap();
        server
            .handle_packet(Instant::ZERO, raw_publish(2, QoS::ExactlyOnce))
            .unwrap();
        // Taken over before the old connection polled its events.
        server.accept(Instant::ZERO, &connect, Default::default());
        if forget {
            assert_eq!(server.forget_received(), 2);
        }
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        let arrivals: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m, arrival) => Some((m.qos, *arrival)),
                _ => None,
            })
            .collect();
        assert_eq!(arrivals.len(), if forget { 0 } else { 2 }, "{case}");
        for (qos, arrival) in arrivals {
            server.settle_publish(qos, arrival.packet_id, verdict);
        }
        let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
        assert!(
            !sent
                .iter()
                .any(|p| matches!(p, Packet::PubAck(_) | Packet::PubRec(_))),
            "{case}: {sent:?}"
        );
        // The publisher resends its QoS 2 message: a duplicate of one routed (answered
        // PUBREC, not delivered again), or a new one if it was dropped or refused.
        let new = forget || verdict.is_error();
        let mut resend = raw_publish(2, QoS::ExactlyOnce);
        if let Packet::Publish(p) = &mut resend {
            p.dup = true;
        }
        server.handle_packet(Instant::ZERO, resend).unwrap();
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert_eq!(payloads(&events).len(), usize::from(new), "{case}");
        if !new {
            let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
            assert_eq!(
                sent.iter()
                    .filter(|p| matches!(p, Packet::PubRec(_)))
                    .count(),
                1,
                "{case}: {sent:?}"
            );
        }
        // Settlements of this connection's own messages go out again.
        assert_own_message_acknowledged(&mut server, 3);
    }
}

/// Messages read on a connection that ended and were drained without a verdict (a
/// session gone offline drops them) do not make the next connection's own
/// acknowledgements go unsent; a verdict settled after its connection was taken over
/// sends nothing, and a refused QoS 2 one frees its identifier.
#[test]
fn only_the_ended_connections_settlements_are_swallowed() {
    let (mut server, connect) = deferring_server();
    for id in 1..=3 {
        server
            .handle_packet(Instant::ZERO, raw_publish(id, QoS::AtLeastOnce))
            .unwrap();
    }
    // The connection ends; the offline session's events are drained and dropped.
    server.connection_lost(Instant::ZERO);
    while server.poll_event().is_some() {}
    server.accept(Instant::ZERO, &connect, Default::default());
    assert_own_message_acknowledged(&mut server, 7);
    // A QoS 2 message refused after its connection was taken over: nothing sent, and
    // its resend is a new message.
    server
        .handle_packet(Instant::ZERO, raw_publish(8, QoS::ExactlyOnce))
        .unwrap();
    while server.poll_event().is_some() {}
    server.settle_publish_unsent(
        QoS::ExactlyOnce,
        PacketId::new(8),
        ReasonCode::NOT_AUTHORIZED,
    );
    assert!(
        std::iter::from_fn(|| server.poll_transmit(Instant::ZERO))
            .next()
            .is_none()
    );
    server
        .handle_packet(Instant::ZERO, raw_publish(8, QoS::ExactlyOnce))
        .unwrap();
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(payloads(&events).len(), 1, "{events:?}");
}

// 5.0 MQTT-3.2.2-11, 5.0 MQTT-3.2.2-14: messages a client queued while away are held
// to the Maximum QoS and Retain Available of the server it reconnects to, which may
// take less than the last one: those beyond are dropped, not sent.
#[test]
fn queued_messages_are_held_to_the_new_servers_limits() {
    let mut pair = connected(V5);
    pair.cut();
    for (p, qos, retain) in [
        ("qos2", QoS::ExactlyOnce, false),
        ("retained", QoS::AtLeastOnce, true),
        ("plain", QoS::AtLeastOnce, false),
    ] {
        let mut m = msg("t", p, qos);
        m.retain = retain;
        pair.client.publish(pair.now, m).unwrap();
    }
    pair.connack_properties.maximum_qos = Some(QoS::AtLeastOnce);
    pair.connack_properties.retain_available = Some(false);
    pair.take_client_events();
    pair.connect();
    assert!(pair.error.is_none(), "{:?}", pair.error);
    assert!(pair.client.is_connected());
    assert_eq!(payloads(&pair.server_events), ["plain"]);
    let events = pair.take_client_events();
    assert!(
        dropped_for(&events, DropReason::QosNotSupported),
        "{events:?}"
    );
    assert!(
        dropped_for(&events, DropReason::RetainNotSupported),
        "{events:?}"
    );
}

/// What an ended connection's messages owe survives an idle session's shrinking, and a
/// late refusal of one does not release an identifier that, after a clean start,
/// belongs to the new connection.
#[test]
fn late_settlements_survive_shrinking_and_respect_a_clean_start() {
    let (mut server, mut connect) = deferring_server();
    server
        .handle_packet(Instant::ZERO, raw_publish(1, QoS::AtLeastOnce))
        .unwrap();
    // Taken over; the new connection drains the message, then idles (its verdict waits
    // for a commit) and shrinks.
    server.accept(Instant::ZERO, &connect, Default::default());
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    server.shrink_idle();
    for e in &events {
        if let Event::Message(m, arrival) = e {
            server.settle_publish(m.qos, arrival.packet_id, ReasonCode::SUCCESS);
        }
    }
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
    assert!(
        !sent.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "{sent:?}"
    );

    // A QoS 2 message read, then a clean start whose client uses the same identifier.
    server
        .handle_packet(Instant::ZERO, raw_publish(5, QoS::ExactlyOnce))
        .unwrap();
    while server.poll_event().is_some() {}
    connect.clean_start = true;
    server.accept(Instant::ZERO, &connect, Default::default());
    server
        .handle_packet(Instant::ZERO, raw_publish(5, QoS::ExactlyOnce))
        .unwrap();
    while server.poll_event().is_some() {}
    // The old connection's refusal comes late: identifier 5 stays the new one's.
    server.settle_publish_unsent(
        QoS::ExactlyOnce,
        PacketId::new(5),
        ReasonCode::NOT_AUTHORIZED,
    );
    assert!(server.awaits_pubrel(PacketId::new(5).unwrap()));
}

/// The client end likewise: a CONNACK read on a connection lost before its events were
/// polled does not make the session look connected to whoever polls next.
#[test]
fn a_lost_connections_connack_is_not_reported_after_it() {
    let mut client = ClientSession::new(options(V311));
    client.connect(Instant::ZERO);
    let ack = mqtt_codec::ConnAck::new(false, ReasonCode::SUCCESS);
    client
        .handle_packet(Instant::ZERO, Packet::ConnAck(Box::new(ack)))
        .unwrap();
    client.connection_lost(Instant::ZERO);
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(
        events.iter().all(|e| !matches!(e, Event::Connected(_))),
        "{events:?}"
    );
    assert!(!client.is_connected());
}

// ---- bounded queues ------------------------------------------------------------------

#[test]
fn queue_limits_drop_qos0_first_then_refuse() {
    let limits = Limits {
        max_queued_messages: 3,
        queue_qos0_offline: true,
        ..Limits::default()
    };
    let mut pair = Pair::new(options(V5), limits);
    pair.connect();
    pair.cut();
    let now = pair.now;
    pair.server
        .deliver(now, msg("t", "q0", QoS::AtMostOnce))
        .unwrap();
    pair.server
        .deliver(now, msg("t", "a", QoS::AtLeastOnce))
        .unwrap();
    pair.server
        .deliver(now, msg("t", "b", QoS::AtLeastOnce))
        .unwrap();
    // Full: a QoS 0 newcomer is refused; a QoS 1 newcomer evicts the QoS 0 message.
    let refused = pair
        .server
        .deliver(now, msg("t", "q0-late", QoS::AtMostOnce))
        .unwrap_err();
    assert_eq!(refused.reason, DropReason::QueueFull);
    pair.server
        .deliver(now, msg("t", "c", QoS::AtLeastOnce))
        .unwrap();
    assert!(matches!(
        pair.server.poll_event(),
        Some(Event::Dropped {
            reason: DropReason::QueueFull,
            ..
        })
    ));
    // Full of QoS 1: refused, handed back.
    let refused = pair
        .server
        .deliver(now, msg("t", "d", QoS::AtLeastOnce))
        .unwrap_err();
    assert_eq!(
        (refused.reason, &refused.message.payload[..]),
        (DropReason::QueueFull, &b"d"[..])
    );
    pair.connect();
    assert_eq!(payloads(&pair.client_events), ["a", "b", "c"]);
}

#[test]
fn qos0_for_an_offline_session_is_refused_unless_configured() {
    let mut pair = connected(V311);
    pair.cut();
    let r = pair
        .server
        .deliver(pair.now, msg("t", "x", QoS::AtMostOnce))
        .unwrap_err();
    assert_eq!(r.reason, DropReason::Offline);
}

// ---- MQTT 5.0 features ---------------------------------------------------------------

// 5.0 MQTT-3.3.2-5, 5.0 MQTT-3.3.2-6: expired messages are deleted; the rest go out with
// the time they have left.
#[test]
fn message_expiry_counts_down_while_queued() {
    let mut pair = connected(V5);
    pair.cut();
    let mut short = msg("t", "short", QoS::AtLeastOnce);
    short.properties.message_expiry_interval = Some(5);
    let mut long = msg("t", "long", QoS::AtLeastOnce);
    long.properties.message_expiry_interval = Some(10);
    let short_id = pair.server.deliver(pair.now, short).unwrap();
    pair.server.deliver(pair.now, long).unwrap();
    pair.now = pair.now + Duration::from_secs(6);
    pair.connect();
    assert_eq!(payloads(&pair.client_events), ["long"]);
    assert!(pair.server_events.contains(&Event::Dropped {
        id: short_id,
        reason: DropReason::Expired
    }));
    let got = pair.client_events.iter().find_map(|e| match e {
        Event::Message(m, _) => m.properties.message_expiry_interval,
        _ => None,
    });
    assert_eq!(got, Some(4));
}

// 5.0 MQTT-3.1.2-26: with many topics cycling through a full alias table, every alias
// stays within the client's maximum and the client resolves every topic it is sent.
#[test]
fn topic_aliases_with_more_topics_than_aliases() {
    const MAX: u16 = 100;
    let mut o = options(V5);
    o.limits.topic_alias_maximum = MAX;
    let limits = Limits {
        max_queued_messages: 10_000,
        ..Limits::default()
    };
    let mut pair = Pair::new(o, limits);
    pair.connect();
    let topics: Vec<String> = (0..3 * usize::from(MAX))
        .chain(0..50)
        .chain(250..300)
        .map(|i| format!("t/{i}"))
        .collect();
    for t in &topics {
        let topic = ByteStr::try_from(t.as_str()).unwrap();
        pair.server
            .deliver(pair.now, Message::new(topic, Bytes::new(), QoS::AtMostOnce))
            .unwrap();
    }
    pair.drive();
    assert!(pair.server_sent.iter().all(|p| match p {
        Packet::Publish(p) => p.topic_alias.is_some_and(|a| a.get() <= MAX),
        _ => true,
    }));
    // The last 50 topics were just aliased: each goes as the alias alone.
    let reused = pair
        .server_sent
        .iter()
        .filter(|p| matches!(p, Packet::Publish(p) if p.topic.is_empty()))
        .count();
    assert_eq!(reused, 50);
    let received: Vec<String> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m, _) => Some(m.topic.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(received, topics);
}

// 5.0 MQTT-3.1.2-26, 5.0 MQTT-3.1.2-27, 5.0 MQTT-3.3.2-10: aliases within the client's
// maximum, resolved by the client; 5.0 MQTT-3.3.2-7: not carried to a new connection.
#[test]
fn topic_aliases_server_to_client() {
    let mut o = options(V5);
    o.limits.topic_alias_maximum = 2;
    let mut pair = Pair::new(o, Limits::default());
    pair.connect();
    for t in ["a/1", "a/1", "a/2", "a/3", "a/1"] {
        pair.server
            .deliver(
                pair.now,
                Message::new(ByteStr::from_static(t), Bytes::new(), QoS::AtMostOnce),
            )
            .unwrap();
    }
    pair.drive();
    let wire: Vec<(String, Option<u16>)> = pair
        .server_sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.to_string(), p.topic_alias.map(|a| a.get()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        wire,
        [
            ("a/1".into(), Some(1)),
            ("".into(), Some(1)),
            ("a/2".into(), Some(2)),
            ("a/3".into(), Some(1)),
            ("a/1".into(), Some(2)),
        ]
    );
    let topics: Vec<String> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m, _) => Some(m.topic.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["a/1", "a/1", "a/2", "a/3", "a/1"]);
    // Each message reports the alias it arrived with, as on the wire; QoS 0 has no
    // packet identifier.
    let arrivals: Vec<(Option<u16>, Option<u16>)> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Message(_, a) => {
                Some((a.packet_id.map(|p| p.get()), a.topic_alias.map(|a| a.get())))
            }
            _ => None,
        })
        .collect();
    let wire_aliases: Vec<(Option<u16>, Option<u16>)> =
        wire.iter().map(|&(_, alias)| (None, alias)).collect();
    assert_eq!(arrivals, wire_aliases);
    // A new connection starts without aliases.
    pair.cut();
    pair.server_sent.clear();
    pair.connect();
    pair.server
        .deliver(
            pair.now,
            Message::new(ByteStr::from_static("a/3"), Bytes::new(), QoS::AtMostOnce),
        )
        .unwrap();
    pair.drive();
    let Some(Packet::Publish(p)) = pair.server_sent.last() else {
        panic!()
    };
    assert_eq!(p.topic, "a/3");
}

// The packet identifier a QoS 1 or 2 message arrived with is reported beside it, and a
// QoS 2 resend with DUP is still reported once, with its first arrival.
#[test]
fn arrival_reports_the_packet_identifier() {
    let mut pair = connected(V5);
    pair.server
        .deliver(pair.now, msg("t", "one", QoS::AtLeastOnce))
        .unwrap();
    pair.server
        .deliver(pair.now, msg("t", "two", QoS::ExactlyOnce))
        .unwrap();
    pair.server
        .deliver(pair.now, msg("t", "zero", QoS::AtMostOnce))
        .unwrap();
    pair.drive();
    let wire: Vec<Option<u16>> = pair
        .server_sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.packet_id().map(PacketId::get)),
            _ => None,
        })
        .collect();
    let arrived: Vec<(String, Option<u16>, Option<u16>)> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m, a) => Some((
                String::from_utf8_lossy(&m.payload).into_owned(),
                a.packet_id.map(PacketId::get),
                a.topic_alias.map(|a| a.get()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(wire.len(), 3);
    assert!(wire[0].is_some() && wire[1].is_some() && wire[0] != wire[1]);
    assert_eq!(
        arrived,
        [
            ("one".into(), wire[0], None),
            ("two".into(), wire[1], None),
            ("zero".into(), None, None),
        ]
    );
}

#[test]
fn no_topic_aliases_unless_the_peer_allows_them() {
    let mut pair = connected(V5);
    for _ in 0..3 {
        pair.server
            .deliver(pair.now, msg("a/1", "", QoS::AtMostOnce))
            .unwrap();
    }
    pair.drive();
    assert!(pair.server_sent.iter().all(|p| match p {
        Packet::Publish(p) => p.topic_alias.is_none() && p.topic == "a/1",
        _ => true,
    }));
}

// 5.0 MQTT-3.3.2-12 from the receiving side: an alias above our maximum closes with 0x94.
#[test]
fn unknown_or_out_of_range_alias_is_an_error() {
    let limits = Limits {
        topic_alias_maximum: 1,
        ..Limits::default()
    };
    let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
    server.accept(
        Instant::ZERO,
        &mqtt_codec::Connect::new(V5, ByteStr::from_static("c")),
        Default::default(),
    );
    let mut p = Publish::new(ByteStr::new(), Bytes::new());
    p.topic_alias = std::num::NonZeroU16::new(1);
    let err = server
        .handle_packet(Instant::ZERO, p.clone().into())
        .unwrap_err();
    assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR, "alias never set");
    p.topic_alias = std::num::NonZeroU16::new(2);
    p.topic = ByteStr::from_static("x");
    let err = server.handle_packet(Instant::ZERO, p.into()).unwrap_err();
    assert_eq!(err.reason, ReasonCode::TOPIC_ALIAS_INVALID);
}

// 5.0 MQTT-3.1.2-24, 5.0 MQTT-3.1.2-25: nothing larger than the client's Maximum Packet
// Size is sent; such a message is dropped as if delivered.
#[test]
fn maximum_packet_size_of_the_peer_is_respected() {
    let mut o = options(V5);
    o.limits.max_packet_size = 64;
    let mut pair = Pair::new(o, Limits::default());
    pair.connect();
    let big = Message::new(
        ByteStr::from_static("t"),
        Bytes::from(vec![0; 100]),
        QoS::AtLeastOnce,
    );
    let big_id = pair.server.deliver(pair.now, big).unwrap();
    pair.server
        .deliver(pair.now, msg("t", "small", QoS::AtLeastOnce))
        .unwrap();
    pair.drive();
    assert_eq!(payloads(&pair.client_events), ["small"]);
    assert!(pair.server_events.contains(&Event::Dropped {
        id: big_id,
        reason: DropReason::TooLarge
    }));
    assert!(pair.server_sent.iter().all(|p| p.encoded_len(V5) <= 64));
}

// 5.0 MQTT-4.1.0-2: the session is discarded when its expiry interval passes.
#[test]
fn session_expiry() {
    let mut o = options(V5);
    o.session_expiry_interval = 30;
    let mut pair = Pair::new(o, Limits::default());
    pair.connect();
    pair.cut();
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    pair.advance(Duration::from_secs(29));
    assert!(!pair.server_events.contains(&Event::SessionExpired));
    pair.advance(Duration::from_secs(1));
    assert!(pair.server_events.contains(&Event::SessionExpired));
}

// ---- keep-alive ------------------------------------------------------------------------

// 5.0 MQTT-3.1.2-20, 3.1.1 MQTT-3.1.2-23: the client pings when idle;
// 5.0 MQTT-3.12.4-1: the server answers.
#[test]
fn client_pings_when_idle_and_server_answers() {
    for version in [V311, V5] {
        let mut o = options(version);
        o.keep_alive = 10;
        let mut pair = Pair::new(o, Limits::default());
        pair.connect();
        pair.advance(Duration::from_secs(9));
        assert!(
            !pair
                .client_sent
                .iter()
                .any(|p| matches!(p, Packet::PingReq))
        );
        pair.advance(Duration::from_secs(1));
        assert!(
            pair.client_sent
                .iter()
                .any(|p| matches!(p, Packet::PingReq))
        );
        assert!(
            pair.server_sent
                .iter()
                .any(|p| matches!(p, Packet::PingResp))
        );
        // Hours of idling: still connected, pinging every 10 s.
        pair.advance_by_steps(Duration::from_secs(3600), Duration::from_secs(1));
        assert!(pair.client.is_connected());
        let pings = pair
            .client_sent
            .iter()
            .filter(|p| matches!(p, Packet::PingReq))
            .count();
        assert!((360..=362).contains(&pings), "{pings}");
    }
}

/// Fires `server`'s timer at `deadline` (and just before, which must do nothing), and
/// checks that the connection is closed for `reason`: DISCONNECT with it in 5.0,
/// nothing sent in 3.1.1.
fn closes_at(server: &mut ServerSession, deadline: u64, reason: ReasonCode) {
    let v5 = server.version().is_v5();
    assert_eq!(server.poll_timeout(), Some(Instant::from_millis(deadline)));
    server.handle_timeout(Instant::from_millis(deadline - 1));
    assert_eq!(server.poll_event(), None);
    let at = Instant::from_millis(deadline);
    server.handle_timeout(at);
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(at)).collect();
    assert_eq!(server.poll_event(), Some(Event::Closed { reason }));
    if v5 {
        assert!(
            matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code == reason),
            "{sent:?}"
        );
    } else {
        assert!(
            sent.iter().all(|p| !matches!(p, Packet::Disconnect(_))),
            "3.1.1 servers send no DISCONNECT"
        );
    }
}

// 5.0 MQTT-3.1.2-22, 3.1.1 MQTT-3.1.2-24: the server closes after 1.5 keep-alives of silence.
#[test]
fn server_closes_a_silent_client() {
    for version in [V311, V5] {
        let mut server = ServerSession::new(ByteStr::from_static("c"), Limits::default());
        let mut connect = mqtt_codec::Connect::new(version, ByteStr::from_static("c"));
        connect.keep_alive = 10;
        server.accept(Instant::ZERO, &connect, Default::default());
        closes_at(&mut server, 15_000, ReasonCode::KEEP_ALIVE_TIMEOUT);
    }
}

/// A connection accepted with credentials that run out (a token's exp) is closed
/// then, before its keep-alive would be: DISCONNECT 0x87 in 5.0; a new connection of
/// the session starts without the old one's expiry.
#[test]
fn server_closes_a_connection_whose_credentials_expire() {
    for version in [V311, V5] {
        let mut server = ServerSession::new(ByteStr::from_static("c"), Limits::default());
        let mut connect = mqtt_codec::Connect::new(version, ByteStr::from_static("c"));
        connect.keep_alive = 60;
        connect.clean_start = false;
        server.accept(Instant::ZERO, &connect, Default::default());
        server.set_credentials_expiry(Some(Instant::from_millis(5_000)));
        closes_at(&mut server, 5_000, ReasonCode::NOT_AUTHORIZED);
        // The session comes back on a new connection, with no expiry of its own.
        server.connection_lost(Instant::from_millis(5_000));
        server.accept(Instant::from_millis(6_000), &connect, Default::default());
        assert_eq!(server.poll_timeout(), Some(Instant::from_millis(96_000)));
    }
}

#[test]
fn client_detects_a_silent_server() {
    let mut o = options(V5);
    o.keep_alive = 10;
    o.limits.ping_timeout = Duration::from_secs(5);
    let mut client = ClientSession::new(o);
    client.connect(Instant::ZERO);
    while client.poll_transmit(Instant::ZERO).is_some() {}
    let connack = mqtt_codec::ConnAck::new(false, ReasonCode::SUCCESS);
    client.handle_packet(Instant::ZERO, connack.into()).unwrap();
    client.handle_timeout(Instant::from_millis(10_000));
    assert!(matches!(
        client.poll_transmit(Instant::from_millis(10_000)),
        Some(Packet::PingReq)
    ));
    assert_eq!(client.poll_timeout(), Some(Instant::from_millis(15_000)));
    client.handle_timeout(Instant::from_millis(15_000));
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(events.contains(&Event::Closed {
        reason: ReasonCode::KEEP_ALIVE_TIMEOUT
    }));
}

// 5.0 MQTT-3.2.2-21: the client uses the Server Keep Alive.
#[test]
fn server_keep_alive_override() {
    let mut o = options(V5);
    o.keep_alive = 120;
    let limits = Limits {
        max_keep_alive: 30,
        ..Limits::default()
    };
    let mut pair = Pair::new(o, limits);
    pair.connect();
    let Some(Event::Connected(ack)) = pair.client_events.first() else {
        panic!()
    };
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.now + Duration::from_secs(45))
    );
}

// ---- wills -------------------------------------------------------------------------------

fn with_will(version: ProtocolVersion, delay: Option<u32>) -> Pair {
    let mut o = options(version);
    o.will = Some(Will {
        topic: ByteStr::from_static("status/c1"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    });
    let mut pair = Pair::new(o, Limits::default());
    pair.connect();
    pair
}

fn wills(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Will(_)))
        .count()
}

#[test]
fn will_on_ungraceful_disconnect_not_on_normal_disconnect() {
    for version in [V311, V5] {
        let mut pair = with_will(version, None);
        pair.cut();
        pair.advance(Duration::from_millis(1));
        assert_eq!(
            wills(&pair.server_events),
            1,
            "{version}: lost connection publishes the will"
        );

        // 3.1.1 MQTT-3.14.4-3, 5.0 MQTT-3.14.4-3: a normal DISCONNECT discards it.
        let mut pair = with_will(version, None);
        pair.client.disconnect(Disconnect::default());
        pair.drive();
        pair.cut();
        pair.advance(Duration::from_secs(1));
        assert_eq!(wills(&pair.server_events), 0, "{version}");
    }
}

// 5.0 MQTT-3.1.3-9: reconnecting within the will delay cancels the will.
#[test]
fn will_delay_and_cancel_on_reconnect() {
    let mut pair = with_will(V5, Some(10));
    pair.cut();
    pair.advance(Duration::from_secs(9));
    assert_eq!(wills(&pair.server_events), 0);
    pair.connect();
    pair.advance(Duration::from_secs(5));
    assert_eq!(
        wills(&pair.server_events),
        0,
        "cancelled by the new connection"
    );

    let mut pair = with_will(V5, Some(10));
    pair.cut();
    pair.advance(Duration::from_secs(10));
    assert_eq!(wills(&pair.server_events), 1);
}

#[test]
fn disconnect_with_will_message_publishes_it() {
    let mut pair = with_will(V5, None);
    pair.client
        .disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL));
    pair.drive();
    pair.advance(Duration::from_millis(1));
    assert_eq!(wills(&pair.server_events), 1);
}

// ---- subscriptions and the server's answers --------------------------------------------

#[test]
fn subscribe_round_trip_and_records() {
    let mut pair = connected(V5);
    let sub = Subscription {
        filter: ByteStr::from_static("a/+"),
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
    };
    let id = pair
        .client
        .subscribe(vec![sub], Default::default())
        .unwrap();
    pair.drive();
    let Some(Event::Subscribe(request)) = pair.server_events.first().cloned() else {
        panic!()
    };
    assert_eq!(request.packet_id, id);
    pair.server
        .suback(&request, vec![ReasonCode::GRANTED_QOS_1]);
    pair.drive();
    assert!(matches!(pair.client_events.last(), Some(Event::SubAck(a)) if a.packet_id == id));
    assert_eq!(pair.server.subscriptions().len(), 1);
    // A clean start forgets it.
    let mut o = options(V5);
    o.clean_start = true;
    let _ = Subscribe::new(id, ByteStr::from_static("x"), QoS::AtMostOnce);
}

/// 100,000 distinct filters in one SUBSCRIBE (about 1 MB), then all of them in one
/// UNSUBSCRIBE: every filter is recorded once and every one is forgotten. The session
/// finds subscriptions by filter, so each packet costs O(n log n), not O(n²) (which
/// took 12 s for this packet); this checks the result, not the time.
#[test]
fn subscribe_and_unsubscribe_100_000_filters() {
    const N: usize = 100_000;
    let limits = Limits {
        max_subscriptions: N,
        ..Limits::default()
    };
    let mut pair = Pair::new(options(V5), limits);
    pair.connect();
    pair.take_client_events();
    pair.take_server_events();
    let filters: Vec<ByteStr> = (0..N)
        .map(|i| ByteStr::try_from(format!("f/{i}/#")).unwrap())
        .collect();
    let subs = filters
        .iter()
        .map(|f| Subscription {
            filter: f.clone(),
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
        })
        .collect();
    pair.client.subscribe(subs, Default::default()).unwrap();
    pair.drive();
    let Some(Event::Subscribe(request)) = pair.take_server_events().pop() else {
        panic!("the server sees the SUBSCRIBE")
    };
    assert_eq!(request.subscriptions.len(), N);
    // One filter twice more, with other options: it replaces the first, adds nothing.
    let mut again = request.clone();
    again.subscriptions.truncate(1);
    again.subscriptions[0].options = SubscriptionOptions::new(QoS::ExactlyOnce);
    pair.server
        .suback(&request, vec![ReasonCode::GRANTED_QOS_1; N]);
    pair.server.suback(&again, vec![ReasonCode::GRANTED_QOS_2]);
    pair.drive();
    assert_eq!(pair.server.subscriptions().len(), N);
    assert_eq!(pair.server.subscription_count(), N);
    assert!(
        filters
            .iter()
            .all(|f| pair.server.subscriptions().contains(f))
    );
    let first = pair.server.subscriptions().get(&filters[0]).unwrap();
    assert_eq!(first.options.qos, QoS::ExactlyOnce);
    let acks: Vec<_> = pair
        .take_client_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::SubAck(a) => Some(a.reason_codes.len()),
            _ => None,
        })
        .collect();
    // The second SUBACK reuses an identifier the client no longer waits for: ignored.
    assert_eq!(acks, [N]);

    pair.client
        .unsubscribe(filters.clone(), Default::default())
        .unwrap();
    pair.drive();
    let Some(Event::Unsubscribe(request)) = pair.take_server_events().pop() else {
        panic!("the server sees the UNSUBSCRIBE")
    };
    assert_eq!(request.filters.len(), N);
    pair.server.unsuback(&request, vec![ReasonCode::SUCCESS; N]);
    pair.drive();
    assert!(pair.server.subscriptions().is_empty());
    assert!(
        pair.take_client_events()
            .iter()
            .any(|e| matches!(e, Event::UnsubAck(a) if a.reason_codes.len() == N))
    );
}

/// `Limits::max_subscriptions` holds whatever reason codes the broker passes: new
/// filters beyond it are refused (0x97 in 5.0, 0x80 in 3.1.1), replacing a held filter
/// is always allowed, and a filter repeated in one packet counts once.
#[test]
fn subscriptions_beyond_the_limit_are_refused() {
    for (version, refusal) in [
        (V5, ReasonCode::QUOTA_EXCEEDED),
        (V311, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let limits = Limits {
            max_subscriptions: 3,
            ..Limits::default()
        };
        let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
        let connect = mqtt_codec::Connect::new(version, ByteStr::from_static("c"));
        server.accept(Instant::ZERO, &connect, Default::default());
        let subscribe = |id: u16, filters: &[&'static str]| Subscribe {
            packet_id: PacketId::new(id).unwrap(),
            subscriptions: filters
                .iter()
                .map(|f| Subscription {
                    filter: ByteStr::from_static(f),
                    options: SubscriptionOptions::new(QoS::AtLeastOnce),
                })
                .collect(),
            properties: Default::default(),
        };
        let first = subscribe(1, &["a", "b"]);
        server.suback(&first, vec![ReasonCode::GRANTED_QOS_1; 2]);
        assert_eq!(server.subscription_count(), 2);

        let second = subscribe(2, &["a", "c", "d", "c", "e"]);
        let mut codes = vec![ReasonCode::GRANTED_QOS_1; 5];
        assert_eq!(server.limit_subscriptions(&second, &mut codes), 2);
        let g = ReasonCode::GRANTED_QOS_1;
        assert_eq!(codes, [g, g, refusal, g, refusal]);
        // The session applies the limit itself, even to codes that ignore it.
        server.suback(&second, vec![ReasonCode::GRANTED_QOS_1; 5]);
        assert_eq!(server.subscription_count(), 3);
        let filters: Vec<_> = server.subscriptions().filters().cloned().collect();
        assert_eq!(filters, ["a", "b", "c"]);
        let acks: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO))
            .filter_map(|p| match p {
                Packet::SubAck(a) => Some(a.reason_codes),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks.last().unwrap(),
            &[g, g, refusal, g, refusal],
            "{version}"
        );

        // Full: replacing still works, anything new is refused.
        let third = subscribe(3, &["b", "f"]);
        server.suback(&third, vec![ReasonCode::GRANTED_QOS_1; 2]);
        assert_eq!(server.subscription_count(), 3);
        assert!(!server.subscriptions().contains("f"));
    }
}

// 5.0 MQTT-3.1.0-2 seen by the server: a second CONNECT is a protocol error.
#[test]
fn second_connect_is_a_protocol_error() {
    let mut pair = connected(V311);
    let c = mqtt_codec::Connect::new(V311, ByteStr::from_static("c1"));
    let err = pair.server.handle_packet(pair.now, c.into()).unwrap_err();
    assert_eq!(err.rule, Some("MQTT-3.1.0-2"));
}

// 5.0 MQTT-3.2.2-5: without a session on the server the client drops its state, and
// sends again, as new messages, those never acknowledged.
#[test]
fn session_lost_on_the_server_resends_unacknowledged_as_new() {
    let mut pair = connected(V5);
    pair.client
        .publish(pair.now, msg("t", "keep", QoS::AtLeastOnce))
        .unwrap();
    while pair.client.poll_transmit(pair.now).is_some() {}
    pair.cut();
    // The server forgot the session (a new one for the same client).
    pair.server = ServerSession::new(ByteStr::from_static("c1"), Limits::default());
    pair.connect();
    let Some(Event::Connected(ack)) = pair
        .client_events
        .iter()
        .find(|e| matches!(e, Event::Connected(_)))
    else {
        panic!()
    };
    assert!(!ack.session_present);
    assert_eq!(payloads(&pair.server_events), ["keep"]);
    let dups: Vec<bool> = pair
        .client_sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.dup),
            _ => None,
        })
        .collect();
    assert_eq!(dups.last(), Some(&false), "sent as a new message");
}

// 5.0 MQTT-4.3.3-11: every PUBREL gets a PUBCOMP with its packet identifier. One we no
// longer hold is answered with Success, as Mosquitto does: the usual reason is that the
// exchange completed and its PUBCOMP was lost with a connection, and clients such as
// MQTT.js take 0x92 for a failed delivery of a message that was delivered.
#[test]
fn unknown_pubrel_is_completed_with_success() {
    let mut server = ServerSession::new(ByteStr::from_static("c"), Limits::default());
    server.accept(
        Instant::ZERO,
        &mqtt_codec::Connect::new(V5, ByteStr::from_static("c")),
        Default::default(),
    );
    server
        .handle_packet(
            Instant::ZERO,
            mqtt_codec::PubRel::new(PacketId::new(9).unwrap()).into(),
        )
        .unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit(Instant::ZERO)).collect();
    assert!(
        matches!(sent.last(), Some(Packet::PubComp(c))
            if c.reason_code == ReasonCode::SUCCESS && c.packet_id.get() == 9),
        "{sent:?}"
    );
    let _ = PubAck::new(PacketId::MIN);
    let _ = PublishProperties::default();
}

// A SUBSCRIBE whose connection drops before its SUBACK is sent again on the next
// connection, and answered there.
#[test]
fn unanswered_subscribe_is_sent_again_after_a_cut() {
    for version in [V311, V5] {
        let mut pair = connected(version);
        let sub = Subscription {
            filter: ByteStr::from_static("again/#"),
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
        };
        let id = pair
            .client
            .subscribe(vec![sub], Default::default())
            .unwrap();
        // The SUBSCRIBE reaches the server; the link dies before the SUBACK.
        pair.drive_limited(1);
        pair.cut();
        pair.connect();
        let requests: Vec<_> = pair
            .server_events
            .iter()
            .filter_map(|e| match e {
                Event::Subscribe(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(requests.len(), 2, "{version}: sent on both connections");
        pair.server
            .suback(&requests[1], vec![ReasonCode::GRANTED_QOS_1]);
        pair.drive();
        assert!(
            pair.client_events
                .iter()
                .any(|e| matches!(e, Event::SubAck(a) if a.packet_id == id)),
            "{version}: answered on the new connection"
        );
    }
}

// A client that asked for a clean session gets one on every connection when its session
// cannot outlive a connection (3.x Clean Session 1, 5.0 Session Expiry 0).
#[test]
fn clean_session_stays_clean_on_reconnect() {
    for version in [V311, V5] {
        let mut o = options(version);
        o.clean_start = true;
        o.session_expiry_interval = 0;
        let mut pair = Pair::new(o, Limits::default());
        pair.connect();
        pair.cut();
        pair.client_sent.clear();
        pair.connect();
        let Some(Packet::Connect(c)) = pair.client_sent.first() else {
            panic!()
        };
        assert!(c.clean_start, "{version}");
    }
}

// 5.0 MQTT-4.3.3-11: the PUBCOMP of a QoS 2 exchange is lost with
// the connection; the resent PUBREL finds the exchange completed and is answered with
// Success, and the message counts as delivered, once.
#[test]
fn pubcomp_lost_with_the_connection_still_delivers() {
    let mut pair = connected(V5);
    let id = pair
        .client
        .publish(pair.now, msg("t", "q2", QoS::ExactlyOnce))
        .unwrap();
    // PUBLISH, PUBREC, PUBREL cross; the PUBCOMP is written but lost.
    pair.drive_limited(3);
    pair.cut();
    pair.connect();
    let done: Vec<_> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Delivered { id: d, reason_code } if *d == id => Some(*reason_code),
            _ => None,
        })
        .collect();
    assert_eq!(done, [ReasonCode::SUCCESS]);
    assert_eq!(payloads(&pair.server_events), ["q2"]);
    // The server answered both PUBRELs (the lost one and the resent one) with Success.
    let comps: Vec<ReasonCode> = pair
        .server_sent
        .iter()
        .filter_map(|p| match p {
            Packet::PubComp(c) => Some(c.reason_code),
            _ => None,
        })
        .collect();
    assert_eq!(comps, [ReasonCode::SUCCESS, ReasonCode::SUCCESS]);
}

// The queue is bounded by bytes as well as messages.
#[test]
fn queue_limit_by_bytes() {
    // Room for two 41-byte messages with what each copy costs besides its bytes.
    let limits = Limits {
        max_queued_bytes: 2 * (Message::OVERHEAD + 41) + 10,
        queue_qos0_offline: true,
        ..Limits::default()
    };
    let mut pair = Pair::new(options(V5), limits);
    pair.connect();
    pair.cut();
    let payload = Bytes::from(vec![b'x'; 40]);
    let now = pair.now;
    pair.server
        .deliver(
            now,
            Message::new(ByteStr::from_static("t"), payload.clone(), QoS::AtLeastOnce),
        )
        .unwrap();
    pair.server
        .deliver(
            now,
            Message::new(ByteStr::from_static("t"), payload.clone(), QoS::AtLeastOnce),
        )
        .unwrap();
    // A third 41-byte message would pass the quota: refused.
    let refused = pair
        .server
        .deliver(
            now,
            Message::new(ByteStr::from_static("t"), payload, QoS::AtLeastOnce),
        )
        .unwrap_err();
    assert_eq!(refused.reason, DropReason::QueueFull);
}

// ---- idle sessions -------------------------------------------------------------------

// An idle session gives back its queues whole; message and packet identifiers carry on
// from where they were, so no identifier is handed out twice in the session's life.
#[test]
fn shrinking_an_idle_session_keeps_its_identifiers() {
    let mut pair = connected(V5);
    let first = pair
        .server
        .deliver(pair.now, msg("t", "1", QoS::AtLeastOnce))
        .unwrap();
    pair.drive();
    assert_eq!(payloads(&pair.take_client_events()), ["1"]);
    let first_pid = pair.server_sent.iter().find_map(|p| match p {
        Packet::Publish(p) => p.packet_id(),
        _ => None,
    });
    pair.server.shrink_idle();
    pair.client.shrink_idle();
    let exported = pair.server.export(pair.now);
    pair.server_sent.clear();
    let second = pair
        .server
        .deliver(pair.now, msg("t", "2", QoS::AtLeastOnce))
        .unwrap();
    pair.drive();
    assert_eq!(payloads(&pair.take_client_events()), ["2"]);
    assert!(second > first);
    let second_pid = pair.server_sent.iter().find_map(|p| match p {
        Packet::Publish(p) => p.packet_id(),
        _ => None,
    });
    assert_ne!(first_pid, second_pid);
    // The shrunk session exports the identifiers it would use next.
    let mut restored = ServerSession::restore(Limits::default(), &exported, pair.now).unwrap();
    let third = restored
        .deliver(pair.now, msg("t", "3", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(third, second);
}

// 3.1.1 MQTT-3.2.0-1, 5.0 MQTT-3.2.0-1, 3.1.1 MQTT-4.6.0-6, 5.0 MQTT-4.6.0-6: a server
// may write QoS 0 packets it encoded itself only once CONNACK is out and while no QoS 0
// message of the session's own is queued; messages it could not write go back ahead of
// those queued since, and stay with the session across a reconnection.
#[test]
fn encoded_publishes_come_after_connack_and_before_later_qos0() {
    let now = Instant::ZERO;
    let mut server = ServerSession::new(ByteStr::from_static("c1"), Limits::default());
    let mut connect = mqtt_codec::Connect::new(V311, ByteStr::from_static("c1"));
    connect.clean_start = false;
    server.accept(now, &connect, Default::default());
    assert!(!server.takes_encoded_publish(10), "CONNACK waits to go out");
    assert!(matches!(
        server.poll_transmit(now),
        Some(Packet::ConnAck(_))
    ));
    assert!(server.takes_encoded_publish(10));
    assert!(
        !server.takes_encoded_publish(usize::MAX),
        "larger than any packet"
    );

    server
        .deliver(now, msg("t", "queued later", QoS::AtMostOnce))
        .unwrap();
    assert!(!server.takes_encoded_publish(10), "it would overtake");
    server.restore_unsent(
        now,
        vec![
            msg("t", "encoded 1", QoS::AtMostOnce),
            msg("t", "encoded 2", QoS::AtMostOnce),
        ],
    );
    server.connection_lost(now);
    server.accept(now, &connect, Default::default());
    let sent: Vec<String> = core::iter::from_fn(|| server.poll_transmit(now))
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, ["encoded 1", "encoded 2", "queued later"]);
    assert!(server.takes_encoded_publish(10));
}

/// `has_outgoing` says whether the connection has anything to write: what a server asks
/// before it lets an idle connection sleep without waiting for the session's signal.
#[test]
fn has_outgoing_tracks_control_packets_and_queued_messages() {
    let now = Instant::ZERO;
    let mut server = ServerSession::new(ByteStr::from_static("c1"), Limits::default());
    assert!(!server.has_outgoing(), "a new session");
    let connect = mqtt_codec::Connect::new(V311, ByteStr::from_static("c1"));
    server.accept(now, &connect, Default::default());
    assert!(server.has_outgoing(), "CONNACK");
    assert!(matches!(
        server.poll_transmit(now),
        Some(Packet::ConnAck(_))
    ));
    assert!(!server.has_outgoing());
    server
        .deliver(now, msg("t", "one", QoS::AtLeastOnce))
        .unwrap();
    assert!(server.has_outgoing(), "a queued message");
    assert!(matches!(
        server.poll_transmit(now),
        Some(Packet::Publish(_))
    ));
    assert!(
        !server.has_outgoing(),
        "in flight, waiting for the client's PUBACK: nothing to write"
    );
    server.shrink_idle();
    assert!(!server.has_outgoing());

    // Behind a full in-flight window a queued message waits for the client's PUBACK:
    // `has_outgoing` agrees with `poll_transmit` at every step.
    let limits = Limits {
        max_inflight: 1,
        ..Limits::default()
    };
    let mut server = ServerSession::new(ByteStr::from_static("c2"), limits);
    let connect = mqtt_codec::Connect::new(V311, ByteStr::from_static("c2"));
    server.accept(now, &connect, Default::default());
    assert!(server.poll_transmit(now).is_some(), "CONNACK");
    for payload in ["first", "second"] {
        server
            .deliver(now, msg("t", payload, QoS::AtLeastOnce))
            .unwrap();
    }
    assert!(server.has_outgoing());
    let Some(Packet::Publish(first)) = server.poll_transmit(now) else {
        panic!("the first PUBLISH");
    };
    assert!(!server.has_outgoing(), "the window is full");
    assert!(server.poll_transmit(now).is_none());
    let id = first.qos_pid.packet_id().unwrap();
    server
        .handle_packet(now, Packet::PubAck(PubAck::new(id)))
        .unwrap();
    assert!(server.has_outgoing(), "the PUBACK opened the window");
    assert!(matches!(
        server.poll_transmit(now),
        Some(Packet::Publish(_))
    ));
    assert!(!server.has_outgoing());
}

// ---- session lifecycle: what ends, what resumes, and the will of the old connection -------

/// A CONNECT from "c1", with Session Expiry Interval `expiry` (5.0) and, for the will
/// tests, a will whose delay is `will_delay` (5.0).
fn connect_packet(
    version: ProtocolVersion,
    clean_start: bool,
    expiry: Option<u32>,
    will_delay: Option<Option<u32>>,
) -> mqtt_codec::Connect {
    let mut c = mqtt_codec::Connect::new(version, ByteStr::from_static("c1"));
    c.clean_start = clean_start;
    if version == V5 {
        c.properties.session_expiry_interval = expiry;
    }
    c.will = will_delay.map(|delay| Will {
        topic: ByteStr::from_static("status/c1"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay.filter(|_| version == V5),
            ..WillProperties::default()
        },
    });
    c
}

/// What the server session sent and reported, drained.
fn drain(server: &mut ServerSession, now: Instant) -> (Vec<Packet>, Vec<Event>) {
    let sent = std::iter::from_fn(|| server.poll_transmit(now)).collect();
    let events = std::iter::from_fn(|| server.poll_event()).collect();
    (sent, events)
}

/// A server session accepted with `first` at time 0 that holds everything a session can
/// carry over: a subscription, a QoS 1 message in flight to the client and one queued
/// behind it (window of 1), and a QoS 2 message from the client awaiting PUBREL.
fn busy_server(first: &mqtt_codec::Connect) -> ServerSession {
    let limits = Limits {
        max_inflight: 1,
        ..Limits::default()
    };
    let mut server = ServerSession::new(ByteStr::from_static("c1"), limits);
    let now = Instant::ZERO;
    server.accept(now, first, Default::default());
    let sub = Subscribe::new(
        PacketId::new(1).unwrap(),
        ByteStr::from_static("a/#"),
        QoS::AtLeastOnce,
    );
    server.suback(&sub, vec![ReasonCode::GRANTED_QOS_1]);
    server
        .deliver(now, msg("a/1", "in flight", QoS::AtLeastOnce))
        .unwrap();
    server
        .deliver(now, msg("a/2", "queued", QoS::AtLeastOnce))
        .unwrap();
    server.handle_packet(now, qos2_publish(7).into()).unwrap();
    let (sent, events) = drain(&mut server, now);
    assert_eq!(sent.len(), 4, "CONNACK, SUBACK, PUBLISH, PUBREC: {sent:?}");
    assert_eq!(payloads(&events), ["from the client"]);
    assert_eq!(server.subscription_count(), 1);
    assert_eq!(server.pending_messages(), 2);
    server
}

fn qos2_publish(id: u16) -> Publish {
    let mut p = Publish::new(
        ByteStr::from_static("up"),
        Bytes::from_static(b"from the client"),
    );
    p.qos_pid = QosPid::ExactlyOnce(PacketId::new(id).unwrap());
    p
}

/// After `server` accepted `second` at `now`: nothing of the old session is left.
fn assert_fresh(
    server: &mut ServerSession,
    second: &mqtt_codec::Connect,
    now: Instant,
    what: &str,
) {
    assert!(!server.would_resume(now, second), "{what}: would resume");
    let ack = server.accept(now, second, Default::default());
    assert!(!ack.session_present, "{what}: Session Present 1");
    assert_eq!(server.subscription_count(), 0, "{what}: subscriptions kept");
    assert_eq!(server.pending_messages(), 0, "{what}: messages kept");
    let (sent, events) = drain(server, now);
    assert!(
        !sent.iter().any(|p| matches!(p, Packet::Publish(_))),
        "{what}: old messages resent: {sent:?}"
    );
    // The old messages are reported dropped, so their publishers' accounting settles.
    let dropped = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Dropped {
                    reason: DropReason::SessionDiscarded,
                    ..
                }
            )
        })
        .count();
    assert_eq!(dropped, 2, "{what}: {events:?}");
    // The client's QoS 2 message awaiting PUBREL is gone too: the same packet
    // identifier is a new message.
    server.handle_packet(now, qos2_publish(7).into()).unwrap();
    let (_, events) = drain(server, now);
    assert_eq!(
        payloads(&events),
        ["from the client"],
        "{what}: taken as a duplicate"
    );
}

// 3.1.1 MQTT-3.1.2-6, 3.1.1 MQTT-3.2.2-3, 5.0 MQTT-3.1.2-6, 5.0 MQTT-3.2.2-3: a session
// that could not outlive its connection (3.1.1 Clean Session 1; 5.0 Session Expiry 0,
// from CONNECT or from DISCONNECT) is gone when the connection is: a later CONNECT with
// Clean Session / Clean Start 0 gets Session Present 0 and a new, empty session, whether
// the old connection was closed first or is taken over.
#[test]
fn a_session_that_ends_with_its_connection_is_never_resumed() {
    let resume = |version| connect_packet(version, false, Some(3600), None);
    let cases = [
        (
            "3.1.1 Clean Session 1",
            connect_packet(V311, true, None, None),
            false,
        ),
        (
            "5.0 Session Expiry 0",
            connect_packet(V5, true, Some(0), None),
            false,
        ),
        (
            "5.0 no Session Expiry",
            connect_packet(V5, false, None, None),
            false,
        ),
        (
            "5.0 DISCONNECT sets 0",
            connect_packet(V5, false, Some(3600), None),
            true,
        ),
    ];
    for (what, first, disconnect_0) in cases {
        for takeover in [false, true] {
            let what = format!("{what}, takeover: {takeover}");
            let mut server = busy_server(&first);
            let mut now = Instant::ZERO;
            if disconnect_0 {
                let mut d = Disconnect::default();
                d.properties.session_expiry_interval = Some(0);
                server.handle_packet(now, d.into()).unwrap();
                let _ = drain(&mut server, now);
            }
            if !takeover {
                server.connection_lost(now);
                now = now + Duration::from_millis(1);
            }
            // A takeover: the broker ends the old connection and accepts the new one at
            // once, or calls `accept` with the old one still attached.
            assert_fresh(&mut server, &resume(first.version), now, &what);
        }
    }
}

// The control: a session that outlives its connection is resumed, with everything it
// held, on a takeover as after a close.
#[test]
fn a_session_that_outlives_its_connection_is_resumed() {
    for version in [V311, V5] {
        for takeover in [false, true] {
            let second = connect_packet(version, false, Some(3600), None);
            let mut server = busy_server(&second);
            let mut now = Instant::ZERO;
            if !takeover {
                server.connection_lost(now);
                now = now + Duration::from_secs(60);
            }
            assert!(server.would_resume(now, &second), "{version}");
            let ack = server.accept(now, &second, Default::default());
            assert!(ack.session_present, "{version}, takeover: {takeover}");
            assert_eq!(server.subscription_count(), 1);
            assert_eq!(server.pending_messages(), 2);
            // The QoS 2 message from the client still awaits its PUBREL: the same
            // identifier is a duplicate, acknowledged and not delivered again.
            let _ = drain(&mut server, now);
            server.handle_packet(now, qos2_publish(7).into()).unwrap();
            let (_, events) = drain(&mut server, now);
            assert!(
                payloads(&events).is_empty(),
                "{version}, takeover: {takeover}"
            );
        }
    }
}

// 5.0 MQTT-3.1.2-6: a session whose expiry has passed is gone, even if the driver has not
// yet run the timer that reports it (or has, and has not yet acted on the event).
#[test]
fn an_expired_session_is_not_resumed_before_or_after_its_timer() {
    let first = connect_packet(V5, false, Some(10), None);
    for timer_ran in [false, true] {
        let mut server = busy_server(&first);
        server.connection_lost(Instant::ZERO);
        let now = Instant::ZERO + Duration::from_secs(10);
        if timer_ran {
            server.handle_timeout(now);
        }
        let what = format!("timer ran: {timer_ran}");
        assert_fresh(&mut server, &first, now, &what);
        // The expiry belonged to the old session: the new one does not hear of it.
        assert!(
            std::iter::from_fn(|| server.poll_event()).all(|e| !matches!(e, Event::SessionExpired)),
            "{what}"
        );
    }
}

// 5.0 MQTT-3.1.3-9, 5.0 MQTT-3.1.2-8: a will waiting for its delay is cancelled by any
// new connection for the ClientID before the delay ends, one with Clean Start 1
// included, whether the old connection was closed first or is taken over.
#[test]
fn a_delayed_will_is_cancelled_by_any_new_connection() {
    for clean_start in [false, true] {
        for takeover in [false, true] {
            let what = format!("clean start: {clean_start}, takeover: {takeover}");
            let mut server = ServerSession::new(ByteStr::from_static("c1"), Limits::default());
            let first = connect_packet(V5, false, Some(3600), Some(Some(10)));
            server.accept(Instant::ZERO, &first, Default::default());
            let _ = drain(&mut server, Instant::ZERO);
            let mut now = Instant::ZERO;
            if !takeover {
                server.connection_lost(now);
                now = now + Duration::from_secs(5);
                server.handle_timeout(now);
            }
            let second = connect_packet(V5, clean_start, Some(3600), None);
            server.accept(now, &second, Default::default());
            server.connection_lost(now);
            // Long past the old delay, and past the new connection's end.
            server.handle_timeout(now + Duration::from_secs(60));
            let (_, events) = drain(&mut server, now);
            assert_eq!(wills(&events), 0, "{what}: {events:?}");
        }
    }
}

// 3.1.1 MQTT-3.1.2-8, 5.0 MQTT-3.1.2-8, 5.0 MQTT-3.1.3-9: a connection taken over
// (closed by the server, 3.1.1 [MQTT-3.1.4-2], 5.0 [MQTT-3.1.4-3]) ends without a
// DISCONNECT from its client, so
// its will is published (5.0 §3.1.4 step 3: "as described in section 3.1.2.5"), when it
// has no Will Delay (3.1.1 has none), whether the session resumes or not. With a Will
// Delay the new connection comes before the delay ends and cancels it ([MQTT-3.1.3-9]),
// unless the old session could not outlive its connection: then it ended when the
// connection did, and the will is due with it ("Will Delay Interval has passed or the
// Session ends, whichever happens first", §3.1.3.2.2).
#[test]
fn a_takeover_publishes_the_will_of_the_old_connection_when_it_is_due() {
    let cases = [
        // (version, old session expiry, will delay, new Clean Start, will published)
        (V311, Some(3600), None, false, true),
        (V311, Some(3600), None, true, true),
        (V5, Some(3600), None, false, true),
        (V5, Some(3600), Some(0), true, true),
        (V5, Some(3600), Some(10), false, false),
        (V5, Some(3600), Some(10), true, false),
        (V5, Some(0), Some(10), false, true),
    ];
    for (version, expiry, delay, clean_start, published) in cases {
        let what = format!("{version}, expiry {expiry:?}, delay {delay:?}, clean {clean_start}");
        let mut server = ServerSession::new(ByteStr::from_static("c1"), Limits::default());
        let now = Instant::ZERO;
        let first = connect_packet(version, false, expiry, Some(delay));
        server.accept(now, &first, Default::default());
        let _ = drain(&mut server, now);
        let second = connect_packet(version, clean_start, Some(3600), None);
        server.connection_lost(now);
        server.accept(now, &second, Default::default());
        let (_, events) = drain(&mut server, now);
        assert_eq!(wills(&events), usize::from(published), "{what}: {events:?}");
        // Published once or cancelled: never again later.
        server.connection_lost(now);
        server.handle_timeout(now + Duration::from_secs(3600));
        let (_, events) = drain(&mut server, now);
        assert_eq!(wills(&events), 0, "{what}: later {events:?}");
    }
}

// A broker's global memory budget counts what a session holds: its queue and the
// messages in flight, until the PUBACK (QoS 1) or PUBREC (QoS 2) that frees them.
#[test]
fn held_bytes_count_messages_in_flight_until_acknowledged() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut pair = connected(V5);
        let m = msg("t", "held until acknowledged", qos);
        let size = m.size();
        pair.server.deliver(pair.now, m).unwrap();
        assert_eq!(pair.server.queued_bytes(), size);
        assert_eq!(pair.server.held_bytes(), size);
        let Some(Packet::Publish(p)) = pair.server.poll_transmit(pair.now) else {
            panic!("{qos}: PUBLISH expected");
        };
        assert_eq!(pair.server.queued_bytes(), 0, "{qos}: sent, not queued");
        assert_eq!(pair.server.held_bytes(), size, "{qos}: in flight");
        let id = p.packet_id().unwrap();
        let ack = if qos == QoS::AtLeastOnce {
            Packet::PubAck(PubAck::new(id))
        } else {
            Packet::PubRec(mqtt_codec::PubRec::new(id))
        };
        pair.server.handle_packet(pair.now, ack).unwrap();
        assert_eq!(pair.server.held_bytes(), 0, "{qos}: acknowledged");
    }
}

// 5.0 MQTT-3.3.4-6: a client never sends a Subscription Identifier, even when it
// publishes again a message it received with one (a relay); a server refuses one that
// does with a Protocol Error.
#[test]
fn subscription_identifiers_never_go_from_client_to_server() {
    let mut pair = connected(V5);
    let mut m = msg("t", "relayed", QoS::AtLeastOnce);
    m.properties
        .set_subscription_identifiers(vec![mqtt_codec::SubscriptionId::new(3).unwrap()]);
    pair.client.publish(pair.now, m).unwrap();
    let Some(Packet::Publish(p)) = pair.client.poll_transmit(pair.now) else {
        panic!("PUBLISH expected");
    };
    assert!(p.properties.subscription_identifiers.is_empty());
    let mut forged = p.clone();
    forged
        .properties
        .set_subscription_identifiers(vec![mqtt_codec::SubscriptionId::new(3).unwrap()]);
    let err = pair
        .server
        .handle_packet(pair.now, Packet::Publish(forged))
        .unwrap_err();
    assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR);
    assert_eq!(err.rule, Some("MQTT-3.3.4-6"));
}
