//! Memory held per idle connection, counted by a global allocator: live heap bytes
//! (allocated minus freed) per connection, after the connections settle and after they
//! have been idle long enough to give back their buffers, and again after each pinged;
//! then per session once the clients are gone and their sessions stay (Clean Session 0),
//! and per 5.0 session left with an expiry pending, whose timer is an entry in the timer
//! service's map rather than a task (counted too).
//! Then the same for TLS, WebSocket and WebSocket over TLS connections, whose clients run
//! in a child process so that only the broker's side is counted
//! (`MQTT_IDLE_CONNECTIONS=10000` for the figure in decision 0015).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use mqtt_broker::{Broker, Config, config::Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests here count the whole process's heap: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_footprint() {
    let _serial = SERIAL.lock().await;
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    // The clients' own sockets and buffers are counted too: measure the clients alone
    // first, then with the broker's side.
    let n = 500;
    let before = LIVE.load(Ordering::Relaxed);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let id = format!("idle{i:05}");
        let mut connect = vec![
            0x10,
            (10 + 2 + id.len()) as u8,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            0, // Clean Session 0: the session outlives the connection
            0,
            60,
        ];
        connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
        connect.extend_from_slice(id.as_bytes());
        s.write_all(&connect).await.unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x20, 2, 0, 0]);
        clients.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = LIVE.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle = LIVE.load(Ordering::Relaxed) - before;
    let per = |bytes: isize| bytes / n as isize;
    eprintln!(
        "live heap per connection (broker side + a tokio TcpStream client side): settled {} B, idle {} B",
        per(settled),
        per(idle)
    );
    // The client side of each connection (a tokio TcpStream) is in the count too; the
    // bound is on the sum.
    assert!(
        per(idle) <= 1024,
        "idle connections hold {} bytes each",
        per(idle)
    );
    // Each client wakes its connection (PINGREQ): answered, it goes back to sleep at
    // once rather than after IDLE_SHRINK.
    for c in &mut clients {
        c.write_all(&[0xC0, 0]).await.unwrap();
        let mut pong = [0u8; 2];
        c.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0xD0, 0]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pinged = per(LIVE.load(Ordering::Relaxed) - before);
    eprintln!("live heap per connection half a second after a ping: {pinged} B");
    assert!(
        pinged <= per(idle) + 64,
        "a ping leaves {pinged} bytes per connection against {} idle",
        per(idle)
    );
    // Then each leaves.
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let offline = per(LIVE.load(Ordering::Relaxed) - before);
    eprintln!("live heap per session left without its connection: {offline} B");
    assert!(
        offline <= 512,
        "sessions without a connection hold {offline} bytes each"
    );

    // 5.0 sessions with a Session Expiry Interval have a timer while offline: an entry
    // in the timer service's map, not a task of their own.
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let (before, tasks_before) = (LIVE.load(Ordering::Relaxed), tasks());
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(connect_v5(addr, &format!("expiring{i:05}"), 3600).await);
    }
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expiring = per(LIVE.load(Ordering::Relaxed) - before);
    let tasks_after = tasks();
    eprintln!(
        "live heap per 5.0 session left without its connection, expiry pending: {expiring} B; tasks {tasks_before} -> {tasks_after}"
    );
    assert!(
        tasks_after < tasks_before + n / 10,
        "{n} offline sessions: {tasks_before} tasks before, {tasks_after} after"
    );
    assert!(
        expiring <= 512,
        "5.0 sessions without a connection hold {expiring} bytes each"
    );
    broker.shutdown().await;
}

/// A 5.0 client connected as `id` (Clean Start 0, Session Expiry `expiry` s), CONNACK
/// read.
async fn connect_v5(addr: std::net::SocketAddr, id: &str, expiry: u32) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 60, 5, 0x11];
    body.extend_from_slice(&expiry.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend(body);
    s.write_all(&connect).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x20);
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest[1], 0, "CONNACK reason code");
    s
}

