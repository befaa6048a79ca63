//! `[persistence]` (issue 16): the `mqtt-broker` binary killed with SIGKILL and started
//! again on the same file keeps retained messages, persistent sessions, their
//! subscriptions and their queued QoS 1 and 2 messages; a damaged file is refused with a
//! message naming it. Clients: rumqttc (3.1.1).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::{sync::mpsc, time::timeout};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

/// A directory of its own for one test's files.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port on 127.0.0.1 (the broker keeps it across restarts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a configuration with `[persistence] mode = "sync"` and the store in `dir`.
pub(crate) fn config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("broker.toml");
    let store = dir.join("store.redb");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n[sys]\ninterval = 0\n\n\
             [persistence]\nmode = \"sync\"\npath = {store:?}\n"
        ),
    )
    .unwrap();
    path
}

/// Starts the binary with `config` and waits until it accepts connections on `port`;
/// its log (stderr) is appended to `broker.log` beside `config`.
pub(crate) fn start(config: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("broker.log"))
        .unwrap();
    let child = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGKILL, and the exit reaped.
pub(crate) fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A rumqttc client whose incoming PUBLISH packets and acknowledgements arrive on a
/// channel, reconnecting (the event loop polled again) after every error.
pub(crate) fn client(
    id: &str,
    port: u16,
    clean: bool,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(e) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, rx, task)
}

