//! The configuration's limits, each seen from a client.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Connect, Decoder, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS, QosPid,
    Subscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{WAIT, broker_with};

/// A raw client speaking through our codec, for exact control of what is acknowledged.
struct Raw {
    s: TcpStream,
    v: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr, c: Connect) -> (Self, mqtt_codec::ConnAck) {
        let v = c.version;
        let mut raw = Self {
            s: TcpStream::connect(addr).await.unwrap(),
            v,
            decoder: Decoder::with_version(v),
            buf: BytesMut::new(),
        };
        raw.send(c.into()).await;
        match raw.next().await {
            Some(Packet::ConnAck(ack)) => (raw, *ack),
            other => panic!("{other:?}"),
        }
    }
    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.encode(self.v, &mut b).unwrap();
        self.s.write_all(&b).await.unwrap();
    }
    /// The next packet, or `None` when nothing comes within `wait` or the connection closes.
    async fn next_within(&mut self, wait: Duration) -> Option<Packet> {
        loop {
            if let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
                return Some(p);
            }
            match timeout(wait, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
    async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT).await
    }
}

fn publish(topic: &'static str, qos: QoS, id: u16) -> Packet {
    let mut p = Publish::new(ByteStr::from_static(topic), Bytes::from_static(b"x"));
    p.qos_pid = QosPid::new(qos, PacketId::new(id).unwrap());
    p.into()
}

// limits.max_inflight: no more unacknowledged QoS 1 messages in flight to a client, and
// as many as that: a window larger than what a connected session otherwise holds before
// publishers wait (256 messages) is filled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_bounds_unacknowledged_deliveries() {
    for (window, sent) in [(3u16, 10u16), (400, 500)] {
        let (broker, addr) = broker_with(|c| c.limits.max_inflight = window).await;
        let v = ProtocolVersion::V3_1_1;
        let (mut sub, _) =
            Raw::connect(addr, Connect::new(v, ByteStr::from_static("slowpoke"))).await;
        sub.send(
            Subscribe::new(PacketId::MIN, ByteStr::from_static("w/#"), QoS::AtLeastOnce).into(),
        )
        .await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
        let (mut publ, _) =
            Raw::connect(addr, Connect::new(v, ByteStr::from_static("pusher"))).await;
        for i in 1..=sent {
            publ.send(publish("w/x", QoS::AtLeastOnce, i)).await;
        }
        // Exactly a window's worth arrives while none is acknowledged.
        let mut ids = Vec::new();
        while let Some(p) = sub.next_within(Duration::from_millis(500)).await {
            if let Packet::Publish(p) = p {
                ids.push(p.packet_id().unwrap());
            }
        }
        assert_eq!(ids.len(), usize::from(window), "max_inflight = {window}");
        // Acknowledging one lets one more through.
        sub.send(PubAck::new(ids[0]).into()).await;
        assert!(matches!(sub.next().await, Some(Packet::Publish(_))));
        broker.shutdown().await;
    }
}

// limits.queue_qos0_messages: QoS 0 kept for a disconnected persistent session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_qos0_for_offline_sessions_when_configured() {
    for queue in [false, true] {
        let (broker, addr) = broker_with(|c| c.limits.queue_qos0_messages = queue).await;
        let v = ProtocolVersion::V3_1_1;
        let mut c = Connect::new(v, ByteStr::from_static("away"));
        c.clean_start = false;
        let (mut sub, _) = Raw::connect(addr, c.clone()).await;
        sub.send(Subscribe::new(PacketId::MIN, ByteStr::from_static("q0"), QoS::AtMostOnce).into())
            .await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
        drop(sub);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut publ, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("p"))).await;
        publ.send(publish("q0", QoS::AtMostOnce, 1)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut back, ack) = Raw::connect(addr, c).await;
        assert!(ack.session_present);
        let got = back.next_within(Duration::from_millis(500)).await;
        assert_eq!(
            matches!(got, Some(Packet::Publish(_))),
            queue,
            "queue_qos0_messages = {queue}"
        );
        broker.shutdown().await;
    }
}

