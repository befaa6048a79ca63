//! Certificates made for the tests with rcgen: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, client certificates good, expired, revoked (in the CA's
//! CRL) and from another CA, and the server's key in PKCS#1, PKCS#8 and SEC1 forms
//! (the first and last converted by the `openssl` command, which Debian has with
//! Mosquitto's clients). Files in a temporary directory removed on drop.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};

/// The serial number of the revoked client certificate.
const REVOKED_SERIAL: u64 = 666;

/// What kind of client certificate to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientCert {
    Good,
    Expired,
    Revoked,
    OtherCa,
}

pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    other: rcgen::Certificate,
    other_key: KeyPair,
    /// The CA certificate.
    pub(crate) ca: PathBuf,
    /// The server's certificate and key (PKCS#8).
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// The CA's CRL, which revokes [`ClientCert::Revoked`].
    pub(crate) crl: PathBuf,
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mqtt-broker-pki-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = temp_dir();
        let (ca_cert, ca_key) = ca("mqtt-broker test CA");
        let (other, other_key) = ca("another CA");
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(REVOKED_SERIAL),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca_cert, &ca_key)
        .unwrap();
        Self {
            ca: write(&dir, "ca.pem", &ca_cert.pem()),
            cert: write(&dir, "server.pem", &cert.pem()),
            key: write(&dir, "server.key", &key.serialize_pem()),
            crl: write(&dir, "crl.pem", &crl.pem().unwrap()),
            dir,
            ca_cert,
            ca_key,
            other,
            other_key,
        }
    }

    /// A client certificate with Common Name `cn` (and an Organization, so that the
    /// subject has two parts): its certificate and key files.
    pub(crate) fn client(&self, cn: &str, kind: ClientCert) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // In this order, printed the other way round: `CN=...,O=Example`.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(match kind {
            ClientCert::Revoked => REVOKED_SERIAL,
            _ => 1000 + u64::from(rand_u16()),
        }));
        if kind == ClientCert::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = match kind {
            ClientCert::OtherCa => params.signed_by(&key, &self.other, &self.other_key),
            _ => params.signed_by(&key, &self.ca_cert, &self.ca_key),
        }
        .unwrap();
        let name = format!("{cn}-{kind:?}");
        (
            write(&self.dir, &format!("{name}.pem"), &cert.pem()),
            write(&self.dir, &format!("{name}.key"), &key.serialize_pem()),
        )
    }

    /// Another server certificate for `localhost` from the same CA, with its own key
    /// and serial number `serial`: its certificate PEM, key PEM and certificate DER (what
    /// a client is shown).
    pub(crate) fn server_pem(&self, serial: u64) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A good client certificate with Common Name `cn` and these Subject Alternative
    /// Names: its certificate and key files.
    pub(crate) fn client_with_sans(
        &self,
        cn: &str,
        sans: Vec<rcgen::SanType>,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.serial_number = Some(SerialNumber::from(1000 + u64::from(rand_u16())));
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (
            write(&self.dir, &format!("{cn}-san.pem"), &cert.pem()),
            write(&self.dir, &format!("{cn}-san.key"), &key.serialize_pem()),
        )
    }

    /// The server's key in SEC1 form (`EC PRIVATE KEY`).
    pub(crate) fn sec1_key(&self) -> PathBuf {
        let out = self.dir.join("server-sec1.key");
        openssl(&["ec", "-in", path(&self.key), "-out", path(&out)]);
        out
    }

    /// A server certificate for an RSA key, and the key in PKCS#1 form (`RSA PRIVATE
    /// KEY`).
    pub(crate) fn rsa_server(&self) -> (PathBuf, PathBuf) {
        let pkcs8 = self.dir.join("rsa.key");
        let pkcs1 = self.dir.join("rsa-pkcs1.key");
        openssl(&["genrsa", "-out", path(&pkcs8), "2048"]);
        openssl(&[
            "rsa",
            "-in",
            path(&pkcs8),
            "-traditional",
            "-out",
            path(&pkcs1),
        ]);
        let key = KeyPair::from_pem(&std::fs::read_to_string(&pkcs8).unwrap()).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (write(&self.dir, "rsa.pem", &cert.pem()), pkcs1)
    }

    /// A rustls client configuration trusting the test CA, with a client certificate
    /// if given, for the protocol versions given, offering `alpn`.
    pub(crate) fn client_config(
        &self,
        cert: Option<&(PathBuf, PathBuf)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.ca).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(cert).unwrap()],
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        std::sync::Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u16() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) as u16
}

fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command (Debian's openssl, installed with mosquitto) runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An authenticator that lets everyone in and keeps what it was shown.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Seen>>>);

/// What a [`Recorder`] was shown of one CONNECT.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Vec<u8>>,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) transport: mqtt_broker::auth::Transport,
    pub(crate) username_from_certificate: bool,
}

impl Recorder {
    /// What it was shown for `client_id`, waiting up to a few seconds for it.
    pub(crate) async fn seen(&self, client_id: &str) -> Seen {
        for _ in 0..500 {
            if let Some(s) = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.client_id == client_id)
            {
                return s.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the authenticator never saw {client_id}");
    }

    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) fn auth(&self) -> mqtt_broker::Auth {
        mqtt_broker::Auth {
            authenticator: Box::new(self.clone()),
            authorizer: Box::new(mqtt_broker::auth::AllowAll),
        }
    }
}

impl mqtt_broker::auth::Authenticator for Recorder {
    fn authenticate<'a>(
        &'a self,
        c: &'a mqtt_broker::auth::Credentials<'a>,
    ) -> mqtt_broker::auth::Authenticating<'a> {
        self.0.lock().unwrap().push(Seen {
            client_id: c.client_id.to_owned(),
            username: c.username.map(str::to_owned),
            password: c.password.map(<[u8]>::to_vec),
            peer: c.peer,
            transport: c.transport,
            username_from_certificate: c.username_from_certificate,
        });
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A broker with these listeners (each bound to port 0 if it says so) and `auth`: the
/// broker and each listener's address.
pub(crate) async fn broker_on(
    listeners: Vec<mqtt_broker::config::Listener>,
    auth: mqtt_broker::Auth,
    f: impl FnOnce(&mut mqtt_broker::Config),
) -> (mqtt_broker::Broker, Vec<std::net::SocketAddr>) {
    let mut config = mqtt_broker::Config {
        listeners,
        ..mqtt_broker::Config::default()
    };
    f(&mut config);
    let broker = mqtt_broker::Broker::start_with(config, auth)
        .await
        .expect("broker starts");
    let addrs = broker.local_addrs().to_vec();
    (broker, addrs)
}

/// A TLS listener on an ephemeral loopback port.
pub(crate) fn tls_listener(cert: &Path, key: &Path) -> mqtt_broker::config::Listener {
    let mut l = mqtt_broker::config::Listener::new("127.0.0.1:0".parse().unwrap());
    l.certfile = Some(cert.to_owned());
    l.keyfile = Some(key.to_owned());
    l
}

/// CONNECT (3.1.1, Clean Session, keep-alive 60 s) as `id`, with a user name if given.
pub(crate) fn connect_bytes(id: &str, username: Option<&str>) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
    body.push(if username.is_some() { 0x82 } else { 0x02 });
    body.extend_from_slice(&[0, 60]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    if let Some(u) = username {
        body.extend_from_slice(&(u.len() as u16).to_be_bytes());
        body.extend_from_slice(u.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends CONNECT as `id` on `stream` and reads the CONNACK's return code.
pub(crate) async fn mqtt_connect<S>(stream: &mut S, id: &str) -> std::io::Result<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&connect_bytes(id, None)).await?;
    stream.flush().await?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await?;
    assert_eq!(&ack[..3], &[0x20, 2, 0], "CONNACK");
    Ok(ack[3])
}

/// Whether the peer closes `stream` (end of stream or an error) within `within`.
pub(crate) async fn closed_within<S>(stream: &mut S, within: std::time::Duration) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 256];
    matches!(
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

/// Fails with a message saying how to install `tool` if it is missing.
pub(crate) fn require(tool: &str, install: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: {install} (`cargo xtask ci` installs it)"
    );
}
