//! Server statements of MQTT 5.0 with no 3.1.1 counterpart; the helpers are in `spec.rs`.

use std::{collections::HashMap, num::NonZeroU16, time::Duration};

use bytes::Bytes;
use mqtt_codec::{
    Connect, Disconnect, Packet, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions, Will,
};
use tokio::time::Instant;

use crate::{
    broker, broker_with,
    spec::{Client, V5, publish, s, subscribe},
};

fn persistent(c: &mut Connect) {
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
}

fn will(topic: &str, payload: &[u8]) -> Will {
    Will {
        topic: s(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

// 5.0 MQTT-3.1.3-6, 5.0 MQTT-3.1.3-7: a zero-length client id gets a unique assigned
// one, returned in CONNACK, and the session is that id's: connecting again with it
// resumes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_client_id_is_unique_and_names_the_session() {
    let (broker, addr) = broker().await;
    let (mut a, ack_a) = Client::connect_with(addr, V5, "", persistent).await;
    let (b, ack_b) = Client::connect_with(addr, V5, "", persistent).await;
    assert_eq!((ack_a.reason_code.0, ack_b.reason_code.0), (0, 0));
    let id_a = ack_a.properties.assigned_client_identifier.unwrap();
    let id_b = ack_b.properties.assigned_client_identifier.unwrap();
    assert!(!id_a.is_empty() && !id_b.is_empty());
    assert_ne!(id_a, id_b);
    a.sub("assigned", QoS::AtLeastOnce).await;
    a.drop_connection();
    let (mut a, ack) = Client::connect_with(addr, V5, id_a.as_str(), persistent).await;
    assert!(
        ack.session_present,
        "the session was stored under the assigned id"
    );
    assert_eq!(ack.properties.assigned_client_identifier, None);
    let mut p = Client::connect(addr, V5, "assigned-pub").await;
    p.publish0("assigned", b"x", false).await;
    assert_eq!(&a.recv_publish().await.payload[..], b"x");
    drop(b);
    broker.shutdown().await;
}

// 5.0 MQTT-3.2.2-22: with no Server Keep Alive in CONNACK the broker uses the client's
// keep-alive (1 s: closed after 1.5 s of silence); 5.0 MQTT-3.14.0-1: its DISCONNECT
// comes after a successful CONNACK; 5.0 MQTT-3.14.2-2: the DISCONNECT carries no Session
// Expiry Interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keep_alive_is_used_without_server_keep_alive() {
    let (broker, addr) = broker().await;
    let start = Instant::now();
    let (mut c, ack) = Client::connect_with(addr, V5, "keepalive", |c| {
        c.keep_alive = 1;
        c.properties.session_expiry_interval = Some(30);
    })
    .await;
    assert_eq!(ack.reason_code.0, 0);
    assert_eq!(ack.properties.server_keep_alive, None);
    let rest = c.closed().await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    let [Packet::Disconnect(d)] = &rest[..] else {
        panic!("{rest:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert_eq!(d.properties.session_expiry_interval, None);
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.1-9, 5.0 MQTT-3.3.1-10, 5.0 MQTT-3.3.1-11: Retain Handling 0 sends the
// retained messages at every subscribe, 1 only when the subscription is new, 2 never;
// 5.0 MQTT-3.3.1-13: with Retain As Published the forwarded RETAIN is the publisher's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published() {
    let (broker, addr) = broker().await;
    let mut p = Client::connect(addr, V5, "rh-pub").await;
    p.publish0("rh/a", b"kept", true).await;
    // Stored once the broker answers a later packet: otherwise the subscriptions below
    // could see it both retained and live.
    p.ping().await;
    let mut c = Client::connect(addr, V5, "rh").await;
    let opts = |rh: RetainHandling| SubscriptionOptions {
        retain_handling: rh,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    // Retained messages of a SUBSCRIBE come right behind its SUBACK, before the
    // answer to a PINGREQ sent after it.
    for (filter, rh, expect) in [
        ("rh/a", RetainHandling::SendIfNew, true),
        ("rh/a", RetainHandling::SendIfNew, false),
        ("rh/+", RetainHandling::DoNotSend, false),
        ("rh/+", RetainHandling::DoNotSend, false),
        ("rh/a", RetainHandling::SendAtSubscribe, true),
        ("rh/a", RetainHandling::SendAtSubscribe, true),
    ] {
        c.subscribe(subscribe(1, &[(filter, opts(rh))])).await;
        c.send(Packet::PingReq).await;
        let next = c.recv().await;
        if expect {
            let Packet::Publish(m) = next else {
                panic!("{filter} {rh:?}: {next:?}")
            };
            assert!(m.retain && &m.payload[..] == b"kept");
            assert_eq!(c.recv().await, Packet::PingResp);
        } else {
            assert_eq!(next, Packet::PingResp, "{filter} {rh:?}");
        }
    }

    let mut rap = Client::connect(addr, V5, "rap").await;
    let options = SubscriptionOptions {
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::new(QoS::AtMostOnce)
    };
    rap.subscribe(subscribe(1, &[("rh/#", options)])).await;
    p.publish0("rh/b", b"1", true).await;
    p.publish0("rh/b", b"2", false).await;
    let got = rap.recv_publish().await;
    assert!(got.retain && &got.payload[..] == b"1");
    let got = rap.recv_publish().await;
    assert!(!got.retain && &got.payload[..] == b"2");
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.4-4: one copy for overlapping subscriptions carries every matching
// subscription identifier; 5.0 MQTT-3.3.4-5: separate copies (a shared and a
// non-shared subscription) each carry the identifier of the subscription they matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_of_overlapping_subscriptions() {
    let (broker, addr) = broker().await;
    let mut c = Client::connect(addr, V5, "sid").await;
    let any = SubscriptionOptions::new(QoS::AtMostOnce);
    for (n, filter) in [
        (1, "sid/#"),
        (2, "sid/+/x"),
        (3, "$share/g/two/x"),
        (4, "two/x"),
    ] {
        let mut sub = subscribe(1, &[(filter, any)]);
        sub.properties.subscription_identifier = SubscriptionId::new(n);
        c.subscribe(sub).await;
    }
    let mut p = Client::connect(addr, V5, "sid-pub").await;
    p.publish0("sid/a/x", b"single", false).await;
    let got = c.recv_publish().await;
    let mut ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    c.quiet().await;

    p.publish0("two/x", b"separate", false).await;
    let mut copies = Vec::new();
    for _ in 0..2 {
        let got = c.recv_publish().await;
        assert_eq!(&got.payload[..], b"separate");
        let ids: Vec<u32> = got
            .properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect();
        copies.push(ids);
    }
    copies.sort();
    assert_eq!(copies, [vec![3], vec![4]]);
    c.quiet().await;
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.2-11: the broker's topic aliases never exceed the client's Topic Alias
// Maximum, and it sends none to a client that set no maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_topic_aliases_respect_client_maximum() {
    let (broker, addr) = broker().await;
    let (mut two, _) = Client::connect_with(addr, V5, "alias-2", |c| {
        c.properties.topic_alias_maximum = Some(2);
    })
    .await;
    two.sub("al/#", QoS::AtMostOnce).await;
    let mut none = Client::connect(addr, V5, "alias-0").await;
    none.sub("al/#", QoS::AtMostOnce).await;
    let mut p = Client::connect(addr, V5, "alias-pub").await;
    let topics = [
        "al/one", "al/two", "al/three", "al/one", "al/two", "al/one", "al/three",
    ];
    for t in topics {
        p.publish0(t, t.as_bytes(), false).await;
    }
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut used = 0;
    for t in topics {
        let got = two.recv_publish().await;
        let topic = match got.topic_alias.map(NonZeroU16::get) {
            Some(alias) => {
                assert!(alias <= 2, "alias {alias} above the client's maximum");
                used += 1;
                if !got.topic.is_empty() {
                    aliases.insert(alias, got.topic.to_string());
                }
                aliases[&alias].clone()
            }
            None => got.topic.to_string(),
        };
        assert_eq!(topic, t);
        assert_eq!(&got.payload[..], t.as_bytes());

        let got = none.recv_publish().await;
        assert_eq!(got.topic_alias, None);
        assert_eq!(got.topic.as_str(), t);
    }
    assert!(used > 0, "aliases are in use, so their bound was tested");
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.4-10: with the client's Receive Maximum used up by an unacknowledged
// PUBLISH, PINGRESP, SUBACK and UNSUBACK still go out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_receive_window_does_not_delay_other_packets() {
    let (broker, addr) = broker().await;
    let (mut c, _) = Client::connect_with(addr, V5, "window", |c| {
        c.properties.receive_maximum = NonZeroU16::new(1);
    })
    .await;
    c.sub("win", QoS::AtLeastOnce).await;
    let mut p = Client::connect(addr, V5, "window-pub").await;
    for n in [b"1", b"2", b"3"] {
        p.publish(publish("win", n, QoS::AtLeastOnce, false)).await;
    }
    let first = c.recv_publish().await;
    assert_eq!(&first.payload[..], b"1");
    // The window is full: the next packets are the answers, no PUBLISH.
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
    c.send(subscribe(
        5,
        &[("other", SubscriptionOptions::new(QoS::AtMostOnce))],
    ))
    .await;
    assert!(matches!(c.recv().await, Packet::SubAck(a) if a.packet_id.get() == 5));
    c.send(mqtt_codec::Unsubscribe {
        packet_id: crate::spec::pid(6),
        filters: vec![s("other")],
        properties: Default::default(),
    })
    .await;
    assert!(matches!(c.recv().await, Packet::UnsubAck(a) if a.packet_id.get() == 6));
    c.quiet().await;
    c.ack(&first).await;
    let second = c.recv_publish().await;
    assert_eq!(&second.payload[..], b"2");
    c.ack(&second).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"3");
    broker.shutdown().await;
}

// 5.0 MQTT-3.1.2-28: no Response Information in CONNACK unless requested;
// 5.0 MQTT-3.1.2-29: with Request Problem Information 0, no Reason String or User
// Property on SUBACK, UNSUBACK, PUBACK, PUBREC, PUBREL or PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_or_problem_information_unless_requested() {
    let (broker, addr) = broker().await;
    let (_, ack) = Client::connect_with(addr, V5, "info-default", |_| {}).await;
    assert_eq!(ack.properties.response_information, None);
    let (mut c, ack) = Client::connect_with(addr, V5, "info-off", |c| {
        c.properties.request_response_information = Some(false);
        c.properties.request_problem_information = Some(false);
    })
    .await;
    assert_eq!(ack.properties.response_information, None);

    let mut seen = Vec::new();
    let plain = |p: &Packet| {
        let (reason, user) = match p {
            Packet::SubAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
            Packet::UnsubAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
            Packet::PubAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
            Packet::PubRec(a) => (&a.properties.reason_string, &a.properties.user_properties),
            Packet::PubRel(a) => (&a.properties.reason_string, &a.properties.user_properties),
            Packet::PubComp(a) => (&a.properties.reason_string, &a.properties.user_properties),
            _ => return true,
        };
        reason.is_none() && user.is_empty()
    };
    let sub = c
        .subscribe(subscribe(
            1,
            &[("info/q2", SubscriptionOptions::new(QoS::ExactlyOnce))],
        ))
        .await;
    seen.push(Packet::SubAck(sub));
    let un = c.unsubscribe(2, &["never/subscribed"]).await;
    assert_eq!(un.reason_codes, [ReasonCode::NO_SUBSCRIPTION_EXISTED]);
    seen.push(Packet::UnsubAck(un));
    // Publish QoS 1 and 2 (nobody else subscribed) and receive the QoS 2 one back.
    let mut q1 = publish("info/none", b"1", QoS::AtLeastOnce, false);
    q1.qos_pid = mqtt_codec::QosPid::new(QoS::AtLeastOnce, crate::spec::pid(10));
    c.send(q1).await;
    seen.push(c.recv().await);
    let q2 = publish("info/q2", b"2", QoS::ExactlyOnce, false);
    c.send(q2).await;
    let Packet::PubRec(rec) = c.recv().await else {
        panic!()
    };
    seen.push(Packet::PubRec(rec.clone()));
    c.send(mqtt_codec::PubRel::new(rec.packet_id)).await;
    // PUBCOMP for ours and the PUBLISH to us, in either order.
    let mut delivered = None;
    while delivered.is_none() || !seen.iter().any(|p| matches!(p, Packet::PubComp(_))) {
        match c.recv().await {
            Packet::Publish(m) => delivered = Some(m),
            other => seen.push(other),
        }
    }
    let m = delivered.unwrap();
    let id = m.qos_pid.packet_id().unwrap();
    c.send(mqtt_codec::PubRec::new(id)).await;
    let rel = c.recv().await;
    assert!(matches!(rel, Packet::PubRel(_)), "{rel:?}");
    seen.push(rel);
    c.send(mqtt_codec::PubComp::new(id)).await;
    c.ping().await;
    let kinds: Vec<_> = seen.iter().map(Packet::packet_type).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    for p in &seen {
        assert!(plain(p), "{p:?}");
    }
    broker.shutdown().await;
}

// 5.0 MQTT-3.1.3-10: the will's User Properties are published in their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_user_properties_keep_order() {
    let (broker, addr) = broker().await;
    let mut watch = Client::connect(addr, V5, "wup-watch").await;
    watch.sub("wup", QoS::AtMostOnce).await;
    let props = [("b", "1"), ("a", "2"), ("b", "3"), ("c", ""), ("a", "1")];
    let (w, _) = Client::connect_with(addr, V5, "wup", |c| {
        let mut will = will("wup", b"gone");
        will.properties.user_properties = props.iter().map(|(k, v)| (s(k), s(v))).collect();
        c.will = Some(will);
    })
    .await;
    w.drop_connection();
    let got = watch.recv_publish().await;
    let got: Vec<(String, String)> = got
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let want: Vec<(String, String)> = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(got, want);
    broker.shutdown().await;
}

// 5.0 MQTT-3.1.2-8, 5.0 MQTT-3.1.2-10: DISCONNECT 0x00 removes the will unpublished;
// DISCONNECT 0x04 publishes it, once: it is gone from the session afterwards; a will
// whose delay outlasts the session is published when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_publication_and_removal() {
    let (broker, addr) = broker().await;
    let mut watch = Client::connect(addr, V5, "wp-watch").await;
    watch.sub("wp/#", QoS::AtMostOnce).await;

    let (mut w, _) = Client::connect_with(addr, V5, "wp-normal", |c| {
        c.will = Some(will("wp/normal", b"no"));
    })
    .await;
    w.send(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
        .await;
    assert!(w.closed().await.is_empty());

    let (mut w, _) = Client::connect_with(addr, V5, "wp-with-will", |c| {
        persistent(c);
        c.will = Some(will("wp/with-will", b"yes"));
    })
    .await;
    w.send(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
        .await;
    assert!(w.closed().await.is_empty());
    let got = watch.recv_publish().await;
    assert_eq!(
        got.topic.as_str(),
        "wp/with-will",
        "the 0x00 will was not published"
    );
    // The session lives on without its will: dropping the next connection, which has
    // none, publishes nothing.
    let (w, ack) = Client::connect_with(addr, V5, "wp-with-will", persistent).await;
    assert!(ack.session_present);
    w.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Will Delay 60 s, Session Expiry 1 s: published when the session ends.
    let (w, _) = Client::connect_with(addr, V5, "wp-expiry", |c| {
        c.properties.session_expiry_interval = Some(1);
        let mut will = will("wp/expiry", b"late");
        will.properties.will_delay_interval = Some(60);
        c.will = Some(will);
    })
    .await;
    let dropped = Instant::now();
    w.drop_connection();
    let got = watch.recv_publish().await;
    assert_eq!(got.topic.as_str(), "wp/expiry");
    let after = dropped.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "{after:?}"
    );
    watch.quiet().await;
    broker.shutdown().await;
}

// 5.0 MQTT-3.2.2-13: a broker without retained messages refuses a will with Will Retain
// 1: CONNACK 0x9A (Retain not supported), then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_refused_without_retain_support() {
    let (broker, addr) = broker_with(|c| c.retain.enabled = false).await;
    let mut c = Client::open(addr, V5).await;
    let mut connect = Connect::new(V5, s("retained-will"));
    let mut w = will("rw", b"x");
    w.retain = true;
    connect.will = Some(w);
    c.send(connect).await;
    let got = c.closed().await;
    let [Packet::ConnAck(ack)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::RETAIN_NOT_SUPPORTED);
    assert!(!ack.session_present);
    // Without Will Retain the same broker accepts the will.
    let (_, ack) = Client::connect_with(addr, V5, "plain-will", |c| {
        c.will = Some(will("rw", b"x"));
    })
    .await;
    assert_eq!(ack.reason_code.0, 0);
    assert_eq!(ack.properties.retain_available, Some(false));
    broker.shutdown().await;
}

