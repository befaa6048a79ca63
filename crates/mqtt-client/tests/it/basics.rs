//! Connecting, publishing, subscribing, will, session resumption, properties.

use std::time::Duration;

use bytes::Bytes;
use mqtt_client::{
    ByteStr, ConnectError, Event, ProtocolVersion, PublishProperties, QoS, ReasonCode,
    SubscribeProperties, Subscription, SubscriptionOptions, Will, testing::Mosquitto,
};

use crate::{VERSIONS, assert_quiet, connect, next_message, next_state, opts};

// 3.1.1 MQTT-4.3.3-1, 5.0 MQTT-4.3.3-4, 5.0 MQTT-3.8.4-8: every QoS, every version:
// each message arrives once, and publish completes with the broker's acknowledgement.
#[tokio::test]
async fn publish_subscribe_every_qos_every_version() {
    let broker = Mosquitto::start();
    for version in VERSIONS {
        let (sub, mut sub_conn) = connect(opts(&broker.url(), version, "sub")).await;
        assert!(matches!(
            next_state(&mut sub_conn).await,
            Event::Connected {
                session_present: false,
                ..
            }
        ));
        let (publ, _pub_conn) = connect(opts(&broker.url(), version, "pub")).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("t/{version:?}/{}", qos as u8);
            assert_eq!(sub.subscribe(&topic, qos).await.unwrap(), qos);
            let code = publ.publish(&topic, "hello", qos, false).await.unwrap();
            assert!(code.is_success(), "{version} {qos}: {code}");
            let m = next_message(&mut sub_conn).await;
            assert_eq!(
                (m.topic.as_str(), &m.payload[..], m.qos),
                (topic.as_str(), &b"hello"[..], qos)
            );
        }
        assert_quiet(&mut sub_conn, Duration::from_millis(100)).await;
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
        assert_eq!(
            next_state(&mut sub_conn).await,
            Event::Disconnected {
                reason: mqtt_client::DisconnectReason::Requested
            }
        );
        assert!(sub_conn.next_event().await.is_none(), "the driver ends");
    }
}

