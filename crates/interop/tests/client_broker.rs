//! mqtt-client against mqtt-broker, in one process, over 127.0.0.1.

use std::time::Duration;

use mqtt_broker::{Broker, Config, config::Listener};
use mqtt_client::{
    Client, ConnectOptions, Connection, Event, ProtocolVersion, QoS, ReconnectOptions,
    testing::Proxy,
};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];
const T: Duration = Duration::from_secs(10);

async fn broker() -> (Broker, std::net::SocketAddr) {
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

fn opts(url: &str, version: ProtocolVersion, id: &str) -> ConnectOptions {
    ConnectOptions::from_url(url)
        .unwrap()
        .version(version)
        .client_id(id)
        .reconnect(ReconnectOptions {
            enabled: true,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: Some(50),
        })
}

async fn connect(o: ConnectOptions) -> (Client, Connection) {
    tokio::time::timeout(T, mqtt_client::connect(o))
        .await
        .expect("in time")
        .expect("connected")
}

async fn next(conn: &mut Connection) -> mqtt_client::Message {
    tokio::time::timeout(T, conn.next_message())
        .await
        .expect("a message in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_and_qos() {
    let (broker, addr) = broker().await;
    let url = format!("mqtt://{addr}");
    for version in VERSIONS {
        let (sub, mut sub_conn) = connect(opts(&url, version, &format!("s-{version:?}"))).await;
        let (publ, _pub_conn) = connect(opts(&url, version, &format!("p-{version:?}"))).await;
        let granted = sub.subscribe("i/#", QoS::ExactlyOnce).await.unwrap();
        assert_eq!(granted, QoS::ExactlyOnce);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let code = publ
                .publish("i/x", format!("{qos:?}"), qos, false)
                .await
                .unwrap();
            assert!(code.is_success(), "{version} {qos:?}: {code}");
            let m = next(&mut sub_conn).await;
            assert_eq!((m.topic.as_str(), m.qos), ("i/x", qos), "{version}");
            assert_eq!(m.payload, format!("{qos:?}").as_bytes());
        }
        sub.disconnect().await.unwrap();
        publ.disconnect().await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_and_retained() {
    let (broker, addr) = broker().await;
    let url = format!("mqtt://{addr}");
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let id = format!("durable-{version:?}");
        let o = opts(&url, version, &id)
            .clean_start(false)
            .session_expiry(600);
        let (sub, _conn) = connect(o.clone()).await;
        sub.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        sub.disconnect().await.unwrap();
        let (publ, _pc) = connect(opts(&url, version, &format!("pp-{version:?}"))).await;
        publ.publish("q/1", "queued", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        publ.publish("q/r", "kept", QoS::AtLeastOnce, true)
            .await
            .unwrap();
        let (_sub, mut conn) = connect(o).await;
        let mut got = [next(&mut conn).await, next(&mut conn).await];
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(got[0].payload, b"queued"[..]);
        assert_eq!(got[1].payload, b"kept"[..]);
    }
    broker.shutdown().await;
}

// The connection cut in the middle of QoS 2 exchanges, through a proxy: every message
// arrives exactly once once the client has reconnected and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_qos2_exactly_once() {
    let (broker, addr) = broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let proxy = Proxy::start(addr).await;
        let (sub, mut sub_conn) = connect(opts(
            &format!("mqtt://{addr}"),
            version,
            &format!("x-{version:?}"),
        ))
        .await;
        sub.subscribe("x/#", QoS::ExactlyOnce).await.unwrap();
        let o = opts(&proxy.url(), version, &format!("cut-{version:?}"))
            .clean_start(false)
            .session_expiry(600);
        let (publ, _pconn) = connect(o).await;
        let n = 40;
        let mut deliveries = Vec::new();
        for i in 0..n {
            let m = mqtt_client::message("x/y", format!("{i}"), QoS::ExactlyOnce, false).unwrap();
            deliveries.push(publ.enqueue(m).await.unwrap());
            if i == n / 2 {
                proxy.cut();
            }
        }
        for d in deliveries {
            tokio::time::timeout(T, d)
                .await
                .expect("completed")
                .unwrap();
        }
        let mut seen = std::collections::HashMap::new();
        while seen.len() < n {
            let m = next(&mut sub_conn).await;
            *seen
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_insert(0) += 1;
        }
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), sub_conn.next_message()).await
        {
            *seen
                .entry(String::from_utf8(m.payload.to_vec()).unwrap())
                .or_insert(0) += 1;
        }
        assert!(seen.values().all(|&c| c == 1), "{version}: {seen:?}");
        assert!(proxy.accepted() > 1, "the connection was really cut");
        sub.disconnect().await.unwrap();
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_and_takeover() {
    let (broker, addr) = broker().await;
    let url = format!("mqtt://{addr}");
    let (w, mut wconn) = connect(opts(&url, ProtocolVersion::V5, "watcher")).await;
    w.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
    let will = mqtt_client::Will {
        topic: "wills/dup".try_into().unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let no_reconnect = ReconnectOptions {
        enabled: false,
        ..ReconnectOptions::default()
    };
    let (_first, mut first_conn) = connect(
        opts(&url, ProtocolVersion::V5, "dup")
            .will(will)
            .reconnect(no_reconnect.clone()),
    )
    .await;
    // A second connection with the same id takes the session over; the first is told why.
    let (_second, _c2) =
        connect(opts(&url, ProtocolVersion::V5, "dup").reconnect(no_reconnect)).await;
    let ended = tokio::time::timeout(T, async {
        loop {
            match first_conn.next_event().await {
                Some(Event::Disconnected { .. }) | None => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first connection was closed");
    // The first connection's session (Session Expiry 0) ends with the takeover, so its
    // will is published, as Mosquitto does.
    let m = next(&mut wconn).await;
    assert_eq!(m.topic.as_str(), "wills/dup");
    broker.shutdown().await;
}
