//! Cases no well-behaved client produces, driven byte by byte: keep-alive silence,
//! connect timeouts, unsupported protocol levels.

use std::time::Duration;

use bytes::BytesMut;
use mqtt_codec::{ByteStr, Connect, Decoder, Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};

use crate::{WAIT, broker_with};

async fn send(s: &mut TcpStream, p: Packet, version: ProtocolVersion) {
    let mut b = BytesMut::new();
    p.encode(version, &mut b).unwrap();
    s.write_all(&b).await.unwrap();
}

/// Reads packets until the broker closes the connection.
async fn read_until_closed(s: &mut TcpStream, version: ProtocolVersion) -> Vec<Packet> {
    let mut decoder = Decoder::with_version(version);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        while let Ok(Some(p)) = decoder.decode(&mut buf) {
            out.push(p);
        }
        match timeout(WAIT, s.read_buf(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

/// A connection whose CONNECT (as `id`) asks for a keep-alive of 1 s.
async fn connect_with_keep_alive_1(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    id: &'static str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut c = Connect::new(version, ByteStr::from_static(id));
    c.keep_alive = 1;
    send(&mut s, c.into(), version).await;
    s
}

// 3.1.1 MQTT-3.1.2-24, 5.0 MQTT-3.1.2-22: silence for 1.5 × keep-alive closes the
// connection; 5.0 sends DISCONNECT 0x8D first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout() {
    let (broker, addr) = broker_with(|_| {}).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut s = connect_with_keep_alive_1(addr, version, "silent").await;
        let start = Instant::now();
        let packets = read_until_closed(&mut s, version).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
            "{version}: {took:?}"
        );
        assert!(matches!(packets.first(), Some(Packet::ConnAck(_))));
        if version.is_v5() {
            assert!(
                matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT)
            );
        }
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-24, 5.0 MQTT-3.1.2-22: the same for a client that only reads while
// messages keep coming to it: deliveries are not its activity, and a steady stream of
// them must not keep the keep-alive timer from ever being looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_while_deliveries_stream_in() {
    let (broker, addr) = broker_with(|_| {}).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut s = connect_with_keep_alive_1(addr, version, "reads-only").await;
        let sub = mqtt_codec::Subscribe::new(
            mqtt_codec::PacketId::new(1).unwrap(),
            ByteStr::from_static("stream/#"),
            QoS::AtMostOnce,
        );
        send(&mut s, sub.into(), version).await;
        let start = Instant::now();
        let mut publisher = crate::spec::Client::connect(addr, version, "streamer").await;
        // Back to back, for at most 4 s: a delivery is waiting whenever the
        // subscriber's connection looks for something to do.
        let streaming = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                for _ in 0..64 {
                    publisher.publish0("stream/a", b"x", false).await;
                }
                tokio::task::yield_now().await;
            }
        });
        let packets = read_until_closed(&mut s, version).await;
        let took = start.elapsed();
        streaming.abort();
        let deliveries = packets
            .iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count();
        assert!(deliveries > 20, "{version}: {deliveries} deliveries");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
            "{version}: {took:?}"
        );
        if version.is_v5() {
            assert!(
                matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
                "{:?}",
                packets.last()
            );
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout() {
    let (broker, addr) = broker_with(|c| c.limits.connect_timeout = 1).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let packets = read_until_closed(&mut s, ProtocolVersion::V3_1_1).await;
    assert!(packets.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(900));
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-2: an unsupported protocol level gets CONNACK 0x01, then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level() {
    let (broker, addr) = broker_with(|_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // CONNECT "MQTT" level 6.
    s.write_all(b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01c")
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"\x20\x03\x00\x84\x00");
    let mut s = TcpStream::connect(addr).await.unwrap();
    // CONNECT "MQTT" level 4 is fine; level 3 with "MQTT" is not.
    s.write_all(b"\x10\x0d\x00\x04MQTT\x03\x02\x00\x3c\x00\x01c")
        .await
        .unwrap();
    let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"\x20\x02\x00\x01");
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.3-8: an empty client id with Clean Session 0 is rejected with 0x02;
// 5.0 MQTT-3.2.2-16: with 5.0 the broker assigns one and says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id() {
    let (broker, addr) = broker_with(|_| {}).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut c = Connect::new(ProtocolVersion::V3_1_1, ByteStr::new());
    c.clean_start = false;
    send(&mut s, c.into(), ProtocolVersion::V3_1_1).await;
    let packets = read_until_closed(&mut s, ProtocolVersion::V3_1_1).await;
    assert!(
        matches!(packets.first(), Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );

    let mut s = TcpStream::connect(addr).await.unwrap();
    send(
        &mut s,
        Connect::new(ProtocolVersion::V5, ByteStr::new()).into(),
        ProtocolVersion::V5,
    )
    .await;
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    let mut buf = BytesMut::new();
    let ack = loop {
        if let Some(p) = decoder.decode(&mut buf).unwrap() {
            break p;
        }
        timeout(WAIT, s.read_buf(&mut buf)).await.unwrap().unwrap();
    };
    let Packet::ConnAck(ack) = ack else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(
        ack.properties
            .assigned_client_identifier
            .is_some_and(|id| !id.is_empty())
    );
    broker.shutdown().await;
}

// The broker enforces the Maximum Packet Size it announces: a larger packet closes
// the connection with 0x95.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_too_large() {
    let (broker, addr) = broker_with(|c| c.limits.max_packet_size = 128).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    send(
        &mut s,
        Connect::new(ProtocolVersion::V5, ByteStr::from_static("big")).into(),
        ProtocolVersion::V5,
    )
    .await;
    let p = mqtt_codec::Publish::new(
        ByteStr::from_static("t"),
        bytes::Bytes::from(vec![0u8; 500]),
    );
    send(&mut s, p.into(), ProtocolVersion::V5).await;
    let packets = read_until_closed(&mut s, ProtocolVersion::V5).await;
    let Some(Packet::ConnAck(ack)) = packets.first() else {
        panic!()
    };
    assert_eq!(
        ack.properties.maximum_packet_size.map(|v| v.get()),
        Some(128)
    );
    assert!(
        matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::PACKET_TOO_LARGE)
    );
    broker.shutdown().await;
}

// A slow subscriber (never reads) does not stall the publisher or a fast subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_does_not_stall_others() {
    let (broker, addr) = broker_with(|c| c.limits.max_queued_messages = 300).await;
    let v = ProtocolVersion::V3_1_1;
    // The slow one subscribes and then never reads.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    send(
        &mut slow,
        Connect::new(v, ByteStr::from_static("slow")).into(),
        v,
    )
    .await;
    let sub = mqtt_codec::Subscribe::new(
        mqtt_codec::PacketId::MIN,
        ByteStr::from_static("load/#"),
        QoS::AtLeastOnce,
    );
    send(&mut slow, sub.into(), v).await;
    // The fast one reads everything.
    let mut fast = TcpStream::connect(addr).await.unwrap();
    send(
        &mut fast,
        Connect::new(v, ByteStr::from_static("fast")).into(),
        v,
    )
    .await;
    send(
        &mut fast,
        mqtt_codec::Subscribe::new(
            mqtt_codec::PacketId::MIN,
            ByteStr::from_static("load/#"),
            QoS::AtMostOnce,
        )
        .into(),
        v,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    send(
        &mut publisher,
        Connect::new(v, ByteStr::from_static("pub")).into(),
        v,
    )
    .await;
    let payload = bytes::Bytes::from(vec![7u8; 4096]);
    // 50 rounds of 100 messages (20 MB in all): each round reaches the fast subscriber
    // although the slow one's socket filled up in the first rounds.
    let mut decoder = Decoder::with_version(v);
    let mut buf = BytesMut::new();
    let start = Instant::now();
    for round in 0..50 {
        let mut out = BytesMut::new();
        for _ in 0..100 {
            let p = mqtt_codec::Publish::new(ByteStr::from_static("load/x"), payload.clone());
            Packet::from(p).encode(v, &mut out).unwrap();
        }
        timeout(WAIT, publisher.write_all(&out))
            .await
            .expect("publisher stalled")
            .unwrap();
        let mut got = 0;
        while got < 100 {
            while let Ok(Some(p)) = decoder.decode(&mut buf) {
                if matches!(p, Packet::Publish(_)) {
                    got += 1;
                }
            }
            if got < 100 {
                timeout(WAIT, fast.read_buf(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("fast subscriber starved in round {round}"))
                    .unwrap();
            }
        }
    }
    assert!(start.elapsed() < WAIT * 3);
    drop(slow);
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.2-12: the broker accepts topic aliases up to its maximum and resolves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client() {
    let (broker, addr) = broker_with(|c| c.limits.topic_alias_maximum = 4).await;
    let v = ProtocolVersion::V5;
    let mut sub = TcpStream::connect(addr).await.unwrap();
    send(
        &mut sub,
        Connect::new(v, ByteStr::from_static("alias-sub")).into(),
        v,
    )
    .await;
    send(
        &mut sub,
        mqtt_codec::Subscribe::new(
            mqtt_codec::PacketId::MIN,
            ByteStr::from_static("a/#"),
            QoS::AtMostOnce,
        )
        .into(),
        v,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut publ = TcpStream::connect(addr).await.unwrap();
    send(
        &mut publ,
        Connect::new(v, ByteStr::from_static("alias-pub")).into(),
        v,
    )
    .await;
    let mut first = mqtt_codec::Publish::new(
        ByteStr::from_static("a/long/topic"),
        bytes::Bytes::from_static(b"1"),
    );
    first.topic_alias = std::num::NonZeroU16::new(3);
    send(&mut publ, first.into(), v).await;
    let mut second = mqtt_codec::Publish::new(ByteStr::new(), bytes::Bytes::from_static(b"2"));
    second.topic_alias = std::num::NonZeroU16::new(3);
    send(&mut publ, second.into(), v).await;
    let mut decoder = Decoder::with_version(v);
    let mut buf = BytesMut::new();
    let mut topics = Vec::new();
    while topics.len() < 2 {
        while let Ok(Some(p)) = decoder.decode(&mut buf) {
            if let Packet::Publish(p) = p {
                topics.push((p.topic.to_string(), p.payload));
            }
        }
        if topics.len() < 2 {
            timeout(WAIT, sub.read_buf(&mut buf))
                .await
                .expect("in time")
                .unwrap();
        }
    }
    assert_eq!(topics[0].0, "a/long/topic");
    assert_eq!(topics[1].0, "a/long/topic", "the alias was resolved");
    broker.shutdown().await;
}

/// Reads packets until one matches `want`, within the test's time bound.
async fn read_until(
    s: &mut TcpStream,
    version: ProtocolVersion,
    want: impl Fn(&Packet) -> bool,
) -> Packet {
    let mut decoder = Decoder::with_version(version);
    let mut buf = BytesMut::new();
    loop {
        while let Ok(Some(p)) = decoder.decode(&mut buf) {
            if want(&p) {
                return p;
            }
        }
        let n = timeout(WAIT, s.read_buf(&mut buf))
            .await
            .expect("in time")
            .unwrap();
        assert!(n > 0, "connection closed while waiting");
    }
}

// A shared-subscription member whose session ends with a QoS 1 message unacknowledged:
// the message goes to another member (5.0 section 4.8.2, "SHOULD send the Application
// Message to another Client that is subscribed to the same Shared Subscription").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_qos1_of_an_ended_session_goes_to_another_member() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V5;
    let sub = |id: u16| {
        mqtt_codec::Subscribe::new(
            mqtt_codec::PacketId::new(id).unwrap(),
            ByteStr::from_static("$share/workers/jobs"),
            QoS::AtLeastOnce,
        )
    };
    // Member A (Session Expiry 0: its session ends with its connection).
    let mut a = TcpStream::connect(addr).await.unwrap();
    send(
        &mut a,
        Connect::new(v, ByteStr::from_static("member-a")).into(),
        v,
    )
    .await;
    send(&mut a, sub(1).into(), v).await;
    read_until(&mut a, v, |p| matches!(p, Packet::SubAck(_))).await;
    // A publisher sends one QoS 1 job; only A is in the group, so A gets it.
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    send(
        &mut publisher,
        Connect::new(v, ByteStr::from_static("boss")).into(),
        v,
    )
    .await;
    let mut job = mqtt_codec::Publish::new(
        ByteStr::from_static("jobs"),
        bytes::Bytes::from_static(b"job-1"),
    );
    job.qos_pid = mqtt_codec::QosPid::AtLeastOnce(mqtt_codec::PacketId::MIN);
    send(&mut publisher, job.into(), v).await;
    let got = read_until(&mut a, v, |p| matches!(p, Packet::Publish(_))).await;
    assert!(matches!(&got, Packet::Publish(p) if &p.payload[..] == b"job-1"));
    // Member B joins; A vanishes without acknowledging.
    let mut b = TcpStream::connect(addr).await.unwrap();
    send(
        &mut b,
        Connect::new(v, ByteStr::from_static("member-b")).into(),
        v,
    )
    .await;
    send(&mut b, sub(1).into(), v).await;
    read_until(&mut b, v, |p| matches!(p, Packet::SubAck(_))).await;
    drop(a);
    let got = read_until(&mut b, v, |p| matches!(p, Packet::Publish(_))).await;
    assert!(
        matches!(&got, Packet::Publish(p) if &p.payload[..] == b"job-1"),
        "{got:?}"
    );
    broker.shutdown().await;
}

// 5.0 MQTT-4.8.2-5: a shared member whose session ends with a QoS 2 message unfinished:
// the message is NOT sent to another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_qos2_of_an_ended_session_is_not_redistributed() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V5;
    let sub = mqtt_codec::Subscribe::new(
        mqtt_codec::PacketId::MIN,
        ByteStr::from_static("$share/workers/jobs2"),
        QoS::ExactlyOnce,
    );
    let mut a = TcpStream::connect(addr).await.unwrap();
    send(
        &mut a,
        Connect::new(v, ByteStr::from_static("member-a2")).into(),
        v,
    )
    .await;
    send(&mut a, sub.clone().into(), v).await;
    read_until(&mut a, v, |p| matches!(p, Packet::SubAck(_))).await;
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    send(
        &mut publisher,
        Connect::new(v, ByteStr::from_static("boss2")).into(),
        v,
    )
    .await;
    let mut job = mqtt_codec::Publish::new(
        ByteStr::from_static("jobs2"),
        bytes::Bytes::from_static(b"job-2"),
    );
    job.qos_pid = mqtt_codec::QosPid::ExactlyOnce(mqtt_codec::PacketId::MIN);
    send(&mut publisher, job.into(), v).await;
    read_until(&mut a, v, |p| matches!(p, Packet::Publish(_))).await;
    let mut b = TcpStream::connect(addr).await.unwrap();
    send(
        &mut b,
        Connect::new(v, ByteStr::from_static("member-b2")).into(),
        v,
    )
    .await;
    send(&mut b, sub.into(), v).await;
    read_until(&mut b, v, |p| matches!(p, Packet::SubAck(_))).await;
    drop(a);
    // B gets nothing: a marker published afterwards is the first thing it receives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let marker = mqtt_codec::Publish::new(
        ByteStr::from_static("jobs2"),
        bytes::Bytes::from_static(b"marker"),
    );
    send(&mut publisher, marker.into(), v).await;
    let got = read_until(&mut b, v, |p| matches!(p, Packet::Publish(_))).await;
    assert!(
        matches!(&got, Packet::Publish(p) if &p.payload[..] == b"marker"),
        "{got:?}"
    );
    broker.shutdown().await;
}

