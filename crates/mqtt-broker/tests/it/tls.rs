//! TLS listeners against real peers: Mosquitto's clients (OpenSSL) with `--cafile`,
//! `--cert`/`--key` and each TLS version, Python paho-mqtt, and a rustls client for
//! what the others cannot show (the version and ALPN agreed). Certificates come from
//! `pki` (rcgen).

use std::{path::Path, process::Stdio, sync::Arc, time::Duration};

use mqtt_broker::{
    Auth,
    auth::TransportKind,
    config::{ClientCertificates, Listener, SanKind, TlsVersion},
};
use tokio::{net::TcpStream, process::Command};
use tokio_rustls::TlsConnector;

use crate::{
    WAIT,
    pki::{
        ClientCert, Pki, Recorder, broker_on, closed_within, mqtt_connect, require, tls_listener,
    },
};

const MOSQUITTO: &str = "install Debian's mosquitto-clients";

/// `mosquitto_pub` to `port` over TLS with `args` besides: whether it succeeded.
async fn mosquitto_pub(port: u16, pki: &Pki, args: &[&str]) -> bool {
    let port = port.to_string();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "localhost", "-p", &port, "--cafile"])
        .arg(&pki.ca)
        .args(["-t", "tls/test", "-m", "hello", "-q", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tokio::time::timeout(WAIT, cmd.status())
        .await
        .expect("mosquitto_pub finishes")
        .unwrap()
        .success()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_1_2_and_1_3() {
    let _timing = crate::TIMING.read().await;
    require("mosquitto_sub", MOSQUITTO);
    let pki = Pki::new();
    let (broker, addrs) = broker_on(
        vec![tls_listener(&pki.cert, &pki.key)],
        Auth::default(),
        |_| {},
    )
    .await;
    let port = addrs[0].port().to_string();
    for version in ["tlsv1.2", "tlsv1.3"] {
        let topic = format!("tls/{version}");
        let sub = Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &port, "--cafile", arg(&pki.ca)])
            .args([
                "--tls-version",
                version,
                "-t",
                &topic,
                "-C",
                "1",
                "-W",
                "10",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let published = Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port, "--cafile", arg(&pki.ca)])
            .args(["--tls-version", version, "-t", &topic, "-q", "1", "-m"])
            .arg(format!("over {version}"))
            .status()
            .await
            .unwrap();
        assert!(published.success(), "mosquitto_pub over {version}");
        let out = tokio::time::timeout(WAIT, sub.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("over {version}")
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_alpn_and_key_forms() {
    let _timing = crate::TIMING.read().await;
    let pki = Pki::new();
    let sec1 = pki.sec1_key();
    let (rsa_cert, rsa_pkcs1) = pki.rsa_server();
    let mut tls13 = tls_listener(&pki.cert, &pki.key);
    tls13.tls_version = Some(TlsVersion::Tls13);
    let (broker, addrs) = broker_on(
        vec![
            tls_listener(&pki.cert, &pki.key),   // PKCS#8
            tls_listener(&pki.cert, &sec1),      // SEC1
            tls_listener(&rsa_cert, &rsa_pkcs1), // PKCS#1
            tls13,
        ],
        Auth::default(),
        |_| {},
    )
    .await;
    let v12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    for (i, addr) in addrs[..3].iter().enumerate() {
        for (versions, expected) in [
            (v12, rustls::ProtocolVersion::TLSv1_2),
            (v13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let mut s = tls_connect(*addr, pki.client_config(None, versions, &[]))
                .await
                .unwrap_or_else(|e| panic!("listener {i}, {expected:?}: {e}"));
            assert_eq!(s.get_ref().1.protocol_version(), Some(expected));
            assert_eq!(
                mqtt_connect(&mut s, &format!("k{i}{expected:?}"))
                    .await
                    .unwrap(),
                0
            );
        }
    }
    // tls_version = "tlsv1.3": a TLS 1.2 client is refused.
    assert!(
        tls_connect(addrs[3], pki.client_config(None, v12, &[]))
            .await
            .is_err()
    );
    let mut s = tls_connect(addrs[3], pki.client_config(None, v13, &[]))
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut s, "only13").await.unwrap(), 0);
    // ALPN `mqtt` agreed when offered; not required when something else, or nothing,
    // is offered.
    let both: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    for (offer, agreed) in [
        (&[&b"mqtt"[..]][..], Some(&b"mqtt"[..])),
        (
            &[&b"x-amzn-mqtt-ca"[..], &b"mqtt"[..]][..],
            Some(&b"mqtt"[..]),
        ),
        (&[&b"h2"[..]][..], None),
        (&[][..], None),
    ] {
        let mut s = tls_connect(addrs[0], pki.client_config(None, both, offer))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), agreed, "offered {offer:?}");
        assert_eq!(mqtt_connect(&mut s, "alpn").await.unwrap(), 0);
    }
    broker.shutdown().await;
}

