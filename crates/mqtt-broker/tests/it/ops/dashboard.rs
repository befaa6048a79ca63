//! The dashboard page end to end, in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/dashboard/`, which `cargo xtask ci` installs): while
//! Mosquitto's clients send traffic, the page's numbers move, a screenshot of it is
//! inspected, and its kick button disconnects a client.

use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{broker_with_http, scratch};

const TOKEN: &str = "dashboard-token-0123456789";

/// What the test needs besides the broker: node, Chromium, playwright-core.
fn require() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node,
        "node not found: install Node.js 20 or later (Debian's nodejs)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium not found: apt-get install chromium (cargo xtask ci does)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core not installed: npm ci in {} (cargo xtask ci does)",
        dir.display()
    );
    dir
}

#[test]
fn the_dashboard_shows_live_numbers_and_kicks_in_chromium() {
    let dir = require();
    let (broker, http) = broker_with_http("dashboard", Some(TOKEN));
    let port = broker.port();

    // A subscriber that stays, and a client to kick (MQTT 5.0, raw: it reads the
    // DISCONNECT it is sent).
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "sensors/#",
            "-i",
            "watcher",
            "-W",
            "120",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut victim = super::tcp(broker.addr);
    let id = b"victim";
    let mut connect = vec![
        0x10,
        13 + id.len() as u8,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        2,
        0,
        60,
        0,
        0,
        id.len() as u8,
    ];
    connect.extend_from_slice(id);
    victim.write_all(&connect).unwrap();
    let mut head = [0u8; 2];
    victim.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; usize::from(head[1])];
    victim.read_exact(&mut rest).unwrap();

    // Traffic all along: one publisher, a line every 10 ms.
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "sensors/temperature",
            "-l",
            "-i",
            "feeder",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = publisher.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeding = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if writeln!(lines, "21.{n}").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let shots = scratch("dashboard");
    let screenshot = shots.join("dashboard.png");
    let url = format!("http://{http}/#token={TOKEN}");
    let mut node = Command::new("node")
        .current_dir(&dir)
        .args([
            "dashboard.mjs",
            &url,
            screenshot.to_str().unwrap(),
            "victim",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the script has its own time-outs; this one is the last resort.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while node.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = node.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = node.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = feeding.join();
    let _ = publisher.kill();
    let _ = publisher.wait();
    let _ = sub.kill();
    let _ = sub.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the dashboard test failed: {stdout}{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(seen["ok"], true);
    assert!(seen["rate_in"].as_f64().unwrap() > 0.0, "{seen}");
    assert_eq!(seen["top_topic"], "sensors/temperature", "{seen}");

    // The screenshot is a PNG of the page as the viewport was (1280 wide).
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280);

    // The kick reached the client: DISCONNECT 0x98 (Administrative action).
    let mut disconnect = [0u8; 3];
    victim.read_exact(&mut disconnect).unwrap();
    assert_eq!((disconnect[0], disconnect[2]), (0xE0, 0x98));
    broker.wait_for_all(&["disconnected: kicked by an administrator", "client=victim"]);
}
