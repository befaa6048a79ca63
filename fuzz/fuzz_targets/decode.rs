//! Fuzzes the stream decoder.
//!
//! The first byte picks the decoder (a server's, which learns the version from CONNECT,
//! or a client's for 3.1, 3.1.1 or 5.0) and how the rest is cut into reads; the rest is
//! the byte stream. Checks: no panic; a decoded packet consumed exactly what its fixed
//! header announced; a decoded packet re-encodes, and the result decodes to the same
//! packet; a partial packet is never consumed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{Decoder, FixedHeader, Packet, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else { return };
    let mut decoder = match mode & 0b11 {
        0 => Decoder::new(),
        1 => Decoder::with_version(ProtocolVersion::V3_1),
        2 => Decoder::with_version(ProtocolVersion::V3_1_1),
        _ => Decoder::with_version(ProtocolVersion::V5),
    };
    // Feed the stream in reads of `chunk` bytes (1 to 64), as a socket would.
    let chunk = usize::from(mode >> 2) + 1;
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let announced = FixedHeader::parse(&buf).ok().flatten().map(|h| h.packet_len());
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    assert_eq!(Some((before - buf.len()) as u64), announced);
                    check_reencode(&decoder, &packet);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "partial packet consumed");
                    break;
                }
                Err(err) => {
                    assert!(err.reason_code().is_error());
                    return;
                }
            }
        }
    }
});

fn check_reencode(decoder: &Decoder, packet: &Packet) {
    let version = match packet {
        Packet::Connect(c) => c.version,
        _ => decoder.version().expect("a packet decoded, so the version is known"),
    };
    let mut wire = BytesMut::new();
    let written = packet.encode(version, &mut wire).expect("a decoded packet encodes");
    assert_eq!(written, packet.encoded_len(version));
    let again = Decoder::with_version(version).decode(&mut wire).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(wire.is_empty());
}