#[tokio::test]
async fn unsubscribe_and_multi_subscribe() {
    let broker = Mosquitto::start();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (c, mut conn) = connect(opts(&broker.url(), version, "c")).await;
        let ack = c
            .subscribe_many(
                vec![
                    Subscription {
                        filter: ByteStr::from_static("a/#"),
                        options: SubscriptionOptions::new(QoS::ExactlyOnce),
                    },
                    Subscription {
                        filter: ByteStr::from_static("b/+"),
                        options: SubscriptionOptions::new(QoS::AtMostOnce),
                    },
                ],
                SubscribeProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            ack.reason_codes,
            [ReasonCode::GRANTED_QOS_2, ReasonCode::GRANTED_QOS_0]
        );
        c.publish("b/x", "1", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(next_message(&mut conn).await.qos, QoS::AtMostOnce);
        assert!(c.unsubscribe("b/+").await.unwrap().is_success());
        c.publish("b/x", "2", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_quiet(&mut conn, Duration::from_millis(100)).await;
        c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn invalid_topics_are_refused_locally() {
    let broker = Mosquitto::start();
    let (c, _conn) = connect(opts(&broker.url(), ProtocolVersion::V5, "c")).await;
    assert!(c.publish("a/+", "x", QoS::AtMostOnce, false).await.is_err());
    assert!(c.publish("", "x", QoS::AtMostOnce, false).await.is_err());
    assert!(c.subscribe("a/#/b", QoS::AtMostOnce).await.is_err());
    // The connection still works.
    c.subscribe("ok", QoS::AtMostOnce).await.unwrap();
}

#[tokio::test]
async fn refused_connection_says_why() {
    let broker = Mosquitto::start_with(&[], "allow_anonymous false\n");
    for version in VERSIONS {
        let err = mqtt_client::connect(opts(&broker.url(), version, "c"))
            .await
            .unwrap_err();
        match &err {
            ConnectError::Refused { reason, .. } => {
                assert_eq!(*reason, ReasonCode::NOT_AUTHORIZED, "{version}");
            }
            other => panic!("{version}: {other:?}"),
        }
        assert_eq!(err.to_string(), "connection refused: not authorised");
    }
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = mqtt_client::connect(opts(
        &format!("mqtt://127.0.0.1:{port}"),
        ProtocolVersion::V5,
        "c",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn username_and_password() {
    let dir = mqtt_client::testing::temp_dir("passwd");
    let pw = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["alice", "s3cret"])
        .status()
        .expect("mosquitto_passwd (from the mosquitto package) must be installed");
    assert!(status.success());
    let broker = Mosquitto::start_with(
        &[],
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
    );
    for version in VERSIONS {
        let url = format!("mqtt://alice:s3cret@127.0.0.1:{}", broker.port);
        let (c, _conn) = connect(opts(&url, version, "c")).await;
        c.disconnect().await.unwrap();
        let url = format!("mqtt://alice:wrong@127.0.0.1:{}", broker.port);
        let err = mqtt_client::connect(opts(&url, version, "c"))
            .await
            .unwrap_err();
        let ConnectError::Refused { reason, .. } = err else {
            panic!("{err:?}")
        };
        // Mosquitto answers a wrong password with "not authorised" (5) on 3.x and 0x86 on 5.0.
        assert!(
            reason == ReasonCode::NOT_AUTHORIZED || reason == ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{version}: {reason}"
        );
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

// 3.1.1 MQTT-3.1.2-9, 5.0 MQTT-3.1.2-9: the will is in CONNECT, so the broker publishes
// it when the connection dies; not after a normal DISCONNECT.
#[tokio::test]
async fn will_is_published_when_the_connection_dies() {
    let broker = Mosquitto::start();
    for version in VERSIONS {
        let proxy = mqtt_client::testing::Proxy::start(broker.addr()).await;
        let (watcher, mut wconn) = connect(opts(&broker.url(), version, "watcher")).await;
        watcher.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
        let will = Will {
            topic: ByteStr::from_static("will/x"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        };
        let mut o = opts(&proxy.url(), version, "mortal").will(will.clone());
        o = o.reconnect(mqtt_client::ReconnectOptions {
            enabled: false,
            ..Default::default()
        });
        let (_c, _conn) = connect(o).await;
        proxy.cut();
        let m = next_message(&mut wconn).await;
        assert_eq!(&m.payload[..], b"gone", "{version}");

        // A normal disconnect: no will.
        let (c, _conn) = connect(opts(&broker.url(), version, "polite").will(will)).await;
        c.disconnect().await.unwrap();
        assert_quiet(&mut wconn, Duration::from_millis(200)).await;
        watcher.disconnect().await.unwrap();
    }
}

// 3.1.1 MQTT-3.1.2-4, 5.0 MQTT-3.1.2-23, 3.1.1 MQTT-3.2.2-2, 5.0 MQTT-3.2.2-3: a
// session kept across connections: messages published while away are delivered on return.
#[tokio::test]
async fn persistent_session_gets_messages_sent_while_away() {
    let broker = Mosquitto::start();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("persist-{version:?}");
        let o = || {
            opts(&broker.url(), version, &id)
                .clean_start(false)
                .session_expiry(600)
        };
        let (c, _conn) = connect(o()).await;
        c.subscribe("away/#", QoS::ExactlyOnce).await.unwrap();
        c.disconnect().await.unwrap();
        let (p, _pconn) = connect(opts(&broker.url(), version, "p")).await;
        for i in 0..3 {
            p.publish("away/x", format!("m{i}"), QoS::ExactlyOnce, false)
                .await
                .unwrap();
        }
        let (c, mut conn) = connect(o()).await;
        assert!(conn.connack().session_present, "{version}");
        for i in 0..3 {
            let m = next_message(&mut conn).await;
            assert_eq!(m.payload, format!("m{i}").as_bytes(), "{version}");
        }
        c.disconnect().await.unwrap();
        p.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn v5_properties_travel() {
    let broker = Mosquitto::start();
    let (c, mut conn) = connect(opts(&broker.url(), ProtocolVersion::V5, "c")).await;
    c.subscribe("req", QoS::AtLeastOnce).await.unwrap();
    let mut m = mqtt_client::message("req", "ping", QoS::AtLeastOnce, false).unwrap();
    m.properties = PublishProperties {
        response_topic: Some(ByteStr::from_static("resp/1")),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        content_type: Some(ByteStr::from_static("text/plain")),
        user_properties: [(ByteStr::from_static("k"), ByteStr::from_static("v"))]
            .into_iter()
            .collect(),
        message_expiry_interval: Some(60),
        ..Default::default()
    }
    .into();
    c.publish_message(m).await.unwrap();
    let got = next_message(&mut conn).await;
    assert_eq!(got.properties.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&b"\x01\x02"[..])
    );
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.user_properties.len(), 1);
    assert!(got.properties.message_expiry_interval.is_some());
}

#[tokio::test]
async fn retained_messages() {
    let broker = Mosquitto::start();
    let (c, mut conn) = connect(opts(&broker.url(), ProtocolVersion::V3_1_1, "c")).await;
    c.publish("ret/a", "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    c.subscribe("ret/#", QoS::AtLeastOnce).await.unwrap();
    let m = next_message(&mut conn).await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"kept");
}

// 3.1.1 MQTT-3.1.2-23: with nothing else to send the client sends PINGREQ; a server
// that stops answering is detected and the client reconnects.
#[tokio::test]
async fn keep_alive_detects_a_silent_server() {
    let broker = Mosquitto::start();
    let proxy = mqtt_client::testing::Proxy::start(broker.addr()).await;
    let o = opts(&proxy.url(), ProtocolVersion::V3_1_1, "ka").keep_alive(1);
    let (_c, mut conn) = connect(o).await;
    assert!(matches!(
        next_state(&mut conn).await,
        Event::Connected { .. }
    ));
    // Idle for longer than the keep-alive: pings keep the connection up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(conn.try_next_event().is_none());
    proxy.stall_downstream(true);
    let ev = next_state(&mut conn).await;
    assert_eq!(
        ev,
        Event::Disconnected {
            reason: mqtt_client::DisconnectReason::KeepAliveTimeout
        }
    );
    proxy.stall_downstream(false);
    assert!(matches!(
        next_state(&mut conn).await,
        Event::Reconnecting { attempt: 1, .. }
    ));
    loop {
        if let Event::Connected { .. } = next_state(&mut conn).await {
            break;
        }
    }
}

// `on_packet` sees every packet the driver writes and reads, in order, including the
// ones the application never asks for (PUBACK, DISCONNECT).
#[tokio::test]
async fn on_packet_sees_every_packet_both_ways() {
    use std::sync::{Arc, Mutex};

    use mqtt_client::{PacketDirection, codec::PacketType};

    let broker = Mosquitto::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let o = opts(&broker.url(), ProtocolVersion::V3_1_1, "traced").on_packet(move |d, p| {
        log.lock().unwrap().push((d, p.packet_type()));
    });
    let (c, mut conn) = connect(o).await;
    c.subscribe("traced", QoS::AtLeastOnce).await.unwrap();
    c.publish("traced", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    next_message(&mut conn).await;
    c.disconnect().await.unwrap();
    use PacketDirection::{Received as R, Sent as S};
    use PacketType::*;
    let seen = seen.lock().unwrap().clone();
    // Our PUBACK to the broker's PUBLISH and its PUBACK to ours may come in either order.
    let mut middle = seen.get(4..8).unwrap().to_vec();
    middle.sort_by_key(|(d, t)| (*d == R, *t as u8));
    assert_eq!(
        seen.get(..4).unwrap(),
        [(S, Connect), (R, ConnAck), (S, Subscribe), (R, SubAck)]
    );
    assert_eq!(
        middle,
        [(S, Publish), (S, PubAck), (R, Publish), (R, PubAck)]
    );
    assert_eq!(seen.get(8..).unwrap(), [(S, Disconnect)]);
}
