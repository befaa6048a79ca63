//! MQTT 5.0 enhanced authentication over a real socket, against a server played by
//! hand ([`RawPeer`]): neither Mosquitto 2.0 nor our broker has an authentication
//! method to offer.

use std::time::Duration;

use bytes::Bytes;
use mqtt_client::{
    Authenticator, ClientError, ConnAck, ConnectError, ConnectOptions, ProtocolVersion, ReasonCode,
    ReconnectOptions,
    codec::{Auth, Packet},
    testing::RawPeer,
};
use tokio::net::{TcpListener, TcpStream};

const METHOD: &str = "X-CHALLENGE";

/// Answers `challenge-N` with `response-N`; refuses `bad`; checks the server's final
/// data is `server-final`.
#[derive(Debug)]
struct Scripted;

impl Authenticator for Scripted {
    fn method(&self) -> &str {
        METHOD
    }

    fn start(&mut self) -> Result<Option<Bytes>, String> {
        Ok(Some(Bytes::from_static(b"client-first")))
    }

    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        let data = data.unwrap_or_default();
        match data.strip_prefix(b"challenge-") {
            Some(n) => Ok(Some(Bytes::from([b"response-", n].concat()))),
            None => Err(format!(
                "unexpected challenge {:?}",
                String::from_utf8_lossy(data)
            )),
        }
    }

    fn success(&mut self, data: Option<&[u8]>) -> Result<(), String> {
        match data {
            Some(b"server-final") | None => Ok(()),
            Some(other) => Err(format!(
                "the server's proof {:?} is wrong",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

fn auth(reason: ReasonCode, data: &'static [u8]) -> Auth {
    let mut a = Auth {
        reason_code: reason,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(METHOD.try_into().unwrap());
    a.properties.authentication_data = Some(Bytes::from_static(data));
    a
}

/// Asserts `p` is AUTH `reason` carrying our method and `data`.
fn assert_auth(p: Packet, reason: ReasonCode, data: &[u8]) {
    let Packet::Auth(a) = p else {
        panic!("expected AUTH, got {p:?}")
    };
    assert_eq!(a.reason_code, reason);
    // 5.0 MQTT-4.12.0-5: every AUTH carries the method of CONNECT.
    assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
    assert_eq!(a.properties.authentication_data.as_deref(), Some(data));
}

async fn server() -> (TcpListener, ConnectOptions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = ConnectOptions::new("127.0.0.1", port)
        .version(ProtocolVersion::V5)
        .client_id("auth")
        .connect_timeout(Duration::from_secs(5))
        .reconnect(ReconnectOptions {
            enabled: false,
            ..ReconnectOptions::default()
        })
        .authenticator(Scripted);
    (listener, options)
}

async fn accept(listener: &TcpListener) -> RawPeer<TcpStream> {
    let (s, _) = listener.accept().await.unwrap();
    RawPeer::new(s, ProtocolVersion::V5)
}

/// CONNECT with the method and first data, then two challenges answered.
async fn two_step_challenge(peer: &mut RawPeer<TcpStream>) {
    let Packet::Connect(c) = peer.recv().await else {
        panic!("expected CONNECT")
    };
    assert_eq!(c.properties.authentication_method.as_deref(), Some(METHOD));
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"client-first"[..])
    );
    for (challenge, response) in [
        (&b"challenge-1"[..], &b"response-1"[..]),
        (b"challenge-2", b"response-2"),
    ] {
        peer.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, challenge))
            .await;
        // 5.0 MQTT-4.12.0-3: the client answers AUTH with AUTH 0x18.
        assert_auth(
            peer.recv().await,
            ReasonCode::CONTINUE_AUTHENTICATION,
            response,
        );
    }
}

fn connack_with_method(data: &'static [u8]) -> ConnAck {
    let mut ack = ConnAck::new(false, ReasonCode::SUCCESS);
    ack.properties.authentication_method = Some(METHOD.try_into().unwrap());
    ack.properties.authentication_data = Some(Bytes::from_static(data));
    ack
}

// 5.0 MQTT-4.12.0-3, 5.0 MQTT-4.12.0-5, 5.0 MQTT-4.12.1-1: a two-step challenge at
// CONNECT, then a re-authentication (AUTH 0x19 with the same method) that succeeds,
// and one the server refuses.
#[tokio::test]
async fn challenge_then_reauthentication() {
    let (listener, options) = server().await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        two_step_challenge(&mut peer).await;
        peer.send(connack_with_method(b"server-final")).await;
        // Re-authentication: the first data again, one challenge, success.
        assert_auth(
            peer.recv().await,
            ReasonCode::REAUTHENTICATE,
            b"client-first",
        );
        peer.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, b"challenge-9"))
            .await;
        assert_auth(
            peer.recv().await,
            ReasonCode::CONTINUE_AUTHENTICATION,
            b"response-9",
        );
        peer.send(auth(ReasonCode::SUCCESS, b"server-final")).await;
        // Second re-authentication: refused with DISCONNECT 0x87.
        assert_auth(
            peer.recv().await,
            ReasonCode::REAUTHENTICATE,
            b"client-first",
        );
        peer.send(mqtt_client::Disconnect::new(ReasonCode::NOT_AUTHORIZED))
            .await;
        assert!(peer.closed_within(Duration::from_secs(5)).await);
    });
    let (client, _conn) = mqtt_client::connect(options).await.unwrap();
    client.reauthenticate().await.unwrap();
    let e = client.reauthenticate().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Auth(why) if why.contains("Not authorized")),
        "{e}"
    );
    server.await.unwrap();
}

