//! The store seam (`mqtt_broker::store`) over real sockets: what a durable store is
//! told, what a broker started again with it finds, and what a failing store makes the
//! broker answer. The store is the test's own, implementing the public trait, its
//! records shared by two brokers started one after the other; the clients are rumqttc
//! (5.0 and 3.1.1).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use mqtt_broker::{
    Backends, Broker, Config,
    config::Listener,
    store::{RetainedRecord, SessionRecord, Store, StoreError, Stored},
};
use mqtt_codec::{ProtocolVersion, RetainHandling};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError,
    mqttbytes::{
        QoS,
        v5::{
            ConnectProperties, Filter, Packet, PubAckReason, Publish, PublishProperties,
            RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
        },
    },
};
use tokio::{sync::mpsc, time::timeout};

use crate::WAIT;

/// What the test store keeps, and whether it fails.
#[derive(Default)]
struct Records {
    retained: BTreeMap<String, RetainedRecord>,
    sessions: BTreeMap<String, SessionRecord>,
    /// Every write fails.
    fail: bool,
    /// `load` fails.
    fail_load: bool,
}

/// A store keeping its records in memory shared by every clone: a broker started again
/// with a clone finds what the last one left.
#[derive(Clone, Default)]
struct TestStore(Arc<Mutex<Records>>);

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestStore")
    }
}

impl TestStore {
    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.0.lock().unwrap()
    }

    fn fail(&self, fail: bool) {
        self.records().fail = fail;
    }

    fn retained(&self, topic: &str) -> Option<RetainedRecord> {
        self.records().retained.get(topic).cloned()
    }

    fn session(&self, client_id: &str) -> Option<SessionRecord> {
        self.records().sessions.get(client_id).cloned()
    }

    /// Waits until the records satisfy `f`.
    async fn until(&self, what: &str, f: impl Fn(&Records) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !f(&self.records()) {
            assert!(tokio::time::Instant::now() < deadline, "store: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn write(&self) -> Result<std::sync::MutexGuard<'_, Records>, StoreError> {
        let records = self.records();
        if records.fail {
            return Err(StoreError::new("the disk is full"));
        }
        Ok(records)
    }
}

impl Store for TestStore {
    fn load(&self) -> Result<Stored, StoreError> {
        let records = self.records();
        if records.fail_load {
            return Err(StoreError::new("the disk is on fire"));
        }
        let mut stored = Stored::default();
        stored.retained = records.retained.values().cloned().collect();
        stored.sessions = records.sessions.values().cloned().collect();
        Ok(stored)
    }

    fn retain(&self, topic: &str, message: Option<&RetainedRecord>) -> Result<(), StoreError> {
        let mut records = self.write()?;
        match message {
            Some(m) => {
                assert_eq!(m.message.topic, topic);
                records.retained.insert(topic.to_owned(), m.clone())
            }
            None => records.retained.remove(topic),
        };
        Ok(())
    }

    fn save_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut records = self.write()?;
        records
            .sessions
            .insert(session.client_id.to_string(), session.clone());
        Ok(())
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.write()?.sessions.remove(client_id);
        Ok(())
    }
}

/// A broker on an ephemeral loopback port, with `store`.
async fn start(store: &TestStore) -> (Broker, SocketAddr) {
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    let backends = Backends {
        store: Box::new(store.clone()),
        ..Backends::default()
    };
    let broker = Broker::start_with(config, backends)
        .await
        .expect("broker starts");
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

/// What a rumqttc 5.0 client was sent.
#[derive(Debug)]
enum Got {
    ConnAck { session_present: bool },
    PubAck(PubAckReason),
    SubAck(Vec<SubscribeReasonCode>),
    Publish(Box<Publish>),
}

/// A 5.0 client; with `session_expiry`, a persistent session (Clean Start 0).
fn options(id: &str, addr: SocketAddr, session_expiry: Option<u32>) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(expiry) = session_expiry {
        opts.set_clean_start(false);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(expiry);
        opts.set_connect_properties(props);
    }
    opts
}

