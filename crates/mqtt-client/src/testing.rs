//! Test support (feature `testing`): a Mosquitto broker started on a free loopback
//! port with a generated configuration, and a TCP proxy that can stall or sever
//! connections. Used by this crate's and mqtt-cli's tests; not for production.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A listener of the test broker.
#[derive(Clone, Debug, Default)]
pub struct Listener {
    /// `websockets` instead of MQTT over TCP.
    pub websockets: bool,
    /// TLS: CA file, certificate, key (PEM paths).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Require a client certificate (with `tls`).
    pub require_certificate: bool,
    /// A Unix domain socket at this path instead of a TCP port (`listener 0 path`).
    /// Mosquitto started as root runs as user `mosquitto`: the directory must let it in.
    pub unix: Option<PathBuf>,
    /// Further configuration lines for this listener (`tls_version tlsv1.2`, ...).
    pub extra: String,
}

/// A running `mosquitto`, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    dir: PathBuf,
    /// The plain MQTT port.
    pub port: u16,
    /// Ports of the extra listeners, in the order given (0 for a Unix socket).
    pub extra_ports: Vec<u16>,
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "mqtt-rs-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails the test with a clear message when mosquitto is not installed.
pub fn require_mosquitto() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join("mosquitto").is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin/mosquitto").is_file();
    assert!(
        found,
        "mosquitto is not installed: these tests need the Mosquitto broker and clients \
         (Debian: `apt-get install -y mosquitto mosquitto-clients`)"
    );
}

fn mosquitto_binary() -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mosquitto"))
            .find(|p| p.is_file())
    });
    in_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

impl Mosquitto {
    /// Starts mosquitto with one plain listener.
    pub fn start() -> Self {
        Self::start_with(&[], "")
    }

    /// Starts mosquitto with a plain listener, `extra` listeners and extra global
    /// configuration lines.
    pub fn start_with(extra: &[Listener], global: &str) -> Self {
        require_mosquitto();
        let dir = temp_dir("mosquitto");
        let mut last_log = String::new();
        for _ in 0..5 {
            // A failed attempt's drop removed the directory.
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            // A Unix socket listener has no port: 0.
            let extra_ports: Vec<u16> = extra
                .iter()
                .map(|l| if l.unix.is_some() { 0 } else { free_port() })
                .collect();
            let mut conf = String::new();
            writeln!(conf, "per_listener_settings false").unwrap();
            writeln!(conf, "allow_anonymous true").unwrap();
            writeln!(conf, "persistence false").unwrap();
            writeln!(conf, "log_type all").unwrap();
            conf.push_str(global);
            conf.push('\n');
            writeln!(conf, "listener {port} 127.0.0.1").unwrap();
            for (l, p) in extra.iter().zip(&extra_ports) {
                match &l.unix {
                    Some(path) => writeln!(conf, "listener 0 {}", path.display()).unwrap(),
                    None => writeln!(conf, "listener {p} 127.0.0.1").unwrap(),
                }
                if l.websockets {
                    writeln!(conf, "protocol websockets").unwrap();
                }
                if let Some((ca, cert, key)) = &l.tls {
                    writeln!(conf, "cafile {}", ca.display()).unwrap();
                    writeln!(conf, "certfile {}", cert.display()).unwrap();
                    writeln!(conf, "keyfile {}", key.display()).unwrap();
                    if l.require_certificate {
                        writeln!(conf, "require_certificate true").unwrap();
                    }
                }
                conf.push_str(&l.extra);
                conf.push('\n');
            }
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
            let child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start mosquitto");
            let mut m = Self {
                child,
                dir: dir.clone(),
                port,
                extra_ports,
            };
            if m.wait_ready() {
                return m;
            }
            // Port taken meanwhile, most likely: try other ports.
            let _ = m.child.kill();
            let _ = m.child.wait();
            last_log = m.log();
        }
        panic!("mosquitto did not start; its log:\n{last_log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.extra_ports.iter().copied())
            .collect();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if ports
                .iter()
                .filter(|p| **p != 0)
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The address of the plain listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy between clients and a broker that can hold back the broker-to-client
/// direction (whole MQTT packets, counted) and sever every connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    generation: watch::Sender<u64>,
    /// How many more broker-to-client packets may pass (`None`: no limit).
    budget: watch::Sender<Option<u64>>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts a proxy to `target` on a free loopback port (needs a tokio runtime).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let (budget, _) = watch::channel(None);
        let accepted = Arc::new(AtomicU64::new(0));
        let proxy = Self {
            port,
            generation,
            budget,
            accepted,
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                p.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe(
                    client,
                    server,
                    p.generation.subscribe(),
                    p.budget.clone(),
                ));
            }
        });
        proxy
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Severs every current connection.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Stops (true) or resumes (false) forwarding from the broker to the clients.
    pub fn stall_downstream(&self, stall: bool) {
        self.budget.send_replace(if stall { Some(0) } else { None });
    }

    /// Forwards `n` more packets from the broker, then stalls.
    pub fn stall_downstream_after(&self, n: u64) {
        self.budget.send_replace(Some(n));
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The length of the first whole MQTT packet in `buf`, if complete.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + len;
            return (buf.len() >= total).then_some(total);
        }
    }
    None
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut generation: watch::Receiver<u64>,
    budget: watch::Sender<Option<u64>>,
) {
    generation.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut rx = budget.subscribe();
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Forward whole packets while the budget allows.
            while let Some(len) = packet_len(&pending) {
                let mut allowed = false;
                budget.send_if_modified(|b| match b {
                    None => {
                        allowed = true;
                        false
                    }
                    Some(0) => false,
                    Some(n) => {
                        *n -= 1;
                        allowed = true;
                        true
                    }
                });
                if !allowed {
                    break;
                }
                let packet: Vec<u8> = pending.drain(..len).collect();
                if cw.write_all(&packet).await.is_err() {
                    return;
                }
            }
            rx.borrow_and_update();
            tokio::select! {
                r = sr.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                },
                r = rx.changed() => if r.is_err() { return },
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = generation.changed() => {}
    }
}