// 5.0 MQTT-4.8.2-3: a shared subscription's member gets messages at no more than the
// QoS granted to its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_respects_granted_qos() {
    let (broker, addr) = broker().await;
    let mut c = Client::connect(addr, V5, "shared-qos").await;
    c.sub("$share/g/sq/0", QoS::AtMostOnce).await;
    c.sub("$share/g/sq/1", QoS::AtLeastOnce).await;
    let mut p = Client::connect(addr, V5, "shared-qos-pub").await;
    for (topic, published, expect) in [
        ("sq/0", QoS::ExactlyOnce, QoS::AtMostOnce),
        ("sq/1", QoS::ExactlyOnce, QoS::AtLeastOnce),
        ("sq/1", QoS::AtMostOnce, QoS::AtMostOnce),
    ] {
        p.publish(publish(topic, b"m", published, false)).await;
        let got = c.recv_publish().await;
        assert_eq!((got.topic.as_str(), got.qos_pid.qos()), (topic, expect));
        c.ack(&got).await;
    }
    broker.shutdown().await;
}

// 5.0 MQTT-4.8.2-6: a shared-subscription message refused with PUBACK 0x80 is dropped,
// not sent to another member of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_shared_message_is_not_redistributed() {
    let (broker, addr) = broker().await;
    let mut a = Client::connect(addr, V5, "shared-a").await;
    a.sub("$share/g/sr", QoS::AtLeastOnce).await;
    let mut b = Client::connect(addr, V5, "shared-b").await;
    b.sub("$share/g/sr", QoS::AtLeastOnce).await;
    let mut p = Client::connect(addr, V5, "shared-pub").await;
    p.publish(publish("sr", b"once", QoS::AtLeastOnce, false))
        .await;
    // Whoever got it refuses it; nobody gets it again.
    let (got, mut holder, mut other) =
        match tokio::time::timeout(Duration::from_secs(1), a.recv_publish()).await {
            Ok(m) => (m, a, b),
            Err(_) => (b.recv_publish().await, b, a),
        };
    let mqtt_codec::QosPid::AtLeastOnce(id) = got.qos_pid else {
        panic!("{got:?}")
    };
    let mut refuse = mqtt_codec::PubAck::new(id);
    refuse.reason_code = ReasonCode::UNSPECIFIED_ERROR;
    holder.send(refuse).await;
    holder.ping().await;
    other.quiet().await;
    holder.quiet().await;
    broker.shutdown().await;
}

