//! The authentication and authorization seams, and the broker's own rules before them:
//! `$SYS/` is the broker's, and a PUBLISH is acknowledged with what became of it.

use mqtt_broker::{
    Auth, Broker, Config,
    auth::{AllowAll, Authenticating, Authenticator, Authorizer, Credentials},
    config::Listener,
};
use mqtt_codec::{Packet, ProtocolVersion, QoS, QosPid, ReasonCode, SubscriptionOptions, Will};

use crate::{
    broker,
    spec::{Client, pid, publish, s},
};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Lets in clients that name a user.
#[derive(Debug)]
pub(crate) struct NamedUsers;

impl Authenticator for NamedUsers {
    fn authenticate<'a>(&'a self, c: &'a Credentials<'a>) -> Authenticating<'a> {
        let verdict = match c.username {
            Some(_) => Ok(()),
            None => Err(ReasonCode::NOT_AUTHORIZED),
        };
        Box::pin(std::future::ready(verdict))
    }
}

/// Lets in clients that name a user, with the password "secret".
#[derive(Debug)]
struct SecretPassword;

impl Authenticator for SecretPassword {
    fn authenticate<'a>(&'a self, c: &'a Credentials<'a>) -> Authenticating<'a> {
        Box::pin(async move {
            // As a real backend would: the check runs off the runtime's threads.
            let password = c.password.map(<[u8]>::to_vec);
            let ok = tokio::task::spawn_blocking(move || password.as_deref() == Some(b"secret"))
                .await
                .unwrap_or(false);
            if c.username.is_some() && ok {
                Ok(())
            } else {
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
        })
    }
}

/// Nobody may publish to or subscribe below `private/`.
#[derive(Debug)]
struct NoPrivate;

impl Authorizer for NoPrivate {
    fn may_publish(&self, _: &str, topic: &str) -> bool {
        !topic.starts_with("private/")
    }

    fn may_subscribe(&self, _: &str, filter: &str) -> bool {
        !filter.starts_with("private/")
    }
}

pub(crate) async fn broker_with_auth(auth: Auth) -> (Broker, std::net::SocketAddr) {
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    let broker = Broker::start_with(config, auth).await.unwrap();
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

// 3.1.1 MQTT-3.3.5-2: a client may not publish to `$SYS/`: 5.0 gets PUBACK / PUBREC
// 0x87, 3.1.1 an acknowledgement as usual, and no subscriber ever sees the forged value, retained or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_cannot_be_forged() {
    let (broker, addr) = broker().await;
    let mut watcher = Client::connect(addr, V5, "sys-watcher").await;
    watcher.sub("$SYS/broker/version", QoS::AtLeastOnce).await;
    watcher.sub("$SYS/forged", QoS::AtLeastOnce).await;
    for v in [V3, V5] {
        let mut forger = Client::connect(addr, v, &format!("forger-{v}")).await;
        for (qos, id) in [(QoS::AtLeastOnce, 1), (QoS::ExactlyOnce, 2)] {
            for topic in ["$SYS/broker/version", "$SYS/forged"] {
                let mut p = publish(topic, b"forged", qos, true);
                p.qos_pid = QosPid::new(qos, pid(id));
                forger.send(p).await;
                let code = match forger.recv().await {
                    Packet::PubAck(a) if qos == QoS::AtLeastOnce => a.reason_code,
                    Packet::PubRec(r) if qos == QoS::ExactlyOnce => r.reason_code,
                    other => panic!("{v}: {other:?}"),
                };
                if v.is_v5() {
                    assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "{v} {topic}");
                } else {
                    assert_eq!(code, ReasonCode::SUCCESS, "{v} {topic}");
                    if qos == QoS::ExactlyOnce {
                        // The 3.1.1 exchange completes as usual.
                        forger.send(mqtt_codec::PubRel::new(pid(id))).await;
                        assert!(matches!(forger.recv().await, Packet::PubComp(_)));
                    }
                }
            }
        }
        // 5.0 ended the QoS 2 exchange at PUBREC: the identifier is free again.
        forger.ping().await;
    }
    // No forged message reached the watcher in 1.5 s; the broker's own version does,
    // every second.
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    while let Some(Some(p)) = watcher
        .next_within(until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if let Packet::Publish(p) = p {
            assert_ne!(&p.payload[..], b"forged", "{}", p.topic);
        }
    }
    // Nor was anything retained: a new subscriber to $SYS/forged gets nothing.
    let mut late = Client::connect(addr, V5, "sys-late").await;
    late.sub("$SYS/forged", QoS::AtMostOnce).await;
    late.quiet().await;
    broker.shutdown().await;
}

