//! JWT as the password over real sockets: tokens made here (HS256 with a secret file,
//! ES256 with an rcgen key as PEM and as a JWKS, RS256 with an `openssl` key), accepted,
//! expired, not yet valid, signed with another key or another algorithm, `alg: none`;
//! Mosquitto's `mosquitto_pub -P <token>` for 3.1.1 and 5.0, raw clients for the reason
//! codes, the claim as `%u` in an ACL, and the keys read again on a reload.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mqtt_broker::{
    Broker,
    config::{JwtAlgorithm, JwtConfig},
};
use mqtt_codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    WAIT, broker_with,
    spec::{Client, s, subscribe},
};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-jwt-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn token(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

/// A token whose header says `alg: none`, unsigned.
fn unsigned(claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// HS256 with `secret` in a file of its own (under `name`): the settings, and the key
/// that signs tokens they accept.
fn hs256(name: &str, secret: &str) -> (JwtConfig, EncodingKey) {
    let file = dir(name).join("secret");
    std::fs::write(&file, secret).unwrap();
    (
        JwtConfig::new(JwtAlgorithm::HS256, &file),
        EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// A broker refusing anonymous clients, whose passwords are JWTs by `jwt`, with an ACL.
async fn broker_jwt(jwt: JwtConfig, acl: Option<&Path>) -> (Broker, std::net::SocketAddr) {
    broker_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = Some(jwt);
        c.auth.acl_file = acl.map(Path::to_owned);
    })
    .await
}

/// Connects with `token` as the password (and a user name the token overrides), from
/// a loopback address of its own (127.0.0.2 onwards): the refusals this file provokes
/// on purpose would otherwise slow each other down, as repeated failures from one
/// address are.
async fn connect(
    addr: std::net::SocketAddr,
    v: ProtocolVersion,
    id: &str,
    token: &str,
) -> (Client, ReasonCode) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = std::net::Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 2 + (n % 250) as u8);
    let mut c = Client::open_from(addr, v, source).await;
    let mut connect = mqtt_codec::Connect::new(v, s(id));
    connect.username = Some(s("ignored"));
    connect.password = Some(Bytes::copy_from_slice(token.as_bytes()));
    c.send(connect).await;
    match c.recv().await {
        mqtt_codec::Packet::ConnAck(ack) => (c, ack.reason_code),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
}

/// `mosquitto_pub -P token` (3.1.1 or 5.0): its exit code, the CONNACK code on a
/// refusal.
async fn mosquitto_pub(port: u16, version: &str, token: &str) -> i32 {
    crate::pki::require("mosquitto_pub", "install Debian's mosquitto-clients");
    let status = tokio::time::timeout(
        WAIT,
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
            .args(["-q", "1", "-t", "jwt/test", "-m", "x", "-u", "device"])
            .args(["-P", token])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
    )
    .await
    .expect("mosquitto_pub in time")
    .unwrap();
    status.code().unwrap_or(-1)
}

// HS256 with a secret file: a good token lets mosquitto_pub and raw clients in (3.1.1
// and 5.0); expired, not yet valid, another secret, another algorithm and `alg: none`
// get 0x86 (3.1.1: 4); no token at all is refused too. The claim is `%u` in the ACL.
// A new secret in the file is in force after a reload, the old one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_accepted_refused_and_the_secret_reloaded() {
    let d = dir("hs256");
    let secret = d.join("secret");
    std::fs::write(&secret, "fleet-secret\n").unwrap();
    let acl = d.join("acl");
    std::fs::write(&acl, "pattern readwrite devices/%u/#\n").unwrap();
    let (broker, addr) = broker_jwt(JwtConfig::new(JwtAlgorithm::HS256, &secret), Some(&acl)).await;
    let key = EncodingKey::from_secret(b"fleet-secret");
    let t = now();
    let good = token(
        Algorithm::HS256,
        &key,
        json!({"sub": "dev7", "exp": t + 600}),
    );

    for v in [V3, V5] {
        let (mut c, code) = connect(addr, v, &format!("good-{v}"), &good).await;
        assert_eq!(code, ReasonCode::SUCCESS, "{v}");
        // The claim is the user name the ACL sees: devices/dev7/# only.
        let q0 = SubscriptionOptions::new(QoS::AtMostOnce);
        let ack = c
            .subscribe(subscribe(
                1,
                &[("devices/dev7/cmd", q0), ("devices/ignored/cmd", q0)],
            ))
            .await;
        let no = if v.is_v5() { 0x87 } else { 0x80 };
        assert_eq!(
            ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
            [0, no],
            "{v}"
        );
    }
    let refused = [
        (
            "expired",
            token(Algorithm::HS256, &key, json!({"sub": "d", "exp": t - 3600})),
        ),
        (
            "not yet valid",
            token(
                Algorithm::HS256,
                &key,
                json!({"sub": "d", "exp": t + 7200, "nbf": t + 3600}),
            ),
        ),
        (
            "another secret",
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"guess"),
                json!({"sub": "d", "exp": t + 600}),
            ),
        ),
        (
            "HS384",
            token(Algorithm::HS384, &key, json!({"sub": "d", "exp": t + 600})),
        ),
        ("alg none", unsigned(&json!({"sub": "d", "exp": t + 600}))),
        ("no exp", token(Algorithm::HS256, &key, json!({"sub": "d"}))),
        ("not a token", "password".to_owned()),
    ];
    for (what, bad) in &refused {
        for v in [V3, V5] {
            let (_, code) = connect(addr, v, "bad", bad).await;
            assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{what} {v}");
        }
    }
    let port = addr.port();
    assert_eq!(mosquitto_pub(port, "mqttv311", &good).await, 0);
    assert_eq!(mosquitto_pub(port, "mqttv5", &good).await, 0);
    assert_eq!(mosquitto_pub(port, "mqttv311", &refused[0].1).await, 4);
    assert_eq!(mosquitto_pub(port, "mqttv5", &refused[2].1).await, 0x86);

    // A new secret: tokens signed with the old one are refused from then on.
    std::fs::write(&secret, "rotated").unwrap();
    let done = broker.reload_files().await;
    assert!(done.iter().all(|r| r.error.is_none()), "{done:?}");
    assert_eq!(
        connect(addr, V5, "old", &good).await.1,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    let rotated = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"rotated"),
        json!({"sub": "dev7", "exp": t + 600}),
    );
    assert_eq!(
        connect(addr, V5, "new", &rotated).await.1,
        ReasonCode::SUCCESS
    );
    // An empty secret file is refused, and the secret in force stays.
    std::fs::write(&secret, "").unwrap();
    let done = broker.reload_files().await;
    assert!(done.iter().any(|r| r.error.is_some()), "{done:?}");
    assert_eq!(
        connect(addr, V3, "still", &rotated).await.1,
        ReasonCode::SUCCESS
    );
    broker.shutdown().await;
}

