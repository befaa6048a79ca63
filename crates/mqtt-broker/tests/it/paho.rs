//! Eclipse paho-mqtt (Python) against our broker. The README's test command installs
//! paho-mqtt; without it these tests fail with a message saying so.

use tokio::process::Command;

use crate::{WAIT, broker};

async fn scenario(name: &str) {
    let (broker, addr) = broker().await;
    run(addr.port(), name).await;
    broker.shutdown().await;
}

/// Fails the test, saying how to install it, unless python3 can import paho-mqtt.
pub(crate) fn require_paho() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "python3 with paho-mqtt not found: `python3 -m pip install paho-mqtt` (the README's test command does)"
    );
}

/// Runs scenario `name` of `tests/paho/interop.py` against a broker on `port`.
pub(crate) async fn run(port: u16, name: &str) {
    require_paho();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/interop.py");
    let out = tokio::time::timeout(
        WAIT * 3,
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(name)
            .output(),
    )
    .await
    .expect("scenario finished in time")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho scenario {name} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_pubsub_every_version() {
    scenario("pubsub-31").await;
    scenario("pubsub-311").await;
    scenario("pubsub-5").await;
}

// 5.0 MQTT-3.3.2-15, 5.0 MQTT-3.3.2-16, 5.0 MQTT-3.3.2-18: request/response properties and
// user properties pass through in order, with the subscription identifier added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_properties() {
    scenario("v5-properties").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_will() {
    scenario("will-311").await;
    scenario("will-5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_retained() {
    scenario("retained-311").await;
    scenario("retained-5").await;
}

/// `tests/paho/transports.py`: paho subscribes and publishes over `transport` (tls, ws
/// or wss) to `port`, trusting `ca`, on WebSocket `path`.
pub(crate) async fn transports(
    transport: &str,
    port: u16,
    ca: Option<&std::path::Path>,
    path: Option<&str>,
) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/transports.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(transport)
        .arg(port.to_string())
        .arg(ca.map_or(std::ffi::OsStr::new(""), |p| p.as_os_str()));
    if let Some(path) = path {
        cmd.arg(path);
    }
    let out = tokio::time::timeout(WAIT * 3, cmd.output())
        .await
        .expect("paho finished in time")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho over {transport} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
