//! Mosquitto's `mosquitto_pub` and `mosquitto_sub` against our broker. The README's
//! test command installs them (Debian `mosquitto-clients`); without them these tests
//! fail with a message saying so.

use std::process::Stdio;

use tokio::process::Command;

use crate::{WAIT, broker};

fn require(tool: &str) {
    let found = std::process::Command::new("which")
        .arg(tool)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} not found: install Debian's mosquitto-clients (the README's test command does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_and_sub_every_version_and_qos() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    let (broker, addr) = broker().await;
    let port = addr.port().to_string();
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("interop/{version}/{qos}");
            let sub = Command::new("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    &topic,
                    "-C",
                    "1",
                    "-W",
                    "10",
                    "-v",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let status = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    &topic,
                    "-m",
                    "hello",
                ])
                .status()
                .await
                .unwrap();
            assert!(
                status.success(),
                "{version} QoS {qos}: mosquitto_pub failed"
            );
            let out = tokio::time::timeout(WAIT, sub.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "{version} QoS {qos}: mosquitto_sub failed"
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("{topic} hello")
            );
        }
    }
    broker.shutdown().await;
}

/// What `mosquitto_sub --retained-only` prints for `filter`.
async fn retained_only(port: &str, filter: &str) -> std::process::Output {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-t",
            filter,
            "-v",
            "--retained-only",
            "-W",
            "2",
        ])
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_retained_and_remove_retained() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    let (broker, addr) = broker().await;
    let port = addr.port().to_string();
    let pubr = |args: &[&str]| {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        c
    };
    assert!(
        pubr(&["-t", "keep/a", "-m", "A", "-r", "-q", "1"])
            .status()
            .await
            .unwrap()
            .success()
    );
    assert!(
        pubr(&["-t", "keep/b", "-m", "B", "-r", "-q", "1"])
            .status()
            .await
            .unwrap()
            .success()
    );
    let out = retained_only(&port, "keep/#").await;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["keep/a A", "keep/b B"]);
    // Clearing with a zero-length retained message.
    assert!(
        pubr(&["-t", "keep/a", "-n", "-r"])
            .status()
            .await
            .unwrap()
            .success()
    );
    let out = retained_only(&port, "keep/#").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "keep/b B");
    broker.shutdown().await;
}

// retain.max_bytes: retained messages that would take the store past its byte budget
// are routed but not retained; replacing one with a smaller one still works, and the
// refusals show in `$SYS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_bytes_are_bounded() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    // Room for about three 4 KiB messages with their entries' cost.
    let (broker, addr) = crate::broker_with(|c| {
        c.retain.max_bytes = 14 * 1024;
        c.sys.interval = 1;
    })
    .await;
    let port = addr.port().to_string();
    let big = "x".repeat(4096);
    for topic in ["cap/1", "cap/2", "cap/3", "cap/4", "cap/5"] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
            .args(["-t", topic, "-m", &big])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "{topic}: mosquitto_pub failed");
    }
    let out = retained_only(&port, "cap/#").await;
    let mut kept: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    kept.sort();
    assert_eq!(kept, ["cap/1", "cap/2", "cap/3"], "within 14 KiB");
    // A smaller message replaces a kept one: the budget counts the difference.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
        .args(["-t", "cap/2", "-m", "small"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let out = retained_only(&port, "cap/2").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cap/2 small");
    let refused = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-C", "1", "-W", "5"])
        .args(["-t", "$SYS/broker/retained messages/refused"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout).trim(), "2");
    broker.shutdown().await;
}
