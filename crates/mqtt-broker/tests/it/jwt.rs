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

/// A broker refusing anonymous clients, whose passwords are JWTs by `jwt`, with an ACL.
async fn broker_jwt(jwt: JwtConfig, acl: Option<&Path>) -> (Broker, std::net::SocketAddr) {
    broker_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = Some(jwt);
        c.auth.acl_file = acl.map(Path::to_owned);
    })
    .await
}

/// Connects with `token` as the password (and a user name the token overrides).
async fn connect(
    addr: std::net::SocketAddr,
    v: ProtocolVersion,
    id: &str,
    token: &str,
) -> (Client, ReasonCode) {
    let (c, ack) = Client::connect_with(addr, v, id, |c| {
        c.username = Some(s("ignored"));
        c.password = Some(Bytes::copy_from_slice(token.as_bytes()));
    })
    .await;
    (c, ack.reason_code)
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
