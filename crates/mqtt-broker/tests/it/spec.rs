//! Normative statements that bind the server, checked over real sockets with our own
//! codec: every test names the statements it asserts. The helpers here are shared with
//! `spec_v311.rs` and `spec_v5.rs`; the tests in this file run for both versions.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, ConnAck, Connect, Decoder, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, QosPid, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{WAIT, broker};

pub(crate) const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
pub(crate) const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long a test waits to conclude that nothing more arrives.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

pub(crate) fn s(text: &str) -> ByteStr {
    ByteStr::try_from(text.to_owned()).unwrap()
}

pub(crate) fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// A PUBLISH of `payload` to `topic`, with packet identifier 1 for QoS 1 and 2.
pub(crate) fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
    let mut p = Publish::new(s(topic), Bytes::copy_from_slice(payload));
    p.qos_pid = QosPid::new(qos, pid(1));
    p.retain = retain;
    p
}

/// A SUBSCRIBE of several filters, each with its options.
pub(crate) fn subscribe(id: u16, filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
    let mut sub = Subscribe::new(pid(id), s("x"), QoS::AtMostOnce);
    sub.subscriptions = filters
        .iter()
        .map(|(f, options)| Subscription {
            filter: s(f),
            options: *options,
        })
        .collect();
    sub
}

/// A raw MQTT connection: packets in and out through `mqtt_codec`, every read bounded.
pub(crate) struct Client {
    stream: TcpStream,
    version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
    /// Packets read while looking for another one.
    pending: VecDeque<Packet>,
}