// A 5.0 client that breaks a rule is told which, in the DISCONNECT's Reason String.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_explains_the_error() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V5;
    let mut s = TcpStream::connect(addr).await.unwrap();
    send(
        &mut s,
        Connect::new(v, ByteStr::from_static("rude")).into(),
        v,
    )
    .await;
    // PUBLISH to "a/#": a wildcard in a topic name.
    s.write_all(b"\x30\x06\x00\x03a/#\x00").await.unwrap();
    let packets = read_until_closed(&mut s, v).await;
    let Some(Packet::Disconnect(d)) = packets.last() else {
        panic!("{packets:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::MALFORMED_PACKET);
    let why = d
        .properties
        .reason_string
        .as_ref()
        .expect("a reason string");
    assert!(why.contains("MQTT-3.3.2-2"), "{why}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    send(
        &mut s,
        Connect::new(v, ByteStr::from_static("twice")).into(),
        v,
    )
    .await;
    send(
        &mut s,
        Connect::new(v, ByteStr::from_static("twice")).into(),
        v,
    )
    .await;
    let packets = read_until_closed(&mut s, v).await;
    let Some(Packet::Disconnect(d)) = packets.last() else {
        panic!("{packets:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
    assert!(
        d.properties
            .reason_string
            .as_ref()
            .is_some_and(|w| w.contains("CONNECT"))
    );
    broker.shutdown().await;
}

// 5.0 MQTT-3.2.2-14 seen from the server: with retained messages disabled, CONNACK says
// Retain Available 0 and a retained PUBLISH is answered with DISCONNECT 0x9A, not
// acknowledged first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_not_available() {
    let (broker, addr) = broker_with(|c| c.retain.enabled = false).await;
    let v = ProtocolVersion::V5;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        send(
            &mut s,
            Connect::new(v, ByteStr::from_static("keeper")).into(),
            v,
        )
        .await;
        let mut p =
            mqtt_codec::Publish::new(ByteStr::from_static("r"), bytes::Bytes::from_static(b"x"));
        p.retain = true;
        p.qos_pid = mqtt_codec::QosPid::new(qos, mqtt_codec::PacketId::MIN);
        send(&mut s, p.into(), v).await;
        let packets = read_until_closed(&mut s, v).await;
        let Some(Packet::ConnAck(ack)) = packets.first() else {
            panic!("{packets:?}")
        };
        assert_eq!(ack.properties.retain_available, Some(false));
        assert!(
            matches!(packets.get(1..), Some([Packet::Disconnect(d)]) if d.reason_code == ReasonCode::RETAIN_NOT_SUPPORTED),
            "{qos:?}: {packets:?}"
        );
    }
    broker.shutdown().await;
}

/// A broker dropped without `shutdown` closes its connections, including one that went
/// idle, parked without a task, and was revived into a task of its own by a packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_broker_closes_revived_connections() {
    let (broker, addr) = broker_with(|_| {}).await;
    let version = ProtocolVersion::V3_1_1;
    let mut s = TcpStream::connect(addr).await.unwrap();
    send(
        &mut s,
        Connect::new(version, ByteStr::from_static("dropped")).into(),
        version,
    )
    .await;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // Idle after CONNACK: it parks. The PINGREQ revives it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&[0xC0, 0]).await.unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0xD0, 0]);
    drop(broker);
    let start = Instant::now();
    let packets = read_until_closed(&mut s, version).await;
    assert!(packets.is_empty(), "{packets:?}");
    // Not after the 5 s it takes the connection to go idle and park again.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}