// 5.0 MQTT-4.12.1-2: a re-authentication the client itself refuses (a wrong server
// proof) ends in DISCONNECT 0x87 from the client and a closed connection.
#[tokio::test]
async fn client_refuses_a_wrong_server_proof_on_reauthentication() {
    let (listener, options) = server().await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        two_step_challenge(&mut peer).await;
        peer.send(connack_with_method(b"server-final")).await;
        assert_auth(
            peer.recv().await,
            ReasonCode::REAUTHENTICATE,
            b"client-first",
        );
        peer.send(auth(ReasonCode::SUCCESS, b"forged")).await;
        let Packet::Disconnect(d) = peer.recv().await else {
            panic!("expected DISCONNECT")
        };
        assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED);
        assert!(peer.closed_within(Duration::from_secs(5)).await);
    });
    let (client, _conn) = mqtt_client::connect(options).await.unwrap();
    let e = client.reauthenticate().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Auth(why) if why.contains("forged")),
        "{e}"
    );
    server.await.unwrap();
}

// Failure paths at CONNECT: the server refuses after the challenge (CONNACK 0x87:
// ConnectError::Refused), and the authenticator refuses a challenge (ConnectError::Auth,
// and the client closes the connection).
#[tokio::test]
async fn refusals_at_connect_are_typed_errors() {
    let (listener, options) = server().await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        two_step_challenge(&mut peer).await;
        peer.send(ConnAck::new(false, ReasonCode::NOT_AUTHORIZED))
            .await;
        let mut peer = accept(&listener).await;
        assert!(matches!(peer.recv().await, Packet::Connect(_)));
        peer.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, b"bad"))
            .await;
        assert!(peer.closed_within(Duration::from_secs(5)).await);
    });
    let e = mqtt_client::connect(options.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: ReasonCode::NOT_AUTHORIZED,
                ..
            }
        ),
        "{e}"
    );
    let e = mqtt_client::connect(options).await.unwrap_err();
    assert!(
        matches!(&e, ConnectError::Auth(why) if why.contains("unexpected challenge")),
        "{e}"
    );
    server.await.unwrap();
}