// limits.max_keep_alive and limits.max_session_expiry: 5.0 clients are told the caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_session_expiry_caps() {
    let (broker, addr) = broker_with(|c| {
        c.limits.max_keep_alive = 20;
        c.limits.max_session_expiry = 300;
    })
    .await;
    let mut c = Connect::new(ProtocolVersion::V5, ByteStr::from_static("greedy"));
    c.keep_alive = 600;
    c.properties.session_expiry_interval = Some(86_400);
    let (_raw, ack) = Raw::connect(addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(20));
    assert_eq!(ack.properties.session_expiry_interval, Some(300));
    broker.shutdown().await;
}

// The $SYS topics Mosquitto users look for are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topic_names() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut sub, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("sysreader"))).await;
    sub.send(
        Subscribe::new(
            PacketId::MIN,
            ByteStr::from_static("$SYS/#"),
            QoS::AtMostOnce,
        )
        .into(),
    )
    .await;
    let expected = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/disconnected",
        "$SYS/broker/clients/total",
        "$SYS/broker/clients/maximum",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/connections/15min",
    ];
    let mut topics = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !expected.iter().all(|t| topics.contains(*t)) && tokio::time::Instant::now() < deadline {
        if let Some(Packet::Publish(p)) = sub.next_within(Duration::from_millis(1500)).await {
            topics.insert(p.topic.to_string());
        }
    }
    for t in expected {
        assert!(topics.contains(t), "{t} missing from {topics:?}");
    }
    broker.shutdown().await;
}

