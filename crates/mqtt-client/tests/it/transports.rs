//! TLS, WebSocket and secure WebSocket against Mosquitto, with certificates made here.

use mqtt_client::{
    ConnectError, ConnectOptions, ProtocolVersion, QoS, TlsOptions, Transport,
    testing::{Listener, Mosquitto, Pki},
};

use crate::{connect, next_message, opts};

const ALL: &[QoS] = &[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

fn tls_listener(pki: &Pki, websockets: bool, require_certificate: bool) -> Listener {
    Listener {
        websockets,
        tls: Some((
            pki.ca.clone(),
            pki.server_cert.clone(),
            pki.server_key.clone(),
        )),
        require_certificate,
        ..Listener::default()
    }
}

async fn round_trip(options: ConnectOptions, size: usize, qoss: &[QoS]) {
    let (c, mut conn) = connect(options).await;
    c.subscribe("x/#", QoS::ExactlyOnce).await.unwrap();
    // Larger than a TLS record or Mosquitto's WebSocket buffer, to cross boundaries.
    let big = vec![7u8; size];
    for &qos in qoss {
        c.publish("x/y", big.clone(), qos, false).await.unwrap();
        let m = next_message(&mut conn).await;
        assert_eq!(m.payload.len(), big.len());
    }
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn tls_with_ca_file_and_client_certificate() {
    let pki = Pki::generate();
    let broker = Mosquitto::start_with(
        &[
            tls_listener(&pki, false, false),
            tls_listener(&pki, false, true),
        ],
        "",
    );
    let tls = TlsOptions {
        ca_file: Some(pki.ca.clone()),
        ..Default::default()
    };
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let url = format!("mqtts://localhost:{}", broker.extra_ports[0]);
        round_trip(opts(&url, version, "tls").tls(tls.clone()), 100_000, ALL).await;
    }
    // The host name must match the certificate... unless told not to check it.
    let url = format!("mqtts://127.0.0.1:{}", broker.extra_ports[0]);
    round_trip(
        opts(&url, ProtocolVersion::V5, "ip").tls(tls.clone()),
        100_000,
        ALL,
    )
    .await;

    // Mutual TLS.
    let url = format!("mqtts://localhost:{}", broker.extra_ports[1]);
    let err = mqtt_client::connect(opts(&url, ProtocolVersion::V5, "nocert").tls(tls.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Io { .. } | ConnectError::Closed(_)),
        "{err:?}"
    );
    let mtls = TlsOptions {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..tls.clone()
    };
    round_trip(
        opts(&url, ProtocolVersion::V5, "mtls").tls(mtls),
        100_000,
        ALL,
    )
    .await;

    // An untrusted server is refused with a message that says so.
    let other = Pki::generate();
    let wrong = TlsOptions {
        ca_file: Some(other.ca.clone()),
        ..Default::default()
    };
    let url = format!("mqtts://localhost:{}", broker.extra_ports[0]);
    let err = mqtt_client::connect(opts(&url, ProtocolVersion::V5, "x").tls(wrong))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // An unreadable CA file is a configuration error.
    let missing = TlsOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let err = mqtt_client::connect(opts(&url, ProtocolVersion::V5, "x").tls(missing))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::TlsConfig(_)), "{err:?}");
}

// 3.1.1 MQTT-6.0.0-3, 5.0 MQTT-6.0.0-3: the client offers the WebSocket subprotocol
// "mqtt", and MQTT flows over it (plain and TLS) with Mosquitto.
#[tokio::test]
async fn websocket_and_secure_websocket() {
    let pki = Pki::generate();
    let broker = Mosquitto::start_with(
        &[
            Listener {
                websockets: true,
                ..Default::default()
            },
            tls_listener(&pki, true, false),
        ],
        "",
    );
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let url = format!("ws://127.0.0.1:{}/mqtt", broker.extra_ports[0]);
        let o = opts(&url, version, "ws");
        assert_eq!(o.transport_kind(), Transport::Ws);
        // Mosquitto 2.0.11 over WebSocket takes about half a second per message, so
        // one QoS 2 exchange each (a message that spans WebSocket frames).
        round_trip(o, 20_000, &[QoS::ExactlyOnce]).await;
        let url = format!("wss://localhost:{}/mqtt", broker.extra_ports[1]);
        let tls = TlsOptions {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        };
        round_trip(
            opts(&url, version, "wss").tls(tls),
            20_000,
            &[QoS::ExactlyOnce],
        )
        .await;
    }
}

// ALPN: the protocols in `TlsOptions::alpn_protocols` are offered, and the server's
// choice is made (Mosquitto 2.0.11 has no ALPN setting, so a rustls server plays it,
// recording what was agreed).
#[tokio::test]
async fn tls_alpn_is_offered() {
    use mqtt_client::{ConnAck, ReasonCode, codec::Packet, testing::RawPeer};
    let pki = Pki::generate();
    let acceptor = pki.acceptor(&[b"x-other", b"mqtt"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut agreed = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            agreed.push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
            let mut peer = RawPeer::new(tls, ProtocolVersion::V3_1_1);
            assert!(matches!(peer.recv().await, Packet::Connect(_)));
            peer.send(ConnAck::new(false, ReasonCode::SUCCESS)).await;
            assert!(matches!(peer.recv().await, Packet::Disconnect(_)));
        }
        agreed
    });
    for alpn in [vec![b"mqtt".to_vec()], vec![]] {
        let options = ConnectOptions::new("localhost", port)
            .transport(Transport::Tls)
            .tls(TlsOptions {
                ca_file: Some(pki.ca.clone()),
                alpn_protocols: alpn,
                ..TlsOptions::default()
            });
        let (c, _conn) = connect(options).await;
        c.disconnect().await.unwrap();
    }
    let agreed = tokio::time::timeout(crate::T, server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agreed, [Some(b"mqtt".to_vec()), None]);
}