/// How many idle TLS / WebSocket connections `idle_tls_and_websocket_footprint` opens.
fn idle_count() -> usize {
    std::env::var("MQTT_IDLE_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// A test CA and a server certificate for `localhost` in a temporary directory.
fn test_pki() -> (std::path::PathBuf, rcgen::Certificate) {
    let dir = std::env::temp_dir().join(format!("mqtt-broker-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    (dir, ca)
}

fn rss() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<isize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Idle TLS and WebSocket-over-TLS connections hibernate in their tasks, WebSocket ones
/// on TCP park: what each costs the broker, its client side in another process.
///
/// The client side is this same test run again in a child process with `MQTT_HOLD` set
/// ([`hold_idle_clients`]), so the broker's heap and RSS count the broker's side alone.
#[test]
fn idle_tls_and_websocket_footprint() {
    if let Ok(spec) = std::env::var("MQTT_HOLD") {
        return hold_idle_clients(&spec);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure_idle_tls_and_websocket());
}

async fn measure_idle_tls_and_websocket() {
    let _serial = SERIAL.lock().await;
    let (dir, _ca) = test_pki();
    let listener = |protocol: mqtt_broker::config::Protocol, tls: bool| {
        let mut l = Listener::new("127.0.0.1:0".parse().unwrap());
        l.protocol = protocol;
        if tls {
            l.certfile = Some(dir.join("server.pem"));
            l.keyfile = Some(dir.join("server.key"));
        }
        l
    };
    use mqtt_broker::config::Protocol::{Mqtt, WebSockets};
    let config = Config {
        listeners: vec![
            listener(Mqtt, true),
            listener(WebSockets, false),
            listener(WebSockets, true),
        ],
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
    let addrs = broker.local_addrs().to_vec();
    let n = idle_count();
    let mut figures = Vec::new();
    for (kind, addr) in ["tls", "ws", "wss"].into_iter().zip(addrs) {
        let (before, rss_before) = (LIVE.load(Ordering::Relaxed), rss());
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_tls_and_websocket_footprint", "--nocapture"])
            .env(
                "MQTT_HOLD",
                format!("{kind} {addr} {n} {}", dir.join("ca.pem").display()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            use tokio::io::AsyncBufReadExt;
            assert!(
                out.read_line(&mut line).await.unwrap() > 0,
                "the client process ended"
            );
            if line.starts_with("ready") {
                break;
            }
        }
        // Past IDLE_SHRINK: every connection gave back its active buffers.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let heap = (LIVE.load(Ordering::Relaxed) - before) / n as isize;
        let rss_per = (rss() - rss_before) / n as isize;
        eprintln!("idle {kind}: live heap {heap} B per connection (broker side), RSS {rss_per} B");
        figures.push((kind, heap));
        drop(child.stdin.take());
        let _ = child.wait().await;
        // The broker takes its time to close thousands of connections: the next kind
        // is counted once the heap has stopped shrinking.
        let mut last = LIVE.load(Ordering::Relaxed);
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = LIVE.load(Ordering::Relaxed);
            if (last - now).abs() < 16 * 1024 {
                break;
            }
            last = now;
        }
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    // Bounds that catch a regression (decision 0015 says where the bytes go): an idle
    // WebSocket connection on TCP parks, TLS ones hibernate in their task.
    for (kind, heap) in figures {
        let bound = if kind == "ws" { 1024 } else { 14 * 1024 };
        assert!(heap <= bound, "an idle {kind} connection holds {heap} B");
    }
}

/// The client side of `idle_tls_and_websocket_footprint`, run in a child process
/// (`MQTT_HOLD="KIND ADDR COUNT CA"`): opens the connections, says `ready`, and holds
/// them until its stdin closes.
fn hold_idle_clients(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [kind, addr, n, ca] = parts[..] else {
        panic!("MQTT_HOLD: {spec}")
    };
    let (addr, n): (std::net::SocketAddr, usize) = (addr.parse().unwrap(), n.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("idle-{kind}-{i:05}");
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            match kind {
                "tls" => {
                    let mut s = tls
                        .connect("localhost".try_into().unwrap(), tcp)
                        .await
                        .unwrap();
                    hold_connect(&mut s, &id, false).await;
                    held.push(Box::new(s));
                }
                "ws" => {
                    let mut s = tcp;
                    hold_connect(&mut s, &id, true).await;
                    held.push(Box::new(s));
                }
                _ => {
                    let mut s = tls
                        .connect("localhost".try_into().unwrap(), tcp)
                        .await
                        .unwrap();
                    hold_connect(&mut s, &id, true).await;
                    held.push(Box::new(s));
                }
            }
        }
        // The parent reads this line on the child's stdout.
        #[allow(clippy::print_stdout)]
        {
            println!("ready");
        }
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        drop(held);
    });
}

/// Upgrades (if `ws`), sends CONNECT (3.1.1, keep-alive 60 s) and reads CONNACK.
async fn hold_connect<S>(s: &mut S, id: &str, ws: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut connect = vec![
        0x10,
        (10 + 2 + id.len()) as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        2,
        0,
        60,
    ];
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    if ws {
        s.write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        // One masked binary frame (mask 0: the payload as it is).
        let mut frame = vec![0x82, 0x80 | connect.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(&connect);
        connect = frame;
    }
    s.write_all(&connect).await.unwrap();
    s.flush().await.unwrap();
    let want = if ws { 6 } else { 4 };
    let mut ack = vec![0u8; want];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(&ack[want - 4..], &[0x20, 2, 0, 0]);
}