// retain.max_messages: a new retained topic beyond the maximum is not stored (existing
// ones can still be replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_maximum() {
    let (broker, addr) = broker_with(|c| c.retain.max_messages = 2).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut publ, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("r-pub"))).await;
    for (topic, id) in [("m/1", 1), ("m/2", 2), ("m/3", 3)] {
        let mut p = Publish::new(ByteStr::from_static(topic), Bytes::from_static(b"v"));
        p.qos_pid = QosPid::new(QoS::AtLeastOnce, PacketId::new(id).unwrap());
        p.retain = true;
        publ.send(p.into()).await;
        assert!(matches!(publ.next().await, Some(Packet::PubAck(_))));
    }
    let (mut sub, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("r-sub"))).await;
    sub.send(Subscribe::new(PacketId::MIN, ByteStr::from_static("m/#"), QoS::AtMostOnce).into())
        .await;
    let mut topics = Vec::new();
    while let Some(p) = sub.next_within(Duration::from_millis(500)).await {
        if let Packet::Publish(p) = p {
            topics.push(p.topic.to_string());
        }
    }
    topics.sort();
    assert_eq!(topics, ["m/1", "m/2"]);
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-8 for a keep-alive timeout: the server closes the silent client's
// connection and publishes its will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_keep_alive_timeout() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut watcher, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("w8r"))).await;
    watcher
        .send(
            Subscribe::new(
                PacketId::MIN,
                ByteStr::from_static("gone/#"),
                QoS::AtMostOnce,
            )
            .into(),
        )
        .await;
    assert!(matches!(watcher.next().await, Some(Packet::SubAck(_))));
    let mut c = Connect::new(v, ByteStr::from_static("sleepy"));
    c.keep_alive = 1;
    c.will = Some(mqtt_codec::Will {
        topic: ByteStr::from_static("gone/sleepy"),
        payload: Bytes::from_static(b"timed out"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_sleepy, _) = Raw::connect(addr, c).await;
    // Silent from now on: after 1.5 s the broker gives up on it.
    match watcher.next().await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, "gone/sleepy"),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

/// Publishes `count` QoS 0 messages on `topic` with payloads "0", "1", ... in one go.
async fn flood(publ: &mut Raw, topic: &'static str, count: u32) {
    let mut b = BytesMut::new();
    for i in 0..count {
        let p = Publish::new(ByteStr::from_static(topic), Bytes::from(i.to_string()));
        Packet::from(p).encode(publ.v, &mut b).unwrap();
    }
    publ.s.write_all(&b).await.unwrap();
}

/// Publishes `count` QoS 0 messages on `topic` whose payloads start with their number
/// ("0 ", "1 ", ...) and are padded to `size` bytes, in one go.
async fn flood_sized(publ: &mut Raw, topic: &'static str, count: u32, size: usize) {
    let mut b = BytesMut::new();
    for i in 0..count {
        let mut payload = format!("{i} ").into_bytes();
        payload.resize(size.max(payload.len()), b'.');
        let p = Publish::new(ByteStr::from_static(topic), Bytes::from(payload));
        Packet::from(p).encode(publ.v, &mut b).unwrap();
    }
    publ.s.write_all(&b).await.unwrap();
}

// Isolation: a subscriber that reads late loses what its queue cannot hold
// (max_queued_messages 50 here) and only that; the publisher is never held up by it, what
// the subscriber does get comes in order, and the drops are counted in $SYS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_for_its_subscriber_and_never_holds_the_publisher() {
    let (broker, addr) = broker_with(|c| c.limits.max_queued_messages = 50).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut sub, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("late"))).await;
    sub.send(Subscribe::new(PacketId::MIN, ByteStr::from_static("bp"), QoS::AtMostOnce).into())
        .await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("fast"))).await;
    // 40 MB: far more than the socket buffers and the queue hold together.
    let count = 40_000;
    // Nothing is read meanwhile: the whole flood goes through all the same.
    timeout(WAIT, flood_sized(&mut publ, "bp", count, 1024))
        .await
        .expect("the publisher was held up by a subscriber that does not read");
    // The broker has read it all: a PINGREQ behind the flood is answered.
    publ.send(Packet::PingReq).await;
    assert!(matches!(publ.next().await, Some(Packet::PingResp)));
    let mut got = 0u32;
    let mut last = None::<u32>;
    while let Ok(Some(packet)) = timeout(Duration::from_secs(1), sub.next()).await {
        let Packet::Publish(p) = packet else {
            panic!("{packet:?}")
        };
        let text = String::from_utf8_lossy(&p.payload);
        let n: u32 = text.split(' ').next().unwrap().parse().unwrap();
        assert!(last.is_none_or(|l| n > l), "{n} after {last:?}: reordered");
        last = Some(n);
        got += 1;
    }
    assert!(got > 0 && got < count, "received {got} of {count}");
    // The losses are counted where an operator looks.
    let (mut watcher, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("ops"))).await;
    let topic = "$SYS/broker/publish/messages/dropped/queue full";
    watcher
        .send(Subscribe::new(PacketId::MIN, ByteStr::from_static(topic), QoS::AtMostOnce).into())
        .await;
    assert!(matches!(watcher.next().await, Some(Packet::SubAck(_))));
    loop {
        match watcher.next().await {
            Some(Packet::Publish(p)) => {
                let dropped: u64 = String::from_utf8_lossy(&p.payload).parse().unwrap();
                if dropped > 0 {
                    assert!(
                        dropped <= u64::from(count - got),
                        "{dropped} dropped, {got} got"
                    );
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown().await;
}

// A subscriber that never reads never holds a publisher up: its messages are dropped,
// and everyone else gets theirs, all of them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_never_holds_publishers_up() {
    let (broker, addr) = broker_with(|_| {}).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut stuck, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("asleep"))).await;
    let (mut awake, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("awake"))).await;
    for s in [&mut stuck, &mut awake] {
        s.send(Subscribe::new(PacketId::MIN, ByteStr::from_static("st"), QoS::AtMostOnce).into())
            .await;
        assert!(matches!(s.next().await, Some(Packet::SubAck(_))));
    }
    let (mut publ, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("pub"))).await;
    let count = 30_000;
    let flooding = tokio::spawn(async move {
        flood(&mut publ, "st", count).await;
        publ
    });
    let mut next = 0u32;
    while next < count {
        match awake.next().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from(next.to_string()));
                next += 1;
            }
            other => panic!("the awake subscriber got {other:?} after {next}"),
        }
    }
    let _publ = flooding.await.unwrap();
    drop(stuck);
    broker.shutdown().await;
}