// ES256 with the public key as PEM and as a JWKS (the key picked by `kid`), and RS256
// with a key from `openssl`: good tokens let in, tokens of another key, another
// algorithm (HS256 with the public key as its secret, the classic confusion) refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_rs256_with_pem_and_jwks_keys() {
    let d = dir("es256");
    let t = now();
    let claims = json!({"sub": "sensor-1", "exp": t + 600, "iss": "fleet", "aud": ["mqtt"]});
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = d.join("es256.pem");
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();

    // The same key as a JWKS, with another key beside it.
    let raw = pair.public_key_raw();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = |kid: &str, x: &[u8], y: &[u8]| {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
               "x": b64.encode(x), "y": b64.encode(y)})
    };
    let decoy = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let decoy = decoy.public_key_raw();
    let jwks = d.join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [jwk("decoy", &decoy[1..33], &decoy[33..]), jwk("k1", &raw[1..33], &raw[33..])]})
            .to_string(),
    )
    .unwrap();

    let mut pem = JwtConfig::new(JwtAlgorithm::ES256, &public);
    pem.issuer = Some("fleet".into());
    pem.audience = Some("mqtt".into());
    let mut set = pem.clone();
    set.key_file = None;
    set.jwks_file = Some(jwks);
    for (what, config) in [("PEM", pem), ("JWKS", set)] {
        let (broker, addr) = broker_jwt(config, None).await;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let good = encode(&header, &claims, &signing).unwrap();
        assert_eq!(
            connect(addr, V5, "good", &good).await.1,
            ReasonCode::SUCCESS,
            "{what}"
        );
        assert_eq!(
            mosquitto_pub(addr.port(), "mqttv311", &good).await,
            0,
            "{what}"
        );
        let wrong_key = encode(&header, &claims, &other).unwrap();
        let confused = token(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
            claims.clone(),
        );
        let wrong_iss = token(
            Algorithm::ES256,
            &signing,
            json!({"sub": "sensor-1", "exp": t + 600, "iss": "other", "aud": "mqtt"}),
        );
        for (why, bad) in [
            ("another key", wrong_key),
            ("HS256", confused),
            ("iss", wrong_iss),
        ] {
            assert_eq!(
                connect(addr, V3, "bad", &bad).await.1,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "{what}: {why}"
            );
        }
        broker.shutdown().await;
    }

    // RS256, the public key from `openssl` (SubjectPublicKeyInfo PEM).
    let private = d.join("rsa.key");
    let public = d.join("rsa.pub");
    for args in [
        vec!["genrsa", "-out", private.to_str().unwrap(), "2048"],
        vec![
            "rsa",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}");
    }
    let signing = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let (broker, addr) = broker_jwt(JwtConfig::new(JwtAlgorithm::RS256, &public), None).await;
    let good = token(
        Algorithm::RS256,
        &signing,
        json!({"sub": "r1", "exp": t + 600}),
    );
    assert_eq!(connect(addr, V5, "rs", &good).await.1, ReasonCode::SUCCESS);
    let expired = token(
        Algorithm::RS256,
        &signing,
        json!({"sub": "r1", "exp": t - 120}),
    );
    assert_eq!(
        connect(addr, V5, "rs-old", &expired).await.1,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    broker.shutdown().await;
}