// 5.0 MQTT-4.12.0-6: a CONNECT without Authentication Method gets no AUTH and no
// Authentication Method in CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_exchange_without_authentication_method() {
    let (broker, addr) = broker().await;
    let (mut c, ack) = Client::connect_with(addr, V5, "no-auth", |_| {}).await;
    assert_eq!(ack.properties.authentication_method, None);
    assert_eq!(ack.properties.authentication_data, None);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Packet::PingResp);
    broker.shutdown().await;
}

// 5.0 MQTT-4.12.0-1: an Authentication Method the broker does not support (it supports
// none) gets CONNACK 0x8C (Bad authentication method), then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_authentication_method_is_refused() {
    let (broker, addr) = broker().await;
    let mut c = Client::open(addr, V5).await;
    let mut connect = Connect::new(V5, s("scram"));
    connect.properties.authentication_method = Some(s("SCRAM-SHA-1"));
    c.send(connect).await;
    let got = c.closed().await;
    let [Packet::ConnAck(ack)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(!ack.session_present);
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.1-12, 5.0 MQTT-3.3.1-13, 5.0 MQTT-3.3.2-17, 5.0 MQTT-3.1.2-24,
// 5.0 MQTT-4.6.0-6: a QoS 0 message fanned out to many subscribers is encoded once per
// protocol version and RETAIN flag; each subscriber still gets what its subscription
// says: 3.1.1 or 5.0 encoding, RETAIN kept only with Retain As Published, the
// publisher's properties, its own subscription identifier, nothing above its Maximum
// Packet Size, and every message in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_of_one_encoding_keeps_each_subscriptions_terms() {
    let (broker, addr) = broker().await;
    let qos0 = SubscriptionOptions::new(QoS::AtMostOnce);
    let mut v3 = Client::connect(addr, crate::spec::V3, "enc-v3").await;
    v3.sub("enc/#", QoS::AtMostOnce).await;
    let mut plain = Client::connect(addr, V5, "enc-plain").await;
    plain.sub("enc/#", QoS::AtMostOnce).await;
    let mut rap = Client::connect(addr, V5, "enc-rap").await;
    let mut keep = qos0;
    keep.retain_as_published = true;
    rap.subscribe(subscribe(1, &[("enc/#", keep)])).await;
    let mut with_id = Client::connect(addr, V5, "enc-id").await;
    let mut sub = subscribe(1, &[("enc/#", qos0)]);
    sub.properties.subscription_identifier = SubscriptionId::new(9);
    with_id.subscribe(sub).await;
    let (mut small, _) = Client::connect_with(addr, V5, "enc-small", |c| {
        c.properties.maximum_packet_size = std::num::NonZeroU32::new(64);
    })
    .await;
    small.sub("enc/#", QoS::AtMostOnce).await;

    let mut p = Client::connect(addr, V5, "enc-pub").await;
    let big = [b'x'; 100];
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let payload: Vec<u8> = if i % 10 == 9 { big.to_vec() } else { vec![i] };
        let mut m = publish("enc/t", &payload, QoS::AtMostOnce, i % 3 == 0);
        m.properties.user_properties = [(s("n"), s(&i.to_string()))].into_iter().collect();
        p.send(m).await;
        sent.push((payload, i % 3 == 0, i));
    }
    p.ping().await;
    for (name, c) in [
        ("3.1.1", &mut v3),
        ("5.0", &mut plain),
        ("retain as published", &mut rap),
        ("subscription identifier", &mut with_id),
        ("maximum packet size 64", &mut small),
    ] {
        for (payload, retain, i) in &sent {
            if name == "maximum packet size 64" && payload.len() > 64 {
                continue; // [MQTT-3.1.2-24]: too large for it, never sent.
            }
            let got = c.recv_publish().await;
            assert_eq!(
                &got.payload[..],
                &payload[..],
                "{name}: message {i} in order"
            );
            assert_eq!(got.topic.as_str(), "enc/t", "{name}");
            assert_eq!(got.qos_pid.qos(), QoS::AtMostOnce, "{name}");
            let retained = name == "retain as published" && *retain;
            assert_eq!(got.retain, retained, "{name}: RETAIN of message {i}");
            let props = &got.properties;
            if name == "3.1.1" {
                assert!(props.user_properties.is_empty(), "{name}");
            } else {
                assert_eq!(
                    props.user_properties.iter().collect::<Vec<_>>(),
                    [("n", &*i.to_string())],
                    "{name}"
                );
            }
            let ids: Vec<u32> = props
                .subscription_identifiers
                .iter()
                .map(|i| i.get())
                .collect();
            let expected: &[u32] = if name == "subscription identifier" {
                &[9]
            } else {
                &[]
            };
            assert_eq!(ids, expected, "{name}");
        }
        c.quiet().await;
    }
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.4-6: a PUBLISH from a client must not carry a Subscription Identifier;
// one that does is a Protocol Error (DISCONNECT 0x82), and is not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_subscription_identifier_is_a_protocol_error() {
    let (broker, addr) = broker().await;
    let mut sub = Client::connect(addr, V5, "sid-sub").await;
    sub.send(subscribe(
        1,
        &[("sid/t", SubscriptionOptions::new(QoS::AtMostOnce))],
    ))
    .await;
    assert!(matches!(sub.recv().await, Packet::SubAck(_)));
    let mut c = Client::connect(addr, V5, "sid-pub").await;
    let mut p = publish("sid/t", b"forged", QoS::AtMostOnce, false);
    p.properties
        .set_subscription_identifiers(vec![SubscriptionId::new(7).unwrap()]);
    c.send(p).await;
    let got = c.closed().await;
    let [Packet::Disconnect(d)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
    // A well-formed PUBLISH after it is delivered; the forged one never was.
    let mut c = Client::connect(addr, V5, "sid-pub2").await;
    c.send(publish("sid/t", b"fine", QoS::AtMostOnce, false))
        .await;
    let Packet::Publish(p) = sub.recv().await else {
        panic!("PUBLISH expected")
    };
    assert_eq!(&p.payload[..], b"fine");
    broker.shutdown().await;
}

