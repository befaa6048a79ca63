//! A client and a server session exchanging a QoS 2 message, with the link cut in the
//! middle of the exchange and the session resumed on a new connection: the message is
//! delivered exactly once.
//!
//! Run with `cargo run -p mqtt-session --example pair --features testing`.
#![allow(clippy::print_stdout)] // an example prints what it shows

use bytes::Bytes;
use mqtt_codec::{ByteStr, Packet, ProtocolVersion, QoS};
use mqtt_session::{ClientOptions, Event, Limits, Message, testing::Pair};

fn main() {
    let mut options = ClientOptions::new(ProtocolVersion::V5, ByteStr::from_static("sensor-1"));
    options.clean_start = false;
    options.session_expiry_interval = 3600;
    let mut pair = Pair::new(options, Limits::default());
    pair.connect();

    let message = Message::new(
        ByteStr::from_static("home/kitchen/temp"),
        Bytes::from_static(b"21.5"),
        QoS::ExactlyOnce,
    );
    pair.client
        .publish(pair.now, message)
        .expect("the queue has room");

    // PUBLISH reaches the server, PUBREC reaches the client, PUBREL is written... and
    // the connection drops.
    pair.drive_limited(2);
    pair.cut();
    println!("link cut after: {:?}", kinds(&pair.client_sent));

    pair.connect();
    println!("resumed; the client sent: {:?}", kinds(&pair.client_sent));
    for event in &pair.server_events {
        if let Event::Message(m, _) = event {
            println!("server received {} = {:?}", m.topic, m.payload);
        }
    }
    let received = pair
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::Message(..)))
        .count();
    println!("delivered {received} time(s)");
}

fn kinds(packets: &[Packet]) -> Vec<&'static str> {
    packets.iter().map(|p| p.packet_type().name()).collect()
}