/// Waits for the next event matching `f`.
async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    timeout(Duration::from_secs(20), async {
        loop {
            let e = rx.recv().await.expect("the client runs");
            if let Some(t) = f(&e) {
                return t;
            }
        }
    })
    .await
    .expect("in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_restart_keeps_retained_sessions_subscriptions_and_queued_messages() {
    let dir = scratch("restart");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = start(&conf, port);

    // A persistent subscriber subscribes, then leaves.
    let (sub, mut sub_rx, sub_task) = client("durable-sub", port, false);
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    sub.subscribe("d/#", QoS::ExactlyOnce).await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    sub.disconnect().await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
    sub_task.abort();

    // Messages queued for it, and a retained one, all acknowledged.
    let (publisher, mut pub_rx, pub_task) = client("durable-pub", port, false);
    next(&mut pub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    publisher
        .publish("r/kept", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    for i in 0..20 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher
            .publish("d/x", qos, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 21 {
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_) | Packet::PubRec(_))).then_some(())
        })
        .await;
        acked += 1;
    }
    pub_task.abort();

    // Killed: nothing is flushed on the way out.
    kill(broker);
    let broker = start(&conf, port);

    // The session is back with its subscription and its queue, in order.
    let (_sub, mut sub_rx, sub_task) = client("durable-sub", port, false);
    let present = next(&mut sub_rx, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(present, "the session outlived the process");
    for i in 0..20 {
        let payload = next(&mut sub_rx, |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], format!("m{i}").as_bytes());
    }
    sub_task.abort();

    // The retained message too.
    let (other, mut other_rx, other_task) = client("durable-other", port, true);
    next(&mut other_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    other.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let retained = next(&mut other_rx, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&retained.payload[..], b"retained");
    assert!(retained.retain);
    other_task.abort();
    kill(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the binary with `config` on a store it must refuse, and returns its stderr.
fn refused(config: &Path) -> String {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            kill(child);
            panic!("a damaged store was not refused: the broker runs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "a damaged store is refused: {stderr}");
    stderr
}

/// A store holding one retained message on `r/damaged`, written by the binary, which
/// was then killed.
async fn store_with_a_retained_message(dir: &Path, port: u16) -> PathBuf {
    let conf = config(dir, port);
    let broker = start(&conf, port);
    let (publisher, mut rx, task) = client("durable-damage", port, true);
    next(&mut rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    publisher
        .publish("r/damaged", QoS::AtLeastOnce, true, "a retained payload")
        .await
        .unwrap();
    next(&mut rx, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    task.abort();
    kill(broker);
    conf
}

// A value whose own checksum does not match (the file is otherwise sound, as redb sees
// it: damage inside a value that redb's page checksums did not catch, or a bug) stops
// the start, naming the file, the table and the key, and saying how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_value_failing_its_checksum_is_refused_naming_file_table_and_key() {
    let dir = scratch("damaged");
    let conf = store_with_a_retained_message(&dir, free_port()).await;
    let store = dir.join("store.redb");
    {
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("retained");
        use redb::ReadableTable as _;
        let db = redb::Database::create(&store).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(table).unwrap();
            let mut value = t.get("r/damaged").unwrap().unwrap().value().to_vec();
            // Past the format byte and the CRC: one bit of the record itself.
            let last = value.len() - 1;
            value[last] ^= 0x01;
            t.insert("r/damaged", value.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let stderr = refused(&conf);
    assert!(stderr.contains("store.redb"), "names the file: {stderr}");
    assert!(stderr.contains("`retained`"), "names the table: {stderr}");
    assert!(stderr.contains("\"r/damaged\""), "names the key: {stderr}");
    assert!(stderr.contains("checksum"), "says what is wrong: {stderr}");
    assert!(
        stderr.contains("restore a backup") && stderr.contains("move it away"),
        "says how to recover: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// A file that is not a store (garbage), or one cut short, is refused with redb's own
// error, the file's name and how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_garbage_or_truncated_store_is_refused_naming_the_file() {
    let dir = scratch("garbage");
    let conf = store_with_a_retained_message(&dir, free_port()).await;
    let store = dir.join("store.redb");
    let bytes = std::fs::read(&store).unwrap();
    for (what, damaged) in [
        ("truncated", bytes.get(..bytes.len() / 3).unwrap().to_vec()),
        (
            "garbage",
            (0..64 * 1024u32).map(|i| (i * 31 % 251) as u8).collect(),
        ),
    ] {
        std::fs::write(&store, &damaged).unwrap();
        let stderr = refused(&conf);
        assert!(
            stderr.contains("store.redb"),
            "{what}: names the file: {stderr}"
        );
        assert!(
            stderr.contains("restore a backup") && stderr.contains("move it away"),
            "{what}: says how to recover: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// A backlog is kept one record per message (table `queue`, keyed by client identifier
// and message identifier), not in the session's record: 2,000 queued messages leave
// the session's record small, and all come back after a kill, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_backlog_is_written_in_chunks_and_comes_back_in_order() {
    const COUNT: usize = 2000;
    let dir = scratch("backlog");
    let port = free_port();
    let conf = config(&dir, port);
    // The queue holds them all (the default bound is 1,000 messages).
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{text}\n[limits]\nmax_queued_messages = 5000\n"),
    )
    .unwrap();
    let broker = start(&conf, port);

    let (sub, mut sub_rx, sub_task) = client("backlog-sub", port, false);
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    sub.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    sub.disconnect().await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
    sub_task.abort();

    let (publisher, mut pub_rx, pub_task) = client("backlog-pub", port, true);
    next(&mut pub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            publisher
                .publish("b/x", QoS::AtLeastOnce, false, format!("{i:06}"))
                .await
                .unwrap();
        }
        publisher
    });
    for _ in 0..COUNT {
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        })
        .await;
    }
    drop(sender.await.unwrap());
    pub_task.abort();
    kill(broker);

    // The file: the messages in chunks (entries `id u64 · length u32 · body` after the
    // 5-byte envelope), and a small session record.
    {
        let chunks: redb::TableDefinition<(&str, u64), &[u8]> =
            redb::TableDefinition::new("chunks");
        let messages: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("messages");
        let db = redb::Database::create(dir.join("store.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let (mut records, mut entries) = (0, Vec::new());
        for chunk in tx
            .open_table(chunks)
            .unwrap()
            .range(("backlog-sub", 0)..=("backlog-sub", u64::MAX))
            .unwrap()
        {
            let (_, v) = chunk.unwrap();
            records += 1;
            let mut b = &v.value()[5..];
            while !b.is_empty() {
                let id = u64::from_be_bytes(b[..8].try_into().unwrap());
                let len = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
                entries.push(id);
                b = &b[12 + len..];
            }
        }
        assert_eq!(entries.len(), COUNT, "every queued message is on disk");
        assert!(
            entries.windows(2).all(|w| w[0] < w[1]),
            "in identifier order"
        );
        assert!(
            records < COUNT / 4,
            "{COUNT} messages in {records} records: written a commit's worth at a time"
        );
        let state = tx
            .open_table(messages)
            .unwrap()
            .get("backlog-sub")
            .unwrap()
            .unwrap()
            .value()
            .len();
        assert!(
            state < 200,
            "the session's record holds no message: {state} bytes"
        );
    }

    let broker = start(&conf, port);
    let (_sub, mut sub_rx, sub_task) = client("backlog-sub", port, false);
    let present = next(&mut sub_rx, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(present);
    for i in 0..COUNT {
        let payload = next(&mut sub_rx, |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], format!("{i:06}").as_bytes());
    }
    sub_task.abort();
    kill(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connects `id` with a persistent session, subscribes, and leaves with DISCONNECT: its
/// record then holds a wall-clock deadline.
async fn subscribe_and_leave(id: &str, port: u16) {
    let (sub, mut rx, task) = client(id, port, false);
    next(&mut rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    sub.subscribe("e/#", QoS::AtLeastOnce).await.unwrap();
    next(&mut rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    sub.disconnect().await.unwrap();
    next(&mut rx, |e| {
        matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
    task.abort();
    // The record with its deadline is committed (nothing waits for it).
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Whether `id`'s session is there (Session Present) when it connects again.
async fn session_present(id: &str, port: u16) -> bool {
    let (_c, mut rx, task) = client(id, port, false);
    let present = next(&mut rx, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
        _ => None,
    })
    .await;
    task.abort();
    present
}

// Session expiry runs on the wall clock across restarts: a session whose deadline
// passed while the broker was down is gone when it starts again; one whose deadline
// has not passed is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_session_expiry_runs_on_the_wall_clock_across_restarts() {
    let dir = scratch("expiry");
    let port = free_port();
    let conf = config(&dir, port);
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{text}\n[limits]\npersistent_client_expiration = 4\n"),
    )
    .unwrap();

    let broker = start(&conf, port);
    subscribe_and_leave("expiry-a", port).await;
    kill(broker);
    // Down for longer than its 4 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker = start(&conf, port);
    subscribe_and_leave("expiry-b", port).await;
    kill(broker);
    let broker = start(&conf, port);
    assert!(
        session_present("expiry-b", port).await,
        "expiry-b's deadline has not passed"
    );
    assert!(
        !session_present("expiry-a", port).await,
        "expiry-a's deadline passed while the broker was down"
    );
    kill(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a 5.0 subscriber (mosquitto_sub) gets a retained message on `topic` at once.
fn retained_now(port: u16, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-t", topic, "-C", "1", "-W", "2", "--retained-only"])
        .output()
        .expect("mosquitto_sub runs (Debian's mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// A retained message's Message Expiry Interval counts on the wall clock across a
/// restart: one that expired while the broker was down is gone, one that has time
/// left is still there (published by mosquitto_pub, 5.0, QoS 1: acknowledged after
/// its commit).
#[test]
fn durable_retained_expiry_runs_on_the_wall_clock_across_restarts() {
    crate::pki::require("mosquitto_pub", "install Debian's mosquitto-clients");
    let dir = scratch("retained-expiry");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = start(&conf, port);
    for (topic, expiry) in [("x/short", "2"), ("x/long", "600")] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
            .args(["-t", topic, "-m", topic, "-q", "1", "-r"])
            .args(["-D", "publish", "message-expiry-interval", expiry])
            .status()
            .unwrap();
        assert!(status.success(), "{topic}");
    }
    assert_eq!(retained_now(port, "x/short").as_deref(), Some("x/short"));
    kill(broker);
    std::thread::sleep(Duration::from_secs(3));
    let broker = start(&conf, port);
    assert_eq!(
        retained_now(port, "x/short"),
        None,
        "expired while the broker was down"
    );
    assert_eq!(retained_now(port, "x/long").as_deref(), Some("x/long"));
    kill(broker);
}

/// The broker's resident memory in KiB (Linux `/proc`).
pub(crate) fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Publishes `count` QoS 1 messages of `size` bytes on `topic` (payload: the index,
/// zero-padded, then filler) and waits for every PUBACK.
async fn publish_acknowledged(
    port: u16,
    id: &str,
    topic: &str,
    from: usize,
    count: usize,
    size: usize,
) {
    let (publisher, mut pub_rx, pub_task) = client(id, port, true);
    next(&mut pub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    let topic = topic.to_owned();
    let sender = tokio::spawn(async move {
        for i in from..from + count {
            let mut payload = format!("{i:08}").into_bytes();
            payload.resize(size.max(8), b'.');
            publisher
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        publisher
    });
    for _ in 0..count {
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        })
        .await;
    }
    drop(sender.await.unwrap());
    pub_task.abort();
}

/// Connects the persistent session `id` and checks that messages `from..to` arrive in
/// order (payloads as `publish_acknowledged` makes them).
async fn receive_in_order(port: u16, id: &str, from: usize, to: usize) {
    let (_sub, mut sub_rx, sub_task) = client(id, port, false);
    let present = next(&mut sub_rx, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(present, "the session is there");
    for i in from..to {
        let payload = next(&mut sub_rx, |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..8], format!("{i:08}").as_bytes(), "in order");
    }
    // Acknowledged before leaving: nothing is sent again next time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub_task.abort();
}

/// Issue 16's backlog on disk: a persistent session whose queue holds 100 messages in
/// memory (`limits.max_queued_messages`) is sent 20,000 of 1 KiB while offline; the
/// rest wait on disk only, so the broker's memory does not grow with them (20 MB
/// would be kept otherwise), and they come back in order as the client reads, both
/// from the running broker and after a SIGKILL and a restart (which reads only the
/// first 100 back into memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_backlog_beyond_the_memory_window_stays_on_disk_and_comes_back_in_order() {
    const COUNT: usize = 20_000;
    const SIZE: usize = 1024;
    let dir = scratch("paged");
    let port = free_port();
    let conf = config(&dir, port);
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{text}\n[limits]\nmax_queued_messages = 100\n"),
    )
    .unwrap();
    let broker = start(&conf, port);

    let (sub, mut sub_rx, sub_task) = client("paged-sub", port, false);
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    sub.subscribe("p/#", QoS::AtLeastOnce).await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    sub.disconnect().await.unwrap();
    next(&mut sub_rx, |e| {
        matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
    sub_task.abort();

    // A first round warms the broker up (buffers, the store's cache), then memory is
    // measured across a second.
    publish_acknowledged(port, "paged-pub", "p/x", 0, COUNT, SIZE).await;
    let before = rss_kib(&broker);
    publish_acknowledged(port, "paged-pub", "p/x", COUNT, COUNT, SIZE).await;
    let after = rss_kib(&broker);
    assert!(
        after < before + 8 * 1024,
        "20,000 more messages of 1 KiB on disk cost {} KiB of memory ({before} -> {after} KiB)",
        after.saturating_sub(before)
    );
    receive_in_order(port, "paged-sub", 0, 2 * COUNT).await;

    // Again, and the broker killed with the backlog on disk.
    publish_acknowledged(port, "paged-pub", "p/x", 2 * COUNT, COUNT, SIZE).await;
    kill(broker);
    let broker = start(&conf, port);
    receive_in_order(port, "paged-sub", 2 * COUNT, 3 * COUNT).await;
    kill(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 16's slow-subscriber run: one persistent subscriber (paho-mqtt, Python) takes
/// 100 messages a second while a publisher (rumqttc) sends 5,000 a second at QoS 1 for
/// 60 s, in `sync` mode with the default limits (1,000 messages queued in memory per
/// session). Its backlog goes to disk: it receives every message, in order, once it
/// reads at full speed; a fast subscriber to the same topic is not slowed (it is never
/// more than a second's messages behind what the publisher sent); and the broker's
/// resident memory stays under 64 MiB throughout (the backlog is about 30 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_slow_subscriber_backlog_lives_on_disk_and_others_are_not_slowed() {
    const RATE: usize = 5_000;
    const SECONDS: usize = 60;
    const TOTAL: usize = RATE * SECONDS;
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    crate::paho::require_paho();
    let dir = scratch("slow-sub");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = start(&conf, port);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/slow_sub.py");
    let mut slow = tokio::process::Command::new("python3")
        .arg(script)
        .args([&port.to_string(), "slow-sub", "s/#", "100"])
        .arg(SECONDS.to_string())
        .arg(TOTAL.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(slow.stdout.take().unwrap()));
    let first = timeout(Duration::from_secs(20), lines.next_line()).await;
    assert_eq!(first.unwrap().unwrap().as_deref(), Some("SUBACK"));

    let (fast, mut fast_rx, fast_task) = client("fast-sub", port, true);
    next(&mut fast_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    fast.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    next(&mut fast_rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    let fast_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = {
        let count = std::sync::Arc::clone(&fast_count);
        tokio::spawn(async move {
            while let Some(e) = fast_rx.recv().await {
                if matches!(e, Event::Incoming(Packet::Publish(_))) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };

    let (publisher, mut pub_rx, pub_task) = client("slow-pub", port, true);
    next(&mut pub_rx, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acking = {
        let acked = std::sync::Arc::clone(&acked);
        tokio::spawn(async move {
            while let Some(e) = pub_rx.recv().await {
                if matches!(e, Event::Incoming(Packet::PubAck(_))) {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    // 50 messages every 10 ms.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_count = std::sync::Arc::clone(&sent);
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for batch in 0..TOTAL / 50 {
            tick.tick().await;
            for i in batch * 50..batch * 50 + 50 {
                let mut payload = format!("{i:08}").into_bytes();
                payload.resize(64, b'.');
                publisher
                    .publish("s/x", QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
                sent_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        publisher
    });
    let started = std::time::Instant::now();
    let (mut max_rss, mut max_lag) = (0, 0);
    while acked.load(std::sync::atomic::Ordering::Relaxed) < TOTAL {
        assert!(
            started.elapsed() < Duration::from_secs(SECONDS as u64 + 60),
            "the publisher's messages were not all acknowledged in time: {} of {TOTAL}",
            acked.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_rss = max_rss.max(rss_kib(&broker));
        // Sampled in this order, the lag is never under-counted: what the publisher
        // handed its client, against what the fast subscriber received.
        let received = fast_count.load(std::sync::atomic::Ordering::Relaxed);
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        max_lag = max_lag.max(sent.saturating_sub(received));
    }
    let published_in = started.elapsed();
    drop(sending.await.unwrap());
    pub_task.abort();
    acking.abort();
    timeout(Duration::from_secs(10), async {
        while fast_count.load(std::sync::atomic::Ordering::Relaxed) < TOTAL {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the fast subscriber has every message");
    assert!(
        max_lag <= RATE,
        "the fast subscriber fell {max_lag} messages behind the publisher"
    );

    // The slow one, at full speed now, gets everything in order.
    let mut last = String::new();
    let done = timeout(Duration::from_secs(240), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            max_rss = max_rss.max(rss_kib(&broker));
            if line.starts_with("ALL") || line.starts_with("GAP") {
                return line;
            }
            last = line;
        }
        String::new()
    })
    .await;
    let done = done.unwrap_or_else(|_| panic!("the slow subscriber got only to {last:?}"));
    assert!(
        done.starts_with(&format!("ALL {TOTAL} ")),
        "slow subscriber: {done}"
    );
    assert!(
        max_rss <= RSS_BOUND_KIB,
        "the broker's resident memory reached {max_rss} KiB"
    );
    eprintln!(
        "slow subscriber run: {TOTAL} messages published in {published_in:?}, broker RSS at most {max_rss} KiB, fast subscriber at most {max_lag} messages behind"
    );
    let _ = slow.wait().await;
    fast_task.abort();
    counting.abort();
    kill(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
