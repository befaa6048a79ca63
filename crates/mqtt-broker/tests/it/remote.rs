//! Subscribers that are not local sessions (a bridge link, a cluster peer), through
//! `Broker::subscribe_remote` and `Broker::publish`, with real clients on the other side.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mqtt_broker::remote::Forward;
use mqtt_codec::{ByteStr, ProtocolVersion, QoS};
use mqtt_session::Message;

use crate::{
    broker,
    spec::{Client, publish},
};

/// Collects what it is handed; refuses after `room` messages, as a full link would.
#[derive(Debug, Default)]
struct Link {
    got: Mutex<Vec<Message>>,
    room: usize,
}

impl Forward for Link {
    fn forward(&self, message: Message) -> bool {
        let mut got = self.got.lock().unwrap();
        if got.len() >= self.room {
            return false;
        }
        got.push(message);
        true
    }
}

// Both directions of a bridge: what a client publishes reaches the remote subscriber at
// most at its QoS (and nothing outside its filter); what the peer brings reaches local
// subscribers, and is not sent back to the peer it came from; unsubscribed, it gets
// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_subscriber_is_routed_to_and_from() {
    let (broker, addr) = broker().await;
    let link = Arc::new(Link {
        room: 100,
        ..Link::default()
    });
    let sub = broker
        .subscribe_remote("bridge/#", QoS::AtLeastOnce, link.clone())
        .unwrap();
    assert!(
        broker
            .subscribe_remote("$share/g/x", QoS::AtMostOnce, link.clone())
            .is_err()
    );
    assert!(
        broker
            .subscribe_remote("bad/#/x", QoS::AtMostOnce, link.clone())
            .is_err()
    );

    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut c = Client::connect(addr, v, "bridged").await;
        c.publish(publish(
            "bridge/out",
            b"to the peer",
            QoS::ExactlyOnce,
            false,
        ))
        .await;
        c.publish(publish(
            "elsewhere",
            b"not for the peer",
            QoS::AtLeastOnce,
            false,
        ))
        .await;
    }
    {
        let got = link.got.lock().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        for m in got.iter() {
            assert_eq!(
                (&m.topic[..], &m.payload[..]),
                ("bridge/out", &b"to the peer"[..])
            );
            assert_eq!(
                m.qos,
                QoS::AtLeastOnce,
                "capped at the remote subscription's QoS"
            );
        }
    }

    // From the peer: a local subscriber gets it, the peer does not get it back.
    let mut local = Client::connect(addr, ProtocolVersion::V5, "local").await;
    local.sub("bridge/#", QoS::AtMostOnce).await;
    let mut incoming = Message::new(
        ByteStr::from_static("bridge/in"),
        Bytes::from_static(b"from the peer"),
        QoS::AtMostOnce,
    );
    incoming.retain = false;
    assert_eq!(broker.publish(incoming.clone(), Some(&sub)), 1);
    let p = local.recv_publish().await;
    assert_eq!(&p.payload[..], b"from the peer");
    assert_eq!(
        link.got.lock().unwrap().len(),
        2,
        "not sent back to its origin"
    );
    // Without an origin it goes to the peer too.
    assert_eq!(broker.publish(incoming, None), 2);
    assert_eq!(link.got.lock().unwrap().len(), 3);

    broker.unsubscribe_remote(sub);
    let mut c = Client::connect(addr, ProtocolVersion::V5, "after").await;
    c.publish(publish("bridge/out", b"late", QoS::AtLeastOnce, false))
        .await;
    assert_eq!(link.got.lock().unwrap().len(), 3, "unsubscribed");
    broker.shutdown().await;
}