// limits.max_subscriptions: new filters beyond it are refused (5.0 0x97, 3.1.1 0x80),
// stay out of the index, and replacing a held filter is always allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_session_are_capped() {
    let (broker, addr) = broker_with(|c| c.limits.max_subscriptions = 2).await;
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("capped-{}", v.is_v5());
        let (mut c, _) = Raw::connect(addr, Connect::new(v, ByteStr::try_from(id).unwrap())).await;
        let mut sub = Subscribe::new(PacketId::MIN, ByteStr::from_static("a"), QoS::AtMostOnce);
        for f in ["b", "c", "a"] {
            sub.subscriptions.push(mqtt_codec::Subscription {
                filter: ByteStr::from_static(f),
                options: mqtt_codec::SubscriptionOptions::new(QoS::AtMostOnce),
            });
        }
        c.send(sub.into()).await;
        let Some(Packet::SubAck(ack)) = c.next().await else {
            panic!("no SUBACK")
        };
        let refused = if v.is_v5() { 0x97 } else { 0x80 };
        assert_eq!(
            ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
            [0, 0, refused, 0],
            "{v:?}"
        );
        // "c" was refused: a message there does not arrive, one on "b" does.
        for topic in ["c", "b"] {
            let p = Publish::new(ByteStr::from_static(topic), Bytes::from_static(b"x"));
            c.send(p.into()).await;
        }
        match c.next().await {
            Some(Packet::Publish(p)) => assert_eq!(p.topic, "b", "{v:?}"),
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown().await;
}

// One SUBSCRIBE of 100,000 filters (1 MB) is handled in time linear in its size, and
// meanwhile the broker goes on serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_subscribe_is_linear_and_stalls_no_one() {
    let (broker, addr) = broker_with(|c| c.limits.max_subscriptions = 100_000).await;
    let v = ProtocolVersion::V5;
    let (mut big, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("big"))).await;
    let mut sub = Subscribe::new(PacketId::MIN, ByteStr::from_static("f/0"), QoS::AtMostOnce);
    for i in 1..100_000 {
        sub.subscriptions.push(mqtt_codec::Subscription {
            filter: ByteStr::try_from(format!("f/{i}")).unwrap(),
            options: mqtt_codec::SubscriptionOptions::new(QoS::AtMostOnce),
        });
    }
    let (mut other, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("other"))).await;
    big.send(sub.into()).await;
    other.send(Packet::PingReq).await;
    assert!(matches!(other.next().await, Some(Packet::PingResp)));
    match big.next().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.reason_codes.len(), 100_000);
            assert!(ack.reason_codes.iter().all(|r| r.0 == 0));
        }
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

// A server DISCONNECT is read even by a client still writing: the broker shuts its write
// side down after the DISCONNECT and drains the client's input before closing, so no
// reset destroys the reason code (here 0x93, Receive Maximum exceeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_writing_reads_the_reason_it_was_closed_for() {
    let (broker, addr) = broker_with(|c| c.limits.receive_maximum = 5).await;
    for round in 0..20 {
        let v = ProtocolVersion::V5;
        let (mut c, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("eager"))).await;
        let mut out = BytesMut::new();
        for id in 1..=20u16 {
            let mut p = Publish::new(ByteStr::from_static("rm"), Bytes::from_static(b"x"));
            p.qos_pid = QosPid::new(QoS::ExactlyOnce, PacketId::new(id).unwrap());
            Packet::from(p).encode(v, &mut out).unwrap();
        }
        let _ = c.s.write_all(&out).await;
        // The client goes on writing for a while, as a busy one would.
        let mut pings = BytesMut::new();
        for _ in 0..200 {
            Packet::PingReq.encode(v, &mut pings).unwrap();
        }
        for _ in 0..20 {
            if c.s.write_all(&pings).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut reason = None;
        while let Some(p) = c.next().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason_code);
            }
        }
        assert_eq!(
            reason,
            Some(mqtt_codec::ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
            "round {round}"
        );
    }
    broker.shutdown().await;
}

