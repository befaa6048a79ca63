//! The log an operator reads: one line per connection and disconnection with its
//! reason, packets with `-v`, the version at start, JSON lines, a log file reopened on
//! SIGHUP, and levels checked.

use std::{io::Write, process::Command, time::Duration};

use super::{BIN, Broker, mosquitto_pub, scratch, tcp, write_file};

/// CONNECT 3.1.1, clean, keep-alive `keep_alive`, client id `id`.
fn connect(id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Connects over raw TCP and reads the CONNACK.
fn connected(broker: &Broker, id: &str, keep_alive: u16) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = tcp(broker.addr);
    s.write_all(&connect(id, keep_alive)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

#[test]
fn connections_and_disconnections_are_logged_at_the_default_level_with_their_reason() {
    let broker = Broker::start(&["--listen", "127.0.0.1:0"]);
    let port = broker.port();
    let start = broker.wait_for("starting");
    assert!(start.contains(env!("CARGO_PKG_VERSION")), "{start}");

    // What Mosquitto shows: client id, address, protocol, clean flag, keep-alive, user.
    mosquitto_pub(
        &port,
        &[
            "-i", "pub-1", "-u", "alice", "-k", "33", "-t", "t", "-m", "x",
        ],
    );
    let line = broker.wait_for_all(&["connected", "pub-1"]);
    for field in [
        " INFO ",
        "peer=127.0.0.1:",
        "protocol=MQTT 3.1.1",
        "clean=true",
        "keep_alive=33",
        "user=\"alice\"",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let line = broker.wait_for_all(&["disconnected", "pub-1"]);
    assert!(line.contains("client DISCONNECT: Success (0x00)"), "{line}");
    mosquitto_pub(
        &port,
        &["-i", "pub-5", "-V", "mqttv5", "-t", "t", "-m", "x"],
    );
    broker.wait_for_all(&["connected", "pub-5", "protocol=MQTT 5.0"]);

    // Keep-alive: 1 s, and silence for 1.5 s.
    let _silent = connected(&broker, "silent", 1);
    let line = broker.wait_for_all(&["disconnected", "silent"]);
    assert!(line.contains("keep-alive timeout"), "{line}");

    // A protocol error, with what was wrong.
    let mut bad = connected(&broker, "bad", 60);
    bad.write_all(&[0x00, 0x00]).unwrap();
    let line = broker.wait_for_all(&["disconnected", "bad"]);
    assert!(
        line.contains("protocol error: Malformed Packet (0x81): "),
        "{line}"
    );

    // The socket closed without DISCONNECT.
    drop(connected(&broker, "gone", 60));
    let line = broker.wait_for_all(&["disconnected", "gone"]);
    assert!(line.contains("closed by the client"), "{line}");

    // A takeover: the old connection's line says so.
    let _old = connected(&broker, "twice", 60);
    let _new = connected(&broker, "twice", 60);
    let line = broker.wait_for_all(&["disconnected", "twice"]);
    assert!(line.contains("session taken over"), "{line}");

    // At the default level no packet is logged.
    assert!(
        !broker.log().contains("received PUBLISH"),
        "{}",
        broker.log()
    );

    // Shutdown: those still connected are told why.
    let (status, log) = broker.stop();
    assert!(status.success());
    let line = log
        .lines()
        .find(|l| l.contains("disconnected") && l.contains("twice") && l.contains("shutting"))
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"));
    assert!(line.contains("server shutting down"), "{line}");
}

#[test]
fn verbose_logs_every_packet_in_and_out() {
    let broker = Broker::start(&["--listen", "127.0.0.1:0", "-v"]);
    mosquitto_pub(
        &broker.port(),
        &["-i", "v", "-q", "1", "-t", "a/b", "-m", "hello"],
    );
    broker.wait_for_all(&[
        "DEBUG",
        "received PUBLISH (d0, q1, r0, m1, 'a/b', ... (5 bytes))",
        "client=v",
    ]);
    broker.wait_for_all(&["DEBUG", "sent CONNACK", "client=v"]);
    broker.wait_for_all(&["DEBUG", "sent PUBACK (m1", "client=v"]);
    broker.wait_for_all(&["DEBUG", "received DISCONNECT", "client=v"]);
}

#[test]
fn an_invalid_level_is_an_error() {
    let out = Command::new(BIN)
        .args(["--log-level", "bogus", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid log level `bogus`"), "{err}");

    let dir = scratch("badlevel");
    let conf = write_file(&dir, "b.toml", "[log]\nlevel = \"loud\"\n");
    let out = Command::new(BIN).arg("-c").arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.toml:2:") && err.contains("loud"), "{err}");
}

#[test]
fn json_lines_to_a_file_reopened_on_sighup_and_the_level_reloaded() {
    let dir = scratch("logfile");
    let file = dir.join("broker.log");
    let conf = write_file(
        &dir,
        "broker.toml",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\ndest = [\"file\", \"stderr\"]\nfile = \"{}\"\n",
            file.display()
        ),
    );
    let mut broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    mosquitto_pub(&broker.port(), &["-i", "j1", "-t", "t", "-m", "x"]);
    broker.wait_for_all(&["disconnected", "j1"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut connected = None;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["fields"]["message"] == "connected" {
            connected = Some(v);
        }
    }
    let connected = connected.unwrap_or_else(|| panic!("no connection line:\n{text}"));
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["fields"]["client"], "j1");
    assert_eq!(connected["fields"]["keep_alive"], 60);
    assert_eq!(connected["fields"]["clean"], true);

    // logrotate: the file moves away, SIGHUP, and the broker writes a new one. The
    // level comes from the file again: debug now.
    std::fs::rename(&file, dir.join("broker.log.1")).unwrap();
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf)
            .unwrap()
            .replace("[log]\n", "[log]\nlevel = \"debug\"\n"),
    )
    .unwrap();
    broker.signal("HUP");
    broker.wait_for("log files reopened");
    broker.wait_for("log level: info -> debug");
    mosquitto_pub(&broker.port(), &["-i", "j2", "-t", "t", "-m", "x"]);
    broker.wait_for_all(&["disconnected", "j2"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"client\":\"j2\""), "{text}");
    assert!(text.contains("received PUBLISH"), "debug lines now: {text}");
    assert!(!text.contains("\"j1\""), "{text}");

    // A file that no longer parses changes nothing, and the broker stays up.
    std::fs::write(&conf, "[limits]\nmax_inflite = 1\n").unwrap();
    broker.signal("HUP");
    broker.wait_for("configuration not reloaded");
    std::thread::sleep(Duration::from_millis(100));
    assert!(broker.running());
    let (status, _) = broker.stop();
    assert!(status.success());
}