// 5.0 MQTT-4.12.0-7: without an authentication method the client never sends AUTH,
// and an AUTH from the server is a protocol error (the server broke MQTT-4.12.0-6;
// the 5.0 rule binds the server) that fails the connection.
#[tokio::test]
async fn no_auth_without_a_method() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        let Packet::Connect(c) = peer.recv().await else {
            panic!("expected CONNECT")
        };
        assert_eq!(c.properties.authentication_method, None);
        peer.send(auth(ReasonCode::CONTINUE_AUTHENTICATION, b"challenge-1"))
            .await;
        // The client answers with DISCONNECT or just closes, never with AUTH.
        while let Some(p) = peer.try_recv(Duration::from_secs(5)).await {
            assert!(!matches!(p, Packet::Auth(_)), "{p:?}");
        }
    });
    let options = ConnectOptions::new("127.0.0.1", port)
        .version(ProtocolVersion::V5)
        .connect_timeout(Duration::from_secs(5));
    let e = mqtt_client::connect(options).await.unwrap_err();
    assert!(matches!(e, ConnectError::Closed(_)), "{e}");
    server.await.unwrap();
}

/// A server that knows SCRAM-SHA-256 keys for "secret" and, if `tamper`, sends a
/// server-final with one bit flipped: a server that does not know the keys.
async fn scram_server(listener: TcpListener, tamper: bool) {
    use mqtt_scram::{ClientFirst, METHOD as SCRAM, ServerExchange, StoredKeys};
    let keys = StoredKeys::derive(b"secret", b"salt-of-the-test", 4096);
    let mut peer = accept(&listener).await;
    let Packet::Connect(c) = peer.recv().await else {
        panic!("expected CONNECT")
    };
    assert_eq!(c.properties.authentication_method.as_deref(), Some(SCRAM));
    let first = ClientFirst::parse(c.properties.authentication_data.as_deref().unwrap()).unwrap();
    assert_eq!(first.username, "alice");
    let (exchange, server_first) = ServerExchange::start(first, &keys, "server-nonce");
    let mut a = Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        ..Auth::default()
    };
    a.properties.authentication_method = Some(SCRAM.try_into().unwrap());
    a.properties.authentication_data = Some(server_first.into());
    peer.send(a).await;
    let Packet::Auth(answer) = peer.recv().await else {
        panic!("expected AUTH 0x18")
    };
    let mut last = exchange
        .finish(answer.properties.authentication_data.as_deref().unwrap())
        .expect("the client's proof is right");
    if tamper {
        // "v=" then base64: flip a bit of the first signature character.
        last[2] ^= 1;
    }
    let mut ack = ConnAck::new(false, ReasonCode::SUCCESS);
    ack.properties.authentication_method = Some(SCRAM.try_into().unwrap());
    ack.properties.authentication_data = Some(last.into());
    peer.send(ack).await;
    if tamper {
        assert!(peer.closed_within(Duration::from_secs(5)).await);
    }
}

// Mutual authentication: the client accepts a server whose SCRAM-SHA-256 signature is
// right, and fails the connection when the server's proof was tampered with.
#[tokio::test]
async fn scram_checks_the_servers_proof() {
    for tamper in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(scram_server(listener, tamper));
        let options = ConnectOptions::new("127.0.0.1", port)
            .version(ProtocolVersion::V5)
            .client_id("scram")
            .connect_timeout(Duration::from_secs(5))
            .reconnect(ReconnectOptions {
                enabled: false,
                ..ReconnectOptions::default()
            })
            .authenticator(mqtt_client::Scram::new("alice", "secret"));
        let result = mqtt_client::connect(options).await;
        if tamper {
            let e = result.expect_err("a tampered proof fails the connection");
            assert!(
                matches!(&e, ConnectError::Auth(why) if why.contains("signature")),
                "{e}"
            );
        } else {
            result.expect("the right proof is accepted");
        }
        server.await.unwrap();
    }
}