// limits.write_timeout: a subscriber that reads nothing while messages wait for it is
// closed once the broker has written nothing to it for that long (its will then tells).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_closed_after_the_write_timeout() {
    let (broker, addr) = broker_with(|c| c.limits.write_timeout = 1).await;
    let v = ProtocolVersion::V3_1_1;
    let (mut watcher, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("wt-w"))).await;
    watcher
        .send(
            Subscribe::new(
                PacketId::MIN,
                ByteStr::from_static("wt/will"),
                QoS::AtMostOnce,
            )
            .into(),
        )
        .await;
    assert!(matches!(watcher.next().await, Some(Packet::SubAck(_))));
    let mut c = Connect::new(v, ByteStr::from_static("wt-deaf"));
    c.will = Some(mqtt_codec::Will {
        topic: ByteStr::from_static("wt/will"),
        payload: Bytes::from_static(b"closed"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut deaf, _) = Raw::connect(addr, c).await;
    deaf.send(
        Subscribe::new(
            PacketId::MIN,
            ByteStr::from_static("wt/data"),
            QoS::AtMostOnce,
        )
        .into(),
    )
    .await;
    assert!(matches!(deaf.next().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(addr, Connect::new(v, ByteStr::from_static("wt-p"))).await;
    // 64 MB over time: far more than the socket buffers hold.
    let publishing = tokio::spawn(async move {
        for _ in 0..64 {
            flood_sized(&mut publ, "wt/data", 1000, 1024).await;
        }
        publ
    });
    match timeout(Duration::from_secs(20), watcher.next()).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!(&p.payload[..], b"closed"),
        other => panic!("no will: {other:?}"),
    }
    let _ = publishing.await;
    drop(deaf);
    broker.shutdown().await;
}

// Sockets that have not sent CONNECT count against max_connections: past it and the 16
// more kept to be told CONNACK Server busy, a new socket is closed at once, and the ones
// already open still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_before_connect_count_against_max_connections() {
    let (broker, addr) = broker_with(|c| c.limits.max_connections = 2).await;
    let mut silent = Vec::new();
    for _ in 0..2 + 16 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the broker's tasks count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = timeout(WAIT, third.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The first two complete their CONNECT.
    let v = ProtocolVersion::V3_1_1;
    for (i, s) in silent.into_iter().take(2).enumerate() {
        let mut raw = Raw {
            s,
            v,
            decoder: Decoder::with_version(v),
            buf: BytesMut::new(),
        };
        raw.send(Connect::new(v, ByteStr::try_from(format!("early-{i}")).unwrap()).into())
            .await;
        assert!(matches!(raw.next().await, Some(Packet::ConnAck(a)) if a.reason_code.0 == 0));
    }
    broker.shutdown().await;
}

// limits.max_client_id_len, limits.max_sessions and limits.persistent_client_expiration:
// the broker's session table is bounded, each refusal has its CONNACK code, and the
// refusals are counted in $SYS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_table_limits() {
    let (broker, addr) = broker_with(|c| {
        c.limits.max_client_id_len = 16;
        c.limits.max_sessions = 3;
        c.limits.persistent_client_expiration = 1;
    })
    .await;
    let v3 = ProtocolVersion::V3_1_1;
    let v5 = ProtocolVersion::V5;
    // A 17-byte identifier: 0x85 (3.1.1: return code 2, read back as 0x85).
    for v in [v3, v5] {
        let (_c, ack) = Raw::connect(
            addr,
            Connect::new(v, ByteStr::from_static("abcdefghijklmnopq")),
        )
        .await;
        assert_eq!(
            ack.reason_code,
            mqtt_codec::ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "{v:?}"
        );
    }
    // Three sessions fill the table; a fourth is refused, an existing one still gets in.
    let mut held = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let (c, ack) = Raw::connect(addr, Connect::new(v5, ByteStr::from_static(id))).await;
        assert_eq!(ack.reason_code.0, 0, "{id}");
        held.push(c);
    }
    let (_c, ack) = Raw::connect(addr, Connect::new(v5, ByteStr::from_static("s4"))).await;
    assert_eq!(ack.reason_code, mqtt_codec::ReasonCode::QUOTA_EXCEEDED);
    let (_c, ack) = Raw::connect(addr, Connect::new(v3, ByteStr::from_static("s5"))).await;
    assert_eq!(
        ack.reason_code,
        mqtt_codec::ReasonCode::SERVER_UNAVAILABLE,
        "3.1.1: code 3"
    );
    let (again, ack) = Raw::connect(addr, Connect::new(v5, ByteStr::from_static("s3"))).await;
    assert_eq!(ack.reason_code.0, 0, "s3 takes its own session over");
    drop(again);
    drop(held);
    // The refusals are counted.
    let watch = |addr| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Raw::connect(addr, Connect::new(v5, ByteStr::from_static("s1"))).await
    };
    let (mut w, _) = watch(addr).await;
    w.send(
        Subscribe::new(
            PacketId::MIN,
            ByteStr::from_static("$SYS/broker/clients/refused"),
            QoS::AtMostOnce,
        )
        .into(),
    )
    .await;
    assert!(matches!(w.next().await, Some(Packet::SubAck(_))));
    loop {
        let Some(Packet::Publish(p)) = w.next().await else {
            panic!("no $SYS counter")
        };
        if String::from_utf8_lossy(&p.payload).parse::<u64>().unwrap() >= 4 {
            break;
        }
    }
    drop(w);
    broker.shutdown().await;

    // A 3.1.1 persistent session expires after persistent_client_expiration (1 s here).
    let (broker, addr) = broker_with(|c| c.limits.persistent_client_expiration = 1).await;
    let mut c = Connect::new(v3, ByteStr::from_static("old"));
    c.clean_start = false;
    let (mut old, ack) = Raw::connect(addr, c.clone()).await;
    assert!(!ack.session_present);
    old.send(Subscribe::new(PacketId::MIN, ByteStr::from_static("x"), QoS::AtLeastOnce).into())
        .await;
    assert!(matches!(old.next().await, Some(Packet::SubAck(_))));
    old.send(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS).into())
        .await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (back, ack) = Raw::connect(addr, c.clone()).await;
    assert!(ack.session_present, "kept within the expiration");
    drop(back);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let (_back, ack) = Raw::connect(addr, c).await;
    assert!(
        !ack.session_present,
        "expired after persistent_client_expiration"
    );
    broker.shutdown().await;
}