/// Client certificates required: a good one connects, none, an expired one, one from
/// another CA and a revoked one (the CA's CRL) do not; optional: none connects too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required_and_optional() {
    let _timing = crate::TIMING.read().await;
    require("mosquitto_pub", MOSQUITTO);
    let pki = Pki::new();
    let mut required = tls_listener(&pki.cert, &pki.key);
    required.cafile = Some(pki.ca.clone());
    required.crlfile = Some(pki.crl.clone());
    required.require_certificate = ClientCertificates::Required;
    let mut optional = tls_listener(&pki.cert, &pki.key);
    optional.capath = Some(pki.dir.join("ca-dir"));
    std::fs::create_dir_all(pki.dir.join("ca-dir")).unwrap();
    std::fs::copy(&pki.ca, pki.dir.join("ca-dir/ca.pem")).unwrap();
    std::fs::write(pki.dir.join("ca-dir/README"), "not a certificate").unwrap();
    optional.require_certificate = ClientCertificates::Optional;
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(vec![required, optional], recorder.auth(), |_| {}).await;
    let (req, opt) = (addrs[0].port(), addrs[1].port());
    let good = pki.client("device-1", ClientCert::Good);
    let with = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        vec![
            "--cert".to_owned(),
            arg(cert).to_owned(),
            "--key".to_owned(),
            arg(key).to_owned(),
        ]
    };
    let args = |v: &[String], id: &str| {
        let mut a: Vec<String> = v.to_vec();
        a.extend(["-i".to_owned(), id.to_owned()]);
        a
    };
    let run = |port, a: Vec<String>| {
        let pki = &pki;
        async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            mosquitto_pub(port, pki, &refs).await
        }
    };
    assert!(
        run(req, args(&with(&good), "good")).await,
        "a good certificate"
    );
    let seen = recorder.seen("good").await;
    assert!(seen.transport.client_certificate);
    assert_eq!(seen.transport.kind, TransportKind::Tls);
    assert_eq!(seen.transport.listener, 0);
    assert!(!seen.username_from_certificate);
    assert!(!run(req, args(&[], "none")).await, "no certificate");
    for kind in [
        ClientCert::Expired,
        ClientCert::OtherCa,
        ClientCert::Revoked,
    ] {
        let bad = pki.client("device-2", kind);
        assert!(!run(req, args(&with(&bad), "bad")).await, "{kind:?} let in");
    }
    assert_eq!(recorder.count(), 1, "only the good client reached CONNECT");
    // Optional: without a certificate too, and told apart.
    assert!(run(opt, args(&[], "anonymous")).await);
    assert!(
        !recorder
            .seen("anonymous")
            .await
            .transport
            .client_certificate
    );
    assert!(run(opt, args(&with(&good), "certified")).await);
    let seen = recorder.seen("certified").await;
    assert!(seen.transport.client_certificate);
    assert_eq!(seen.transport.listener, 1);
    let other = pki.client("device-3", ClientCert::OtherCa);
    assert!(
        !run(opt, args(&with(&other), "other")).await,
        "a certificate from another CA"
    );
    broker.shutdown().await;
}