// A will on a `$SYS/` topic is refused at CONNECT: 5.0 CONNACK 0x87, 3.1.1 return code 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_to_sys_is_refused() {
    let (broker, addr) = broker().await;
    for v in [V3, V5] {
        let (mut c, ack) = Client::connect_with(addr, v, &format!("will-{v}"), |c| {
            c.will = Some(Will {
                topic: s("$SYS/broker/version"),
                payload: bytes::Bytes::from_static(b"forged"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
            });
        })
        .await;
        // 0x87 on the wire in 5.0; 3.1.1's return code 5, which the codec reads as 0x87.
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED, "{v}");
        assert!(c.closed().await.is_empty(), "{v}");
    }
    broker.shutdown().await;
}

// 5.0: a message nobody subscribes to is acknowledged with 0x10 No matching subscribers;
// with a subscriber, with 0x00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_says_whether_anyone_subscribes() {
    let (broker, addr) = broker().await;
    let mut c = Client::connect(addr, V5, "lonely").await;
    let mut p = publish("nobody/here", b"x", QoS::AtLeastOnce, false);
    p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(1));
    c.send(p.clone()).await;
    match c.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
    c.sub("nobody/here", QoS::AtMostOnce).await;
    c.send(p).await;
    let code = c
        .find(|p| match p {
            Packet::PubAck(a) => Some(a.reason_code),
            _ => None,
        })
        .await;
    assert_eq!(code, ReasonCode::SUCCESS);
    broker.shutdown().await;
}

// An authenticator of the caller's decides CONNECT: the wrong password gets 0x86 in 5.0
// and return code 4 in 3.1.1, the right one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticator_decides_connect() {
    let (broker, addr) = broker_with_auth(Auth {
        authenticator: Box::new(SecretPassword),
        authorizer: Box::new(AllowAll),
    })
    .await;
    for v in [V3, V5] {
        for (password, ok) in [(&b"wrong"[..], false), (&b"secret"[..], true)] {
            let (_c, ack) = Client::connect_with(addr, v, &format!("pw-{v}"), |c| {
                c.username = Some(s("alice"));
                c.password = Some(bytes::Bytes::copy_from_slice(password));
            })
            .await;
            // 0x86 on the wire in 5.0; 3.1.1's return code 4, which the codec reads as 0x86.
            let expected = if ok {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
            };
            assert_eq!(ack.reason_code, expected, "{v} {password:?}");
        }
    }
    broker.shutdown().await;
}

// An authorizer of the caller's decides PUBLISH (5.0: 0x87; 3.1.1: acknowledged and
// dropped) and SUBSCRIBE (5.0: 0x87; 3.1.1: 0x80).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_decides_publish_and_subscribe() {
    let (broker, addr) = broker_with_auth(Auth {
        authenticator: Box::new(mqtt_broker::auth::Anonymous),
        authorizer: Box::new(NoPrivate),
    })
    .await;
    let mut watcher = Client::connect(addr, V5, "acl-watcher").await;
    watcher.sub("#", QoS::AtMostOnce).await;
    for v in [V3, V5] {
        let mut c = Client::connect(addr, v, &format!("acl-{v}")).await;
        let suback = c
            .subscribe(crate::spec::subscribe(
                3,
                &[
                    ("private/x", SubscriptionOptions::new(QoS::AtMostOnce)),
                    ("public/x", SubscriptionOptions::new(QoS::AtMostOnce)),
                ],
            ))
            .await;
        let refused = if v.is_v5() { 0x87 } else { 0x80 };
        assert_eq!(
            suback.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
            [refused, 0],
            "{v}"
        );
        let mut p = publish("private/x", b"secret", QoS::AtLeastOnce, false);
        p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(4));
        c.send(p).await;
        let code = c
            .find(|p| match p {
                Packet::PubAck(a) => Some(a.reason_code),
                _ => None,
            })
            .await;
        let expected = if v.is_v5() {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        assert_eq!(code, expected, "{v}");
        c.publish0("public/x", b"open", false).await;
    }
    // The watcher sees the public messages and never the private one.
    for _ in 0..2 {
        let p = watcher.recv_publish().await;
        assert_eq!(p.topic, "public/x");
    }
    watcher.quiet().await;
    broker.shutdown().await;
}

// A configuration that asks for `allow_anonymous = false` has no password backend to
// check passwords with: the broker refuses to start rather than accept any password.
#[tokio::test]
async fn allow_anonymous_false_without_a_backend_is_refused() {
    let mut config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    config.auth.allow_anonymous = false;
    let err = Broker::start(config).await.unwrap_err();
    assert!(err.to_string().contains("password backend"), "{err}");
    let err = Config::parse("[auth]\nallow_anonymous = false\n", "b.toml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("b.toml: auth.allow_anonymous: false needs a password backend"),
        "{err}"
    );
}