// The default keep-alive cap (limits.max_keep_alive = 65,535, as Mosquitto): a 5.0
// client asking for none is told the cap, so a silent one is found in the end; half-open
// connections of 3.1.1 clients without keep-alive are found by TCP keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_gets_the_default_cap() {
    let (broker, addr) = broker_with(|_| {}).await;
    let mut c = Connect::new(ProtocolVersion::V5, ByteStr::from_static("ka0"));
    c.keep_alive = 0;
    let (_c, ack) = Raw::connect(addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(65_535));
    broker.shutdown().await;
}

/// The value of `$SYS/broker/clients/writes coalesced` as soon as it satisfies `want`
/// (the topic is retained and published every second), or the last one seen in 5 s.
async fn writes_coalesced(addr: std::net::SocketAddr, want: impl Fn(u64) -> bool) -> u64 {
    let v = ProtocolVersion::V5;
    let (mut watcher, _) =
        Raw::connect(addr, Connect::new(v, ByteStr::from_static("co-sys"))).await;
    let filter = ByteStr::from_static("$SYS/broker/clients/writes coalesced");
    watcher
        .send(Subscribe::new(PacketId::MIN, filter, QoS::AtMostOnce).into())
        .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while let Some(p) = watcher
        .next_within(until - tokio::time::Instant::now())
        .await
    {
        if let Packet::Publish(p) = p {
            let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            last = Some(n);
            if want(n) {
                break;
            }
        }
    }
    last.expect("$SYS/broker/clients/writes coalesced is published")
}

