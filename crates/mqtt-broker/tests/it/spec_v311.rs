//! Server statements of MQTT 3.1.1 with no 5.0 counterpart checked here; the helpers
//! are in `spec.rs`.

use mqtt_codec::{Connect, Packet, QoS, ReasonCode};

use crate::{
    broker,
    spec::{Client, V3},
};

// 3.1.1 MQTT-3.1.3-6: a zero-length client id with Clean Session 1 is accepted and given
// an id of its own: two such clients do not take each other over, and both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_gets_a_unique_one() {
    let (broker, addr) = broker().await;
    let (mut a, ack) = Client::connect_with(addr, V3, "", |_| {}).await;
    assert_eq!((ack.reason_code.0, ack.session_present), (0, false));
    let (mut b, ack) = Client::connect_with(addr, V3, "", |_| {}).await;
    assert_eq!(ack.reason_code.0, 0);
    a.sub("anon/b", QoS::AtMostOnce).await;
    b.sub("anon/a", QoS::AtMostOnce).await;
    a.publish0("anon/a", b"from a", false).await;
    b.publish0("anon/b", b"from b", false).await;
    assert_eq!(&a.recv_publish().await.payload[..], b"from b");
    assert_eq!(&b.recv_publish().await.payload[..], b"from a");
    a.ping().await;
    b.ping().await;
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.3-9: a rejected client id gets CONNACK 0x02 and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_id_gets_0x02_then_close() {
    let (broker, addr) = broker().await;
    let mut c = Client::open(addr, V3).await;
    let mut connect = Connect::new(V3, mqtt_codec::ByteStr::new());
    connect.clean_start = false;
    c.send(connect).await;
    // CONNACK return code 2 (decoded as 0x85), then the end of the connection.
    let got = c.closed().await;
    let [Packet::ConnAck(ack)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(!ack.session_present);
    broker.shutdown().await;
}