// A token's own permissions (`acl_claim`, EMQX's `{"pub": [...], "sub": [...], "all":
// [...]}`): a 5.0 client publishes where a `pub`/`all` filter matches (elsewhere PUBACK
// 0x87) and subscribes to what a `sub`/`all` filter covers (else 0x87), and its will
// must be granted; a 3.1.1 client's refused filter gets 0x80. A token without the claim
// is not limited by it; one whose claim is malformed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_permissions_limit_publish_subscribe_and_will() {
    let (mut jwt, key) = hs256("grants", "grants-secret");
    jwt.acl_claim = Some("acl".to_owned());
    let (broker, addr) = broker_jwt(jwt, None).await;
    let exp = now() + 600;
    let limited = token(
        Algorithm::HS256,
        &key,
        json!({"sub": "dev7", "exp": exp,
               "acl": {"pub": ["devices/7/#"], "sub": ["cmd/7/+"], "all": ["shared/+"]}}),
    );
    let (mut c, code) = connect(addr, V5, "limited", &limited).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let q1 = SubscriptionOptions::new(QoS::AtLeastOnce);
    let ack = c
        .subscribe(subscribe(
            1,
            &[
                ("cmd/7/reboot", q1),
                ("cmd/7/+", q1),
                ("cmd/#", q1),
                ("shared/x", q1),
                ("$share/g/cmd/7/x", q1),
                ("devices/7/t", q1),
            ],
        ))
        .await;
    assert_eq!(
        ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 1, 0x87, 1, 1, 0x87]
    );
    for (topic, want) in [
        ("devices/7/temp", 0x00),
        ("shared/x", 0x00),
        ("devices/8/temp", 0x87),
        ("cmd/7/reboot", 0x87),
    ] {
        let mut p = crate::spec::publish(topic, b"x", QoS::AtLeastOnce, false);
        p.qos_pid = mqtt_codec::QosPid::new(QoS::AtLeastOnce, crate::spec::pid(7));
        c.send(p).await;
        let code = c
            .find(|p| match p {
                mqtt_codec::Packet::PubAck(a) => Some(a.reason_code.0),
                _ => None,
            })
            .await;
        // 0x10 No matching subscribers is a success too.
        let got = if code == 0x10 { 0 } else { code };
        assert_eq!(got, want, "{topic}");
    }
    // 3.1.1: the refused filter is 0x80.
    let (mut c3, code) = connect(addr, V3, "limited-3", &limited).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let ack = c3
        .subscribe(subscribe(1, &[("cmd/7/a", q1), ("elsewhere", q1)]))
        .await;
    assert_eq!(
        ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 0x80]
    );
    // A will outside the grants refuses the CONNECT (0x87), inside it is accepted.
    for (will_topic, want) in [
        ("devices/7/gone", ReasonCode::SUCCESS),
        ("devices/8/gone", ReasonCode::NOT_AUTHORIZED),
    ] {
        let (_, ack) = Client::connect_with(addr, V5, "with-will", |c| {
            c.username = Some(s("dev7"));
            c.password = Some(Bytes::copy_from_slice(limited.as_bytes()));
            c.will = Some(mqtt_codec::Will {
                topic: s(will_topic),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            });
        })
        .await;
        assert_eq!(ack.reason_code, want, "{will_topic}");
    }
    // No claim: only the ACL (here none: everything) decides.
    let open = token(Algorithm::HS256, &key, json!({"sub": "dev9", "exp": exp}));
    let (mut c9, code) = connect(addr, V5, "open", &open).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let ack = c9.subscribe(subscribe(1, &[("cmd/#", q1)])).await;
    assert_eq!(
        ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1]
    );
    // A session kept from a connection whose token allowed more: its subscription
    // stays, but only what the new token allows reaches it.
    let persistent = |token: String| {
        move |c: &mut mqtt_codec::Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
            c.username = Some(s("dev7"));
            c.password = Some(Bytes::copy_from_slice(token.as_bytes()));
        }
    };
    let broad = token(Algorithm::HS256, &key, json!({"sub": "dev7", "exp": exp}));
    let (mut kept, ack) = Client::connect_with(addr, V5, "kept", persistent(broad)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let ack = kept.subscribe(subscribe(1, &[("cmd/#", q1)])).await;
    assert_eq!(
        ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1]
    );
    kept.drop_connection();
    let (mut kept, ack) = Client::connect_with(addr, V5, "kept", persistent(limited.clone())).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.session_present);
    for topic in ["cmd/8/x", "cmd/7/x"] {
        c9.publish(crate::spec::publish(
            topic,
            topic.as_bytes(),
            QoS::AtLeastOnce,
            false,
        ))
        .await;
    }
    let got = kept.recv_publish().await;
    assert_eq!(
        &*got.topic, "cmd/7/x",
        "only what the new token allows arrives"
    );
    // A malformed claim refuses the token.
    for bad in [
        json!({"pub": "devices/7/#"}),
        json!({"write": ["a"]}),
        json!({"pub": ["a/#/b"]}),
        json!(["a"]),
    ] {
        let t = token(
            Algorithm::HS256,
            &key,
            json!({"sub": "dev7", "exp": exp, "acl": bad}),
        );
        let (_, code) = connect(addr, V5, "malformed", &t).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{bad}");
    }
    broker.shutdown().await;
}

