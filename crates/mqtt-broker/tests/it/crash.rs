//! The crash harness (issue 16): persistent-session rumqttc publishers (one QoS 1, one
//! QoS 2) and a persistent paho-mqtt (Python) subscriber at QoS 2 while the
//! `mqtt-broker` binary, in `[persistence] mode = "sync"`, is SIGKILLed at random
//! moments and started again on the same port and file. The checker then proves that
//! every message a publisher saw acknowledged (PUBACK, PUBREC) reached the subscriber's
//! application, that no QoS 2 message reached it twice, and that each publisher's
//! messages came in order (but for those the publisher itself had to send again).
//!
//! The subscriber is paho because it is a conforming QoS 2 receiver across
//! reconnections: it hands a QoS 2 message to the application once, at PUBREL, and
//! answers a PUBREL it does not know with PUBCOMP. rumqttc 0.24 forgets its QoS 2
//! receiving state when it reconnects and then drops the connection on the PUBREL a
//! broker must send again ([MQTT-4.4.0-1]; bytebeamio/rumqtt#664), so it never gets
//! past the first restart that catches an exchange between PUBREC and PUBCOMP.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use rumqttc::{Event, Outgoing, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::durable::{client, config, free_port, kill, scratch, start};

/// Messages per publisher.
const MESSAGES: u32 = 1000;
/// Kills.
const KILLS: u32 = 12;

/// What a publisher learnt: which of its messages were acknowledged, and which it sent
/// more than once.
#[derive(Default)]
struct Published {
    acked: BTreeSet<u32>,
    resent: HashSet<u32>,
}

