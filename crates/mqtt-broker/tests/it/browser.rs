//! A real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/browser/run.mjs`), loads a page with MQTT.js that connects over `ws://` and
//! `wss://`, subscribes, publishes and receives its own message.
//!
//! Needs node, Debian's `chromium` and `npm ci` in `tests/browser` (`cargo xtask ci`
//! installs all three); without them the test fails saying so, never skips.

use std::path::Path;

use mqtt_broker::{
    Auth,
    config::{Listener, Protocol},
};
use tokio::process::Command;

use crate::{
    WAIT,
    pki::{Pki, broker_on, require, tls_listener},
};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_in_chromium_over_ws_and_wss() {
    let _timing = crate::TIMING.read().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require("node", "install Debian's nodejs and npm");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: `apt-get install chromium` (`cargo xtask ci` installs it)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && dir.join("node_modules/mqtt/dist/mqtt.min.js").exists(),
        "playwright-core and mqtt not installed: run `npm ci` in {} (`cargo xtask ci` does)",
        dir.display()
    );
    let pki = Pki::new();
    let mut ws = Listener::new("127.0.0.1:0".parse().unwrap());
    ws.protocol = Protocol::WebSockets;
    let mut wss = tls_listener(&pki.cert, &pki.key);
    wss.protocol = Protocol::WebSockets;
    let (broker, addrs) = broker_on(vec![ws, wss], Auth::default(), |_| {}).await;
    let out = tokio::time::timeout(
        WAIT * 6,
        Command::new("node")
            .arg(dir.join("run.mjs"))
            .arg(CHROMIUM)
            .arg(format!("wss://localhost:{}/mqtt", addrs[1].port()))
            .arg(format!("ws://127.0.0.1:{}/mqtt", addrs[0].port()))
            .current_dir(&dir)
            .output(),
    )
    .await
    .expect("the browser finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{stdout}"
    );
    broker.shutdown().await;
}