// A connection outlives its token by no more than the token says (`exp` plus the
// leeway, here 0): 5.0 gets DISCONNECT 0x87 Not authorized (mosquitto_sub logs it), 3.1.1
// is closed, and the will goes out, as for any connection the broker ends. A client
// with a long-lived token stays, and so does everyone with `disconnect_after_expire`
// off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires() {
    let (mut config, key) = hs256("expiry", "fleet-secret");
    config.leeway = 0;
    let (broker, addr) = broker_jwt(config.clone(), None).await;
    let t = now();
    let short = |sub: &str| token(Algorithm::HS256, &key, json!({"sub": sub, "exp": t + 3}));
    let long = token(
        Algorithm::HS256,
        &key,
        json!({"sub": "watcher", "exp": t + 600}),
    );

    let (mut watcher, code) = connect(addr, V5, "watcher", &long).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    watcher.sub("wills/#", QoS::AtLeastOnce).await;
    // A 5.0 client with a will, a 3.1.1 client, and mosquitto_sub.
    let mut with_will = {
        let mut c = Client::open(addr, V5).await;
        let mut connect = mqtt_codec::Connect::new(V5, s("short-v5"));
        connect.password = Some(Bytes::from(short("dev5")));
        connect.will = Some(mqtt_codec::Will {
            topic: s("wills/dev5"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        c.send(connect).await;
        match c.recv().await {
            mqtt_codec::Packet::ConnAck(ack) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    };
    let (mut v3, code) = connect(addr, V3, "short-v3", &short("dev3")).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let sub = crate::mosquitto_sub(addr.port(), "mqttv5")
        .args(["-t", "x/#", "-d", "-u", "device", "-P", &short("devsub")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // A 5.0 client whose input never runs dry: it publishes back to back, so its
    // connection never waits, and must be closed all the same.
    let flood = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let mut connect = mqtt_codec::Connect::new(V5, s("flooder"));
        connect.password = Some(Bytes::from(short("flooder")));
        let mut out = bytes::BytesMut::new();
        mqtt_codec::Packet::from(connect)
            .encode(V5, &mut out)
            .unwrap();
        wr.write_all(&out).await.unwrap();
        let mut batch = bytes::BytesMut::new();
        for _ in 0..500 {
            let p = crate::spec::publish("flood/x", b"0123456789", QoS::AtMostOnce, false);
            mqtt_codec::Packet::from(p).encode(V5, &mut batch).unwrap();
        }
        let writer = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while tokio::time::Instant::now() < until && wr.write_all(&batch).await.is_ok() {}
        });
        tokio::spawn(async move {
            let mut decoder = mqtt_codec::Decoder::with_version(V5);
            let mut buf = bytes::BytesMut::new();
            let mut seen = Vec::new();
            loop {
                while let Ok(Some(p)) = decoder.decode(&mut buf) {
                    seen.push(p);
                }
                match tokio::time::timeout(WAIT, rd.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
            }
            writer.abort();
            seen
        })
    };
    // Well before the expiry, everyone is still there.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    with_will.ping().await;
    v3.ping().await;
    // Then the short-lived ones are closed, within a second or so of exp.
    let within = std::time::Duration::from_secs(6);
    let got = with_will.next_within(within).await.expect("closed in time");
    assert!(
        matches!(&got, Some(mqtt_codec::Packet::Disconnect(d)) if d.reason_code == ReasonCode::NOT_AUTHORIZED),
        "{got:?}"
    );
    assert!(
        with_will
            .next_within(WAIT)
            .await
            .expect("then closed")
            .is_none()
    );
    let got = v3.next_within(within).await.expect("closed in time");
    assert!(got.is_none(), "3.1.1: closed without a packet, got {got:?}");
    let will = watcher.recv_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/dev5", &b"gone"[..])
    );
    watcher.ack(&will).await;
    let out = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .expect("mosquitto_sub ends once its token is refused")
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Received DISCONNECT (135)"), "{log}");
    let seen = tokio::time::timeout(WAIT, flood)
        .await
        .expect("the flooder closed")
        .unwrap();
    assert!(
        matches!(seen.first(), Some(mqtt_codec::Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS),
        "{:?}",
        seen.first()
    );
    assert!(
        matches!(seen.last(), Some(mqtt_codec::Packet::Disconnect(d)) if d.reason_code == ReasonCode::NOT_AUTHORIZED),
        "{:?}",
        seen.last()
    );
    // The long-lived token's connection is still up.
    watcher.ping().await;
    broker.shutdown().await;

    // With disconnect_after_expire off, a token is checked at CONNECT only.
    config.disconnect_after_expire = false;
    let (broker, addr) = broker_jwt(config, None).await;
    let t = now();
    let brief = token(Algorithm::HS256, &key, json!({"sub": "dev", "exp": t + 2}));
    let (mut c, code) = connect(addr, V5, "stays", &brief).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    c.ping().await;
    broker.shutdown().await;
}