/// Connects; returns the client, what it is sent (CONNACK first), and its task.
async fn connect(
    opts: MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Got>,
    tokio::task::JoinHandle<()>,
) {
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(drive(eventloop, tx));
    (client, rx, task)
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Got>) {
    loop {
        let got = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Got::ConnAck {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::PubAck(ack))) => Got::PubAck(ack.reason),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Got::SubAck(ack.return_codes),
            Ok(Event::Incoming(Packet::Publish(p))) => Got::Publish(Box::new(p)),
            Ok(_) => continue,
            // rumqttc reports a PUBACK or SUBACK with an error code as an error, and
            // stops.
            Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => {
                let _ = tx.send(Got::PubAck(reason));
                return;
            }
            Err(ConnectionError::MqttState(StateError::SubFail { reason })) => {
                let _ = tx.send(Got::SubAck(vec![reason]));
                return;
            }
            Err(_) => return,
        };
        let _ = tx.send(got);
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Got>) -> Got {
    timeout(WAIT, rx.recv())
        .await
        .expect("a packet in time")
        .expect("connection open")
}

async fn session_present(rx: &mut mpsc::UnboundedReceiver<Got>) -> bool {
    match next(rx).await {
        Got::ConnAck { session_present } => session_present,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn puback(rx: &mut mpsc::UnboundedReceiver<Got>) -> PubAckReason {
    match next(rx).await {
        Got::PubAck(reason) => reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn suback(rx: &mut mpsc::UnboundedReceiver<Got>) -> Vec<SubscribeReasonCode> {
    match next(rx).await {
        Got::SubAck(codes) => codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn publish(rx: &mut mpsc::UnboundedReceiver<Got>) -> Publish {
    match next(rx).await {
        Got::Publish(p) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<Got>) {
    if let Ok(Some(got)) = timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected {got:?}");
    }
}

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// Seconds from now to `at` (negative if past).
fn secs_left(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

// Retained messages outlive the broker: a broker started again with the store has
// them, one with a Message Expiry Interval with the time it has left; one that expired
// while no broker ran, and one deleted, do not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart() {
    let store = TestStore::default();
    let (broker, addr) = start(&store).await;
    let (p, mut prx, _t) = connect(options("keeper-pub", addr, None)).await;
    assert!(!session_present(&mut prx).await);
    for (topic, payload, props) in [
        ("keep/plain", "plain", None),
        ("keep/expiring", "expiring", Some(expiring(600))),
        ("keep/short", "short", Some(expiring(1))),
        ("keep/deleted", "deleted", None),
        ("keep/deleted", "", None),
    ] {
        match props {
            Some(props) => p
                .publish_with_properties(topic, QoS::AtLeastOnce, true, payload, props)
                .await
                .unwrap(),
            None => p
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .unwrap(),
        }
        // Acknowledged once the store was told.
        assert!(matches!(
            puback(&mut prx).await,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ));
    }
    let topics: Vec<String> = store.records().retained.keys().cloned().collect();
    assert_eq!(topics, ["keep/expiring", "keep/plain", "keep/short"]);
    let plain = store.retained("keep/plain").unwrap();
    assert_eq!(&plain.message.payload[..], b"plain");
    assert!(plain.message.retain);
    assert_eq!(plain.expires_at, None);
    let left = secs_left(store.retained("keep/expiring").unwrap().expires_at.unwrap());
    assert!((590..=600).contains(&left), "{left} s left");
    broker.shutdown().await;

    // keep/short expires while no broker runs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (broker, addr) = start(&store).await;
    assert_eq!(
        store.retained("keep/short"),
        None,
        "expired: removed at start"
    );
    let (s, mut srx, _t) = connect(options("keeper-sub", addr, None)).await;
    assert!(!session_present(&mut srx).await);
    s.subscribe("keep/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut srx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = publish(&mut srx).await;
        assert!(m.retain);
        let expiry = m.properties.and_then(|p| p.message_expiry_interval);
        got.push((String::from_utf8_lossy(&m.topic).into_owned(), expiry));
    }
    got.sort();
    assert_eq!(got[1], ("keep/plain".to_owned(), None));
    assert_eq!(got[0].0, "keep/expiring");
    assert!(
        matches!(got[0].1, Some(590..=600)),
        "the time it has left: {:?}",
        got[0].1
    );
    nothing(&mut srx).await;
    broker.shutdown().await;
}

// A persistent session outlives the broker: its subscriptions (options and Subscription
// Identifier included) are in the store; a broker started again routes to it while its
// client is away, and the client finds it with Session Present 1 and the message. A
// session that ends with its connection leaves no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_survives_a_restart() {
    let store = TestStore::default();
    let (broker, addr) = start(&store).await;
    let (k, mut krx, _t) = connect(options("keeper", addr, Some(300))).await;
    assert!(!session_present(&mut krx).await);
    // Created: recorded at once, with no subscription and no deadline (connected).
    let record = store
        .session("keeper")
        .expect("a record for a new persistent session");
    assert_eq!(
        (record.version, record.session_expiry, record.expires_at),
        (ProtocolVersion::V5, 300, None)
    );
    assert!(record.subscriptions.is_empty());
    let filter = Filter {
        path: "news/#".into(),
        qos: QoS::AtLeastOnce,
        nolocal: true,
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::OnNewSubscribe,
    };
    let props = SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    k.subscribe_many_with_properties([filter], props)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut krx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let record = store.session("keeper").unwrap();
    let [sub] = &record.subscriptions[..] else {
        panic!("{record:?}")
    };
    assert_eq!(sub.filter.as_str(), "news/#");
    assert_eq!(sub.options.qos, mqtt_codec::QoS::AtLeastOnce);
    assert!(sub.options.no_local && sub.options.retain_as_published);
    assert_eq!(sub.options.retain_handling, RetainHandling::SendIfNew);
    assert_eq!(sub.identifier.map(|id| id.get()), Some(7));

    // A clean session costs the store nothing.
    let (c, mut crx, _t2) = connect(options("passer", addr, None)).await;
    assert!(!session_present(&mut crx).await);
    c.subscribe("news/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut crx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(store.session("passer"), None);

    // Offline: the record says when the session expires.
    k.disconnect().await.unwrap();
    store
        .until("the offline session's deadline", |r| {
            r.sessions["keeper"].expires_at.is_some()
        })
        .await;
    let left = secs_left(store.session("keeper").unwrap().expires_at.unwrap());
    assert!((290..=300).contains(&left), "{left} s left");
    broker.shutdown().await;

    let (broker, addr) = start(&store).await;
    let (p, mut prx, _t3) = connect(options("news-pub", addr, None)).await;
    assert!(!session_present(&mut prx).await);
    p.publish("news/today", QoS::AtLeastOnce, false, "fresh")
        .await
        .unwrap();
    // The restored subscription matched: not 0x10 No matching subscribers.
    assert_eq!(puback(&mut prx).await, PubAckReason::Success);
    let (_k, mut krx, _t4) = connect(options("keeper", addr, Some(300))).await;
    assert!(session_present(&mut krx).await, "Session Present 1");
    let m = publish(&mut krx).await;
    assert_eq!(
        (&m.topic[..], &m.payload[..]),
        (&b"news/today"[..], &b"fresh"[..])
    );
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(
        m.properties.map(|p| p.subscription_identifiers),
        Some(vec![7])
    );
    // Connected again: no deadline.
    store
        .until("the deadline cleared", |r| {
            r.sessions["keeper"].expires_at.is_none()
        })
        .await;
    assert_eq!(store.session("passer"), None);
    broker.shutdown().await;
}

// A 3.1.1 persistent session (Clean Session 0) too; Clean Session 1 later ends it, and
// its record goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_persistent_session_survives_a_restart_and_clean_session_ends_it() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    /// Connects and returns Session Present, the client and its incoming packets.
    async fn connect4(
        addr: SocketAddr,
        clean: bool,
    ) -> (bool, AsyncClient, mpsc::UnboundedReceiver<Packet>) {
        let mut opts = MqttOptions::new("keeper4", "127.0.0.1", addr.port());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(p) = event {
                    let _ = tx.send(p);
                }
            }
        });
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Packet::ConnAck(ack) => (ack.session_present, client, rx),
            other => panic!("{other:?}"),
        }
    }
    let store = TestStore::default();
    let (broker, addr) = start(&store).await;
    let (present, k, mut rx) = connect4(addr, false).await;
    assert!(!present);
    k.subscribe("old/#", QoS::AtLeastOnce).await.unwrap();
    assert!(matches!(
        timeout(WAIT, rx.recv()).await.unwrap(),
        Some(Packet::SubAck(_))
    ));
    let record = store.session("keeper4").unwrap();
    assert_eq!(record.version, ProtocolVersion::V3_1_1);
    assert_eq!(record.session_expiry, u32::MAX, "never expires");
    assert_eq!(record.subscriptions.len(), 1);
    k.disconnect().await.unwrap();
    broker.shutdown().await;

    let (broker, addr) = start(&store).await;
    let (p, mut prx, _t) = connect(options("old-pub", addr, None)).await;
    assert!(!session_present(&mut prx).await);
    p.publish(
        "old/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "kept",
    )
    .await
    .unwrap();
    assert_eq!(puback(&mut prx).await, PubAckReason::Success);
    let (present, k, mut rx) = connect4(addr, false).await;
    assert!(present, "Session Present 1");
    match timeout(WAIT, rx.recv()).await.unwrap() {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"kept"),
        other => panic!("{other:?}"),
    }
    k.disconnect().await.unwrap();
    let (present, _k, _rx) = connect4(addr, true).await;
    assert!(!present);
    store
        .until("the ended session's record removed", |r| {
            !r.sessions.contains_key("keeper4")
        })
        .await;
    broker.shutdown().await;
}

