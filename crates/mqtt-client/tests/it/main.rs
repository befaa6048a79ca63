//! The client against a real Mosquitto broker, over loopback sockets. Each test starts
//! its own broker on a free port (and fails, telling how to install it, when mosquitto
//! is missing).

mod auth;
mod backpressure;
mod basics;
mod reconnect;
mod transports;

use std::time::Duration;

use mqtt_client::{
    Client, ConnectOptions, Connection, Event, Message, ProtocolVersion, ReconnectOptions,
};

pub(crate) const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Bounds every wait in the tests.
pub(crate) const T: Duration = Duration::from_secs(10);

pub(crate) fn opts(url: &str, version: ProtocolVersion, id: &str) -> ConnectOptions {
    ConnectOptions::from_url(url)
        .unwrap()
        .version(version)
        .client_id(id)
        .reconnect(ReconnectOptions {
            enabled: true,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: Some(50),
        })
}

pub(crate) async fn connect(options: ConnectOptions) -> (Client, Connection) {
    tokio::time::timeout(T, mqtt_client::connect(options))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// The next message, skipping state events.
pub(crate) async fn next_message(conn: &mut Connection) -> Message {
    tokio::time::timeout(T, conn.next_message())
        .await
        .expect("no message in time")
        .expect("connection ended")
}

/// The next event that is not a message.
pub(crate) async fn next_state(conn: &mut Connection) -> Event {
    loop {
        let ev = tokio::time::timeout(T, conn.next_event())
            .await
            .expect("no event in time")
            .expect("connection ended");
        if !matches!(ev, Event::Message(..)) {
            return ev;
        }
    }
}

/// Asserts that no message arrives within `d`.
pub(crate) async fn assert_quiet(conn: &mut Connection, d: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(d, conn.next_message()).await {
        panic!("unexpected message {m:?}");
    }
}
