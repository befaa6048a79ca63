//! TLS, WebSocket and secure WebSocket against Mosquitto, with certificates made here.

use std::path::{Path, PathBuf};

use mqtt_client::{
    ConnectError, ConnectOptions, ProtocolVersion, QoS, TlsOptions, Transport,
    testing::{Listener, Mosquitto, temp_dir},
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::{connect, next_message, opts};

const ALL: &[QoS] = &[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

pub(crate) struct Pki {
    dir: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

pub(crate) fn pki() -> Pki {
    let dir = temp_dir("pki");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mqtt-rs test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    Pki {
        dir: dir.clone(),
        ca: write(&dir, "ca.pem", &ca.pem()),
        server_cert: write(&dir, "server.pem", &server.pem()),
        server_key: write(&dir, "server.key", &server_key.serialize_pem()),
        client_cert: write(&dir, "client.pem", &client.pem()),
        client_key: write(&dir, "client.key", &client_key.serialize_pem()),
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_listener(pki: &Pki, websockets: bool, require_certificate: bool) -> Listener {
    Listener {
        websockets,
        tls: Some((
            pki.ca.clone(),
            pki.server_cert.clone(),
            pki.server_key.clone(),
        )),
        require_certificate,
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
    let pki = pki();
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
    let other = self::pki();
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
    let pki = pki();
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