impl Client {
    /// A TCP connection, no CONNECT sent.
    pub(crate) async fn open(addr: SocketAddr, version: ProtocolVersion) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            version,
            decoder: Decoder::with_version(version),
            buf: BytesMut::new(),
            pending: VecDeque::new(),
        }
    }

    /// A TCP connection from the loopback address `source` (any of 127.0.0.0/8), no
    /// CONNECT sent: a client the broker tells apart from others by its address (as
    /// the slow-down of repeated authentication failures does).
    pub(crate) async fn open_from(
        addr: SocketAddr,
        version: ProtocolVersion,
        source: std::net::Ipv4Addr,
    ) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        Self {
            stream: socket.connect(addr).await.unwrap(),
            version,
            decoder: Decoder::with_version(version),
            buf: BytesMut::new(),
            pending: VecDeque::new(),
        }
    }

    /// Connects with a clean start and expects CONNACK 0.
    pub(crate) async fn connect(addr: SocketAddr, version: ProtocolVersion, id: &str) -> Self {
        let (c, ack) = Self::connect_with(addr, version, id, |_| {}).await;
        assert_eq!(ack.reason_code.0, 0, "{id}: {ack:?}");
        c
    }

    /// Connects with a CONNECT `f` may change; returns the CONNACK, whatever its code.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        f: impl FnOnce(&mut Connect),
    ) -> (Self, ConnAck) {
        let mut c = Self::open(addr, version).await;
        let mut connect = Connect::new(version, s(id));
        f(&mut connect);
        c.send(connect).await;
        match c.recv().await {
            Packet::ConnAck(ack) => (c, *ack),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, p: impl Into<Packet>) {
        let mut b = BytesMut::new();
        p.into().encode(self.version, &mut b).unwrap();
        self.send_raw(&b).await;
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .unwrap();
    }

    /// The next packet, or `None` if the connection closed; panics after [`WAIT`].
    pub(crate) async fn next(&mut self) -> Option<Packet> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("nothing from the broker within {WAIT:?}"))
    }

    /// `Some(next packet or None if closed)`, or `None` if nothing came within `d`.
    pub(crate) async fn next_within(&mut self, d: Duration) -> Option<Option<Packet>> {
        if let Some(p) = self.pending.pop_front() {
            return Some(Some(p));
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(Some(p));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics if the connection closed or nothing came in time.
    pub(crate) async fn recv(&mut self) -> Packet {
        self.next().await.expect("the broker closed the connection")
    }

    /// The next packet, which must be a PUBLISH.
    pub(crate) async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for [`QUIET`].
    pub(crate) async fn quiet(&mut self) {
        if let Some(p) = self.next_within(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Reads until the broker closes the connection; every packet read.
    pub(crate) async fn closed(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(p) = self.next().await {
            out.push(p);
        }
        out
    }

    /// Reads until a packet `pick` accepts; the others are kept for later reads.
    pub(crate) async fn find<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        let mut skipped = VecDeque::new();
        let found = loop {
            let p = self.recv().await;
            if let Some(t) = pick(&p) {
                break t;
            }
            skipped.push_back(p);
        };
        skipped.append(&mut self.pending);
        self.pending = skipped;
        found
    }

    pub(crate) async fn subscribe(&mut self, sub: Subscribe) -> SubAck {
        self.send(sub).await;
        self.find(|p| match p {
            Packet::SubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes to one filter at `qos` and expects it granted.
    pub(crate) async fn sub(&mut self, filter: &str, qos: QoS) {
        let ack = self
            .subscribe(subscribe(1, &[(filter, SubscriptionOptions::new(qos))]))
            .await;
        assert_eq!(ack.reason_codes, vec![mqtt_codec::ReasonCode(qos as u8)]);
    }

    pub(crate) async fn unsubscribe(&mut self, id: u16, filters: &[&str]) -> UnsubAck {
        let u = Unsubscribe {
            packet_id: pid(id),
            filters: filters.iter().map(|f| s(f)).collect(),
            properties: Default::default(),
        };
        self.send(u).await;
        self.find(|p| match p {
            Packet::UnsubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and completes the QoS flow as the sender.
    pub(crate) async fn publish(&mut self, p: Publish) {
        let qos_pid = p.qos_pid;
        self.send(p).await;
        match qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => {
                self.find(|p| matches!(p, Packet::PubAck(a) if a.packet_id == id).then_some(()))
                    .await;
            }
            QosPid::ExactlyOnce(id) => {
                self.find(|p| matches!(p, Packet::PubRec(a) if a.packet_id == id).then_some(()))
                    .await;
                self.send(PubRel::new(id)).await;
                self.find(|p| matches!(p, Packet::PubComp(a) if a.packet_id == id).then_some(()))
                    .await;
            }
        }
    }

    /// Publishes a QoS 0 message; nothing to wait for.
    pub(crate) async fn publish0(&mut self, topic: &str, payload: &[u8], retain: bool) {
        self.publish(publish(topic, payload, QoS::AtMostOnce, retain))
            .await;
    }

    /// Acknowledges a received PUBLISH as the receiver (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub(crate) async fn ack(&mut self, p: &Publish) {
        match p.qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => self.send(PubAck::new(id)).await,
            QosPid::ExactlyOnce(id) => {
                self.send(PubRec::new(id)).await;
                self.find(|p| matches!(p, Packet::PubRel(a) if a.packet_id == id).then_some(()))
                    .await;
                self.send(PubComp::new(id)).await;
            }
        }
    }

    /// A PINGREQ answered: everything before it has been processed.
    pub(crate) async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        self.find(|p| matches!(p, Packet::PingResp).then_some(()))
            .await;
    }

    /// The client's end of the connection.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Drops the TCP connection without DISCONNECT.
    pub(crate) fn drop_connection(self) {
        drop(self.stream);
    }
}

// 3.1.1 MQTT-3.12.4-1, 5.0 MQTT-3.12.4-1: PINGREQ is answered with PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_gets_pingresp() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "pinger").await;
        for _ in 0..3 {
            c.send(Packet::PingReq).await;
            assert_eq!(c.recv().await, Packet::PingResp, "{v}");
        }
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.8.4-1, 3.1.1 MQTT-3.8.4-2, 3.1.1 MQTT-3.8.4-4, 3.1.1 MQTT-3.8.4-5,
// 3.1.1 MQTT-3.9.3-1, 3.1.1 MQTT-2.3.1-7, 5.0 MQTT-3.8.4-1, 5.0 MQTT-3.8.4-2,
// 5.0 MQTT-3.8.4-5, 5.0 MQTT-3.8.4-6, 5.0 MQTT-3.8.4-7, 5.0 MQTT-3.9.3-1,
// 5.0 MQTT-2.2.1-6: every SUBSCRIBE gets one SUBACK with its packet identifier and one
// code per filter, in order, giving the granted QoS; each filter of a multi-filter
// SUBSCRIBE is subscribed as if sent alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_answers_each_subscribe_in_order() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "suback").await;
        let qos = [QoS::ExactlyOnce, QoS::AtMostOnce, QoS::AtLeastOnce];
        let sub = subscribe(
            0x1234,
            &[
                ("m/a", SubscriptionOptions::new(qos[0])),
                ("m/b", SubscriptionOptions::new(qos[1])),
                ("m/+/c", SubscriptionOptions::new(qos[2])),
            ],
        );
        // Two SUBSCRIBEs in one write: two SUBACKs, each with its own identifier.
        let second = subscribe(0xBEEF, &[("n/#", SubscriptionOptions::new(qos[2]))]);
        let mut bytes = BytesMut::new();
        Packet::from(sub).encode(v, &mut bytes).unwrap();
        Packet::from(second).encode(v, &mut bytes).unwrap();
        c.send_raw(&bytes).await;
        let Packet::SubAck(first) = c.recv().await else {
            panic!("{v}: expected SUBACK")
        };
        assert_eq!(first.packet_id.get(), 0x1234, "{v}");
        let codes: Vec<u8> = first.reason_codes.iter().map(|r| r.0).collect();
        assert_eq!(codes, vec![2, 0, 1], "{v}");
        let Packet::SubAck(next) = c.recv().await else {
            panic!("{v}: expected SUBACK")
        };
        assert_eq!(next.packet_id.get(), 0xBEEF, "{v}");
        assert_eq!(next.reason_codes.len(), 1);
        // Each filter works on its own, at its own QoS.
        let mut p = Client::connect(addr, v, "suback-pub").await;
        for (topic, granted) in [
            ("m/a", QoS::ExactlyOnce),
            ("m/b", QoS::AtMostOnce),
            ("m/x/c", QoS::AtLeastOnce),
            ("n/1", QoS::AtLeastOnce),
        ] {
            p.publish(publish(topic, b"x", QoS::ExactlyOnce, false))
                .await;
            let got = c.recv_publish().await;
            assert_eq!(got.topic.as_str(), topic, "{v}");
            assert_eq!(got.qos_pid.qos(), granted, "{v} {topic}");
            c.ack(&got).await;
        }
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.10.4-1, 3.1.1 MQTT-3.10.4-2, 3.1.1 MQTT-3.10.4-4, 3.1.1 MQTT-3.10.4-5,
// 3.1.1 MQTT-3.10.4-6, 3.1.1 MQTT-2.3.1-7, 5.0 MQTT-3.10.4-1, 5.0 MQTT-3.10.4-2,
// 5.0 MQTT-3.10.4-4, 5.0 MQTT-3.10.4-5, 5.0 MQTT-3.10.4-6, 5.0 MQTT-3.11.3-1,
// 5.0 MQTT-2.2.1-6: UNSUBSCRIBE deletes exactly the filters that match character by
// character, stops their delivery, and is answered by one UNSUBACK with its packet
// identifier (5.0: one code per filter, in order), also when nothing was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_deletes_exact_filters_and_always_answers() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "unsub").await;
        let ack = c
            .subscribe(subscribe(
                7,
                &[
                    ("u/+", SubscriptionOptions::new(QoS::AtMostOnce)),
                    ("u/b", SubscriptionOptions::new(QoS::AtMostOnce)),
                    ("w/1", SubscriptionOptions::new(QoS::AtMostOnce)),
                    ("mark", SubscriptionOptions::new(QoS::AtMostOnce)),
                ],
            ))
            .await;
        assert_eq!(ack.reason_codes.len(), 4);
        // "u/#" and "U/b" are not held: only "u/b" and "w/1" are deleted, "u/+" stays.
        let un = c.unsubscribe(0x4321, &["u/#", "u/b", "U/b", "w/1"]).await;
        assert_eq!(un.packet_id.get(), 0x4321, "{v}");
        if v.is_v5() {
            let codes: Vec<u8> = un.reason_codes.iter().map(|r| r.0).collect();
            assert_eq!(codes, vec![0x11, 0x00, 0x11, 0x00]);
        } else {
            assert!(un.reason_codes.is_empty());
        }
        // Nothing held at all: still an UNSUBACK with the identifier.
        let un = c.unsubscribe(0x0101, &["nothing/here"]).await;
        assert_eq!(un.packet_id.get(), 0x0101, "{v}");
        if v.is_v5() {
            assert_eq!(un.reason_codes, vec![mqtt_codec::ReasonCode(0x11)]);
        }

        let mut p = Client::connect(addr, v, "unsub-pub").await;
        p.publish0("w/1", b"gone", false).await;
        p.publish0("u/b", b"one copy", false).await;
        p.publish0("mark", b"end", false).await;
        // "w/1" is no longer delivered; "u/b" arrives once, through "u/+".
        let got = c.recv_publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("u/b", &b"one copy"[..])
        );
        let got = c.recv_publish().await;
        assert_eq!(got.topic.as_str(), "mark", "{v}");
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.10.4-3, 5.0 MQTT-3.10.4-3: a QoS 2 delivery already started completes
// after its subscription is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_finishes_started_qos2_delivery() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "unsub-q2").await;
        c.sub("q2", QoS::ExactlyOnce).await;
        let mut p = Client::connect(addr, v, "unsub-q2-pub").await;
        p.publish(publish("q2", b"m", QoS::ExactlyOnce, false))
            .await;
        let got = c.recv_publish().await;
        let QosPid::ExactlyOnce(id) = got.qos_pid else {
            panic!("{got:?}")
        };
        c.unsubscribe(3, &["q2"]).await;
        c.send(PubRec::new(id)).await;
        let Packet::PubRel(rel) = c.recv().await else {
            panic!("{v}: expected PUBREL")
        };
        assert_eq!(rel.packet_id, id);
        c.send(PubComp::new(id)).await;
        c.ping().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.3.5-1, 5.0 MQTT-3.3.4-2: overlapping subscriptions deliver at the highest
// QoS among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_take_maximum_qos() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "overlap").await;
        c.sub("o/#", QoS::AtMostOnce).await;
        c.sub("o/+/x", QoS::ExactlyOnce).await;
        c.sub("o/a/x", QoS::AtLeastOnce).await;
        let mut p = Client::connect(addr, v, "overlap-pub").await;
        p.publish(publish("o/a/x", b"2", QoS::ExactlyOnce, false))
            .await;
        p.publish(publish("o/a/y", b"0", QoS::ExactlyOnce, false))
            .await;
        let got = c.recv_publish().await;
        assert_eq!(
            (&got.payload[..], got.qos_pid.qos()),
            (&b"2"[..], QoS::ExactlyOnce)
        );
        c.ack(&got).await;
        let got = c.recv_publish().await;
        assert_eq!(
            (&got.payload[..], got.qos_pid.qos()),
            (&b"0"[..], QoS::AtMostOnce)
        );
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.3.2-3, 5.0 MQTT-3.3.2-3: the topic name of a forwarded PUBLISH is the
// published topic, which matches the subscriber's filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_topic_matches_filter() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "match").await;
        c.sub("sport/+/player1", QoS::AtMostOnce).await;
        c.sub("fin/#", QoS::AtMostOnce).await;
        let mut p = Client::connect(addr, v, "match-pub").await;
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player2",
            "sport//player1",
            "fin",
            "fin/a/b",
            "Fin/a",
        ] {
            p.publish0(topic, topic.as_bytes(), false).await;
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(c.recv_publish().await.topic.to_string());
        }
        assert_eq!(
            got,
            ["sport/tennis/player1", "sport//player1", "fin", "fin/a/b"],
            "{v}"
        );
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-4.6.0-5, 3.1.1 MQTT-4.6.0-6, 5.0 MQTT-4.6.0-5, 5.0 MQTT-4.6.0-6: messages
// of one publisher on one topic are forwarded in the order they were received, at
// every QoS, with no ordering set up by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_publisher_order() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "order").await;
        c.sub("ord/+", QoS::ExactlyOnce).await;
        let mut p = Client::connect(addr, v, "order-pub").await;
        // All sent in one write, packet ids 1..: the broker may not reorder them.
        let mut bytes = BytesMut::new();
        for i in 0..60u16 {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
            let mut m = publish(&format!("ord/{qos:?}"), &i.to_be_bytes(), qos, false);
            m.qos_pid = QosPid::new(qos, pid(i + 1));
            Packet::from(m).encode(v, &mut bytes).unwrap();
        }
        p.send_raw(&bytes).await;
        // Complete the publisher's side: 20 PUBACKs, 20 PUBRECs answered with PUBREL.
        for _ in 0..40 {
            if let Packet::PubRec(rec) = p.recv().await {
                p.send(PubRel::new(rec.packet_id)).await;
            }
        }
        let mut seen: std::collections::HashMap<String, Vec<u16>> = Default::default();
        for _ in 0..60 {
            let got = c.recv_publish().await;
            c.ack(&got).await;
            let n = u16::from_be_bytes([got.payload[0], got.payload[1]]);
            seen.entry(got.topic.to_string()).or_default().push(n);
        }
        assert_eq!(seen.len(), 3);
        for (topic, ns) in seen {
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "{v} {topic}: {ns:?}");
            assert_eq!(ns.len(), 20);
        }
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.3.1-3, 5.0 MQTT-3.3.1-3: the DUP flag of a forwarded PUBLISH says only
// whether the broker is retransmitting: 0 for a DUP=1 incoming message, 1 when the
// broker resends an unacknowledged message to a reconnected session.
// 3.1.1 MQTT-2.3.1-4: the retransmission reuses the packet identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_dup_reflects_only_retransmission() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let persistent = |c: &mut Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        };
        let id = format!("dup-sub-{v}");
        let (mut c, _) = Client::connect_with(addr, v, &id, persistent).await;
        c.sub("dup", QoS::AtLeastOnce).await;
        let mut p = Client::connect(addr, v, "dup-pub").await;
        let mut m = publish("dup", b"d", QoS::AtLeastOnce, false);
        m.dup = true;
        p.publish(m).await;
        let first = c.recv_publish().await;
        assert!(!first.dup, "{v}: DUP copied from the publisher");
        // Not acknowledged: the reconnected session gets it again, marked DUP.
        c.drop_connection();
        let (mut c, ack) = Client::connect_with(addr, v, &id, persistent).await;
        assert!(ack.session_present);
        let again = c.recv_publish().await;
        assert!(again.dup, "{v}");
        assert_eq!(again.qos_pid, first.qos_pid, "{v}");
        assert_eq!(again.payload, first.payload);
        c.ack(&again).await;
        c.ping().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-4.5.0-1, 5.0 MQTT-4.5.0-1: a message reaches the session of every client
// with a matching subscription, connected or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_goes_to_every_matching_session() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let persistent = |c: &mut Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        };
        let (mut away, _) = Client::connect_with(addr, v, &format!("away-{v}"), persistent).await;
        away.sub("all/+", QoS::AtLeastOnce).await;
        away.send(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode(0)))
            .await;
        assert!(away.closed().await.is_empty());
        let mut a = Client::connect(addr, v, "here-a").await;
        a.sub("all/#", QoS::AtLeastOnce).await;
        let mut b = Client::connect(addr, v, "here-b").await;
        b.sub("all/x", QoS::AtMostOnce).await;
        let mut p = Client::connect(addr, v, "all-pub").await;
        p.publish(publish("all/x", b"m", QoS::AtLeastOnce, false))
            .await;
        for c in [&mut a, &mut b] {
            assert_eq!(&c.recv_publish().await.payload[..], b"m", "{v}");
        }
        let (mut away, ack) = Client::connect_with(addr, v, &format!("away-{v}"), persistent).await;
        assert!(ack.session_present);
        let got = away.recv_publish().await;
        assert_eq!(&got.payload[..], b"m", "{v}");
        away.ack(&got).await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.3-5, 5.0 MQTT-3.1.3-5: client identifiers of 1 to 23 letters and digits
