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
}

/// A running `mosquitto`, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    dir: PathBuf,
    /// The plain MQTT port.
    pub port: u16,
    /// Ports of the extra listeners, in the order given.
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
        for _ in 0..5 {
            let port = free_port();
            let extra_ports: Vec<u16> = extra.iter().map(|_| free_port()).collect();
            let mut conf = String::new();
            writeln!(conf, "per_listener_settings false").unwrap();
            writeln!(conf, "allow_anonymous true").unwrap();
            writeln!(conf, "persistence false").unwrap();
            writeln!(conf, "log_type all").unwrap();
            conf.push_str(global);
            conf.push('\n');
            writeln!(conf, "listener {port} 127.0.0.1").unwrap();
            for (l, p) in extra.iter().zip(&extra_ports) {
                writeln!(conf, "listener {p} 127.0.0.1").unwrap();
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
        }
        let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        panic!("mosquitto did not start; its log:\n{log}");
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