/// `use_identity_as_username` / `use_subject_as_username`: the certificate's name is
/// the user name the Authenticator sees, whatever CONNECT says, and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_names_reach_the_authenticator() {
    let _timing = crate::TIMING.read().await;
    require("mosquitto_pub", MOSQUITTO);
    let pki = Pki::new();
    let listener = |identity: bool| {
        let mut l = tls_listener(&pki.cert, &pki.key);
        l.cafile = Some(pki.ca.clone());
        l.require_certificate = ClientCertificates::Optional;
        l.use_identity_as_username = identity;
        l.use_subject_as_username = !identity;
        l
    };
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(
        vec![listener(true), listener(false)],
        recorder.auth(),
        |_| {},
    )
    .await;
    let (cert, key) = pki.client("sensor-7", ClientCert::Good);
    let certified = [
        "--cert",
        arg(&cert),
        "--key",
        arg(&key),
        "-u",
        "mallory",
        "-P",
        "pw",
    ];
    let mut a = certified.to_vec();
    a.extend(["-i", "by-identity"]);
    assert!(mosquitto_pub(addrs[0].port(), &pki, &a).await);
    let seen = recorder.seen("by-identity").await;
    assert_eq!(seen.username.as_deref(), Some("sensor-7"));
    assert_eq!(seen.password, None);
    assert!(seen.username_from_certificate && seen.transport.client_certificate);
    let mut a = certified.to_vec();
    a.extend(["-i", "by-subject"]);
    assert!(mosquitto_pub(addrs[1].port(), &pki, &a).await);
    let seen = recorder.seen("by-subject").await;
    assert_eq!(seen.username.as_deref(), Some("CN=sensor-7,O=Example"));
    assert_eq!(seen.transport.listener, 1);
    // No certificate, no user: refused before the authenticator.
    assert!(
        !mosquitto_pub(
            addrs[0].port(),
            &pki,
            &["-u", "mallory", "-P", "pw", "-i", "x"]
        )
        .await
    );
    assert_eq!(recorder.count(), 2);
    broker.shutdown().await;
}

/// `use_san_as_username`: the first Subject Alternative Name of the kinds listed is the
/// user name, from a certificate mosquitto_pub presents; one without such a name is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_alternative_name_is_the_user_name() {
    let _timing = crate::TIMING.read().await;
    require("mosquitto_pub", MOSQUITTO);
    let pki = Pki::new();
    let listener = |kinds: Vec<SanKind>| {
        let mut l = tls_listener(&pki.cert, &pki.key);
        l.cafile = Some(pki.ca.clone());
        l.require_certificate = ClientCertificates::Required;
        l.use_identity_as_username = true;
        l.use_san_as_username = kinds;
        l
    };
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(
        vec![
            listener(vec![SanKind::Uri]),
            listener(vec![SanKind::Email, SanKind::Dns]),
        ],
        recorder.auth(),
        |_| {},
    )
    .await;
    let (cert, key) = pki.client_with_sans(
        "sensor-8",
        vec![
            rcgen::SanType::DnsName("sensor-8.example.org".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://example.org/sensor/8".try_into().unwrap()),
            rcgen::SanType::Rfc822Name("ops@example.org".try_into().unwrap()),
        ],
    );
    for (i, (id, expected)) in [
        ("by-uri", "spiffe://example.org/sensor/8"),
        ("by-dns", "sensor-8.example.org"),
    ]
    .into_iter()
    .enumerate()
    {
        let args = [
            "--cert",
            arg(&cert),
            "--key",
            arg(&key),
            "-u",
            "mallory",
            "-i",
            id,
        ];
        assert!(mosquitto_pub(addrs[i].port(), &pki, &args).await, "{id}");
        let seen = recorder.seen(id).await;
        assert_eq!(seen.username.as_deref(), Some(expected));
        assert!(seen.username_from_certificate);
    }
    // No URI in it: no user name, refused before the authenticator.
    let (plain, plain_key) = pki.client("sensor-9", ClientCert::Good);
    let args = [
        "--cert",
        arg(&plain),
        "--key",
        arg(&plain_key),
        "-i",
        "no-uri",
    ];
    assert!(!mosquitto_pub(addrs[0].port(), &pki, &args).await);
    assert_eq!(recorder.count(), 2);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_tls() {
    let _timing = crate::TIMING.read().await;
    crate::paho::require_paho();
    let pki = Pki::new();
    let (broker, addrs) = broker_on(
        vec![tls_listener(&pki.cert, &pki.key)],
        Auth::default(),
        |_| {},
    )
    .await;
    crate::paho::transports("tls", addrs[0].port(), Some(&pki.ca), None).await;
    broker.shutdown().await;
}

/// What comes before CONNECT is bounded: a client that opens a TLS connection and says
/// nothing is closed after `connect_timeout`; a listener's own `max_connections`
/// closes sockets past it at once; unreadable files stop the broker at start, naming the
/// listener and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_bounded_and_files_checked() {
    let _timing = crate::TIMING.read().await;
    let pki = Pki::new();
    let mut limited = tls_listener(&pki.cert, &pki.key);
    limited.max_connections = Some(2);
    let (broker, addrs) = broker_on(
        vec![tls_listener(&pki.cert, &pki.key), limited],
        Auth::default(),
        |c| c.limits.connect_timeout = 1,
    )
    .await;
    let mut silent = TcpStream::connect(addrs[0]).await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    // Two sockets fill the limited listener (handshake not done); a third is closed at
    // once, and the other listener is not affected.
    let _a = TcpStream::connect(addrs[1]).await.unwrap();
    let _b = TcpStream::connect(addrs[1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addrs[1]).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_millis(500)).await);
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let mut other = tls_connect(addrs[0], pki.client_config(None, v13, &[]))
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut other, "other").await.unwrap(), 0);
    // Once the first two are gone (closed by the connect timeout), room again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut s = tls_connect(addrs[1], pki.client_config(None, v13, &[]))
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut s, "room").await.unwrap(), 0);
    broker.shutdown().await;

    for (change, key) in [
        (
            Box::new(|l: &mut Listener| l.keyfile = Some("/nonexistent.key".into()))
                as Box<dyn Fn(&mut Listener)>,
            "keyfile",
        ),
        (
            Box::new(|l: &mut Listener| l.certfile = Some(pki.key.clone())),
            "certfile",
        ),
        (
            Box::new(|l: &mut Listener| {
                l.require_certificate = ClientCertificates::Required;
                l.cafile = Some(pki.key.clone());
            }),
            "cafile",
        ),
    ] {
        let mut l = tls_listener(&pki.cert, &pki.key);
        change(&mut l);
        let config = mqtt_broker::Config {
            listeners: vec![l],
            ..mqtt_broker::Config::default()
        };
        let err = mqtt_broker::Broker::start(config)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("listeners[0] (127.0.0.1:0): ") && err.contains(key),
            "{err}"
        );
    }
}

