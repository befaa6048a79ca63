//! MQTT 5.0 enhanced authentication with SCRAM-SHA-256 (section 4.12): our mqtt-client
//! against the broker, and exchanges gone wrong sent raw with the codec.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use mqtt_broker::Broker;
use mqtt_client::{ConnectError, ConnectOptions, ProtocolVersion, ReconnectOptions, Scram};
use mqtt_codec::{Auth, ConnAck, Connect, Packet, ReasonCode};
use mqtt_scram::{ClientExchange, METHOD, StoredKeys, salted_password};

use crate::spec::{Client, s};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A scram_file with alice (password "secret") in a fresh directory.
fn scram_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-scram-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scram");
    let keys = StoredKeys::derive(b"secret", b"0123456789abcdef", 4096);
    std::fs::write(&path, format!("# test users\nalice:{keys}\n")).unwrap();
    path
}

async fn scram_broker(tag: &str, f: impl FnOnce(&mut mqtt_broker::Config)) -> (Broker, SocketAddr) {
    let path = scram_file(tag);
    crate::broker_with(|c| {
        c.auth.scram_file = Some(path);
        f(c);
    })
    .await
}

fn options(addr: SocketAddr, id: &str, user: &str, password: &str) -> ConnectOptions {
    ConnectOptions::new(addr.ip().to_string(), addr.port())
        .version(V5)
        .client_id(id)
        .connect_timeout(Duration::from_secs(5))
        .reconnect(ReconnectOptions {
            enabled: false,
            ..ReconnectOptions::default()
        })
        .authenticator(Scram::new(user, password))
}

fn refused_with(e: &ConnectError) -> Option<ReasonCode> {
    match e {
        ConnectError::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

// 5.0 MQTT-4.12.0-2: the broker asks for more data with AUTH 0x18; 5.0 MQTT-4.12.0-5:
// CONNACK carries CONNECT's method; re-authentication ends with AUTH 0x00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_connects_and_reauthenticates() {
    let (broker, addr) = scram_broker("ok", |_| {}).await;
    let (client, _connection) = mqtt_client::connect(options(addr, "scram-ok", "alice", "secret"))
        .await
        .expect("SCRAM-SHA-256 accepted");
    client
        .publish("t", "x", mqtt_client::QoS::AtLeastOnce, false)
        .await
        .unwrap();
    client.reauthenticate().await.expect("re-authenticated");
    client.reauthenticate().await.expect("again");
    client
        .publish("t", "y", mqtt_client::QoS::AtLeastOnce, false)
        .await
        .unwrap();
    broker.shutdown().await;
}

// 5.0 MQTT-4.12.0-4: a wrong password, and an unknown user (answered with decoy keys,
// the same path), get CONNACK 0x86 and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_0x86() {
    let (broker, addr) = scram_broker("wrong", |_| {}).await;
    for (user, password) in [("alice", "wrong"), ("mallory", "secret")] {
        let e = mqtt_client::connect(options(addr, "scram-bad", user, password))
            .await
            .expect_err("refused");
        assert_eq!(
            refused_with(&e),
            Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            "{user}: {e}"
        );
    }
    broker.shutdown().await;
}