// are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_alphanumeric_client_ids_are_accepted() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        for id in [
            "a",
            "Z9",
            "0123456789abcdefghijKLM",
            "ABCDEFGHIJKLMNOPQRSTUVW",
        ] {
            let (mut c, ack) = Client::connect_with(addr, v, id, |_| {}).await;
            assert_eq!(ack.reason_code.0, 0, "{v} {id}");
            c.ping().await;
        }
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.0-2, 5.0 MQTT-3.1.0-2: a second CONNECT is a protocol violation that
// closes the connection (5.0: with DISCONNECT 0x82); 5.0 MQTT-3.2.0-2: no second CONNACK;
// 5.0 MQTT-3.14.2-2: the broker's DISCONNECT carries no Session Expiry Interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_closes_the_connection() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "twice").await;
        c.send(Connect::new(v, s("twice"))).await;
        let rest = c.closed().await;
        assert!(
            !rest.iter().any(|p| matches!(p, Packet::ConnAck(_))),
            "{v}: {rest:?}"
        );
        if v.is_v5() {
            let [Packet::Disconnect(d)] = &rest[..] else {
                panic!("{rest:?}")
            };
            assert_eq!(d.reason_code, mqtt_codec::ReasonCode::PROTOCOL_ERROR);
            assert_eq!(d.properties.session_expiry_interval, None);
        } else {
            assert!(rest.is_empty(), "{rest:?}");
        }
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-3, 3.1.1 MQTT-3.1.4-1, 3.1.1 MQTT-3.2.2-6, 5.0 MQTT-3.1.2-3,
// 5.0 MQTT-3.1.4-1, 5.0 MQTT-3.14.0-1: a CONNECT with the reserved flag set is malformed
// (no return code applies): the connection is closed with no CONNACK and no DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reserved_flag_closes_without_connack() {
    let (broker, addr) = broker().await;
    for (v, level) in [(V3, 4u8), (V5, 5u8)] {
        let mut c = Client::open(addr, v).await;
        // CONNECT "MQTT", flags 0x03 (Clean Start + reserved), keep-alive 60, id "r".
        let mut bytes = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', level, 0x03, 0, 60];
        if v.is_v5() {
            bytes.push(0); // no properties
        }
        bytes.extend_from_slice(&[0, 1, b'r']);
        bytes[1] = u8::try_from(bytes.len() - 2).unwrap();
        c.send_raw(&bytes).await;
        let got = c.closed().await;
        assert!(got.is_empty(), "{v}: {got:?}");
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.2.0-1, 5.0 MQTT-3.2.0-1: the first packet the broker sends is CONNACK,
// even with messages queued for a resumed session and packets sent right behind
// CONNECT; 5.0 MQTT-3.2.0-2: only one CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_comes_first() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let persistent = |c: &mut Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        };
        let id = format!("first-{v}");
        let (mut c, _) = Client::connect_with(addr, v, &id, persistent).await;
        c.sub("first", QoS::AtLeastOnce).await;
        c.drop_connection();
        let mut p = Client::connect(addr, v, "first-pub").await;
        for _ in 0..3 {
            p.publish(publish("first", b"queued", QoS::AtLeastOnce, false))
                .await;
        }
        // CONNECT, SUBSCRIBE and PINGREQ in one write.
        let mut c = Client::open(addr, v).await;
        let mut connect = Connect::new(v, s(&id));
        persistent(&mut connect);
        let mut bytes = BytesMut::new();
        Packet::from(connect).encode(v, &mut bytes).unwrap();
        Packet::from(Subscribe::new(pid(9), s("other"), QoS::AtMostOnce))
            .encode(v, &mut bytes)
            .unwrap();
        Packet::PingReq.encode(v, &mut bytes).unwrap();
        c.send_raw(&bytes).await;
        let Packet::ConnAck(ack) = c.recv().await else {
            panic!("{v}: the first packet is not CONNACK")
        };
        assert!(ack.session_present);
        let mut kinds = Vec::new();
        while kinds.len() < 5 {
            let p = c.recv().await;
            if let Packet::Publish(m) = &p {
                c.ack(m).await;
            }
            kinds.push(p.packet_type());
        }
        assert!(
            !kinds.contains(&mqtt_codec::PacketType::ConnAck),
            "{kinds:?}"
        );
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.4-4, 3.1.1 MQTT-3.2.2-1, 3.1.1 MQTT-3.2.2-3, 3.1.1 MQTT-3.1.4-3,
// 5.0 MQTT-3.1.4-5, 5.0 MQTT-3.2.2-2, 5.0 MQTT-3.2.2-3, 5.0 MQTT-3.1.2-5,
// 5.0 MQTT-3.1.2-6, 5.0 MQTT-3.1.4-4: accepted CONNECTs get return code 0; Session
// Present is 0 for a clean start and for a new session, 1 when a stored session is
// resumed, whose subscriptions then still deliver; a clean start discards them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_and_clean_start() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let id = format!("sp-{v}");
        let keep = |clean: bool| {
            move |c: &mut Connect| {
                c.clean_start = clean;
                c.properties.session_expiry_interval = Some(60);
            }
        };
        // Clean start, nothing stored: 0.
        let (_, ack) = Client::connect_with(addr, v, &format!("sp-clean-{v}"), keep(true)).await;
        assert_eq!((ack.reason_code.0, ack.session_present), (0, false), "{v}");
        // Clean Start 0, no session stored: a new one, and 0.
        let (mut c, ack) = Client::connect_with(addr, v, &id, keep(false)).await;
        assert_eq!((ack.reason_code.0, ack.session_present), (0, false), "{v}");
        c.sub("sp/t", QoS::AtLeastOnce).await;
        c.drop_connection();
        let (mut c, ack) = Client::connect_with(addr, v, &id, keep(false)).await;
        assert_eq!((ack.reason_code.0, ack.session_present), (0, true), "{v}");
        let mut p = Client::connect(addr, v, "sp-pub").await;
        p.publish0("sp/t", b"resumed", false).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"resumed", "{v}");
        c.drop_connection();
        // Clean start on a stored session: 0, and the subscription is gone.
        let (mut c, ack) = Client::connect_with(addr, v, &id, keep(true)).await;
        assert_eq!((ack.reason_code.0, ack.session_present), (0, false), "{v}");
        c.sub("sp/mark", QoS::AtMostOnce).await;
        p.publish0("sp/t", b"not for you", false).await;
        p.publish0("sp/mark", b"mark", false).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"mark", "{v}");
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.2.2-4, 3.1.1 MQTT-3.2.2-5, 3.1.1 MQTT-3.1.4-5, 5.0 MQTT-3.2.2-6,
// 5.0 MQTT-3.2.2-7, 5.0 MQTT-3.1.4-2, 5.0 MQTT-3.1.4-6: a refused CONNECT gets a
// CONNACK with an error code and Session Present 0 even though a session is stored,
// then the connection closes, and what the client sent after CONNECT is not processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_closes_and_processes_nothing_more() {
    let (broker, addr) = crate::authorization::broker_with_auth(mqtt_broker::Auth {
        authenticator: Box::new(crate::authorization::NamedUsers),
        ..Default::default()
    })
    .await;
    for v in [V3, V5] {
        let id = format!("refused-{v}");
        let with_user = |c: &mut Connect| {
            c.username = Some(s("user"));
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        };
        let (mut c, ack) = Client::connect_with(addr, v, &id, with_user).await;
        assert_eq!(ack.reason_code.0, 0);
        c.publish0("refused/mark", b"mark", true).await;
        c.sub("refused/q", QoS::AtLeastOnce).await;
        c.drop_connection();
        // No user name: refused. A retained PUBLISH rides behind the CONNECT.
        let mut c = Client::open(addr, v).await;
        let mut connect = Connect::new(v, s(&id));
        connect.clean_start = false;
        let mut bytes = BytesMut::new();
        Packet::from(connect).encode(v, &mut bytes).unwrap();
        Packet::from(publish("refused/x", b"sneaked", QoS::AtMostOnce, true))
            .encode(v, &mut bytes)
            .unwrap();
        c.send_raw(&bytes).await;
        let got = c.closed().await;
        let [Packet::ConnAck(ack)] = &got[..] else {
            panic!("{v}: {got:?}")
        };
        assert_ne!(ack.reason_code.0, 0, "{v}");
        assert!(ack.reason_code.0 >= 0x80 || !v.is_v5());
        assert!(!ack.session_present, "{v}");
        // "refused/x" holds no retained message: the marker is the only one.
        let (mut c, _) = Client::connect_with(addr, v, "refused-check", |c| {
            c.username = Some(s("user"));
        })
        .await;
        let sub = subscribe(
            1,
            &[
                ("refused/x", SubscriptionOptions::new(QoS::AtMostOnce)),
                ("refused/mark", SubscriptionOptions::new(QoS::AtMostOnce)),
            ],
        );
        c.subscribe(sub).await;
        let got = c.recv_publish().await;
        assert_eq!(got.topic.as_str(), "refused/mark", "{v}");
        c.quiet().await;
        c.publish0("refused/mark", b"", true).await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.8.4-6, 5.0 MQTT-3.8.4-8: a message is delivered at the lower of its own
// QoS and the QoS granted to the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_minimum() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, "minqos").await;
        c.sub("min/0", QoS::AtMostOnce).await;
        c.sub("min/1", QoS::AtLeastOnce).await;
        c.sub("min/2", QoS::ExactlyOnce).await;
        let mut p = Client::connect(addr, v, "minqos-pub").await;
        let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
        for granted in all {
            for published in all {
                let topic = format!("min/{}", granted as u8);
                p.publish(publish(&topic, b"m", published, false)).await;
                let got = c.recv_publish().await;
                assert_eq!(got.topic.as_str(), topic);
                assert_eq!(
                    got.qos_pid.qos(),
                    granted.min(published),
                    "{v}: published {published:?}, granted {granted:?}"
                );
                c.ack(&got).await;
            }
        }
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.3.1-5, 3.1.1 MQTT-3.3.1-6, 3.1.1 MQTT-3.3.1-7, 3.1.1 MQTT-3.3.1-8,
// 3.1.1 MQTT-3.3.1-9, 3.1.1 MQTT-3.3.1-10, 3.1.1 MQTT-3.3.1-11, 3.1.1 MQTT-3.3.1-12,
// 3.1.1 MQTT-3.1.2-7, 5.0 MQTT-3.3.1-5, 5.0 MQTT-3.3.1-6, 5.0 MQTT-3.3.1-7,
// 5.0 MQTT-3.3.1-8, 5.0 MQTT-3.3.1-9, 5.0 MQTT-3.3.1-12: a retained message is stored
// with its QoS and sent with RETAIN=1 to new subscriptions; forwarded to an existing
// subscription it has RETAIN=0; a QoS 0 retained message replaces the stored one; a
// non-retained one leaves the store alone; a zero-byte retained message is forwarded,
// deletes the stored one and is not stored itself; retained messages outlive the
// publisher's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_rules() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let t = |name: &str| format!("ret{}/{name}", v as u8);
        let mut p = Client::connect(addr, v, "ret-pub").await;
        p.publish(publish(&t("a"), b"one", QoS::AtLeastOnce, true))
            .await;
        p.publish0(&t("mark"), b"mark", true).await;

        // A new subscription gets it, RETAIN=1, at the stored QoS.
        let mut s1 = Client::connect(addr, v, "ret-s1").await;
        s1.sub(&t("a"), QoS::ExactlyOnce).await;
        let got = s1.recv_publish().await;
        assert_eq!(&got.payload[..], b"one", "{v}");
        assert!(got.retain, "{v}");
        assert_eq!(got.qos_pid.qos(), QoS::AtLeastOnce, "{v}");
        s1.ack(&got).await;

        // Forwarded live: RETAIN=0, whether published retained or not.
        p.publish0(&t("a"), b"two", true).await;
        p.publish(publish(&t("a"), b"three", QoS::AtLeastOnce, false))
            .await;
        for expected in [&b"two"[..], b"three"] {
            let got = s1.recv_publish().await;
            assert_eq!(&got.payload[..], expected, "{v}");
            assert!(!got.retain, "{v}");
            s1.ack(&got).await;
        }
        // The publisher's session ends; "two" (QoS 0) replaced "one", "three" left it.
        p.send(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode(0)))
            .await;
        assert!(p.closed().await.is_empty());
        let mut s2 = Client::connect(addr, v, "ret-s2").await;
        s2.sub(&t("a"), QoS::ExactlyOnce).await;
        let got = s2.recv_publish().await;
        assert_eq!(&got.payload[..], b"two", "{v}");
        assert!(got.retain);
        assert_eq!(got.qos_pid.qos(), QoS::AtMostOnce, "{v}");
        s2.quiet().await;

        // A zero-byte retained message is forwarded normally and deletes "two"; one on a
        // topic with nothing retained is not stored either.
        let mut p = Client::connect(addr, v, "ret-pub").await;
        p.publish(publish(&t("a"), b"", QoS::AtLeastOnce, true))
            .await;
        p.publish(publish(&t("b"), b"", QoS::AtLeastOnce, true))
            .await;
        for c in [&mut s1, &mut s2] {
            let got = c.recv_publish().await;
            assert!(got.payload.is_empty() && !got.retain, "{v}: {got:?}");
            c.ack(&got).await;
        }
        let mut s3 = Client::connect(addr, v, "ret-s3").await;
        let any = SubscriptionOptions::new(QoS::AtMostOnce);
        s3.subscribe(subscribe(
            1,
            &[(&t("a"), any), (&t("b"), any), (&t("mark"), any)],
        ))
        .await;
        let got = s3.recv_publish().await;
        assert_eq!(&got.payload[..], b"mark", "{v}: {got:?}");
        s3.quiet().await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.8.4-3, 5.0 MQTT-3.8.4-3, 5.0 MQTT-3.8.4-4: subscribing again to the same
