//! The crash harness (issue 16): persistent-session rumqttc publishers (one QoS 1, one
//! QoS 2) and a persistent rumqttc subscriber while the `mqtt-broker` binary, in
//! `[persistence] mode = "sync"`, is SIGKILLed at random moments and started again on
//! the same port and file. The checker then proves that every message a publisher saw
//! acknowledged (PUBACK, PUBREC) reached the subscriber, that no QoS 2 message reached
//! it twice, and that each publisher's messages came in order.
//!
//! rumqttc hands every PUBLISH it reads to the application, a QoS 2 one sent again
//! (DUP, same packet identifier, before the exchange completed) too; the checker plays
//! the receiver's part the standard gives it (4.3.3: once PUBREC is sent, a PUBLISH
//! with the same packet identifier is not delivered again until PUBREL), so what it
//! counts is what an application on a conforming client would see.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use rumqttc::{Event, Outgoing, Packet, QoS};

use crate::durable::{client, config, free_port, kill, scratch, start};

/// Messages per publisher.
const MESSAGES: u32 = 1500;
/// Kills.
const KILLS: u32 = 15;

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

    let (sub, mut sub_rx, _sub_task) = client("crash-sub", port, false);
    loop {
        if let Some(Event::Incoming(Packet::ConnAck(_))) = sub_rx.recv().await {
            break;
        }
    }
    sub.subscribe("c/#", QoS::ExactlyOnce).await.unwrap();
    loop {
        if let Some(Event::Incoming(Packet::SubAck(_))) = sub_rx.recv().await {
            break;
        }
    }
    // The subscription's record is committed (SUBACK does not wait for it).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // What the subscriber's application sees: per publisher, sequence numbers in order
    // of arrival, QoS 2 duplicates of an unreleased packet identifier left out.
    let received: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        let mut awaiting_pubrel: HashSet<u16> = HashSet::new();
        while let Some(e) = sub_rx.recv().await {
            match e {
                Event::Incoming(Packet::Publish(p)) => {
                    if p.qos == QoS::ExactlyOnce && !awaiting_pubrel.insert(p.pkid) {
                        continue;
                    }
                    let seq: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    sink.lock()
                        .unwrap()
                        .entry(p.topic.clone())
                        .or_default()
                        .push(seq);
                }
                Event::Incoming(Packet::PubRel(r)) => {
                    awaiting_pubrel.remove(&r.pkid);
                }
                _ => {}
            }
        }
    });

    let q1 = publisher("q1", QoS::AtLeastOnce, port).await;
    let q2 = publisher("q2", QoS::ExactlyOnce, port).await;

    // Kills at random moments, 0.3 to 2.3 s apart.
    let mut seed = u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(300 + seed % 2000)).await;
        kill(broker);
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
    for (topic, published, qos2) in [("c/q1", &q1, false), ("c/q2", &q2, true)] {
        let published = published.lock().unwrap();
        let got = received.get(topic).cloned().unwrap_or_default();
        let got_set: BTreeSet<u32> = got.iter().copied().collect();
        let lost: Vec<_> = published.acked.difference(&got_set).collect();
        assert!(
            lost.is_empty(),
            "{topic}: acknowledged but never delivered: {lost:?} ({} acked, {} delivered)",
            published.acked.len(),
            got_set.len()
        );
        if qos2 {
            assert_eq!(
                got.len(),
                got_set.len(),
                "{topic}: a QoS 2 message delivered twice"
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
                assert!(seq > prev, "{topic}: {seq} delivered after {prev}");
            }
            last = Some(seq);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