/// One end of a raw MQTT connection, for tests that play the server by hand (an
/// exchange no broker at hand speaks, such as enhanced authentication). Every wait is
/// bounded; failures panic, as in a test.
#[derive(Debug)]
pub struct RawPeer<S> {
    stream: S,
    buf: bytes::BytesMut,
    decoder: mqtt_codec::Decoder,
    version: mqtt_codec::ProtocolVersion,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawPeer<S> {
    /// A peer speaking `version` on `stream`.
    pub fn new(stream: S, version: mqtt_codec::ProtocolVersion) -> Self {
        Self {
            stream,
            buf: bytes::BytesMut::new(),
            decoder: mqtt_codec::Decoder::with_version(version),
            version,
        }
    }

    /// The next packet; panics if none comes within 10 s or the connection closes.
    pub async fn recv(&mut self) -> mqtt_codec::Packet {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("no packet in time, or the connection closed")
    }

    /// The next packet within `within`; `None` on timeout or when the connection closes.
    pub async fn try_recv(&mut self, within: Duration) -> Option<mqtt_codec::Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .expect("undecodable packet")
            {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Whether the other end closed the connection within `within` (packets that
    /// arrive before are skipped).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.buf.clear();
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends `packet`.
    pub async fn send(&mut self, packet: impl Into<mqtt_codec::Packet>) {
        let mut out = bytes::BytesMut::new();
        packet
            .into()
            .encode(self.version, &mut out)
            .expect("cannot encode");
        self.stream.write_all(&out).await.expect("cannot write");
    }

    /// The stream, to drop or inspect.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// What a [`Socks5Server`] saw of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socks5Request {
    /// User name and password, if the client authenticated.
    pub credentials: Option<(String, String)>,
    /// The host as the client sent it (a name, unresolved, or an IP address).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A minimal SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 user name and password) on a
/// free loopback port. It resolves `localhost` and IP addresses only, records each
/// request, and with `require` set refuses clients without those credentials.
#[derive(Debug)]
pub struct Socks5Server {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<std::sync::Mutex<Vec<Socks5Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Socks5Server {
    /// Starts the proxy.
    pub async fn start(require: Option<(String, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = seen.clone();
                let require = require.clone();
                tokio::spawn(async move {
                    let _ = socks5_serve(client, require, seen).await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// The proxy URL, with credentials when given.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("socks5h://{u}:{p}@{}", self.addr),
            None => format!("socks5h://{}", self.addr),
        }
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Socks5Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Socks5Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn socks5_serve(
    mut client: TcpStream,
    require: Option<(String, String)>,
    seen: Arc<std::sync::Mutex<Vec<Socks5Request>>>,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    let want = if require.is_some() { 2 } else { 0 };
    if !methods.contains(&want) {
        client.write_all(&[5, 0xFF]).await?;
        return Ok(());
    }
    client.write_all(&[5, want]).await?;
    let mut credentials = None;
    if want == 2 {
        let mut b = [0u8; 2];
        client.read_exact(&mut b).await?;
        let mut user = vec![0u8; usize::from(b[1])];
        client.read_exact(&mut user).await?;
        client.read_exact(&mut b[..1]).await?;
        let mut pass = vec![0u8; usize::from(b[0])];
        client.read_exact(&mut pass).await?;
        let got = (
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&pass).into_owned(),
        );
        let ok = require.as_ref() == Some(&got);
        client.write_all(&[1, if ok { 0 } else { 1 }]).await?;
        if !ok {
            return Ok(());
        }
        credentials = Some(got);
    }
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => {
            let mut n = [0u8; 1];
            client.read_exact(&mut n).await?;
            let mut name = vec![0u8; usize::from(n[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    seen.lock().unwrap().push(Socks5Request {
        credentials,
        host: host.clone(),
        port,
    });
    let target = if host == "localhost" {
        "127.0.0.1"
    } else {
        host.as_str()
    };
    match TcpStream::connect((target, port)).await {
        Ok(mut upstream) => {
            client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(_) => client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?,
    }
    Ok(())
}

/// A test CA with a server certificate for `localhost` and `127.0.0.1` and a client
/// certificate, as PEM files in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
}

fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

impl Pki {
    /// Generates the CA and certificates.
    pub fn generate() -> Self {
        let dir = temp_dir("pki");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mqtt-rs test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client");
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
        Self {
            dir: dir.clone(),
            ca: write(&dir, "ca.pem", &ca.pem()),
            server_cert: write(&dir, "server.pem", &server.pem()),
            server_key: write(&dir, "server.key", &server_key.serialize_pem()),
            client_cert: write(&dir, "client.pem", &client.pem()),
            client_key: write(&dir, "client.key", &client_key.serialize_pem()),
        }
    }
}

impl Pki {
    /// A TLS acceptor with the server certificate, for test servers; it offers the
    /// `alpn` protocols (read the one agreed with
    /// `stream.get_ref().1.alpn_protocol()`).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