// A store that fails: a retained PUBLISH is refused with PUBACK 0x80 and neither
// retained nor routed; a persistent session's SUBSCRIBE gets SUBACK 0x80 and its filter
// never reaches the index; what does not touch the store (a PUBLISH that is not
// retained, a clean session's SUBSCRIBE) goes on. Once the store works again, so does
// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_answered_with_0x80_and_changes_nothing() {
    let store = TestStore::default();
    let (broker, addr) = start(&store).await;
    store.fail(true);
    let (w, mut wrx, _t) = connect(options("watcher", addr, Some(300))).await;
    assert!(!session_present(&mut wrx).await);
    w.subscribe("f/#", QoS::AtLeastOnce).await.unwrap();
    // (rumqttc closes its connection on a refusal.)
    assert_eq!(suback(&mut wrx).await, [SubscribeReasonCode::Unspecified]);

    let (p, mut prx, _t2) = connect(options("failing-pub", addr, None)).await;
    assert!(!session_present(&mut prx).await);
    // Not in the index: nobody subscribes.
    p.publish("f/x", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    assert_eq!(puback(&mut prx).await, PubAckReason::NoMatchingSubscribers);
    // A clean session's SUBSCRIBE does not touch the store.
    let (c, mut crx, _t3) = connect(options("clean", addr, None)).await;
    assert!(!session_present(&mut crx).await);
    c.subscribe("f/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut crx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    p.publish("f/r", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    assert_eq!(puback(&mut prx).await, PubAckReason::UnspecifiedError);
    // Not routed, not retained.
    nothing(&mut crx).await;
    let (c2, mut c2rx, _t4) = connect(options("late", addr, None)).await;
    assert!(!session_present(&mut c2rx).await);
    c2.subscribe("f/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut c2rx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    nothing(&mut c2rx).await;
    assert!(store.records().retained.is_empty() && store.records().sessions.is_empty());

    store.fail(false);
    let (w, mut wrx, _t6) = connect(options("watcher", addr, Some(300))).await;
    assert!(
        session_present(&mut wrx).await,
        "the session, without the refused filter"
    );
    assert!(store.session("watcher").unwrap().subscriptions.is_empty());
    w.subscribe("f/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut wrx).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(store.session("watcher").unwrap().subscriptions.len(), 1);
    let (p, mut prx, _t5) = connect(options("working-pub", addr, None)).await;
    assert!(!session_present(&mut prx).await);
    p.publish("f/r", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    assert_eq!(puback(&mut prx).await, PubAckReason::Success);
    assert_eq!(&publish(&mut wrx).await.payload[..], b"retained");
    assert!(store.retained("f/r").is_some());
    broker.shutdown().await;
}

// 3.1.1 has no way to say a PUBLISH failed: a retained one the store refuses is
// acknowledged all the same ([MQTT-3.3.5-2]) and dropped; a SUBSCRIBE gets 0x80
// Failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_and_3_1_1() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
    let store = TestStore::default();
    let (broker, addr) = start(&store).await;
    store.fail(true);
    let mut opts = MqttOptions::new("failing4", "127.0.0.1", addr.port());
    opts.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(p) = event {
                let _ = tx.send(p);
            }
        }
    });
    async fn recv(rx: &mut mpsc::UnboundedReceiver<Packet>) -> Packet {
        timeout(WAIT, rx.recv()).await.unwrap().unwrap()
    }
    assert!(matches!(recv(&mut rx).await, Packet::ConnAck(_)));
    client.subscribe("g/#", QoS::AtLeastOnce).await.unwrap();
    match recv(&mut rx).await {
        Packet::SubAck(ack) => assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure]),
        other => panic!("{other:?}"),
    }
    client
        .publish("g/r", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    assert!(matches!(recv(&mut rx).await, Packet::PubAck(_)));
    assert!(store.records().retained.is_empty());
    broker.shutdown().await;
}

// A store that cannot be read stops the broker from starting, with an error that names
// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_read_stops_the_start() {
    let store = TestStore::default();
    store.records().fail_load = true;
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    let backends = Backends {
        store: Box::new(store),
        ..Backends::default()
    };
    let e = Broker::start_with(config, backends).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("TestStore") && text.contains("the disk is on fire"),
        "{text}"
    );
}
