//! rumqttc speaking MQTT 5.0.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError,
    mqttbytes::{
        QoS,
        v5::{Filter, Packet, Publish, PublishProperties, RetainForwardRule, SubscribeProperties},
    },
};
use tokio::{sync::mpsc, time::timeout};

use crate::{WAIT, broker};

enum Got {
    Publish(Box<Publish>),
    Disconnect(u8),
}

async fn client(
    id: &str,
    port: u16,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Got>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    client_with(opts).await
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Got>,
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
                let _ = tx.send(Got::Publish(Box::new(p)));
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                let _ = tx.send(Got::Disconnect(d.reason_code as u8));
            }
            Ok(_) => {}
            // rumqttc reports a DISCONNECT from the server as an error.
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => {
                let _ = tx.send(Got::Disconnect(reason_code as u8));
                return;
            }
            Err(_) => return,
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Got>) -> Publish {
    match timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("open")
    {
        Got::Publish(p) => *p,
        Got::Disconnect(code) => panic!("disconnected with {code:#x}"),
    }
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<Got>, wait: Duration) {
    if let Ok(Some(Got::Publish(p))) = timeout(wait, rx.recv()).await {
        panic!("unexpected message on {:?}", p.topic);
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

// 5.0 MQTT-3.3.2-4, 5.0 MQTT-3.3.2-15, 5.0 MQTT-3.3.2-16, 5.0 MQTT-3.3.2-17,
// 5.0 MQTT-3.3.2-18, 5.0 MQTT-3.3.2-20: properties are forwarded unaltered, user
// properties in order (request/response passes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_pass_through_in_order() {
    let (broker, addr) = broker().await;
    let (sub, mut rx, _t) = client("sub", addr.port()).await;
    let (publ, _prx, _t2) = client("pub", addr.port()).await;
    sub.subscribe("req/#", QoS::AtLeastOnce).await.unwrap();
    settle().await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publ.publish_with_properties("req/x", QoS::AtLeastOnce, false, "ping", props.clone())
        .await
        .unwrap();
    let got = recv(&mut rx).await;
    let p = got.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(matches!(p.message_expiry_interval, Some(599 | 600)));
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties);
    assert_eq!(p.content_type, props.content_type);
    broker.shutdown().await;
}

// 5.0 MQTT-3.8.3-3: No Local; 5.0 MQTT-3.3.4-3 / MQTT-3.3.4-4: subscription identifiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_and_subscription_identifiers() {
    let (broker, addr) = broker().await;
    let (me, mut rx, _t) = client("me", addr.port()).await;
    let mut filter = Filter::new("chat/room", QoS::AtLeastOnce);
    filter.nolocal = true;
    me.subscribe_many([filter]).await.unwrap();
    me.subscribe_with_properties(
        "chat/#",
        QoS::AtMostOnce,
        SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        },
    )
    .await
    .unwrap();
    settle().await;
    me.publish("chat/room", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    // Only the `chat/#` subscription matches my own message.
    let got = recv(&mut rx).await;
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
    let (other, _orx, _t2) = client("other", addr.port()).await;
    other
        .publish("chat/room", QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    // Both subscriptions match: one copy at the higher QoS with the one identifier.
    let got = recv(&mut rx).await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
    nothing(&mut rx, Duration::from_millis(300)).await;
    broker.shutdown().await;
}

// Shared subscriptions (5.0, 4.8.2): each message goes to one member of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_once_per_message() {
    let (broker, addr) = broker().await;
    let (a, mut rx_a, _t) = client("worker-a", addr.port()).await;
    let (b, mut rx_b, _t2) = client("worker-b", addr.port()).await;
    a.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    b.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    settle().await;
    let (publ, _prx, _t3) = client("pub", addr.port()).await;
    for i in 0..20 {
        publ.publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "job")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        tokio::select! {
            Some(Got::Publish(p)) = rx_a.recv() => seen.push(("a", p.topic)),
            Some(Got::Publish(p)) = rx_b.recv() => seen.push(("b", p.topic)),
            () = tokio::time::sleep(WAIT) => panic!("only {} of 20 delivered", seen.len()),
        }
    }
    let mut topics: Vec<_> = seen.iter().map(|(_, t)| t.clone()).collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 20, "each message once");
    assert!(
        seen.iter().any(|(w, _)| *w == "a") && seen.iter().any(|(w, _)| *w == "b"),
        "both members get work"
    );
    nothing(&mut rx_a, Duration::from_millis(200)).await;
    broker.shutdown().await;
}

