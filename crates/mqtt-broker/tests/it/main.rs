//! Broker integration tests over real sockets on 127.0.0.1, with clients nobody here
//! wrote: rumqttc (3.1.1 and 5.0) in-process, Mosquitto's command-line clients, Python
//! paho-mqtt, and MQTT.js in Chromium; over TCP, TLS, WebSocket and the PROXY protocol.

mod auth_files;
mod authorization;
mod binary;
mod browser;
mod crash;
mod durable;
mod fuzz;
mod isolation;
mod jwt;
mod lifecycle;
mod limits;
mod mosquitto_clients;
mod ops;
mod paho;
mod pki;
mod proxy;
mod reload;
mod remote;
mod route_cache;
mod rumqttc_v4;
mod rumqttc_v5;
mod scram;
mod spec;
mod spec_v311;
mod spec_v5;
mod store;
mod tls;
mod websocket;
mod wire;

use std::{net::SocketAddr, time::Duration};

use mqtt_broker::{Broker, Config, config::Listener};

/// A broker on an ephemeral loopback port.
pub(crate) async fn broker_with(f: impl FnOnce(&mut Config)) -> (Broker, SocketAddr) {
    let mut config = Config {
        listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    config.sys.interval = 1;
    f(&mut config);
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

pub(crate) async fn broker() -> (Broker, SocketAddr) {
    broker_with(|_| {}).await
}

/// Tests that judge the broker by how fast it delivers (`isolation`) take this for
/// writing; the tests that load the machine with other processes (TLS handshakes,
/// Chromium, paho, Mosquitto's clients over TLS) take it for reading, so that the two
/// never run at once on a small machine.
pub(crate) static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Every test is bounded in time.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Debian's `mosquitto_sub` for the broker on 127.0.0.1:`port`, speaking `version`
/// (`mqttv31`, `mqttv311` or `mqttv5`); the caller adds the rest.
pub(crate) fn mosquitto_sub(port: u16, version: &str) -> tokio::process::Command {
    pki::require("mosquitto_sub", "install Debian's mosquitto-clients");
    let mut c = tokio::process::Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version]);
    c
}
