//! mqtt-bench over real loopback sockets: user name and password, TLS and WebSocket on
//! all three kinds of connection it makes (throughput, idle connections held by helper
//! processes, latency), time-bounded and rate-limited runs, and `--json`. Against
//! Debian's Mosquitto (password file, TLS and WebSocket listeners) and our broker run
//! in this process.

use std::{
    process::{Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use mqtt_client::testing::{Listener, Mosquitto, Pki, temp_dir};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_mqtt-bench");

/// Runs mqtt-bench, killing it after a minute.
fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run mqtt-bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mqtt-bench {args:?} timed out; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Runs mqtt-bench with `--json` and returns the object it printed, after checking
/// that stdout holds that one object and nothing else.
fn bench_json(args: &[&str]) -> (Output, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = bench(&a);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "mqtt-bench {a:?}: stdout is not one JSON object ({e}): {text:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

/// Runs a scenario that must succeed; returns its JSON.
fn clean_run(args: &[&str]) -> Value {
    let (out, json) = bench_json(args);
    assert!(
        out.status.success() && json["ok"] == true,
        "mqtt-bench {args:?}: {:?}; {json}; stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    json
}

/// The three kinds of connection, each a short run: throughput (fan-in), idle
/// connections in helper processes, latency. Every one must succeed over `conn`
/// (the flags saying where and how to connect) and name `transport`.
fn every_path(conn: &[&str], transport: &str) {
    let with = |scenario: &[&str]| -> Vec<String> {
        scenario
            .iter()
            .chain(conn)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let args = with(&["fan-in", "--publishers", "4", "-n", "400", "-q", "1"]);
    let j = clean_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(j["delivered"], 400, "{j}");
    assert_eq!(j["transport"], transport, "{j}");

    let args = with(&[
        "connections",
        "-n",
        "6",
        "--per-process",
        "3",
        "--settle",
        "0",
    ]);
    let j = clean_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(j["connected"], 6, "{j}");
    assert_eq!(j["transport"], transport, "{j}");

    let args = with(&["latency", "-r", "200", "-d", "1", "-q", "1"]);
    let j = clean_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(j["received"], 200, "{j}");
    assert_eq!(j["transport"], transport, "{j}");
}

/// Our broker on a free loopback port, in this process.
struct Ours {
    port: u16,
    broker: Option<mqtt_broker::Broker>,
    runtime: tokio::runtime::Runtime,
}

impl Ours {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = mqtt_broker::Config {
            listeners: vec![mqtt_broker::config::Listener::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            )],
            ..mqtt_broker::Config::default()
        };
        let broker = runtime
            .block_on(mqtt_broker::Broker::start(config))
            .unwrap();
        let port = broker.local_addrs()[0].port();
        Self {
            port,
            broker: Some(broker),
            runtime,
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            self.runtime.block_on(b.shutdown());
        }
    }
}

#[test]
fn help_describes_mqtt_bench_and_its_flags() {
    let out = bench(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Load generator for MQTT brokers"),
        "top-level help: {help}"
    );
    assert!(
        !help.contains("mqtt-pub, mqtt-sub and friends"),
        "the crate's description, not the tool's: {help}"
    );
    let out = bench(&["fan-in", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-u, --username",
        "-P, --pw",
        "--cafile",
        "--cert",
        "--key",
        "--insecure",
        "--ws",
        "-L, --url",
        "--duration",
        "--rate",
        "--json",
    ] {
        assert!(help.contains(flag), "fan-in --help lacks {flag}: {help}");
    }
}

// -u/-P reach every connection: Mosquitto with a password file and no anonymous
// access accepts all three kinds of run with the right password, and refuses a wrong
// one with a message that says so.
#[test]
fn user_name_and_password_on_every_connection() {
    let dir = temp_dir("bench-passwd");
    let file = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&file)
        .args(["bench", "s3cret"])
        .output()
        .expect("cannot run mosquitto_passwd (Debian: mosquitto)");
    assert!(made.status.success(), "mosquitto_passwd: {made:?}");
    let broker = Mosquitto::start_with(
        &[],
        &format!("password_file {}\nallow_anonymous false\n", file.display()),
    );
    let port = broker.port.to_string();
    every_path(&["-p", &port, "-u", "bench", "-P", "s3cret"], "tcp");

    for (creds, hint) in [
        (
            &["-u", "bench", "-P", "wrong"][..],
            "check the user name and password",
        ),
        (&[][..], "may want a user name and password"),
    ] {
        let mut args = vec!["fan-in", "-n", "100", "-p", &port];
        args.extend_from_slice(creds);
        let (out, json) = bench_json(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{creds:?}: {err}");
        assert!(
            err.contains("the broker refused the connection: not authorised") && err.contains(hint),
            "{creds:?}: {err}"
        );
        assert_eq!(json["ok"], false);
        assert!(
            json["error"]
                .as_str()
                .unwrap_or("")
                .contains("not authorised"),
            "{json}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

// --duration 2 --rate 1000: the publishers stop after two seconds at about 1,000
// messages a second, and the run checks and reports what was sent; --json holds the
// figures.
#[test]
fn time_bounded_rate_limited_run_with_json() {
    let broker = Ours::start();
    let port = broker.port.to_string();
    let j = clean_run(&["fan-in", "-p", &port, "--duration", "2", "--rate", "1000"]);
    let delivered = j["delivered"].as_u64().expect("delivered is a count");
    assert!(
        (1_000..=3_000).contains(&delivered),
        "about 2,000 expected: {j}"
    );
    assert_eq!(j["expected"], delivered, "{j}");
    assert_eq!(j["duration_s"], 2.0, "{j}");
    assert_eq!(j["rate_limit"], 1000, "{j}");
    assert_eq!(j["faults"], Value::Array(Vec::new()), "{j}");
    assert!(
        j["summary"][0].as_str().unwrap_or("").contains("delivered"),
        "{j}"
    );

    // --machine prints the same figures as a result line.
    let out = bench(&["fan-in", "-p", &port, "-n", "500", "--machine"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("result scenario=fan-in ok=true ")
                && l.contains(" delivered=496 ")),
        "{text}"
    );
}

// --rate without --duration: 3,000 messages at 3,000 a second, paced by the pacer
// thread, and every delivery's latency counted. What is checked is delivery and the
// figures reported, with room for a busy machine, not the pacing's precision.
#[test]
fn rate_limited_fan_in_reports_its_rate_and_latency() {
    let broker = Ours::start();
    let port = broker.port.to_string();
    let j = clean_run(&[
        "fan-in",
        "-p",
        &port,
        "--publishers",
        "4",
        "-n",
        "3000",
        "--rate",
        "3000",
        "-q",
        "1",
    ]);
    assert_eq!(j["sent"], 3000, "{j}");
    assert_eq!(j["delivered"], 3000, "{j}");
    assert_eq!(j["rate_limit"], 3000, "{j}");
    // Paced, the run takes about a second: not much faster than asked (3,000 messages
    // are due over 0.9997 s), and not far slower.
    let rate = j["publish_rate"]
        .as_f64()
        .expect("publish_rate is a number");
    assert!(
        (1_500.0..=3_300.0).contains(&rate),
        "about 3,000 msg/s: {j}"
    );
    assert_eq!(j["latency_samples"], 3000, "one delay per delivery: {j}");
    let p50 = j["p50_us"].as_f64().expect("p50_us is a number");
    let p99 = j["p99_us"].as_f64().expect("p99_us is a number");
    let max = j["max_us"].as_f64().expect("max_us is a number");
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{j}");
    assert!(
        j["summary"][1]
            .as_str()
            .unwrap_or("")
            .contains("latency, send to delivery: p50"),
        "{j}"
    );
}

// TLS with the certificates the tests generate, on all three kinds of connection.
#[test]
fn tls_on_every_connection() {
    let pki = Pki::generate();
    let broker = Mosquitto::start_with(
        &[Listener {
            tls: Some((
                pki.ca.clone(),
                pki.server_cert.clone(),
                pki.server_key.clone(),
            )),
            ..Listener::default()
        }],
        "",
    );
    let port = broker.extra_ports[0].to_string();
    let ca = pki.ca.to_str().unwrap();
    every_path(&["-h", "127.0.0.1", "-p", &port, "--cafile", ca], "tls");
    // The same port without TLS: the handshake fails, and says where.
    let (out, json) = bench_json(&["fan-in", "-n", "100", "-p", &port]);
    assert_eq!(out.status.code(), Some(2), "{json}");
}

// WebSocket (`--ws`, and a ws:// URL) and secure WebSocket on all three kinds of
// connection, against Mosquitto's `protocol websockets` listeners.
#[test]
fn websocket_on_every_connection() {
    let pki = Pki::generate();
    let broker = Mosquitto::start_with(
        &[
            Listener {
                websockets: true,
                ..Listener::default()
            },
            Listener {
                websockets: true,
                tls: Some((
                    pki.ca.clone(),
                    pki.server_cert.clone(),
                    pki.server_key.clone(),
                )),
                ..Listener::default()
            },
        ],
        "",
    );
    let ws = broker.extra_ports[0].to_string();
    let wss = broker.extra_ports[1].to_string();
    every_path(&["-p", &ws, "--ws"], "ws");
    let url = format!("ws://127.0.0.1:{ws}/mqtt");
    let j = clean_run(&["fan-in", "-n", "160", "-L", &url]);
    assert_eq!(j["transport"], "ws", "{j}");
    let ca = pki.ca.to_str().unwrap();
    every_path(&["-p", &wss, "--ws", "--cafile", ca], "wss");
}
