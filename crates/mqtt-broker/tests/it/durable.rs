//! `[persistence]` (issue 16): the `mqtt-broker` binary killed with SIGKILL and started
//! again on the same file keeps retained messages, persistent sessions, their
//! subscriptions and their queued QoS 1 and 2 messages; a damaged file is refused with a
//! message naming it. Clients: rumqttc (3.1.1).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
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

/// [`config`] with `extra` appended (TOML tables of its own).
pub(crate) fn config_with(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = config(dir, port);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
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

/// A broker process killed (SIGKILL) and reaped when dropped, also when a test fails
/// halfway.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// [`client`], once its CONNACK came.
pub(crate) async fn connected(
    id: &str,
    port: u16,
    clean: bool,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let (c, rx, task, _) = connect_with_present(id, port, clean).await;
    (c, rx, task)
}

/// [`client`] with a persistent session, once its CONNACK came, and its Session
/// Present flag.
async fn resumed(
    id: &str,
    port: u16,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
    bool,
) {
    connect_with_present(id, port, false).await
}

async fn connect_with_present(
    id: &str,
    port: u16,
    clean: bool,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<()>,
    bool,
) {
    let (c, mut rx, task) = client(id, port, clean);
    let present = next(&mut rx, |e| match e {
        Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
        _ => None,
    })
    .await;
    (c, rx, task, present)
}

/// Subscribes `c` to `filter` at QoS 1 and waits for the SUBACK.
async fn subscribed(c: &AsyncClient, rx: &mut mpsc::UnboundedReceiver<Event>, filter: &str) {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    next(rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
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
    let (sub, mut sub_rx, sub_task) = connected("durable-sub", port, false).await;
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
    let (publisher, mut pub_rx, pub_task) = connected("durable-pub", port, false).await;
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
    let (_sub, mut sub_rx, sub_task, present) = resumed("durable-sub", port).await;
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
    let (other, mut other_rx, other_task) = connected("durable-other", port, true).await;
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
    let (publisher, mut rx, task) = connected("durable-damage", port, true).await;
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

// A backlog is kept in chunks (table `chunks`, keyed by client identifier and first
// message identifier), not in the session's record: 2,000 queued messages are on disk in
// identifier order in far fewer records, the session's record stays small, and all come
// back after a kill, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_backlog_is_written_in_chunks_and_comes_back_in_order() {
    const COUNT: usize = 2000;
    let dir = scratch("backlog");
    let port = free_port();
    // The queue holds them all (the default bound is 1,000 messages).
    let conf = config_with(&dir, port, "[limits]\nmax_queued_messages = 5000\n");
    let broker = start(&conf, port);

    subscribe_and_leave_on("backlog-sub", "b/#", port).await;

    let (publisher, mut pub_rx, pub_task) = connected("backlog-pub", port, true).await;
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
    let (_sub, mut sub_rx, sub_task, present) = resumed("backlog-sub", port).await;
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
    subscribe_and_leave_on(id, "e/#", port).await;
    // The record with its deadline is committed (nothing waits for it).
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Whether `id`'s session is there (Session Present) when it connects again.
async fn session_present(id: &str, port: u16) -> bool {
    let (_c, _rx, task, present) = resumed(id, port).await;
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
    let conf = config_with(&dir, port, "[limits]\npersistent_client_expiration = 4\n");

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
    let (publisher, mut pub_rx, pub_task) = connected(id, port, true).await;
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
    let (_sub, mut sub_rx, sub_task, present) = resumed(id, port).await;
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
/// memory (`limits.max_queued_messages`) is sent 10,000 of 4 KiB while offline; the
/// rest wait on disk only, so the broker's memory does not grow with them (40 MB
/// would be kept otherwise), and they come back in order as the client reads, both
/// from the running broker and after a SIGKILL and a restart (which reads only the
/// first 100 back into memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_backlog_beyond_the_memory_window_stays_on_disk_and_comes_back_in_order() {
    // A full-rate load (and a memory bound): not beside the timing-sensitive tests.
    let _timing = crate::TIMING.read().await;
    const COUNT: usize = 10_000;
    const SIZE: usize = 4096;
    let dir = scratch("paged");
    let port = free_port();
    // Room on disk for two rounds (the quota's default is 64 MiB): the first line
    // goes into the `[persistence]` table, which ends the file `config` writes.
    let conf = config_with(
        &dir,
        port,
        "max_queued_bytes = 268435456\n[limits]\nmax_queued_messages = 100\n",
    );
    let broker = start(&conf, port);

    subscribe_and_leave_on("paged-sub", "p/#", port).await;

    // A first round warms the broker up (buffers, the store's cache), then memory is
    // measured across a second.
    publish_acknowledged(port, "paged-pub", "p/x", 0, COUNT, SIZE).await;
    let before = rss_kib(&broker);
    publish_acknowledged(port, "paged-pub", "p/x", COUNT, COUNT, SIZE).await;
    let after = rss_kib(&broker);
    assert!(
        after < before + 16 * 1024,
        "10,000 more messages of 4 KiB on disk cost {} KiB of memory ({before} -> {after} KiB)",
        after.saturating_sub(before)
    );
    eprintln!("paged backlog: broker RSS {before} KiB -> {after} KiB for 40 MB more on disk");
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
    // A full-rate load (and a memory bound): not beside the timing-sensitive tests.
    let _timing = crate::TIMING.read().await;
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

    let (fast, mut fast_rx, fast_task) = connected("fast-sub", port, true).await;
    subscribed(&fast, &mut fast_rx, "s/#").await;
    let fast_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = {
        let count = Arc::clone(&fast_count);
        tokio::spawn(async move {
            while let Some(e) = fast_rx.recv().await {
                if matches!(e, Event::Incoming(Packet::Publish(_))) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };

    let (publisher, mut pub_rx, pub_task) = connected("slow-pub", port, true).await;
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acking = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            while let Some(e) = pub_rx.recv().await {
                if matches!(e, Event::Incoming(Packet::PubAck(_))) {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    // 50 messages every 10 ms.
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_count = Arc::clone(&sent);
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

// ---- disk full -------------------------------------------------------------------------

/// Starts the binary as [`start`] does, with SIGXFSZ ignored in it, so that a write past
/// its RLIMIT_FSIZE (see [`set_file_size_limit`]) fails with EFBIG, as a write to a full
/// disk fails with ENOSPC, instead of killing it. Its log (stderr, a pipe: the limit
/// does not apply to pipes) is collected as it comes, and appended to `broker.log`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_limitable(config: &Path, port: u16) -> (Child, Arc<Mutex<String>>) {
    use std::{io::BufRead as _, os::unix::process::CommandExt as _};
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: signal(2) is async-signal-safe, and the closure touches nothing else. An
    // ignored disposition survives exec(2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (sink, file) = (Arc::clone(&log), config.with_file_name("broker.log"));
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, log)
}

/// Sets the soft RLIMIT_FSIZE of process `pid` to `bytes`, or back to its hard limit
/// (`None`): past it, the process's writes to files fail (EFBIG).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_file_size_limit(pid: u32, bytes: Option<u64>) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit to write to; no new limit is passed.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: bytes.unwrap_or(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit to read; the old one is not asked for.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The value of sample `name` in a `/metrics` scrape of `addr`.
fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (status, scrape) = crate::ops::http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{scrape}"))
}

/// Waits (10 s at most) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "in time: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rumqttc 5.0 client whose events and errors (a PUBACK with a failure reason code is
/// one: `StateError::PubAckFail`) arrive on a channel; its event loop is polled again
/// after an error, which reconnects. `persistent`: Clean Start 0 and a Session Expiry
/// Interval of 300 s.
fn client_v5(
    id: &str,
    port: u16,
    persistent: bool,
) -> (
    rumqttc::v5::AsyncClient,
    mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if persistent {
        let mut properties = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        properties.session_expiry_interval = Some(300);
        opts.set_clean_start(false);
        opts.set_connect_properties(properties);
    }
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let e = eventloop.poll().await;
            let failed = e.is_err();
            if tx.send(e).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    (client, rx, task)
}

/// Waits for the next 5.0 event or error matching `f`.
async fn next_v5<T>(
    rx: &mut mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
    mut f: impl FnMut(&Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>) -> Option<T>,
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

type Events5 = mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>;

/// [`client_v5`], once its CONNACK came, and its Session Present flag.
async fn connected_v5(
    id: &str,
    port: u16,
    persistent: bool,
) -> (
    rumqttc::v5::AsyncClient,
    Events5,
    tokio::task::JoinHandle<()>,
    bool,
) {
    use rumqttc::v5::{Event as Event5, mqttbytes::v5::Packet as Packet5};
    let (c, mut rx, task) = client_v5(id, port, persistent);
    let present = next_v5(&mut rx, |e| match e {
        Ok(Event5::Incoming(Packet5::ConnAck(c))) => Some(c.session_present),
        _ => None,
    })
    .await;
    (c, rx, task, present)
}

/// Subscribes a 5.0 client to `filter` at QoS 1 and waits for the SUBACK.
async fn subscribed_v5(c: &rumqttc::v5::AsyncClient, rx: &mut Events5, filter: &str) {
    use rumqttc::v5::{
        Event as Event5,
        mqttbytes::{QoS as QoS5, v5::Packet as Packet5},
    };
    c.subscribe(filter, QoS5::AtLeastOnce).await.unwrap();
    next_v5(rx, |e| {
        matches!(e, Ok(Event5::Incoming(Packet5::SubAck(_)))).then_some(())
    })
    .await;
}

/// The payload of the next PUBLISH a 3.1.1 client receives.
async fn next_payload(rx: &mut mpsc::UnboundedReceiver<Event>) -> String {
    next(rx, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(String::from_utf8_lossy(&p.payload).into()),
        _ => None,
    })
    .await
}

// Disk full (docs/durability.md, *Disk errors*), made by RLIMIT_FSIZE on the broker's
// process: every write to its store then fails (EFBIG), as on a full disk (ENOSPC).
// Meanwhile a 5.0 QoS 1 PUBLISH routed to a persistent session is answered with PUBACK
// 0x97 (Quota exceeded), a 3.1.1 one gets no PUBACK, QoS 0 still reaches an online
// subscriber, `/metrics` says `store_failing 1` and the failure is logged at error
// level. Once the limit is raised, the held 3.1.1 PUBACK comes, a new 5.0 QoS 1
// PUBLISH is acknowledged with success, `store_failing` is back to 0, and what was
// acknowledged is on disk: after a SIGKILL and a restart the persistent session gets
// it. Clients: rumqttc 3.1.1 and 5.0.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_disk_full_withholds_acknowledgements_and_recovers() {
    use rumqttc::v5::{
        ConnectionError, Event as Event5, StateError,
        mqttbytes::{
            QoS as QoS5,
            v5::{Packet as Packet5, PubAckReason},
        },
    };

    let dir = scratch("disk-full");
    let (port, http) = (free_port(), free_port());
    let conf = config(&dir, port);
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{text}\n[http]\nbind = \"127.0.0.1:{http}\"\n"),
    )
    .unwrap();
    let http: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let (broker, log) = start_limitable(&conf, port);
    let broker = Killed(broker);

    // A persistent session subscribed to full/#, offline: QoS 1 messages to it must be
    // kept. And an online clean subscriber of the same topics.
    subscribe_and_leave_on("full-keeper", "full/#", port).await;
    let (watcher, mut watcher_rx, watcher_task) = connected("full-watcher", port, true).await;
    watcher.subscribe("full/#", QoS::AtMostOnce).await.unwrap();
    next(&mut watcher_rx, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    let (pub3, mut pub3_rx, pub3_task) = connected("full-pub3", port, true).await;
    let (pub5, mut pub5_rx, pub5_task) = client_v5("full-pub5", port, false);
    next_v5(&mut pub5_rx, |e| {
        matches!(e, Ok(Event5::Incoming(Packet5::ConnAck(_)))).then_some(())
    })
    .await;
    assert_eq!(metric(http, "mqtt_store_failing"), 0.0);

    // The disk is full.
    set_file_size_limit(broker.0.id(), Some(0));

    // 5.0: PUBACK 0x97 (rumqttc reports a failure reason code as an error).
    pub5.publish("full/a", QoS5::AtLeastOnce, false, "five-while-full")
        .await
        .unwrap();
    let reason = next_v5(&mut pub5_rx, |e| match e {
        Ok(Event5::Incoming(Packet5::PubAck(a))) => Some(a.reason),
        Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::QuotaExceeded, "5.0: 0x97 while full");
    assert_eq!(next_payload(&mut watcher_rx).await, "five-while-full");

    // 3.1.1: no PUBACK while the store cannot write.
    pub3.publish("full/b", QoS::AtLeastOnce, false, "three-while-full")
        .await
        .unwrap();
    assert_eq!(next_payload(&mut watcher_rx).await, "three-while-full");
    let early = timeout(
        Duration::from_secs(1),
        next(&mut pub3_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        }),
    )
    .await;
    assert!(
        early.is_err(),
        "3.1.1: no PUBACK while the store cannot write"
    );

    // QoS 0 flows.
    pub3.publish("full/c", QoS::AtMostOnce, false, "zero-while-full")
        .await
        .unwrap();
    assert_eq!(next_payload(&mut watcher_rx).await, "zero-while-full");

    assert_eq!(metric(http, "mqtt_store_failing"), 1.0);
    let logged = log
        .lock()
        .unwrap()
        .lines()
        .find(|l| l.contains("THE STORE CANNOT WRITE"))
        .map(str::to_owned);
    let logged = logged.unwrap_or_else(|| panic!("logged: {}", log.lock().unwrap()));
    assert!(logged.contains("ERROR"), "at error level: {logged}");

    // Space returns.
    set_file_size_limit(broker.0.id(), None);
    // The held 3.1.1 PUBACK goes out once a commit succeeds.
    next(&mut pub3_rx, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    until("store_failing 0", || {
        metric(http, "mqtt_store_failing") == 0.0
    })
    .await;
    until("the end of the failure logged", || {
        log.lock().unwrap().contains("the store writes again")
    })
    .await;
    // 5.0: a new QoS 1 PUBLISH is acknowledged with success.
    pub5_task.abort();
    let (pub5, mut pub5_rx, pub5_task) = client_v5("full-pub5", port, false);
    next_v5(&mut pub5_rx, |e| {
        matches!(e, Ok(Event5::Incoming(Packet5::ConnAck(_)))).then_some(())
    })
    .await;
    pub5.publish("full/d", QoS5::AtLeastOnce, false, "five-after")
        .await
        .unwrap();
    let reason = next_v5(&mut pub5_rx, |e| match e {
        Ok(Event5::Incoming(Packet5::PubAck(a))) => Some(a.reason),
        Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        PubAckReason::Success,
        "5.0: acknowledged once it can write"
    );
    assert_eq!(next_payload(&mut watcher_rx).await, "five-after");
    for task in [watcher_task, pub3_task, pub5_task] {
        task.abort();
    }

    // What was acknowledged is on disk.
    drop(broker);
    let broker = Killed(start(&conf, port));
    let (_keeper, mut keeper_rx, keeper_task, present) = resumed("full-keeper", port).await;
    assert!(present);
    let mut got = Vec::new();
    while !got.iter().any(|p| p == "five-after") {
        got.push(next_payload(&mut keeper_rx).await);
    }
    assert!(
        got.iter().any(|p| p == "three-while-full"),
        "the message whose PUBACK was held is kept: {got:?}"
    );
    eprintln!("the persistent session got, after the restart: {got:?}");
    keeper_task.abort();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connects `id` with a persistent 3.1.1 session, subscribes to `filter` at QoS 1, and
/// leaves with DISCONNECT.
async fn subscribe_and_leave_on(id: &str, filter: &str, port: u16) {
    let (sub, mut rx, task) = connected(id, port, false).await;
    subscribed(&sub, &mut rx, filter).await;
    sub.disconnect().await.unwrap();
    next(&mut rx, |e| {
        matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
    task.abort();
}

// ---- SUBACK waits for the commit -------------------------------------------------------

// In `sync` mode a persistent session's SUBACK is sent once the subscription's record
// is committed: a subscription acknowledged and then lost in a crash would break the
// promise. 20 rounds: rumqttc (3.1.1, Clean Session 0) subscribes, the broker is
// SIGKILLed the moment its SUBACK arrives and started again, and the session is there
// with its subscription: a QoS 1 message to the filter reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_suback_waits_for_the_commit_a_kill_right_after_it_loses_nothing() {
    const ROUNDS: usize = 20;
    let dir = scratch("suback");
    let port = free_port();
    let conf = config(&dir, port);
    let mut broker = Killed(start(&conf, port));
    for round in 0..ROUNDS {
        let (id, filter) = (format!("suback-{round}"), format!("s/{round}"));
        let (sub, mut rx, task) = connected(&id, port, false).await;
        subscribed(&sub, &mut rx, &filter).await;
        // At once.
        drop(broker);
        task.abort();
        broker = Killed(start(&conf, port));

        let (_sub, mut rx, task, present) = resumed(&id, port).await;
        assert!(present, "round {round}: the session was lost");
        let (publisher, _pub_rx, pub_task) =
            connected(&format!("suback-pub-{round}"), port, true).await;
        publisher
            .publish(&filter, QoS::AtLeastOnce, false, format!("m{round}"))
            .await
            .unwrap();
        let got = timeout(Duration::from_secs(5), next_payload(&mut rx)).await;
        assert_eq!(
            got.ok().as_deref(),
            Some(format!("m{round}").as_str()),
            "round {round}: the subscription acknowledged before the kill was lost"
        );
        task.abort();
        pub_task.abort();
    }
    drop(broker);
    // A kill between commits rolls nothing back: no such alarm at the restarts.
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(
        !log.contains("rolled back"),
        "no commit was rolled back:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// The same for UNSUBACK: a subscription the client was told is gone stays gone after a
// SIGKILL right after the UNSUBACK. 8 rounds (rumqttc, 3.1.1, Clean Session 0): subscribe,
// unsubscribe, kill at the UNSUBACK, restart; a QoS 1 message to the filter, acknowledged
// to its publisher, does not reach the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_unsuback_waits_for_the_commit_a_kill_right_after_it_brings_nothing_back() {
    const ROUNDS: usize = 8;
    let dir = scratch("unsuback");
    let port = free_port();
    let conf = config(&dir, port);
    let mut broker = Killed(start(&conf, port));
    for round in 0..ROUNDS {
        let (id, filter) = (format!("unsuback-{round}"), format!("u/{round}"));
        let (sub, mut rx, task) = connected(&id, port, false).await;
        subscribed(&sub, &mut rx, &filter).await;
        sub.unsubscribe(&filter).await.unwrap();
        next(&mut rx, |e| {
            matches!(e, Event::Incoming(Packet::UnsubAck(_))).then_some(())
        })
        .await;
        // At once.
        drop(broker);
        task.abort();
        broker = Killed(start(&conf, port));

        let (_sub, mut rx, task, present) = resumed(&id, port).await;
        assert!(present, "round {round}: the session was lost");
        let (publisher, mut pub_rx, pub_task) =
            client(&format!("unsuback-pub-{round}"), port, true);
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
        })
        .await;
        publisher
            .publish(&filter, QoS::AtLeastOnce, false, format!("m{round}"))
            .await
            .unwrap();
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        })
        .await;
        let got = timeout(Duration::from_millis(500), next_payload(&mut rx)).await;
        assert!(
            got.is_err(),
            "round {round}: a subscription removed before the kill came back: {got:?}"
        );
        task.abort();
        pub_task.abort();
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- a queued message's own expiry across a restart ------------------------------------

// A queued message's Message Expiry Interval counts on the wall clock across a restart:
// two QoS 1 messages from mosquitto_pub (5.0, acknowledged after their commit), with 2 s
// and 60 s, queued for an offline persistent 5.0 session (rumqttc); the broker is
// SIGKILLed and started again 3 s later. The 2 s one is gone, the 60 s one arrives with
// its interval less the time the broker was down ([MQTT-3.3.2-5], [MQTT-3.3.2-6]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queued_message_expiry_runs_on_the_wall_clock_across_restarts() {
    use rumqttc::v5::{Event as Event5, mqttbytes::v5::Packet as Packet5};
    crate::pki::require("mosquitto_pub", "install Debian's mosquitto-clients");
    let dir = scratch("queued-expiry");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = Killed(start(&conf, port));

    let (sub, mut rx, task, _) = connected_v5("qexp-sub", port, true).await;
    subscribed_v5(&sub, &mut rx, "q/#").await;
    sub.disconnect().await.unwrap();
    next_v5(&mut rx, |e| {
        matches!(e, Ok(Event5::Outgoing(Outgoing::Disconnect))).then_some(())
    })
    .await;
    task.abort();

    let published = std::time::Instant::now();
    for (topic, expiry) in [("q/short", "2"), ("q/long", "60")] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
            .args(["-t", topic, "-m", topic, "-q", "1"])
            .args(["-D", "publish", "message-expiry-interval", expiry])
            .status()
            .unwrap();
        assert!(status.success(), "{topic}");
    }
    drop(broker);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = Killed(start(&conf, port));

    let (_sub, mut rx, task) = client_v5("qexp-sub", port, true);
    let present = next_v5(&mut rx, |e| match e {
        Ok(Event5::Incoming(Packet5::ConnAck(c))) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(present, "the session outlived the process");
    // Queued first, the 2 s message would come first.
    let publish = next_v5(&mut rx, |e| match e {
        Ok(Event5::Incoming(Packet5::Publish(p))) => Some(p.clone()),
        _ => None,
    })
    .await;
    let since = published.elapsed().as_secs();
    assert_eq!(&publish.topic[..], b"q/long", "q/short expired while down");
    let left = publish
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("a Message Expiry Interval ([MQTT-3.3.2-6])");
    assert!(
        left <= 57 && u64::from(left) + since + 1 >= 60,
        "60 s less the {since} s since it was published: {left}"
    );
    eprintln!("q/long: Message Expiry Interval {left} s, {since} s after it was published");
    let more = timeout(
        Duration::from_millis(500),
        next_v5(&mut rx, |e| match e {
            Ok(Event5::Incoming(Packet5::Publish(p))) => Some(p.topic.clone()),
            _ => None,
        }),
    )
    .await;
    assert!(more.is_err(), "nothing else: {more:?}");
    task.abort();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- `batch` mode after a crash --------------------------------------------------------

// `batch` mode (`batch_ms = 100`) acknowledges at once and commits every window: after a
// SIGKILL, every message acknowledged more than one window before it is there. A
// rumqttc publisher (3.1.1, QoS 1) sends 200 messages, all acknowledged, then, after a
// second's pause, one every 5 ms until the kill; each PUBACK is timed where rumqttc
// reports it. After the restart the persistent subscriber (rumqttc, Clean Session 0)
// gets every message acknowledged more than 100 ms before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_batch_mode_keeps_what_was_acknowledged_a_window_before_a_kill() {
    const WINDOW: Duration = Duration::from_millis(100);
    let dir = scratch("batch");
    let port = free_port();
    let conf = config(&dir, port);
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!(
            "{}\n[limits]\nmax_queued_messages = 5000\n",
            text.replace("mode = \"sync\"", "mode = \"batch\"\nbatch_ms = 100")
        ),
    )
    .unwrap();
    let broker = Killed(start(&conf, port));
    subscribe_and_leave_on("batch-sub", "b/#", port).await;

    // The publisher: its events timed in its own task, as they come.
    let mut opts = MqttOptions::new("batch-pub", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (publisher, mut eventloop) = AsyncClient::new(opts, 1000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pub_task = tokio::spawn(async move {
        while let Ok(e) = eventloop.poll().await {
            if tx.send((std::time::Instant::now(), e)).is_err() {
                return;
            }
        }
    });
    // Sequence number -> when its PUBACK came.
    let acked: Arc<Mutex<Vec<(u32, std::time::Instant)>>> = Arc::default();
    let sink = Arc::clone(&acked);
    let reader = tokio::spawn(async move {
        let (mut inflight, mut sent) = (std::collections::HashMap::new(), 0u32);
        while let Some((at, e)) = rx.recv().await {
            match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    inflight.insert(pkid, sent);
                    sent += 1;
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(seq) = inflight.remove(&a.pkid) {
                        sink.lock().unwrap().push((seq, at));
                    }
                }
                _ => {}
            }
        }
    });
    let publish = move |seq: u32| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish("b/x", QoS::AtLeastOnce, false, seq.to_string())
                .await
        }
    };
    for seq in 0..200 {
        publish(seq).await.unwrap();
    }
    until("200 PUBACKs", || acked.lock().unwrap().len() == 200).await;
    // Well past the window: these are on disk.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Then a stream, killed in the middle.
    let stream = tokio::spawn(async move {
        for seq in 200.. {
            if publish(seq).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = std::time::Instant::now();
    drop(broker);
    stream.abort();
    pub_task.abort();
    let _ = reader.await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let must: Vec<u32> = acked
        .iter()
        .filter(|(_, at)| *at + WINDOW < killed_at)
        .map(|&(seq, _)| seq)
        .collect();
    assert!(
        must.len() > 250,
        "the stream ran: {} acknowledged",
        must.len()
    );

    let broker = Killed(start(&conf, port));
    let (_sub, mut sub_rx, sub_task, present) = resumed("batch-sub", port).await;
    assert!(present, "the session outlived the process");
    let mut got = std::collections::BTreeSet::new();
    while let Ok(payload) = timeout(Duration::from_millis(500), next_payload(&mut sub_rx)).await {
        got.insert(payload.parse::<u32>().unwrap());
    }
    let lost: Vec<u32> = must.iter().copied().filter(|s| !got.contains(s)).collect();
    let last_window = acked.len() - must.len();
    let kept_of_last = acked
        .iter()
        .filter(|(seq, at)| *at + WINDOW >= killed_at && got.contains(seq))
        .count();
    let oldest_lost = acked
        .iter()
        .filter(|(seq, _)| !got.contains(seq))
        .map(|(_, at)| killed_at.saturating_duration_since(*at))
        .max();
    eprintln!(
        "{} acknowledged, {} more than a window before the kill; of the {last_window} in \
         the last window, {kept_of_last} kept; the oldest lost was acknowledged \
         {oldest_lost:?} before the kill",
        acked.len(),
        must.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged more than {WINDOW:?} before the kill, and lost: {lost:?}"
    );
    sub_task.abort();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

// A delayed will is part of the persistent session's state on disk: mosquitto_pub (5.0,
// Session Expiry 60 s, Will Delay 2 s) is connected when the broker is SIGKILLed; after
// the restart its connection is gone, so its will is published 2 s later (counted from
// the restart, as if the connection was lost then), once, to a mosquitto_sub that
// subscribed after the restart. (mosquitto_pub is killed with the broker: it would
// connect again, and a new connection within the delay cancels the will.)
#[test]
fn durable_delayed_will_survives_a_kill_and_is_published_after_the_restart() {
    crate::pki::require("mosquitto_pub", "install Debian's mosquitto-clients");
    let dir = scratch("will");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = Killed(start(&conf, port));
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-i",
            "will-pub",
            "-l",
        ])
        .args(["-t", "w/ignored", "-x", "60", "--will-topic", "w/gone"])
        .args(["--will-payload", "gone", "--will-qos", "1"])
        .args(["-D", "will", "will-delay-interval", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Connected, and its session (with the will) committed.
    std::thread::sleep(Duration::from_millis(700));
    drop(broker);
    // The client goes too (it would connect again, which cancels a delayed will).
    let _ = publisher.kill();
    let _ = publisher.wait();
    let restarted = std::time::Instant::now();
    let _broker = Killed(start(&conf, port));
    let out = Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-t",
            "w/#",
            "-q",
            "1",
        ])
        .args(["-C", "2", "-W", "6", "-v"])
        .output()
        .unwrap();
    let after = restarted.elapsed();
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        ["w/gone gone"],
        "the will, once"
    );
    assert!(
        after >= Duration::from_millis(1900),
        "published after its delay, not at once ({after:?})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// Shared subscriptions outlive a restart as their members' subscriptions: two rumqttc
// 5.0 clients with persistent sessions join `$share/g/sh/#`, the broker is SIGKILLed and
// started again, the members come back without subscribing again (Session Present), and
// 20 QoS 1 messages are shared between them: each delivered once, to one of them, and
// both get some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_shared_subscription_groups_outlive_a_restart() {
    use rumqttc::v5::{Event as Event5, mqttbytes::v5::Packet as Packet5};
    let dir = scratch("shared");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = Killed(start(&conf, port));
    for id in ["member-a", "member-b"] {
        let (c, mut rx, task, _) = connected_v5(id, port, true).await;
        subscribed_v5(&c, &mut rx, "$share/g/sh/#").await;
        task.abort();
    }
    drop(broker);
    let _broker = Killed(start(&conf, port));

    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for id in ["member-a", "member-b"] {
        let (c, mut rx, task) = client_v5(id, port, true);
        let present = next_v5(&mut rx, |e| match e {
            Ok(Event5::Incoming(Packet5::ConnAck(c))) => Some(c.session_present),
            _ => None,
        })
        .await;
        assert!(present, "{id}: the session is there");
        let got_tx = got_tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let Ok(Event5::Incoming(Packet5::Publish(p))) = e {
                    let _ = got_tx.send((id, String::from_utf8_lossy(&p.payload).into_owned()));
                }
            }
        });
        members.push((c, task, forward));
    }
    let (publisher, mut pub_rx, pub_task) = connected("shared-pub", port, true).await;
    for i in 0..20 {
        publisher
            .publish("sh/x", QoS::AtLeastOnce, false, format!("m{i:02}"))
            .await
            .unwrap();
        next(&mut pub_rx, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
        })
        .await;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        match timeout(Duration::from_secs(5), got_rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => panic!("only {} of 20 shared messages arrived: {got:?}", got.len()),
        }
    }
    // Nothing more (no copy to both).
    assert!(
        timeout(Duration::from_millis(300), got_rx.recv())
            .await
            .is_err()
    );
    let mut payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    payloads.sort_unstable();
    let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(payloads, expected, "each message once");
    for id in ["member-a", "member-b"] {
        assert!(
            got.iter().any(|(who, _)| *who == id),
            "{id} got none of the group's messages: {got:?}"
        );
    }
    for (_, task, forward) in members {
        task.abort();
        forward.abort();
    }
    pub_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

// A shared subscription's message held by a member that never acknowledged it goes to
// another member when that member's session ends, also after a restart: member A
// (rumqttc 5.0, persistent) joins `$share/g/rd/#` and leaves; a QoS 1 message is queued
// for it (the group's only member); the broker is SIGKILLed and started again; member B
// joins, then A comes back with Clean Start (its session ends) and B gets the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_shared_message_of_a_member_that_ends_goes_to_another_after_a_restart() {
    use rumqttc::v5::{Event as Event5, mqttbytes::v5::Packet as Packet5};
    let dir = scratch("shared-redistribute");
    let port = free_port();
    let conf = config(&dir, port);
    let broker = Killed(start(&conf, port));
    let (a, mut a_rx, a_task, _) = connected_v5("member-a", port, true).await;
    subscribed_v5(&a, &mut a_rx, "$share/g/rd/#").await;
    a.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a_task.abort();
    let (publisher, mut pub_rx, pub_task) = connected("rd-pub", port, true).await;
    publisher
        .publish("rd/x", QoS::AtLeastOnce, false, "held by a")
        .await
        .unwrap();
    next(&mut pub_rx, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    pub_task.abort();
    drop(broker);
    let _broker = Killed(start(&conf, port));

    let (b, mut b_rx, b_task, _) = connected_v5("member-b", port, false).await;
    subscribed_v5(&b, &mut b_rx, "$share/g/rd/#").await;
    // A comes back with Clean Start and no session expiry: its session ends.
    let (_a, mut a_rx, a_task) = client_v5("member-a", port, false);
    let present = next_v5(&mut a_rx, |e| match e {
        Ok(Event5::Incoming(Packet5::ConnAck(c))) => Some(c.session_present),
        _ => None,
    })
    .await;
    assert!(!present);
    let got = timeout(
        Duration::from_secs(5),
        next_v5(&mut b_rx, |e| match e {
            Ok(Event5::Incoming(Packet5::Publish(p))) => {
                Some(String::from_utf8_lossy(&p.payload).into_owned())
            }
            _ => None,
        }),
    )
    .await;
    assert_eq!(got.ok().as_deref(), Some("held by a"), "B got A's message");
    a_task.abort();
    b_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