/// A TLS client that stops reading while messages stream to it ends as a stalled
/// write, and the end completes: its will goes out. rustls still holds records for it
/// then, and closing TLS waits for them to be written, which a client that never reads
/// again would hold up for ever (with the session, its will, and its task) without the
/// bound on that close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_client_is_closed_and_its_will_goes_out() {
    use bytes::{Bytes, BytesMut};
    use mqtt_codec::{ByteStr, Connect, Packet, ProtocolVersion, QoS, Subscribe, Will};
    use tokio::io::AsyncWriteExt;

    let _timing = crate::TIMING.read().await;
    let pki = Pki::new();
    let plain = Listener::new("127.0.0.1:0".parse().unwrap());
    let (broker, addrs) = broker_on(
        vec![tls_listener(&pki.cert, &pki.key), plain],
        Auth::default(),
        |c| c.limits.write_timeout = 1,
    )
    .await;
    let v5 = ProtocolVersion::V5;
    let mut watcher = crate::spec::Client::connect(addrs[1], v5, "watcher").await;
    watcher.sub("gone/#", QoS::AtMostOnce).await;

    // A small receive buffer fills at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addrs[0]).await.unwrap();
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let mut tls = TlsConnector::from(pki.client_config(None, v13, &[]))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut connect = Connect::new(v5, ByteStr::from_static("stalls"));
    connect.will = Some(Will {
        topic: ByteStr::from_static("gone/stalls"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let subscribe = Subscribe::new(
        mqtt_codec::PacketId::new(1).unwrap(),
        ByteStr::from_static("flood/#"),
        QoS::AtMostOnce,
    );
    let mut out = BytesMut::new();
    Packet::from(connect).encode(v5, &mut out).unwrap();
    Packet::from(subscribe).encode(v5, &mut out).unwrap();
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    // Never read again (CONNACK and SUBACK included); the connection stays open.

    let mut publisher = crate::spec::Client::connect(addrs[1], v5, "flooder").await;
    let payload = vec![7u8; 4096];
    let started = std::time::Instant::now();
    let will = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no will within 20 s: the stalled connection never ended"
        );
        for _ in 0..32 {
            publisher.publish0("flood/x", &payload, false).await;
        }
        if let Some(Some(Packet::Publish(p))) = watcher.next_within(Duration::from_millis(50)).await
        {
            break p;
        }
    };
    assert_eq!(&*will.topic, "gone/stalls");
    assert_eq!(&will.payload[..], b"bye");
    drop(tls);
    broker.shutdown().await;
}