// 5.0 MQTT-4.12.0-1: a method the broker does not offer gets CONNACK 0x8C: another
// method, and SCRAM-SHA-256 on a broker without a scram_file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_gets_0x8c() {
    let (broker, addr) = scram_broker("method", |_| {}).await;
    let (_, ack) = Client::connect_with(addr, V5, "m", |c| {
        c.properties.authentication_method = Some(s("SCRAM-SHA-512"));
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    broker.shutdown().await;
    let (plain, addr) = crate::broker().await;
    let e = mqtt_client::connect(options(addr, "m2", "alice", "secret"))
        .await
        .expect_err("refused");
    assert_eq!(
        refused_with(&e),
        Some(ReasonCode::BAD_AUTHENTICATION_METHOD),
        "{e}"
    );
    plain.shutdown().await;
}

fn auth(reason: ReasonCode, method: &str, data: &[u8]) -> Auth {
    let mut a = Auth {
        reason_code: reason,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(s(method));
    a.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    a
}

/// Sends CONNECT with client-first; returns the connection, the exchange and the
/// broker's server-first.
async fn start(addr: SocketAddr, id: &str) -> (Client, ClientExchange, Vec<u8>) {
    let mut c = Client::open(addr, V5).await;
    let exchange = ClientExchange::new("alice", "fyko+d2lbbFgONRv9qkxdawL");
    let mut connect = Connect::new(V5, s(id));
    connect.properties.authentication_method = Some(s(METHOD));
    connect.properties.authentication_data = Some(exchange.client_first().into());
    c.send(connect).await;
    let Packet::Auth(a) = c.recv().await else {
        panic!("expected AUTH 0x18")
    };
    assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
    let data = a.properties.authentication_data.unwrap().to_vec();
    (c, exchange, data)
}

/// client-final for server-first with `password`.
fn client_final(exchange: &ClientExchange, server_first: &[u8], password: &[u8]) -> Vec<u8> {
    let first = exchange.server_first(server_first).unwrap();
    let salted = salted_password(password, &first.salt, first.iterations);
    exchange.client_final(&first, &salted).0
}

/// The one CONNACK the broker sent before closing.
async fn refusal(c: &mut Client) -> ConnAck {
    let got = c.closed().await;
    match &got[..] {
        [Packet::ConnAck(ack)] => (**ack).clone(),
        other => panic!("expected a CONNACK and the end, got {other:?}"),
    }
}

/// The one DISCONNECT the broker sent before closing.
async fn disconnected(c: &mut Client) -> ReasonCode {
    let got = c.closed().await;
    match &got[..] {
        [Packet::Disconnect(d)] => d.reason_code,
        other => panic!("expected a DISCONNECT and the end, got {other:?}"),
    }
}

// 5.0 MQTT-4.12.0-3: only AUTH 0x18 answers the broker's AUTH; 5.0 MQTT-4.12.0-5: with
// CONNECT's method. 5.0 MQTT-4.12.0-4: a malformed exchange is refused with CONNACK and
// the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_exchanges_before_connack_are_refused() {
    let (broker, addr) = scram_broker("raw", |c| c.limits.connect_timeout = 1).await;
    // A wrong reason code.
    let (mut c, ..) = start(addr, "r1").await;
    c.send(auth(ReasonCode::REAUTHENTICATE, METHOD, b"x")).await;
    assert_eq!(
        refusal(&mut c).await.reason_code,
        ReasonCode::PROTOCOL_ERROR
    );
    // Another method.
    let (mut c, exchange, first) = start(addr, "r2").await;
    let last = client_final(&exchange, &first, b"secret");
    c.send(auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        "SCRAM-SHA-1",
        &last,
    ))
    .await;
    assert_eq!(
        refusal(&mut c).await.reason_code,
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
    // Another packet.
    let (mut c, ..) = start(addr, "r3").await;
    c.send(Packet::PingReq).await;
    assert_eq!(
        refusal(&mut c).await.reason_code,
        ReasonCode::PROTOCOL_ERROR
    );
    // Garbage, bad base64, a wrong nonce, too much data.
    for data in [
        &b"\xff garbage"[..],
        b"c=!!!,r=x,p=AAAA",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawLsomeoneelse,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        &[b'c'; 4000],
    ] {
        let (mut c, ..) = start(addr, "r4").await;
        c.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, METHOD, data))
            .await;
        assert_eq!(
            refusal(&mut c).await.reason_code,
            ReasonCode::NOT_AUTHORIZED,
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    // Garbage client-first.
    let mut c = Client::open(addr, V5).await;
    let mut connect = Connect::new(V5, s("r5"));
    connect.properties.authentication_method = Some(s(METHOD));
    connect.properties.authentication_data = Some(Bytes::from_static(b"p=tls-unique,,n=a,r=x"));
    c.send(connect).await;
    assert_eq!(
        refusal(&mut c).await.reason_code,
        ReasonCode::NOT_AUTHORIZED
    );
    // No answer within the connect timeout (1 s).
    let (mut c, ..) = start(addr, "r6").await;
    assert_eq!(
        refusal(&mut c).await.reason_code,
        ReasonCode::NOT_AUTHORIZED
    );
    broker.shutdown().await;
}

/// A raw connection authenticated with SCRAM.
async fn connected(addr: SocketAddr, id: &str) -> (Client, ClientExchange) {
    let (mut c, exchange, first) = start(addr, id).await;
    let last = client_final(&exchange, &first, b"secret");
    c.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, METHOD, &last))
        .await;
    let Packet::ConnAck(ack) = c.recv().await else {
        panic!("expected CONNACK")
    };
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some(METHOD)
    );
    assert!(
        ack.properties
            .authentication_data
            .as_deref()
            .is_some_and(|d| d.starts_with(b"v=")),
        "{ack:?}"
    );
    (c, exchange)
}

// 5.0 MQTT-4.12.1-2: a failed re-authentication closes the connection with DISCONNECT
// 0x87; 5.0 MQTT-4.12.1-1: another method gets 0x8C; 5.0 MQTT-4.12.0-7: AUTH when
// CONNECT had no method is a protocol error (0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_malformed_reauthentication_closes_the_connection() {
    let (broker, addr) = scram_broker("reauth", |_| {}).await;
    // Success, then a wrong password.
    let (mut c, exchange) = connected(addr, "re1").await;
    for (password, ok) in [(&b"secret"[..], true), (b"wrong", false)] {
        c.send(auth(
            ReasonCode::REAUTHENTICATE,
            METHOD,
            &exchange.client_first(),
        ))
        .await;
        let Packet::Auth(a) = c.recv().await else {
            panic!("expected AUTH 0x18")
        };
        assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
        let first = a.properties.authentication_data.unwrap();
        let last = client_final(&exchange, &first, password);
        c.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, METHOD, &last))
            .await;
        if ok {
            let Packet::Auth(a) = c.recv().await else {
                panic!("expected AUTH 0x00")
            };
            assert_eq!(a.reason_code, ReasonCode::SUCCESS);
        } else {
            assert_eq!(disconnected(&mut c).await, ReasonCode::NOT_AUTHORIZED);
        }
    }
    // Another method.
    let (mut c, exchange) = connected(addr, "re2").await;
    c.send(auth(
        ReasonCode::REAUTHENTICATE,
        "SCRAM-SHA-1",
        &exchange.client_first(),
    ))
    .await;
    assert_eq!(
        disconnected(&mut c).await,
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
    // AUTH 0x18 with no re-authentication under way.
    let (mut c, _) = connected(addr, "re3").await;
    c.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, METHOD, b"x"))
        .await;
    assert_eq!(disconnected(&mut c).await, ReasonCode::PROTOCOL_ERROR);
    // No method in CONNECT.
    let mut c = Client::connect(addr, V5, "re4").await;
    c.send(auth(ReasonCode::REAUTHENTICATE, METHOD, b"n,,n=alice,r=x"))
        .await;
    assert_eq!(disconnected(&mut c).await, ReasonCode::PROTOCOL_ERROR);
    broker.shutdown().await;
}