// 5.0 MQTT-3.1.4-3: the old connection gets DISCONNECT 0x8E (Session taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_sends_session_taken_over() {
    let (broker, addr) = broker().await;
    let (_first, mut rx1, _t1) = client("dup", addr.port()).await;
    let (_second, _rx2, _t2) = client("dup", addr.port()).await;
    let code = loop {
        match timeout(WAIT, rx1.recv()).await.expect("in time") {
            Some(Got::Disconnect(code)) => break code,
            Some(Got::Publish(_)) => {}
            None => panic!("closed without DISCONNECT"),
        }
    };
    assert_eq!(code, 0x8E);
    broker.shutdown().await;
}

// Retain Handling 2 sends no retained messages; Retain As Published keeps the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published() {
    let (broker, addr) = broker().await;
    let (publ, _prx, _t) = client("pub", addr.port()).await;
    publ.publish("r/x", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    settle().await;
    let (sub, mut rx, _t2) = client("sub", addr.port()).await;
    let mut never = Filter::new("r/#", QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    never.preserve_retain = true;
    sub.subscribe_many([never]).await.unwrap();
    nothing(&mut rx, Duration::from_millis(300)).await;
    publ.publish("r/x", QoS::AtLeastOnce, true, "again")
        .await
        .unwrap();
    let got = recv(&mut rx).await;
    assert!(got.retain, "retain as published");
    broker.shutdown().await;
}

// Shutdown: 5.0 clients get DISCONNECT 0x8B (Server shutting down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_server_shutting_down() {
    let (broker, addr) = broker().await;
    let (_c, mut rx, _t) = client("c", addr.port()).await;
    broker.shutdown().await;
    let code = loop {
        match timeout(WAIT, rx.recv()).await.expect("in time") {
            Some(Got::Disconnect(code)) => break code,
            Some(Got::Publish(_)) => {}
            None => panic!("closed without DISCONNECT"),
        }
    };
    assert_eq!(code, 0x8B);
}

async fn client_with(
    opts: MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Got>,
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

fn will_options(id: &str, port: u16, delay: u32) -> MqttOptions {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWill, LastWillProperties};
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_start(false);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(60);
    opts.set_connect_properties(props);
    let will_props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    opts.set_last_will(LastWill::new(
        format!("will/{id}"),
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(will_props),
    ));
    opts
}

// 5.0 MQTT-3.1.3-9: the will waits for its delay, and a reconnection within the delay
// cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval() {
    let (broker, addr) = broker().await;
    let (watcher, mut rx, _t) = client("watcher", addr.port()).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
    settle().await;

    let (_c, _r, task) = client_with(will_options("delayed", addr.port(), 1)).await;
    let lost = tokio::time::Instant::now();
    task.abort();
    let will = recv(&mut rx).await;
    assert_eq!(will.topic, "will/delayed");
    assert!(
        lost.elapsed() >= Duration::from_millis(900),
        "published before its delay: {:?}",
        lost.elapsed()
    );

    let (_c, _r, task) = client_with(will_options("returns", addr.port(), 2)).await;
    task.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_c2, _r2, _t2) = client_with(will_options("returns", addr.port(), 2)).await;
    nothing(&mut rx, Duration::from_millis(2500)).await;
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.2-5, 5.0 MQTT-3.3.2-6 for retained messages: an expired retained message
// is not delivered; a live one carries the time it has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_expiry() {
    let (broker, addr) = broker().await;
    let (publ, _prx, _t) = client("pub", addr.port()).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(100),
        ..Default::default()
    };
    publ.publish_with_properties("exp/short", QoS::AtLeastOnce, true, "s", short)
        .await
        .unwrap();
    publ.publish_with_properties("exp/long", QoS::AtLeastOnce, true, "l", long)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (sub, mut rx, _t2) = client("sub", addr.port()).await;
    sub.subscribe("exp/#", QoS::AtLeastOnce).await.unwrap();
    let got = recv(&mut rx).await;
    assert_eq!(got.topic, "exp/long");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!((97..=99).contains(&left), "{left}");
    nothing(&mut rx, Duration::from_millis(300)).await;
    broker.shutdown().await;
}
