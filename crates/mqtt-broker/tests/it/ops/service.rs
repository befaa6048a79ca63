//! Running as a service: SIGHUP applies the limits that can change live and says what
//! waits for a restart, never stopping the broker; the pid file.

use std::io::{Read, Write};

use super::{Broker, scratch, tcp, write_file};

/// CONNECT 3.1.1 (clean, keep-alive 60) as `id`; the CONNACK's return code.
fn connack_code(stream: &mut std::net::TcpStream, id: &str) -> u8 {
    let mut packet = vec![
        0x10,
        (12 + id.len()) as u8,
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
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id.as_bytes());
    stream.write_all(&packet).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    connack[3]
}

#[test]
fn sighup_applies_live_limits_and_names_what_waits_for_a_restart() {
    let dir = scratch("sighup");
    let pid_file = dir.join("broker.pid");
    let base = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[process]\npid_file = \"{}\"\n",
        pid_file.display()
    );
    let conf = write_file(&dir, "broker.toml", &base);
    let mut broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        broker.child.id().to_string()
    );
    let mut first = tcp(broker.addr);
    assert_eq!(connack_code(&mut first, "one"), 0);

    std::fs::write(
        &conf,
        format!("{base}[limits]\nmax_connections = 1\nmax_inflight = 7\n"),
    )
    .unwrap();
    broker.signal("HUP");
    broker.wait_for("limits.max_connections: 100000 -> 1 (applied)");
    broker.wait_for("limits.max_inflight: 100 -> 7 takes effect at the next start");
    // The new limit holds at once: a second client is told Server unavailable (3.1.1).
    let mut second = tcp(broker.addr);
    assert_eq!(connack_code(&mut second, "two"), 3);

    // Again: only what changed since is named.
    broker.signal("HUP");
    broker.wait_for("limits.max_inflight: 100 -> 7 takes effect at the next start");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        broker.log().matches("max_connections: 100000 -> 1").count(),
        1
    );

    // A file that no longer reads changes nothing; the broker stays up.
    std::fs::write(&conf, "[limits\n").unwrap();
    broker.signal("HUP");
    broker.wait_for("configuration not reloaded, nothing changed");
    assert!(broker.running());
    drop(first);
    let (status, _) = broker.stop();
    assert!(status.success());
    assert!(!pid_file.exists());
}

#[test]
fn the_deploy_files_hold() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    // The configuration they install is valid, as the container image changes it too.
    let conf = root.join("broker.toml");
    let out = std::process::Command::new(super::BIN)
        .args(["-c", conf.to_str().unwrap(), "--test-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = scratch("deploy");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("bind = \"127.0.0.1:9090\"", "bind = \"0.0.0.0:9090\"");
    assert!(
        text.contains("0.0.0.0:9090"),
        "the Dockerfile's sed finds its line"
    );
    let container = write_file(&dir, "broker.toml", &text);
    let out = std::process::Command::new(super::BIN)
        .args(["-c", container.to_str().unwrap(), "--test-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The systemd unit, with this build's binary, passes systemd's own check (where
    // systemd-analyze is installed).
    let unit = std::fs::read_to_string(root.join("mqtt-broker.service"))
        .unwrap()
        .replace("/usr/local/bin/mqtt-broker", super::BIN);
    let unit = write_file(&dir, "mqtt-broker.service", &unit);
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", unit.to_str().unwrap()])
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("mqtt-broker.service:"),
            "systemd-analyze verify: {err}"
        );
    }
}
