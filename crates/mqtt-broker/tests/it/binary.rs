//! The `mqtt-broker` binary: flags, configuration errors, signals.

use std::{
    io::Write,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use mqtt_codec::{ByteStr, Connect, Decoder, Packet, ProtocolVersion, ReasonCode};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn help_lists_the_mosquitto_style_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-c, --config",
        "-p, --port",
        "--listen",
        "-v, --verbose",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn invalid_configuration_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("mqtt-broker-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broker.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"[limits]\nmax_inflight = 10\nmax_inflite = 3\n")
        .unwrap();
    let out = Command::new(BIN).arg("-c").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:1:", path.display())), "{err}");
    assert!(err.contains("max_inflite"), "{err}");

    let out = Command::new(BIN)
        .args(["-c", "/nonexistent/broker.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/broker.toml"));
}

/// Starts the binary on a free port and waits until it accepts connections.
fn start(extra: &[&str]) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn read_packet(
    s: &mut std::net::TcpStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Option<Packet> {
    use std::io::Read;
    loop {
        if let Ok(Some(p)) = decoder.decode(buf) {
            return Some(p);
        }
        let mut chunk = [0u8; 256];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// SIGTERM: DISCONNECT 0x8B (Server shutting down) to 5.0 clients, then exit 0.
#[test]
fn sigterm_disconnects_clients_and_exits_zero() {
    let (mut child, port) = start(&[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut wire = BytesMut::new();
    Packet::from(Connect::new(
        ProtocolVersion::V5,
        ByteStr::from_static("term"),
    ))
    .encode(ProtocolVersion::V5, &mut wire)
    .unwrap();
    s.write_all(&wire).unwrap();
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_packet(&mut s, &mut decoder, &mut buf),
        Some(Packet::ConnAck(_))
    ));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let p = read_packet(&mut s, &mut decoder, &mut buf);
    assert!(
        matches!(&p, Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::SERVER_SHUTTING_DOWN),
        "{p:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// -p PORT listens on that port (0.0.0.0 and, where IPv6 works, [::]); --log-level debug
// logs each connection.
#[test]
fn port_flag_and_log_level() {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["-p", &port.to_string(), "--log-level", "debug"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "broker did not start on -p {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut wire = BytesMut::new();
    Packet::from(Connect::new(
        ProtocolVersion::V3_1_1,
        ByteStr::from_static("flagged"),
    ))
    .encode(ProtocolVersion::V3_1_1, &mut wire)
    .unwrap();
    s.write_all(&wire).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut decoder = Decoder::with_version(ProtocolVersion::V3_1_1);
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_packet(&mut s, &mut decoder, &mut buf),
        Some(Packet::ConnAck(_))
    ));
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("connected") && log.contains("flagged"),
        "{log}"
    );
    assert!(log.contains("DEBUG"), "debug level: {log}");
}
