//! Session lifecycle over real sockets: what ends with a connection stays ended, a
//! delayed will gives way to a new connection, and the packets older clients read.
//! The races are looped.

use std::time::Duration;

use bytes::Bytes;
use mqtt_codec::{Disconnect, Packet, PacketId, ProtocolVersion, PubRel, QoS, ReasonCode, Will};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    broker,
    spec::{Client, publish, s},
};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

// 3.1.1 MQTT-3.1.2-6, 3.1.1 MQTT-3.2.2-3: a session that cannot outlive its
// connection (3.1.1 Clean Session 1; 5.0 Session Expiry 0, from CONNECT or from
// DISCONNECT) is not resumed by a CONNECT with Clean Session 0 made right after the
// close, nor by one that takes the connection over: Session Present 0, and the old
// subscription is gone. Looped: the close and the new CONNECT race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_must_end_is_never_resumed() {
    let (broker, addr) = broker().await;
    let mut publisher = Client::connect(addr, V3, "lc-pub").await;
    for round in 0..40 {
        for (v, how) in [
            (V3, "clean"),
            (V5, "expiry 0"),
            (V5, "disconnect 0"),
            (V3, "takeover"),
        ] {
            let id = format!("lc-{round}-{how}-{v}");
            let topic = format!("lc/{round}/{}", how.replace(' ', "-"));
            let (mut c, _) = Client::connect_with(addr, v, &id, |c| {
                c.clean_start = how != "disconnect 0";
                if how == "disconnect 0" {
                    c.properties.session_expiry_interval = Some(60);
                }
            })
            .await;
            c.sub(&topic, QoS::AtLeastOnce).await;
            let old = if how == "takeover" {
                Some(c)
            } else {
                if how == "disconnect 0" {
                    let mut d = Disconnect::new(ReasonCode::SUCCESS);
                    d.properties.session_expiry_interval = Some(0);
                    c.send(d).await;
                } else {
                    c.send(Disconnect::new(ReasonCode::SUCCESS)).await;
                }
                c.drop_connection();
                None
            };
            let (mut again, ack) = Client::connect_with(addr, v, &id, |c| {
                c.clean_start = false;
                c.properties.session_expiry_interval = Some(60).filter(|_| v.is_v5());
            })
            .await;
            assert_eq!(ack.reason_code.0, 0, "{id}");
            assert!(!ack.session_present, "{id}: resumed");
            publisher
                .publish(publish(&topic, b"late", QoS::AtLeastOnce, false))
                .await;
            if let Some(Some(Packet::Publish(p))) =
                again.next_within(Duration::from_millis(200)).await
            {
                panic!("{id}: a message through the old subscription: {p:?}");
            }
            drop(old);
        }
    }
    broker.shutdown().await;
}

// 5.0 MQTT-3.1.3-9: a delayed will is not published when a new connection for the
// Client Identifier arrives before the delay ends, Clean Start 1 included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_cancels_a_delayed_will() {
    let (broker, addr) = broker().await;
    let mut watcher = Client::connect(addr, V5, "dw-watcher").await;
    watcher.sub("dw/#", QoS::AtMostOnce).await;
    for (round, clean) in [(0, true), (1, false), (2, true)] {
        let id = format!("dw-{round}");
        let (c, _) = Client::connect_with(addr, V5, &id, |c| {
            c.properties.session_expiry_interval = Some(30);
            let mut will = Will {
                topic: s(&format!("dw/{round}")),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            };
            will.properties.will_delay_interval = Some(1);
            c.will = Some(will);
        })
        .await;
        c.drop_connection();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_back, _) = Client::connect_with(addr, V5, &id, |c| c.clean_start = clean).await;
        // Well past the delay: nothing.
        if let Some(Some(p)) = watcher.next_within(Duration::from_millis(1500)).await {
            panic!("round {round} (clean start {clean}): {p:?}");
        }
    }
    broker.shutdown().await;
}

/// The bytes the broker answers `bytes` with, until it closes.
async fn answer(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

/// A CONNECT with protocol name `name` and level `level`, client id "x", keep-alive 60.
fn connect_bytes(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&[0, 1, b'x']);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

// 3.1 has no Session Present: the first byte of its CONNACK is 0x00. An unsupported
// protocol level gets the CONNACK form the client's own version reads: return code 1 in
// the 3.1.1 form below level 5 (3.1.1 MQTT-3.1.2-2), 0x84 in the 5.0 form above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_forms_older_clients_read() {
    let (broker, addr) = broker().await;
    // 3.1, Clean Session 0 and a session kept from before: still 0x00 first.
    let mut c = connect_bytes(b"MQIsdp", 3);
    assert_eq!(answer_first(addr, &c).await, [0x20, 0x02, 0x00, 0x00]);
    c[2 + 2 + 6 + 1] = 0x00; // Clean Session 0
    assert_eq!(answer_first(addr, &c).await, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(
        answer(addr, &connect_bytes(b"MQTT", 2)).await,
        [0x20, 0x02, 0x00, 0x01]
    );
    assert_eq!(
        answer(addr, &connect_bytes(b"MQTT", 6)).await,
        [0x20, 0x03, 0x00, 0x84, 0x00]
    );
    broker.shutdown().await;
}

/// The first four bytes the broker sends for `bytes` (a CONNACK), the connection kept
/// open until then.
async fn answer_first(addr: std::net::SocketAddr, bytes: &[u8]) -> [u8; 4] {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut out))
        .await
        .expect("CONNACK in time")
        .unwrap();
    out
}

// A PUBREL for an identifier the broker does not hold (its flow completed before a
// reconnection) is answered with PUBCOMP 0x00, as Mosquitto does: MQTT.js reports the
// message as failed on 0x92 although it was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pubrel_gets_pubcomp_success() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, &format!("pubrel-{v}")).await;
        c.send(PubRel::new(PacketId::new(77).unwrap())).await;
        match c.recv().await {
            Packet::PubComp(p) => assert_eq!(p.reason_code, ReasonCode::SUCCESS, "{v}"),
            other => panic!("{v}: {other:?}"),
        }
    }
    broker.shutdown().await;
}
