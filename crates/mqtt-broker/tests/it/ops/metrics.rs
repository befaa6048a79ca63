//! `/metrics`: Prometheus' text format, and its numbers moving while Mosquitto's
//! clients send traffic.

use std::process::{Command, Stdio};

use super::{broker_with_http, http, mosquitto_pub};

/// The value of the sample `name` (with its labels, as printed) in a scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{scrape}"))
}

#[test]
fn metrics_move_with_traffic() {
    let (broker, addr) = broker_with_http("metrics", None);
    let port = broker.port();
    let (status, before) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        before.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    assert_eq!(sample(&before, "mqtt_connections"), 0.0);
    assert_eq!(
        sample(&before, "mqtt_publish_received_total{qos=\"1\"}"),
        0.0
    );

    // A subscriber that stays, and a publisher sending retained QoS 1 and QoS 2.
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "m/#",
            "-q",
            "1",
            "-i",
            "watcher",
            "-C",
            "20",
            "-W",
            "20",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    broker.wait_for_all(&["connected", "watcher"]);
    for i in 0..10 {
        mosquitto_pub(
            &port,
            &["-t", &format!("m/{i}"), "-m", "12345", "-q", "1", "-r"],
        );
    }
    for _ in 0..10 {
        mosquitto_pub(&port, &["-t", "m/two", "-m", "1234567890", "-q", "2"]);
    }
    let status = sub.wait().unwrap();
    assert!(status.success(), "the subscriber got its 20 messages");
    let (_, after) = http(addr, "GET", "/metrics", None);
    assert_eq!(
        sample(&after, "mqtt_publish_received_total{qos=\"1\"}"),
        10.0
    );
    assert_eq!(
        sample(&after, "mqtt_publish_received_total{qos=\"2\"}"),
        10.0
    );
    assert_eq!(
        sample(&after, "mqtt_publish_received_bytes_total{qos=\"1\"}"),
        50.0
    );
    assert_eq!(
        sample(&after, "mqtt_publish_received_bytes_total{qos=\"2\"}"),
        100.0
    );
    // Sent to the subscriber at its QoS 1.
    assert_eq!(sample(&after, "mqtt_publish_sent_total{qos=\"1\"}"), 20.0);
    assert!(sample(&after, "mqtt_connections_accepted_total") >= 21.0);
    assert!(sample(&after, "mqtt_retained_messages") >= 10.0);
    assert!(
        sample(&after, "mqtt_received_bytes_total") > sample(&before, "mqtt_received_bytes_total")
    );
    assert!(sample(&after, "mqtt_publish_ack_latency_seconds_count") >= 1.0);
    assert_eq!(
        sample(&after, "mqtt_messages_dropped_total{reason=\"queue_full\"}"),
        0.0
    );

    // While a client is connected: gauges and the queue depth histogram see it.
    let _c = super::tcp(broker.addr);
    let mut held = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "held/#",
            "-i",
            "held",
            "-W",
            "20",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    broker.wait_for_all(&["connected", "held"]);
    let (_, during) = http(addr, "GET", "/metrics", None);
    assert_eq!(sample(&during, "mqtt_connections"), 1.0);
    assert_eq!(sample(&during, "mqtt_sessions"), 1.0);
    assert_eq!(sample(&during, "mqtt_subscriptions"), 1.0);
    assert_eq!(sample(&during, "mqtt_session_queue_depth_count"), 1.0);
    assert_eq!(
        sample(&during, "mqtt_session_queue_depth_bucket{le=\"0.0\"}"),
        1.0
    );
    let _ = held.kill();
    let _ = held.wait();
}

/// With the disk store (`persistence.mode = "sync"`), its commits and their latency are
/// in `/metrics`: a retained QoS 1 message from mosquitto_pub is acknowledged after a
/// commit, which the counters show.
#[test]
fn store_commits_are_counted() {
    let dir = super::scratch("metrics-store");
    let conf = super::write_file(
        &dir,
        "broker.toml",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"127.0.0.1:0\"\n\
             [persistence]\nmode = \"sync\"\npath = \"{}\"\n",
            dir.join("store.redb").display()
        ),
    );
    let broker = super::Broker::start(&["-c", conf.to_str().unwrap()]);
    let addr = super::http_addr(&broker);
    let port = broker.port();
    let (_, before) = http(addr, "GET", "/metrics", None);
    let commits = sample(&before, "mqtt_store_commits_total");
    mosquitto_pub(&port, &["-t", "kept", "-m", "on disk", "-q", "1", "-r"]);
    let (_, after) = http(addr, "GET", "/metrics", None);
    assert!(
        sample(&after, "mqtt_store_commits_total") > commits,
        "{after}"
    );
    assert!(
        sample(&after, "mqtt_store_commit_seconds_total") > 0.0,
        "{after}"
    );
    assert_eq!(sample(&after, "mqtt_store_failing"), 0.0);
}

/// The HTTP listener keeps at most 64 connections: connections that send nothing (or a
/// dashboard's event stream each) cannot take every file the process may open. One past
/// the limit is closed as it comes; once some go, new ones are served again.
#[test]
fn http_connections_are_capped() {
    use std::io::{Read, Write};
    let (_broker, addr) = broker_with_http("http-cap", None);
    let mut idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Each accepted before the next: a request on the last one is answered.
    idle.last_mut()
        .unwrap()
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    idle.last_mut().unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut over = std::net::TcpStream::connect(addr).unwrap();
    over.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = over.read(&mut byte);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the 65th connection is closed, not kept: {read:?}"
    );
    idle.truncate(10);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, _) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
}

/// A client that asks for responses and takes none is disconnected once a write has
/// waited 10 s for room, rather than holding its connection for ever: 1,000 pipelined
/// scrapes (several MB of responses, more than the sockets buffer) get fewer than 1,000
/// answers. A connection that kept waiting would answer them all once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_that_reads_nothing_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_broker, addr) = tokio::task::spawn_blocking(|| broker_with_http("http-stall", None))
        .await
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.write_all(requests.as_bytes()),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was closed");
    let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(answers > 0 && answers < 1000, "{answers} answers");
}

/// At most 16 dashboards watch at once: a 17th event stream is answered 503, and the
/// scraper still gets in; once one leaves, another may watch.
#[test]
fn dashboard_event_streams_are_capped() {
    use std::io::{Read, Write};
    let (_broker, addr) = broker_with_http("dashboard-cap", None);
    let open = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        (s, head)
    };
    let mut watching: Vec<_> = (0..16)
        .map(|_| {
            let (s, head) = open();
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    let (_refused, head) = open();
    assert_eq!(&head, b"HTTP/1.1 503");
    let (status, _) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    watching.pop();
    // The stream's end is seen at its next tick (one a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_s, head) = open();
        if &head == b"HTTP/1.1 200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after one left"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
