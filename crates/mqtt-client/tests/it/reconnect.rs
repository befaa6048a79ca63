//! Reconnection: the session is resumed and in-flight messages are resent, so QoS 2
//! stays exactly-once when the connection dies mid-exchange.

use std::{collections::HashMap, time::Duration};

use mqtt_client::{Event, ProtocolVersion, QoS, testing::Mosquitto, testing::Proxy};

use crate::{T, assert_quiet, connect, next_message, next_state, opts};

/// Where the connection is cut in a QoS 2 exchange.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The broker got PUBLISH; PUBREC is held back.
    AfterPublish,
    /// The broker got PUBREL (and delivered the message); PUBCOMP is held back.
    AfterPubRel,
}

// 3.1.1 MQTT-4.4.0-1, 5.0 MQTT-4.4.0-1, 5.0 MQTT-4.3.3-6, 5.0 MQTT-4.3.3-10,
// 3.1.1 MQTT-4.3.3-2: the connection dies in the middle of a QoS 2 exchange; on
// reconnection the client resends the PUBLISH (DUP) or the PUBREL, the exchange
// completes, and the message is delivered exactly once.
#[tokio::test]
async fn qos2_exactly_once_across_a_cut() {
    let broker = Mosquitto::start();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for cut in [Cut::AfterPublish, Cut::AfterPubRel] {
            let proxy = Proxy::start(broker.addr()).await;
            let (sub, mut sub_conn) = connect(opts(&broker.url(), version, "sub")).await;
            sub.subscribe("eo", QoS::ExactlyOnce).await.unwrap();
            let o = opts(&proxy.url(), version, &format!("eo-{version:?}-{cut:?}"))
                .clean_start(false)
                .session_expiry(600);
            let (c, mut conn) = connect(o).await;
            assert!(matches!(
                next_state(&mut conn).await,
                Event::Connected { .. }
            ));

            match cut {
                Cut::AfterPublish => proxy.stall_downstream(true),
                // PUBREC passes, PUBCOMP does not.
                Cut::AfterPubRel => proxy.stall_downstream_after(1),
            }
            let delivery = c
                .enqueue(mqtt_client::message("eo", "once", QoS::ExactlyOnce, false).unwrap())
                .await
                .unwrap();
            match cut {
                // Mosquitto delivers a QoS 2 message onward on PUBREL: nothing yet.
                Cut::AfterPublish => assert_quiet(&mut sub_conn, Duration::from_millis(150)).await,
                Cut::AfterPubRel => {
                    let m = next_message(&mut sub_conn).await;
                    assert_eq!(&m.payload[..], b"once");
                }
            }
            proxy.cut();
            proxy.stall_downstream(false);

            let code = tokio::time::timeout(T, delivery).await.unwrap().unwrap();
            assert!(code.is_success());
            assert!(matches!(
                next_state(&mut conn).await,
                Event::Disconnected { .. }
            ));
            assert!(matches!(
                next_state(&mut conn).await,
                Event::Reconnecting { attempt: 1, .. }
            ));
            assert!(matches!(
                next_state(&mut conn).await,
                Event::Connected {
                    session_present: true,
                    ..
                }
            ));
            if let Cut::AfterPublish = cut {
                let m = next_message(&mut sub_conn).await;
                assert_eq!(&m.payload[..], b"once");
            }
            assert_quiet(&mut sub_conn, Duration::from_millis(200)).await;
            c.disconnect().await.unwrap();
            sub.disconnect().await.unwrap();
        }
    }
}

// 3.1.1 MQTT-4.4.0-1, 5.0 MQTT-4.4.0-1: many QoS 1 and 2 messages
// while the connection is cut over and over: every publish completes, every QoS 2
// message arrives exactly once, every QoS 1 message at least once.
#[tokio::test]
async fn many_cuts_lose_nothing_and_duplicate_no_qos2() {
    let broker = Mosquitto::start();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let proxy = Proxy::start(broker.addr()).await;
        let (sub, mut sub_conn) = connect(opts(&broker.url(), version, "sub")).await;
        sub.subscribe("storm/#", QoS::ExactlyOnce).await.unwrap();
        let o = opts(&proxy.url(), version, &format!("storm-{version:?}"))
            .clean_start(false)
            .session_expiry(600);
        let (c, _conn) = connect(o).await;
        let n = 60;
        let cutter = {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    proxy.cut();
                }
            })
        };
        let mut deliveries = Vec::new();
        for i in 0..n {
            let qos = if i % 2 == 0 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            let m =
                mqtt_client::message(&format!("storm/{}", qos as u8), format!("{i}"), qos, false)
                    .unwrap();
            deliveries.push(c.enqueue(m).await.unwrap());
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for d in deliveries {
            tokio::time::timeout(T, d)
                .await
                .expect("publish never completed")
                .unwrap();
        }
        cutter.await.unwrap();
        let mut seen: HashMap<String, usize> = HashMap::new();
        while seen.len() < n {
            let m = next_message(&mut sub_conn).await;
            *seen
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_default() += 1;
        }
        // Late arrivals may still come: QoS 1 duplicates are allowed, QoS 2 ones are not.
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), sub_conn.next_message()).await
        {
            *seen
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_default() += 1;
        }
        for i in (0..n).step_by(2) {
            assert_eq!(
                seen.get(&i.to_string()),
                Some(&1),
                "{version}: QoS 2 message {i}"
            );
        }
        assert!(proxy.accepted() > 1, "the connection was really cut");
        c.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
    }
}

/// Messages published while the connection is down are queued and sent after it is back.
#[tokio::test]
async fn publish_while_disconnected_is_sent_after_reconnect() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr()).await;
    let (sub, mut sub_conn) = connect(opts(&broker.url(), ProtocolVersion::V5, "sub")).await;
    sub.subscribe("later", QoS::AtLeastOnce).await.unwrap();
    let o = opts(&proxy.url(), ProtocolVersion::V5, "later-pub").session_expiry(60);
    let (c, mut conn) = connect(o).await;
    assert!(matches!(
        next_state(&mut conn).await,
        Event::Connected { .. }
    ));
    proxy.cut();
    assert!(matches!(
        next_state(&mut conn).await,
        Event::Disconnected { .. }
    ));
    // QoS 0 is not queued while offline; QoS 1 is.
    let q0 = c.publish("later", "zero", QoS::AtMostOnce, false).await;
    let q1 = c.publish("later", "one", QoS::AtLeastOnce, false);
    let q1 = tokio::time::timeout(T, q1).await.unwrap().unwrap();
    assert!(q1.is_success());
    if q0.is_err() {
        assert!(matches!(
            q0,
            Err(mqtt_client::ClientError::Dropped(
                mqtt_client::DropReason::Offline
            ))
        ));
    }
    loop {
        let m = next_message(&mut sub_conn).await;
        if &m.payload[..] == b"one" {
            break;
        }
    }
}