async fn publisher(name: &'static str, qos: QoS, port: u16) -> Arc<Mutex<Published>> {
    let (client, mut rx, _task) = client(name, port, false);
    let state = Arc::new(Mutex::new(Published::default()));
    let seen = Arc::clone(&state);
    tokio::spawn(async move {
        // Packet identifier -> sequence number of the message it carries.
        let mut inflight: HashMap<u16, u32> = HashMap::new();
        let mut next_new = 0u32;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(&seq) = inflight.get(&pkid) {
                        seen.lock().unwrap().resent.insert(seq);
                    } else {
                        inflight.insert(pkid, next_new);
                        next_new += 1;
                    }
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(seq) = inflight.remove(&a.pkid) {
                        seen.lock().unwrap().acked.insert(seq);
                    }
                }
                Event::Incoming(Packet::PubRec(r)) => {
                    if let Some(seq) = inflight.remove(&r.pkid) {
                        seen.lock().unwrap().acked.insert(seq);
                    }
                }
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        for seq in 0..MESSAGES {
            if client
                .publish(format!("c/{name}"), qos, false, seq.to_string())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Keep the client (and its event loop) alive.
        std::future::pending::<()>().await;
    });
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_loses_no_acknowledged_message_and_never_repeats_qos2() {
    let _timing = crate::TIMING.read().await;
    let dir = scratch("crash");
    let port = free_port();
    let conf = config(&dir, port);
    let mut broker = start(&conf, port);

    // The subscriber: paho-mqtt (Python), which keeps its QoS 2 receiving state across
    // reconnections (rumqttc 0.24 forgets it and disconnects on the PUBREL the broker
    // must send again, bytebeamio/rumqtt#664). A timeline of what it saw (connections,
    // Session Present, SUBACK, messages per connection) is shown if the check fails.
    crate::paho::require_paho();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/crash_sub.py");
    let mut sub = tokio::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg("crash-sub")
        .arg("c/#")
        .arg("trace")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let timeline: Arc<Mutex<Vec<String>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let (sink, log) = (Arc::clone(&received), Arc::clone(&timeline));
    // Every line paho printed, kept beside the store for a failed run.
    let mut transcript = std::fs::File::create(dir.join("subscriber.log")).unwrap();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut on_this_connection = 0u32;
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(transcript, "{line}");
            let mut words = line.split(' ');
            match words.next() {
                Some("MSG") => {
                    on_this_connection += 1;
                    let (topic, seq) = (words.next(), words.next());
                    match (topic, seq.and_then(|s| s.parse::<u32>().ok())) {
                        (Some(topic), Some(seq)) => sink
                            .lock()
                            .unwrap()
                            .entry(topic.to_owned())
                            .or_default()
                            .push(seq),
                        _ => log.lock().unwrap().push(format!("unexpected: {line}")),
                    }
                }
                Some("LOG") => {}
                Some("SUBACK") => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
                _ => {
                    let _ = writeln!(transcript, "-- at {:?}", std::time::SystemTime::now());
                    let mut log = log.lock().unwrap();
                    if on_this_connection > 0 {
                        log.push(format!("  {on_this_connection} messages"));
                        on_this_connection = 0;
                    }
                    log.push(line);
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), subscribed)
        .await
        .expect("paho subscribed in time")
        .unwrap();

    let q1 = publisher("q1", QoS::AtLeastOnce, port).await;
    let q2 = publisher("q2", QoS::ExactlyOnce, port).await;

    // Kills at random moments, 0.3 to 1.5 s apart.
    let mut seed = u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(300 + seed % 1200)).await;
        kill(broker);
        timeline.lock().unwrap().push("-- killed".into());
        broker = tokio::task::spawn_blocking({
            let conf = conf.clone();
            move || start(&conf, port)
        })
        .await
        .unwrap();
    }

    // Every message is published and acknowledged in the end, then delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = q1.lock().unwrap().acked.len() == MESSAGES as usize
            && q2.lock().unwrap().acked.len() == MESSAGES as usize
            && {
                let r = received.lock().unwrap();
                ["c/q1", "c/q2"].iter().all(|t| {
                    r.get(*t).is_some_and(|v| {
                        v.iter().collect::<BTreeSet<_>>().len() == MESSAGES as usize
                    })
                })
            };
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(broker);

    let received = received.lock().unwrap();
    let context = format!(
        "\nsubscriber's timeline ({dir:?}/subscriber.log has every packet):\n{}\nbroker log (last lines):\n{}",
        timeline.lock().unwrap().join("\n"),
        std::fs::read_to_string(dir.join("broker.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (topic, published, qos2) in [("c/q1", &q1, false), ("c/q2", &q2, true)] {
        let published = published.lock().unwrap();
        let got = received.get(topic).cloned().unwrap_or_default();
        let got_set: BTreeSet<u32> = got.iter().copied().collect();
        eprintln!(
            "{topic}: {} acknowledged, {} sent again by the publisher, {} delivered ({} distinct)",
            published.acked.len(),
            published.resent.len(),
            got.len(),
            got_set.len()
        );
        // Everything went through in the end: the broker came back each time.
        assert_eq!(
            published.acked.len(),
            MESSAGES as usize,
            "{topic}: not every message was acknowledged in time{context}"
        );
        let lost: Vec<_> = published.acked.difference(&got_set).collect();
        assert!(
            lost.is_empty(),
            "{topic}: acknowledged but never delivered: {} of them, first {:?} ({} acked, {} delivered){context}",
            lost.len(),
            lost.iter().take(20).collect::<Vec<_>>(),
            published.acked.len(),
            got_set.len()
        );
        if qos2 {
            assert_eq!(
                got.len(),
                got_set.len(),
                "{topic}: a QoS 2 message delivered twice{context}"
            );
        }
        // First deliveries in order, but for messages the publisher had to send again
        // (not acknowledged before a crash): those may come after later ones.
        let mut first = HashSet::new();
        let mut last = None;
        for seq in got {
            if !first.insert(seq) || published.resent.contains(&seq) {
                continue;
            }
            if let Some(prev) = last {
                assert!(seq > prev, "{topic}: {seq} delivered after {prev}{context}");
            }
            last = Some(seq);
        }
    }
    eprintln!(
        "{KILLS} kills; subscriber's connections: {}",
        timeline
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("CONNACK"))
            .count()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
