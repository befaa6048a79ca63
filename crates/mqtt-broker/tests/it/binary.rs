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

/// The binary, running, with its log collected as it comes.
struct Running {
    child: std::process::Child,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Everything the broker logged, once it has exited.
    fn wait_for_log(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

/// Starts the binary with the arguments `args(port)` for a free port, and waits until it
/// logs that it listens there. A port found free can be taken by another test before
/// the broker binds it (and a probe connection would then reach that test's listener),
/// so the broker's own word is awaited, and another port tried if it cannot bind (the
/// fuzz test's thousands of client connections keep the ephemeral ports busy).
fn spawn_listening(args: impl Fn(u16) -> Vec<String>) -> Running {
    use std::io::{BufRead, BufReader};
    let mut last_log = String::new();
    for _ in 0..20 {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args(args(port))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening") && line.contains(&format!(":{port}")) {
                    let _ = tx.send(());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            return Running {
                child,
                port,
                log,
                reader: Some(reader),
            };
        }
        // It could not bind (or never said so): another port.
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        last_log = log.lock().unwrap().clone();
    }
    panic!("the broker did not start on any of twenty free ports; last log:\n{last_log}");
}

/// Starts the binary on a free port and waits until it accepts connections.
fn start(extra: &[&str]) -> (std::process::Child, u16) {
    let running = spawn_listening(|port| {
        let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    });
    // The log is not needed here; the reader thread drains it until the broker exits.
    (running.child, running.port)
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

// -p PORT listens on that port (127.0.0.1 and, where IPv6 works, [::1]); --log-level debug
// logs each connection.
#[test]
fn port_flag_and_log_level() {
    let running = spawn_listening(|port| {
        vec![
            "-p".to_owned(),
            port.to_string(),
            "--log-level".to_owned(),
            "debug".to_owned(),
        ]
    });
    let port = running.port;
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
        .args(["-TERM", &running.child.id().to_string()])
        .status();
    let (_, log) = running.wait_for_log();
    assert!(
        log.contains("connected") && log.contains("flagged"),
        "{log}"
    );
    assert!(log.contains("DEBUG"), "debug level: {log}");
}

// Secure by default, as Mosquitto 2.0 (issue 15): without a configuration file the
// broker listens on loopback only and says how to open it; a listener on every address
// that lets anonymous clients in is warned about.
#[test]
fn loopback_by_default_and_a_warning_for_an_open_listener() {
    let stop = |running: Running| {
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("kill")
            .args(["-TERM", &running.child.id().to_string()])
            .status();
        let port = running.port;
        let (_, log) = running.wait_for_log();
        (port, log)
    };
    let (port, log) = stop(spawn_listening(|port| {
        vec!["-p".to_owned(), port.to_string()]
    }));
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    assert!(!log.contains("addr=0.0.0.0"), "{log}");
    assert!(
        log.contains("local only") && log.contains("--listen 0.0.0.0:1883"),
        "{log}"
    );
    assert!(!log.contains("anonymous"), "{log}");
    let (_, log) = stop(spawn_listening(|port| {
        vec!["--listen".to_owned(), format!("0.0.0.0:{port}")]
    }));
    assert!(log.contains("lets anonymous"), "{log}");
    assert!(!log.contains("local only"), "{log}");
}
