//! Operations, through the `mqtt-broker` binary as an operator runs it: logs,
//! Mosquitto's configuration file, the HTTP listener (metrics, admin API), signals.
//! Traffic comes from Mosquitto's own clients.

mod admin;
mod dashboard;
mod logs;
mod metrics;
mod mosquitto_conf;
mod service;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mqtt-broker");

/// A directory of its own for one test's files.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The broker binary running, its stderr collected line by line.
pub(crate) struct Broker {
    pub(crate) child: Child,
    /// The MQTT listener's address (the first `listening` line).
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// Starts the binary with `args` (which should make it listen on port 0 of
    /// 127.0.0.1) and waits for its `listening` line.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut broker = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            reader: Some(reader),
        };
        let line = broker.wait_for("listening");
        // `addr=127.0.0.1:1883` in text, `"addr":"127.0.0.1:1883"` in JSON lines.
        let addr = line
            .split("addr=")
            .nth(1)
            .or_else(|| line.split("\"addr\":\"").nth(1))
            .and_then(|rest| rest.split([' ', '"']).next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        broker.addr = addr.parse().unwrap();
        broker
    }

    /// The MQTT port, as a string for command lines.
    pub(crate) fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// What it logged so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (10 s at most) for a line containing all of `needles`, and returns it.
    pub(crate) fn wait_for_all(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self
                .log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needles:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Broker::wait_for_all`] with one needle.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        self.wait_for_all(&[needle])
    }

    /// Sends a signal (by name: `HUP`, `TERM`).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops it with SIGTERM; its exit status and whole log.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub` against `port` with `args`; asserts it succeeds.
pub(crate) fn mosquitto_pub(port: &str, args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .output()
        .expect("mosquitto_pub (Debian's mosquitto-clients) is installed");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw TCP connection to the broker.
pub(crate) fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes `text` to `dir/name`; its path.
pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`): the status and
/// the body.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = tcp(addr);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// The HTTP listener's address, from the broker's log.
pub(crate) fn http_addr(broker: &Broker) -> SocketAddr {
    let line = broker.wait_for("HTTP listening");
    line.split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap()
}

/// A broker binary with the HTTP listener on (and an admin token, if given).
pub(crate) fn broker_with_http(name: &str, token: Option<&str>) -> (Broker, SocketAddr) {
    let dir = scratch(name);
    let token = token.map_or(String::new(), |t| format!("admin_token = \"{t}\"\n"));
    let conf = write_file(
        &dir,
        "broker.toml",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[sys]\ninterval = 1\n[http]\nbind = \"127.0.0.1:0\"\n{token}"
        ),
    );
    let broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    let http = http_addr(&broker);
    (broker, http)
}
