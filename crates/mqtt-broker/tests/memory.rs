//! Memory held per idle connection, counted by a global allocator: live heap bytes
//! (allocated minus freed) per connection, after the connections settle and after they
//! have been idle long enough to give back their buffers, and again after each pinged;
//! then per session once the clients are gone and their sessions stay (Clean Session 0),
//! and per 5.0 session left with an expiry pending, whose timer is an entry in the timer
//! service's map rather than a task (counted too).

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_footprint() {
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
