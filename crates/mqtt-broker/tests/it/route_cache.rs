//! A publishing connection keeps where its last topic went while the subscription index
//! is unchanged (`router::Routes`). Each subscribe and unsubscribe must show in the
//! very next message, from that same connection, to the same topic: looped, with the
//! subscriber's changes made by other connections while the publisher keeps sending.

use std::time::Duration;

use mqtt_codec::{Packet, ProtocolVersion, QoS};

use crate::{
    broker,
    spec::{Client, publish},
};

const V: ProtocolVersion = ProtocolVersion::V5;

/// Publishes `payload` to `topic` at QoS 1 and waits for its PUBACK.
async fn send(publisher: &mut Client, topic: &str, payload: &[u8]) {
    publisher
        .publish(publish(topic, payload, QoS::AtLeastOnce, false))
        .await;
}

/// Whether `c` receives a PUBLISH with `payload` within a short wait.
async fn receives(c: &mut Client, payload: &[u8]) -> bool {
    while let Some(Some(p)) = c.next_within(Duration::from_millis(300)).await {
        if let Packet::Publish(p) = p {
            if &p.payload[..] == payload {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscribe_and_unsubscribe_shows_in_the_next_message() {
    let (broker, addr) = broker().await;
    let mut publisher = Client::connect(addr, V, "rc-publisher").await;
    // The publisher's last topic stays `rc/t` throughout: its routes are cached.
    send(&mut publisher, "rc/t", b"warm").await;
    for round in 0..50u32 {
        let filter = if round % 2 == 0 { "rc/t" } else { "rc/+" };
        let mut sub = Client::connect(addr, V, &format!("rc-sub-{round}")).await;
        sub.sub(filter, QoS::AtMostOnce).await;
        let hello = format!("hello {round}");
        send(&mut publisher, "rc/t", hello.as_bytes()).await;
        assert!(
            receives(&mut sub, hello.as_bytes()).await,
            "round {round}: a new subscription to {filter} missed the next message"
        );
        let ack = sub.unsubscribe(2, &[filter]).await;
        assert_eq!(
            ack.reason_codes.first().map(|r| r.0),
            Some(0),
            "round {round}"
        );
        let bye = format!("bye {round}");
        send(&mut publisher, "rc/t", bye.as_bytes()).await;
        assert!(
            !receives(&mut sub, bye.as_bytes()).await,
            "round {round}: a message reached a subscription removed before it"
        );
        // Another topic in between, and back: the cache follows the topic too.
        if round % 5 == 4 {
            send(&mut publisher, "rc/other", b"elsewhere").await;
        }
    }
    broker.shutdown().await;
}
