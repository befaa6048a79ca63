//! Decodes a client's bytes as a server would, answers in the client's version, and
//! shows how a malformed packet is reported.
//!
//! Run with `cargo run -p mqtt-codec --example roundtrip`.
#![allow(clippy::print_stdout)] // an example prints what it shows

use bytes::BytesMut;
use mqtt_codec::{ConnAck, Decoder, Packet, PubAck, ReasonCode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What an MQTT 5.0 client sends: CONNECT (client id "demo", keep-alive 30 s), then a
    // QoS 1 PUBLISH of "21.5" to "home/kitchen/temp" with packet identifier 1.
    let mut input = BytesMut::from(
        &b"\x10\x11\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x04demo\
           \x32\x1a\x00\x11home/kitchen/temp\x00\x01\x0021.5"[..],
    );

    let mut decoder = Decoder::new();
    let mut replies = BytesMut::new();
    while let Some(packet) = decoder.decode(&mut input)? {
        println!("received {}: {packet:?}", packet.packet_type());
        let reply: Packet = match packet {
            Packet::Connect(_) => ConnAck::new(false, ReasonCode::SUCCESS).into(),
            Packet::Publish(p) => match p.packet_id() {
                Some(id) => PubAck::new(id).into(),
                None => continue,
            },
            _ => continue,
        };
        // The decoder learned the version from CONNECT; answer in the same one.
        let version = decoder.version().ok_or("no version after CONNECT")?;
        reply.encode(version, &mut replies)?;
    }
    println!("reply bytes: {:02x?}", &replies[..]);

    // A PUBLISH whose topic holds a wildcard: refused, with the rule and reason code.
    let mut bad = BytesMut::from(&b"\x30\x05\x00\x03a/#"[..]);
    match decoder.decode(&mut bad) {
        Err(e) => println!("refused: {e}; close with {}", e.reason_code()),
        Ok(p) => println!("unexpectedly accepted: {p:?}"),
    }
    Ok(())
}