// limits.coalesce_writes: a subscriber (mosquitto_sub) fed a sustained stream of small
// batches gets every message, in order, and the last one at once when the stream stops;
// with the setting on, some of its writes waited for more (counted in $SYS), with it
// off, none did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_stream_of_small_batches_is_coalesced() {
    // Judged by timing (a stream is told by its gaps): alone on the machine.
    let _alone = crate::TIMING.write().await;
    const BURSTS: usize = 2_000;
    for on in [true, false] {
        let (broker, addr) = broker_with(|c| c.limits.coalesce_writes = on).await;
        let total = (BURSTS * BURST).to_string();
        let sub = crate::mosquitto_sub(addr.port(), "mqttv5")
            .args(["-t", "co/#", "-C", &total, "-W", "30"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let publisher = burst_publisher(addr, BURSTS, Default::default());
        let (_publisher, finished) = tokio::task::spawn_blocking(move || publisher.join().unwrap())
            .await
            .unwrap();
        let out = sub.wait_with_output().await.unwrap();
        let lag = finished.elapsed();
        let got: Vec<usize> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(got, (0..BURSTS * BURST).collect::<Vec<_>>(), "on: {on}");
        // The last messages were not held back for more that never came.
        assert!(lag < Duration::from_secs(2), "on: {on}, {lag:?}");
        if on {
            assert!(writes_coalesced(addr, |n| n > 0).await > 0);
        } else {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            assert_eq!(writes_coalesced(addr, |_| true).await, 0);
        }
        broker.shutdown().await;
    }
}

/// Messages in each of [`burst_publisher`]'s bursts.
const BURST: usize = 3;

/// A publisher on a thread of its own: `bursts` bursts of [`BURST`] QoS 0 messages on
/// `co/x` (payloads counting from 0), one about every 50 µs (waiting by spinning: a
/// sleep can take longer than a stream's gaps), until `stop` or a failed write; returns
/// its connection, still open, and when it finished. (It reads its CONNACK first: a
/// socket closed with unread input sends RST, which can make the broker lose the end
/// of the stream it has not read yet.)
fn burst_publisher(
    addr: std::net::SocketAddr,
    bursts: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(std::net::TcpStream, std::time::Instant)> {
    std::thread::spawn(move || {
        use std::{
            io::{Read as _, Write as _},
            sync::atomic::Ordering,
        };
        let v = ProtocolVersion::V5;
        let mut b = BytesMut::new();
        Packet::from(Connect::new(v, ByteStr::from_static("co-pub")))
            .encode(v, &mut b)
            .unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&b).unwrap();
        let mut decoder = Decoder::with_version(v);
        let mut input = BytesMut::new();
        while !matches!(decoder.decode(&mut input), Ok(Some(Packet::ConnAck(_)))) {
            let mut chunk = [0u8; 64];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the broker closed before CONNACK");
            input.extend_from_slice(&chunk[..n]);
        }
        let mut next = std::time::Instant::now();
        for burst in 0..bursts {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            b.clear();
            for i in 0..BURST {
                let n = burst * BURST + i;
                let p = Publish::new(ByteStr::from_static("co/x"), Bytes::from(n.to_string()));
                Packet::from(p).encode(v, &mut b).unwrap();
            }
            if s.write_all(&b).is_err() {
                break;
            }
            next += Duration::from_micros(50);
            while std::time::Instant::now() < next {
                std::hint::spin_loop();
            }
        }
        (s, std::time::Instant::now())
    })
}

// limits.coalesce_writes and shutdown: a subscriber whose writes wait for more when the
// broker stops is told so at once (5.0 DISCONNECT 0x8B), not aborted after the 5 s the
// broker gives its connections. The wait can take the stop signal, and the stop must
// land during a wait to matter: several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_subscriber_is_told_of_shutdown_at_once() {
    let _alone = crate::TIMING.write().await;
    for round in 0..5 {
        let (broker, addr) = broker_with(|c| c.limits.coalesce_writes = true).await;
        let v = ProtocolVersion::V5;
        let (mut sub, _) =
            Raw::connect(addr, Connect::new(v, ByteStr::from_static("co-sub"))).await;
        let filter = ByteStr::from_static("co/#");
        sub.send(Subscribe::new(PacketId::MIN, filter, QoS::AtMostOnce).into())
            .await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let publisher = burst_publisher(addr, usize::MAX, std::sync::Arc::clone(&stop));
        let reader = tokio::spawn(async move {
            while let Some(p) = sub.next_within(Duration::from_secs(8)).await {
                if let Packet::Disconnect(d) = p {
                    return Some(d.reason_code);
                }
            }
            None
        });
        // Long enough for the stream to be seen and writes to wait.
        tokio::time::sleep(Duration::from_millis(200 + 37 * round)).await;
        let started = std::time::Instant::now();
        broker.shutdown().await;
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || publisher.join().unwrap())
            .await
            .unwrap();
        assert_eq!(
            reader.await.unwrap(),
            Some(mqtt_codec::ReasonCode::SERVER_SHUTTING_DOWN),
            "round {round}"
        );
        assert!(took < Duration::from_secs(3), "round {round}: {took:?}");
    }
}