// 5.0 MQTT-3.10.4-2: retained messages still waiting for room in a full session queue
// when their filter is unsubscribed are not sent. 5.0 MQTT-3.8.4-3: a SUBSCRIBE
// repeated while they wait starts their delivery over, once: each arrives once, not
// once for each SUBSCRIBE (the waiting deliveries were one for each, without bound);
// one that sends none (Retain Handling 2) lets them come with its options (QoS 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_waiting_for_room_follow_the_subscription() {
    let (broker, addr) = broker_with(|c| c.limits.max_queued_messages = 10).await;
    let mut p = Client::connect(addr, V5, "ret-pub").await;
    for i in 0..50 {
        p.publish(publish(&format!("r/{i}"), b"kept", QoS::AtLeastOnce, true))
            .await;
    }
    // (UNSUBSCRIBE after, SUBSCRIBE packets, the last one's QoS and Retain Handling)
    for (unsubscribe, subscribes, last) in [
        (true, 1, (QoS::AtLeastOnce, RetainHandling::SendAtSubscribe)),
        (
            false,
            3,
            (QoS::AtLeastOnce, RetainHandling::SendAtSubscribe),
        ),
        (false, 2, (QoS::AtMostOnce, RetainHandling::DoNotSend)),
    ] {
        let (mut c, _) = Client::connect_with(addr, V5, "ret-sub", |c| {
            c.properties.receive_maximum = NonZeroU16::new(1);
        })
        .await;
        c.sub("fill", QoS::AtLeastOnce).await;
        // One in flight, unacknowledged, and the queue behind it full.
        for i in 0..12u8 {
            p.publish(publish("fill", &[i], QoS::AtLeastOnce, false))
                .await;
        }
        let first = c.recv_publish().await;
        for n in 1..=subscribes {
            let (qos, handling) = if n == subscribes {
                last
            } else {
                (QoS::AtLeastOnce, RetainHandling::SendAtSubscribe)
            };
            let mut options = SubscriptionOptions::new(qos);
            options.retain_handling = handling;
            let ack = c.subscribe(subscribe(10 + n, &[("r/#", options)])).await;
            assert_eq!(ack.reason_codes, vec![ReasonCode(qos as u8)]);
        }
        if unsubscribe {
            assert_eq!(
                c.unsubscribe(20, &["r/#"]).await.reason_codes,
                vec![ReasonCode::SUCCESS]
            );
        }
        // Now take everything, acknowledging each.
        c.ack(&first).await;
        let mut retained = HashMap::new();
        while let Some(Some(packet)) = c.next_within(Duration::from_millis(500)).await {
            if let Packet::Publish(m) = packet {
                if m.topic.starts_with("r/") {
                    assert_eq!(m.qos_pid.qos(), last.0, "{}", m.topic);
                    *retained.entry(m.topic.to_string()).or_insert(0) += 1;
                }
                c.ack(&m).await;
            }
        }
        if unsubscribe {
            assert!(retained.is_empty(), "after UNSUBACK: {retained:?}");
        } else {
            assert_eq!(retained.len(), 50);
            assert!(retained.values().all(|&n| n == 1), "{retained:?}");
        }
        c.send(Packet::Disconnect(Default::default())).await;
    }
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.4-9: a session resumed with a lower Receive Maximum than the connection
// that left ten messages unacknowledged gets them again two at a time, each pair after
// the last is acknowledged, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_resends_within_the_new_receive_maximum() {
    let (broker, addr) = broker().await;
    let (mut c, _) = Client::connect_with(addr, V5, "resend-window", persistent).await;
    c.sub("rw", QoS::AtLeastOnce).await;
    let mut p = Client::connect(addr, V5, "resend-window-pub").await;
    for i in 0..10u8 {
        p.publish(publish("rw", &[i], QoS::AtLeastOnce, false))
            .await;
    }
    for _ in 0..10 {
        c.recv_publish().await;
    }
    c.drop_connection();
    let (mut c, ack) = Client::connect_with(addr, V5, "resend-window", |c| {
        persistent(c);
        c.properties.receive_maximum = NonZeroU16::new(2);
    })
    .await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < 10 {
        let mut window = Vec::new();
        while let Some(Some(packet)) = c.next_within(Duration::from_millis(300)).await {
            if let Packet::Publish(m) = packet {
                assert!(m.dup);
                window.push(m);
            }
        }
        assert_eq!(window.len(), 2, "after {got:?}");
        for m in &window {
            c.ack(m).await;
            got.push(m.payload[0]);
        }
    }
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
    broker.shutdown().await;
}