// filter replaces the subscription (its QoS changes, no second copy) and re-sends the
// retained messages; messages published around it are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_filter_replaces_subscription() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let topic = format!("same{}", v as u8);
        let mut p = Client::connect(addr, v, "same-pub").await;
        p.publish0(&topic, b"retained", true).await;
        // The broker has stored it once it answers a later packet; otherwise the
        // subscription below could come first and see the message live, not retained.
        p.ping().await;
        let mut c = Client::connect(addr, v, "same").await;
        c.sub(&topic, QoS::AtLeastOnce).await;
        let got = c.recv_publish().await;
        assert!(got.retain && &got.payload[..] == b"retained", "{v}");

        p.publish(publish(&topic, b"before", QoS::AtLeastOnce, false))
            .await;
        c.sub(&topic, QoS::AtMostOnce).await;
        p.publish(publish(&topic, b"after", QoS::AtLeastOnce, false))
            .await;
        let mut got = Vec::new();
        while got.len() < 3 {
            let m = c.recv_publish().await;
            c.ack(&m).await;
            got.push((m.payload.clone(), m.retain, m.qos_pid.qos()));
        }
        let find = |payload: &[u8]| {
            got.iter()
                .find(|m| &m.0[..] == payload)
                .unwrap_or_else(|| panic!("{v}: {got:?}"))
        };
        assert_eq!(find(b"before").2, QoS::AtLeastOnce);
        assert!(find(b"retained").1, "{v}: retained re-sent");
        assert_eq!(
            find(b"after").2,
            QoS::AtMostOnce,
            "{v}: the QoS was replaced"
        );
        c.quiet().await;
        p.publish0(&topic, b"", true).await;
    }
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-16, 3.1.1 MQTT-3.1.2-17, 3.1.1 MQTT-3.1.2-12, 5.0 MQTT-3.1.2-14,
// 5.0 MQTT-3.1.2-15, 5.0 MQTT-3.1.2-7: a will with Will Retain 0 is published and not
// retained; with Will Retain 1 it is published as a retained message; a connection
// without a will publishes nothing when it drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_retain_flag() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let t = |name: &str| format!("will{}/{name}", v as u8);
        let mut watch = Client::connect(addr, v, "will-watch").await;
        watch
            .sub(&format!("will{}/#", v as u8), QoS::AtLeastOnce)
            .await;
        let with_will = |topic: String, retain: bool| {
            move |c: &mut Connect| {
                c.will = Some(mqtt_codec::Will {
                    topic: s(&topic),
                    payload: Bytes::from(topic.clone()),
                    qos: QoS::AtLeastOnce,
                    retain,
                    properties: Default::default(),
                });
            }
        };
        // No will: nothing is published when it drops.
        let plain = Client::connect(addr, v, "will-none").await;
        plain.drop_connection();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (w, _) = Client::connect_with(addr, v, "will-0", with_will(t("plain"), false)).await;
        w.drop_connection();
        let got = watch.recv_publish().await;
        assert_eq!(got.topic.as_str(), t("plain"), "{v}");
        assert!(!got.retain);
        watch.ack(&got).await;

        let (w, _) = Client::connect_with(addr, v, "will-1", with_will(t("kept"), true)).await;
        w.drop_connection();
        let got = watch.recv_publish().await;
        assert_eq!(got.topic.as_str(), t("kept"), "{v}");
        watch.ack(&got).await;
        watch.quiet().await;

        // Only the Will Retain 1 will is retained.
        let mut late = Client::connect(addr, v, "will-late").await;
        let any = SubscriptionOptions::new(QoS::AtMostOnce);
        late.subscribe(subscribe(1, &[(&t("plain"), any), (&t("kept"), any)]))
            .await;
        let got = late.recv_publish().await;
        assert_eq!(got.topic.as_str(), t("kept"), "{v}");
        assert!(got.retain);
        late.quiet().await;
    }
    broker.shutdown().await;
}

