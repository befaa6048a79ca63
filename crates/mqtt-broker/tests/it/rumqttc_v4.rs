//! rumqttc speaking MQTT 3.1.1.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::{sync::mpsc, time::timeout};

use crate::{WAIT, broker, broker_with};

/// A connected client whose incoming PUBLISH packets arrive on a channel.
async fn client(
    id: &str,
    port: u16,
    clean: bool,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Publish>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    start(opts).await
}

async fn start(
    opts: MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Publish>,
    tokio::task::JoinHandle<()>,
) {
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drive(eventloop, tx, ready_tx));
    timeout(WAIT, ready_rx)
        .await
        .expect("CONNACK in time")
        .expect("connected");
    (client, rx, task)
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<rumqttc::Publish>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(p);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<rumqttc::Publish>) -> rumqttc::Publish {
    timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("channel open")
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<rumqttc::Publish>, wait: Duration) {
    if let Ok(Some(p)) = timeout(wait, rx.recv()).await {
        panic!("unexpected message on {}", p.topic);
    }
}

/// Waits until a subscription has been acknowledged by publishing a probe.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

// 3.1.1 MQTT-3.3.4-1: each QoS is delivered with its flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_each_qos() {
    let (broker, addr) = broker().await;
    let (sub, mut rx, _t1) = client("sub", addr.port(), true).await;
    let (publ, _prx, _t2) = client("pub", addr.port(), true).await;
    sub.subscribe("sensors/+/temp", QoS::ExactlyOnce)
        .await
        .unwrap();
    settle().await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("sensors/{i}/temp"), qos, false, vec![i as u8; 3])
            .await
            .unwrap();
        let got = recv(&mut rx).await;
        assert_eq!(got.topic, format!("sensors/{i}/temp"));
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], &[i as u8; 3]);
    }
    // Non-matching topics are not delivered.
    publ.publish("sensors/1/humidity", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    nothing(&mut rx, Duration::from_millis(300)).await;
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.3.1-5 .. 3.1.1 MQTT-3.3.1-11: retained messages stored, replaced, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages() {
    let (broker, addr) = broker().await;
    let (publ, _prx, _t) = client("pub", addr.port(), true).await;
    publ.publish("config/a", QoS::AtLeastOnce, true, "v1")
        .await
        .unwrap();
    publ.publish("config/a", QoS::AtLeastOnce, true, "v2")
        .await
        .unwrap();
    publ.publish("config/b", QoS::AtLeastOnce, true, "b")
        .await
        .unwrap();
    settle().await;
    let (sub, mut rx, _t2) = client("sub", addr.port(), true).await;
    sub.subscribe("config/#", QoS::AtLeastOnce).await.unwrap();
    let mut got = [recv(&mut rx).await, recv(&mut rx).await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (&got[0].topic[..], &got[0].payload[..], got[0].retain),
        ("config/a", &b"v2"[..], true)
    );
    assert_eq!(
        (&got[1].topic[..], &got[1].payload[..]),
        ("config/b", &b"b"[..])
    );
    // An empty retained payload deletes.
    publ.publish("config/a", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    // Live delivery of that empty message, retain flag cleared for a live subscription.
    let live = recv(&mut rx).await;
    assert!(!live.retain);
    settle().await;
    let (sub2, mut rx2, _t3) = client("sub2", addr.port(), true).await;
    sub2.subscribe("config/#", QoS::AtLeastOnce).await.unwrap();
    let only = recv(&mut rx2).await;
    assert_eq!(only.topic, "config/b");
    nothing(&mut rx2, Duration::from_millis(300)).await;
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-8: the will is published when the connection drops without DISCONNECT;
// 3.1.1 MQTT-3.1.2-10: not after a normal DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_lost_connection_only() {
    let (broker, addr) = broker().await;
    let (watcher, mut rx, _t) = client("watcher", addr.port(), true).await;
    watcher
        .subscribe("status/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    settle().await;

    let mut opts = MqttOptions::new("dies", "127.0.0.1", addr.port());
    opts.set_last_will(LastWill::new(
        "status/dies",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (_c, _r, task) = start(opts).await;
    task.abort(); // drops the socket: no DISCONNECT
    let will = recv(&mut rx).await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        ("status/dies", &b"gone"[..])
    );

    let mut opts = MqttOptions::new("leaves", "127.0.0.1", addr.port());
    opts.set_last_will(LastWill::new(
        "status/leaves",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _r, _task) = start(opts).await;
    c.disconnect().await.unwrap();
    nothing(&mut rx, Duration::from_millis(500)).await;
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.2-4, 3.1.1 MQTT-3.1.2-5: a persistent session keeps its subscriptions and
// queues QoS 1/2 messages while the client is away; 3.1.1 MQTT-3.2.2-2: Session Present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_while_away() {
    let (broker, addr) = broker().await;
    let (sub, _rx, task) = client("durable", addr.port(), false).await;
    sub.subscribe("jobs/#", QoS::AtLeastOnce).await.unwrap();
    settle().await;
    sub.disconnect().await.unwrap();
    let _ = timeout(WAIT, task).await;

    let (publ, _prx, _t) = client("pub", addr.port(), true).await;
    for i in 0..5 {
        publ.publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "work")
            .await
            .unwrap();
    }
    publ.publish("jobs/q0", QoS::AtMostOnce, false, "dropped while away")
        .await
        .unwrap();
    settle().await;

    let (_sub, mut rx, _t2) = client("durable", addr.port(), false).await;
    for i in 0..5 {
        assert_eq!(recv(&mut rx).await.topic, format!("jobs/{i}"));
    }
    nothing(&mut rx, Duration::from_millis(300)).await;
    broker.shutdown().await;
}

// 3.1.1 MQTT-3.1.4-2: a second connection with the same client id takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover() {
    let (broker, addr) = broker().await;
    let (_first, _rx1, task1) = client("same", addr.port(), true).await;
    let (second, mut rx2, _t2) = client("same", addr.port(), true).await;
    // The first connection is closed by the broker.
    timeout(WAIT, task1)
        .await
        .expect("first connection closed")
        .ok();
    second.subscribe("t", QoS::AtLeastOnce).await.unwrap();
    settle().await;
    second
        .publish("t", QoS::AtLeastOnce, false, "still works")
        .await
        .unwrap();
    assert_eq!(&recv(&mut rx2).await.payload[..], b"still works");
    broker.shutdown().await;
}

// 3.1.1 MQTT-4.7.2-1: wildcards at the first level do not match `$SYS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics() {
    let (broker, addr) = broker().await;
    let (all, mut rx_all, _t) = client("all", addr.port(), true).await;
    all.subscribe("#", QoS::AtMostOnce).await.unwrap();
    let (sys, mut rx_sys, _t2) = client("sys", addr.port(), true).await;
    sys.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await
        .unwrap();
    // The retained value may predate these clients; the next update counts them.
    loop {
        let got = recv(&mut rx_sys).await;
        let connected: usize = std::str::from_utf8(&got.payload).unwrap().parse().unwrap();
        if connected >= 2 {
            break;
        }
    }
    sys.subscribe("$SYS/broker/load/messages/received/1min", QoS::AtMostOnce)
        .await
        .unwrap();
    loop {
        let got = recv(&mut rx_sys).await;
        if got.topic.starts_with("$SYS/broker/load/") {
            let rate: f64 = std::str::from_utf8(&got.payload).unwrap().parse().unwrap();
            assert!(rate >= 0.0);
            break;
        }
    }
    nothing(&mut rx_all, Duration::from_millis(1500)).await;
    broker.shutdown().await;
}

// A malformed packet closes only its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_does_not_disturb_others() {
    let (broker, addr) = broker().await;
    let (c, mut rx, _t) = client("good", addr.port(), true).await;
    c.subscribe("ok", QoS::AtLeastOnce).await.unwrap();
    settle().await;
    for garbage in [
        &b"\x10\xff\xff\xff\xff\xff"[..],
        b"\x00\x00",
        b"\x30\x05\x00\x03a/#",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, garbage)
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "connection closed");
    }
    c.publish("ok", QoS::AtLeastOnce, false, "fine")
        .await
        .unwrap();
    assert_eq!(&recv(&mut rx).await.payload[..], b"fine");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_server_busy() {
    let (broker, addr) = broker_with(|c| c.limits.max_connections = 1).await;
    let (_c, _rx, _t) = client("one", addr.port(), true).await;
    let (client2, mut eventloop) =
        AsyncClient::new(MqttOptions::new("two", "127.0.0.1", addr.port()), 10);
    let err = timeout(WAIT, async {
        loop {
            if let Err(e) = eventloop.poll().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        err.to_string().contains("ServiceUnavailable") || err.to_string().contains("unavailable"),
        "{err}"
    );
    drop(client2);
    broker.shutdown().await;
}

// A wildcard subscription over far more retained messages than a session's queue holds
// gets every one of them, streamed as the subscriber acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_larger_than_the_queue_is_streamed_whole() {
    let (broker, addr) = broker_with(|c| {
        c.limits.max_queued_messages = 50;
        c.limits.max_inflight = 10;
    })
    .await;
    let n = 2000;
    let mut opts = MqttOptions::new("loader", "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(200);
    let (publ, _prx, _t) = start(opts).await;
    for i in 0..n {
        publ.publish(
            format!("fleet/{i}/state"),
            QoS::AtLeastOnce,
            true,
            format!("{i}"),
        )
        .await
        .unwrap();
    }
    // Wait until the last one is stored.
    let (probe, mut probe_rx, _t2) = client("probe", addr.port(), true).await;
    probe
        .subscribe(format!("fleet/{}/state", n - 1), QoS::AtMostOnce)
        .await
        .unwrap();
    recv(&mut probe_rx).await;

    let (sub, mut rx, _t3) = client("fleet-watcher", addr.port(), true).await;
    sub.subscribe("fleet/#", QoS::AtLeastOnce).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let m = recv(&mut rx).await;
        assert!(m.retain);
        seen.insert(m.topic);
    }
    assert_eq!(seen.len(), n);
    broker.shutdown().await;
}

// The same across every shard of the retained store: a filter starting with a wildcard
// streams topics of many first levels through a small queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_wildcard_first_level_streams_every_shard() {
    let (broker, addr) = broker_with(|c| {
        c.limits.max_queued_messages = 20;
        c.limits.max_inflight = 5;
    })
    .await;
    let n = 300;
    let mut opts = MqttOptions::new("loader2", "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    let (publ, _prx, _t) = start(opts).await;
    for i in 0..n {
        publ.publish(format!("site{i}/status"), QoS::AtLeastOnce, true, "up")
            .await
            .unwrap();
    }
    let (probe, mut probe_rx, _t2) = client("probe2", addr.port(), true).await;
    probe
        .subscribe(format!("site{}/status", n - 1), QoS::AtMostOnce)
        .await
        .unwrap();
    recv(&mut probe_rx).await;
    let (sub, mut rx, _t3) = client("all-sites", addr.port(), true).await;
    sub.subscribe("+/status", QoS::AtLeastOnce).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        seen.insert(recv(&mut rx).await.topic);
    }
    nothing(&mut rx, Duration::from_millis(200)).await;
    broker.shutdown().await;
}