// 5.0 MQTT-3.3.2-5: expired retained messages go, under any topic: those of topics
// starting with `$` (which `#` does not match) too, so they stop counting against
// `retain.max_messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_messages_under_dollar_topics_are_purged() {
    let (broker, addr) = broker_with(|c| c.retain.max_messages = 2).await;
    let mut p = Client::connect(addr, V5, "dollar-pub").await;
    for topic in ["$app/a", "$app/b"] {
        let mut m = publish(topic, b"brief", QoS::AtLeastOnce, true);
        m.properties.message_expiry_interval = Some(1);
        p.publish(m).await;
    }
    // The store is full until they are purged.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    p.publish(publish("after/purge", b"kept", QoS::AtLeastOnce, true))
        .await;
    let mut c = Client::connect(addr, V5, "dollar-sub").await;
    c.sub("after/#", QoS::AtMostOnce).await;
    let m = c.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("after/purge", &b"kept"[..])
    );
    broker.shutdown().await;
}

// 5.0 MQTT-3.8.4-5: a SUBSCRIBE that repeats a filter is handled as a sequence of
// SUBSCRIBEs: a first repeat with Retain Handling 0 sends the retained messages though
// the last has 2 (with the last one's options: QoS 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_filter_sends_retained_if_any_repeat_does() {
    let (broker, addr) = broker().await;
    let mut p = Client::connect(addr, V5, "repeat-pub").await;
    p.publish(publish("rep/a", b"kept", QoS::AtLeastOnce, true))
        .await;
    let mut c = Client::connect(addr, V5, "repeat-sub").await;
    let mut first = SubscriptionOptions::new(QoS::AtLeastOnce);
    first.retain_handling = RetainHandling::SendAtSubscribe;
    let mut last = SubscriptionOptions::new(QoS::AtMostOnce);
    last.retain_handling = RetainHandling::DoNotSend;
    c.subscribe(subscribe(1, &[("rep/#", first), ("rep/#", last)]))
        .await;
    let m = c.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.qos_pid.qos()),
        ("rep/a", QoS::AtMostOnce)
    );
    broker.shutdown().await;
}