/// Subscribers that keep coming back lose no QoS 1 message of a stream published
/// meanwhile. Each connection parks right after its CONNACK and is revived by the
/// deliveries or its client's acknowledgements, and each leaves in turn by DISCONNECT,
/// by a dropped socket, or by being taken over by its successor: the paths where a
/// wake-up could fall between parking and reviving. The second half of the stream goes
/// to connections that stay, parked with nothing owed until a delivery revives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_subscribers_lose_no_message() {
    const SUBSCRIBERS: usize = 12;
    const CHURN: usize = 8;
    const MESSAGES: u16 = 300;
    const HALF: usize = MESSAGES as usize / 2;
    let (broker, addr) = broker().await;
    let persistent = |c: &mut Connect| c.clean_start = false;
    let leave = |c: Client| async move {
        let mut c = c;
        c.send(mqtt_codec::Disconnect::new(mqtt_codec::ReasonCode::SUCCESS))
            .await;
    };
    for i in 0..SUBSCRIBERS {
        let (mut c, _) = Client::connect_with(addr, V3, &format!("churn{i}"), persistent).await;
        c.sub("churn/t", QoS::AtLeastOnce).await;
        leave(c).await;
    }
    let staying = std::sync::Arc::new(tokio::sync::Barrier::new(SUBSCRIBERS + 1));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let staying = std::sync::Arc::clone(&staying);
            tokio::spawn(async move {
                let id = format!("churn{i}");
                let mut seen = std::collections::BTreeSet::new();
                let mut old: Option<Client> = None;
                // Coming and going until the first half is in and acknowledged.
                let mut round = 0;
                while round < CHURN || seen.len() < HALF {
                    assert!(
                        round < 500,
                        "{id}: {} of {HALF} after 500 connections",
                        seen.len()
                    );
                    let (mut c, _) = Client::connect_with(addr, V3, &id, persistent).await;
                    // The one kept open is taken over by the CONNECT just sent.
                    drop(old.take());
                    let quota = 5 + 7 * (round + i) % 30;
                    let mut got = 0;
                    while got < quota {
                        match c.next_within(Duration::from_millis(50)).await {
                            Some(Some(Packet::Publish(p))) => {
                                seen.insert(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                                c.ack(&p).await;
                                got += 1;
                            }
                            Some(Some(_)) => {}
                            Some(None) | None => break,
                        }
                    }
                    round += 1;
                    if round >= CHURN && seen.len() == HALF {
                        // Its acknowledgements are handled before it: nothing is owed.
                        leave(c).await;
                        break;
                    }
                    match round % 3 {
                        0 => leave(c).await,
                        1 => c.drop_connection(),
                        _ => old = Some(c),
                    }
                }
                // Connected for good, parked at once: the rest must wake it.
                drop(old.take());
                let (mut c, _) = Client::connect_with(addr, V3, &id, persistent).await;
                staying.wait().await;
                let mut end = "all in";
                while seen.len() < usize::from(MESSAGES) {
                    match c.next_within(Duration::from_secs(10)).await {
                        Some(Some(Packet::Publish(p))) => {
                            seen.insert(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                            c.ack(&p).await;
                        }
                        Some(Some(_)) => {}
                        Some(None) => {
                            end = "closed by the broker";
                            break;
                        }
                        None => {
                            end = "nothing more for 10 s";
                            break;
                        }
                    }
                }
                let missing: Vec<u16> = (1..=MESSAGES).filter(|n| !seen.contains(n)).collect();
                (missing, end)
            })
        })
        .collect();
    let mut p = Client::connect(addr, V3, "churn-pub").await;
    for n in 1..=MESSAGES {
        if usize::from(n) == HALF + 1 {
            staying.wait().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut m = publish("churn/t", &n.to_be_bytes(), QoS::AtLeastOnce, false);
        m.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(n));
        p.publish(m).await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for (i, s) in subscribers.into_iter().enumerate() {
        let (missing, end) = timeout(Duration::from_secs(60), s)
            .await
            .expect("subscribers end in time")
            .unwrap();
        assert!(missing.is_empty(), "churn{i}: {end}, missing {missing:?}");
    }
    broker.shutdown().await;
}
