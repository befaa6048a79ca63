//! Known-answer tests: byte strings written by hand from the byte layouts of sections 2
//! and 3 of the MQTT 3.1.1 and 5.0 specifications (and the 3.1 protocol name/level),
//! decoded to typed packets and encoded back to exactly the same bytes, plus one
//! hand-written byte string for every validation failure the codec enforces.
//!
//! Every byte string has a comment naming what each group of bytes is. Hex is written
//! with spaces between fields; `hex` ignores whitespace.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    AckProperties, Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, DecodeError, Decoder, Disconnect, DisconnectProperties, EncodeError,
    ErrorKind, FixedHeader, Packet, PacketId, PacketType, PayloadFormat, PropertyId,
    ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, QosPid,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeProperties, Subscription,
    SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe, UnsubscribeProperties,
    UserProperties, Will, WillProperties,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

// ---- helpers ----------------------------------------------------------------------------

/// Hex digits to bytes; whitespace (including newlines) is ignored.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(text, 16).expect("hex digit")
        })
        .collect()
}

fn s(text: &'static str) -> ByteStr {
    ByteStr::from_static(text)
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

fn sub_id(n: u32) -> SubscriptionId {
    SubscriptionId::new(n).expect("valid subscription id")
}

fn user(pairs: &[(&'static str, &'static str)]) -> UserProperties {
    pairs.iter().map(|&(k, v)| (s(k), s(v))).collect()
}

/// The decoder a receiver would use: a server's fresh decoder for CONNECT (type 1),
/// a decoder that knows the version for everything else.
fn decoder_for(version: ProtocolVersion, wire: &[u8]) -> Decoder {
    if wire.first().map(|b| b >> 4) == Some(1) {
        Decoder::new()
    } else {
        Decoder::with_version(version)
    }
}

/// Decodes exactly one packet that fills the whole of `wire`.
fn decode(version: ProtocolVersion, wire: &[u8]) -> Result<Packet, DecodeError> {
    let mut decoder = decoder_for(version, wire);
    let mut buf = BytesMut::from(wire);
    match decoder.decode(&mut buf) {
        Ok(Some(packet)) => {
            assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
            Ok(packet)
        }
        Ok(None) => panic!("decoder asked for more bytes on a complete packet"),
        Err(e) => Err(e),
    }
}

fn encode(version: ProtocolVersion, packet: &Packet) -> Result<Vec<u8>, EncodeError> {
    let mut out = BytesMut::new();
    let written = packet.encode(version, &mut out)?;
    assert_eq!(
        written,
        out.len(),
        "returned length differs from bytes written"
    );
    Ok(out.to_vec())
}

/// The known answer: `wire` decodes to `packet`, and `packet` encodes to `wire`.
fn known_answer(version: ProtocolVersion, wire: &str, packet: impl Into<Packet>) {
    let bytes = hex(wire);
    let packet = packet.into();
    let decoded = decode(version, &bytes).unwrap_or_else(|e| panic!("decode failed: {e}"));
    assert_eq!(decoded, packet, "decoded packet differs");
    let encoded = encode(version, &packet).unwrap_or_else(|e| panic!("encode failed: {e}"));
    assert_eq!(
        hex_string(&encoded),
        hex_string(&bytes),
        "encoded bytes differ"
    );
    assert_eq!(packet.encoded_len(version), bytes.len());
}

/// `wire` decodes to `packet` (a non-canonical form that encodes differently).
fn decodes_to(version: ProtocolVersion, wire: &str, packet: impl Into<Packet>) {
    let decoded = decode(version, &hex(wire)).unwrap_or_else(|e| panic!("decode failed: {e}"));
    assert_eq!(decoded, packet.into());
}

/// `packet` encodes to `wire` (a field the version cannot carry is dropped or mapped).
fn encodes_to(version: ProtocolVersion, packet: impl Into<Packet>, wire: &str) {
    let encoded = encode(version, &packet.into()).unwrap_or_else(|e| panic!("encode: {e}"));
    assert_eq!(hex_string(&encoded), hex_string(&hex(wire)));
}

fn hex_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn decode_err(version: ProtocolVersion, wire: &str) -> DecodeError {
    match decode(version, &hex(wire)) {
        Ok(p) => panic!("expected an error, decoded {p:?}"),
        Err(e) => e,
    }
}

/// `wire` fails with `kind`, closing with `reason`, citing `rule`.
fn fails(
    version: ProtocolVersion,
    wire: &str,
    kind: ErrorKind,
    reason: ReasonCode,
    rule: Option<&str>,
) {
    let err = decode_err(version, wire);
    assert_eq!(err.kind(), kind, "kind ({err})");
    assert_eq!(err.reason_code(), reason, "reason code ({err})");
    assert_eq!(err.rule(), rule, "rule ({err})");
}

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;

// ---- CONNECT ----------------------------------------------------------------------------

fn minimal_connect(version: ProtocolVersion) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

#[test]
fn connect_v3_1_minimal() {
    // 10 0F: CONNECT, remaining length 15
    // 00 06 "MQIsdp": protocol name; 03: level 3; 02: clean session; 00 3C: keep alive 60
    // 00 01 "a": client id
    known_answer(
        V3_1,
        "10 0F  00 06 4D 51 49 73 64 70  03  02  00 3C  00 01 61",
        minimal_connect(V3_1),
    );
}

#[test]
fn connect_v3_1_1_minimal() {
    // 10 0D: CONNECT, remaining length 13
    // 00 04 "MQTT": protocol name; 04: level 4; 02: clean session; 00 3C: keep alive 60
    // 00 01 "a": client id
    known_answer(
        V3_1_1,
        "10 0D  00 04 4D 51 54 54  04  02  00 3C  00 01 61",
        minimal_connect(V3_1_1),
    );
}

#[test]
fn connect_v5_minimal() {
    // 10 0E: CONNECT, remaining length 14
    // 00 04 "MQTT"; 05: level 5; 02: clean start; 00 3C: keep alive 60
    // 00: property length 0; 00 01 "a": client id
    known_answer(
        V5,
        "10 0E  00 04 4D 51 54 54  05  02  00 3C  00  00 01 61",
        minimal_connect(V5),
    );
}

#[test]
fn connect_v3_1_1_will_username_password() {
    // The variable header of the 3.1.1 spec's example (figure 3.6): flags CE =
    // user name, password, will QoS 1, will flag, clean session; keep alive 10.
    // 10 23: CONNECT, remaining length 35
    // 00 04 "MQTT"  04  CE  00 0A
    // 00 03 "cid": client id; 00 03 "a/b": will topic; 00 02 "hi": will message
    // 00 04 "user": user name; 00 03 01 02 03: password
    let wire = "10 23  00 04 4D 51 54 54  04  CE  00 0A
                00 03 63 69 64  00 03 61 2F 62  00 02 68 69
                00 04 75 73 65 72  00 03 01 02 03";
    let packet = Connect {
        version: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: s("a/b"),
            payload: b(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(&[1, 2, 3])),
        properties: ConnectProperties::default(),
    };
    known_answer(V3_1_1, wire, packet);
}

#[test]
fn connect_v3_1_will_retain_qos2_username_only() {
    // 10 18: CONNECT, remaining length 24
    // 00 06 "MQIsdp"  03
    // B6: user name (80) | will retain (20) | will QoS 2 (10) | will flag (04) | clean (02)
    // 00 00: keep alive 0
    // 00 02 "c1": client id; 00 01 "t": will topic; 00 00: empty will message
    // 00 01 "u": user name
    let wire = "10 18  00 06 4D 51 49 73 64 70  03  B6  00 00
                00 02 63 31  00 01 74  00 00  00 01 75";
    let packet = Connect {
        version: V3_1,
        clean_start: true,
        keep_alive: 0,
        client_id: s("c1"),
        will: Some(Will {
            topic: s("t"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("u")),
        password: None,
        properties: ConnectProperties::default(),
    };
    known_answer(V3_1, wire, packet);
}

#[test]
fn connect_v3_1_1_no_clean_session_empty_client_id() {
    // 10 0C: CONNECT, remaining length 12
    // 00 04 "MQTT"  04  00: no flags  FF FF: keep alive 65535  00 00: empty client id
    let mut packet = minimal_connect(V3_1_1);
    packet.clean_start = false;
    packet.keep_alive = u16::MAX;
    packet.client_id = ByteStr::new();
    known_answer(
        V3_1_1,
        "10 0C  00 04 4D 51 54 54  04  00  FF FF  00 00",
        packet,
    );
}

fn full_v5_connect() -> Connect {
    Connect {
        version: V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("cid"),
        will: Some(Will {
            topic: s("t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(300),
                content_type: Some(s("text")),
                response_topic: Some(s("r/1")),
                correlation_data: Some(b(&[0xC0, 0xDE])),
                user_properties: user(&[("w", "x")]),
            },
        }),
        username: Some(s("u")),
        password: Some(b(b"p")),
        properties: ConnectProperties {
            session_expiry_interval: Some(120),
            receive_maximum: NonZeroU16::new(10),
            maximum_packet_size: NonZeroU32::new(4096),
            topic_alias_maximum: Some(5),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[0xAB, 0xCD])),
            user_properties: user(&[("k", "1"), ("k", "2"), ("a", "")]),
        },
    }
}

#[test]
fn connect_v5_with_properties_will_properties_username_password() {
    // 10 79: CONNECT, remaining length 121
    // 00 04 "MQTT"  05
    // EE: user name | password | will retain | will QoS 1 | will flag | clean start
    // 00 1E: keep alive 30
    // 35: property length 53
    //   11 00 00 00 78: session expiry interval 120
    //   21 00 0A: receive maximum 10
    //   27 00 00 10 00: maximum packet size 4096
    //   22 00 05: topic alias maximum 5
    //   19 01: request response information 1
    //   17 00: request problem information 0
    //   15 00 05 "SCRAM": authentication method
    //   16 00 02 AB CD: authentication data
    //   26 00 01 "k" 00 01 "1" / 26 "k" "2" / 26 "a" "": user properties, in order
    // 00 03 "cid": client id
    // 25: will property length 37
    //   18 00 00 00 05: will delay interval 5
    //   01 01: payload format indicator UTF-8
    //   02 00 00 01 2C: message expiry interval 300
    //   03 00 04 "text": content type
    //   08 00 03 "r/1": response topic
    //   09 00 02 C0 DE: correlation data
    //   26 00 01 "w" 00 01 "x": user property
    // 00 01 "t": will topic; 00 03 "bye": will payload
    // 00 01 "u": user name; 00 01 "p": password
    let wire = "10 79  00 04 4D 51 54 54  05  EE  00 1E
                35  11 00 00 00 78  21 00 0A  27 00 00 10 00  22 00 05  19 01  17 00
                    15 00 05 53 43 52 41 4D  16 00 02 AB CD
                    26 00 01 6B 00 01 31  26 00 01 6B 00 01 32  26 00 01 61 00 00
                00 03 63 69 64
                25  18 00 00 00 05  01 01  02 00 00 01 2C  03 00 04 74 65 78 74
                    08 00 03 72 2F 31  09 00 02 C0 DE  26 00 01 77 00 01 78
                00 01 74  00 03 62 79 65
                00 01 75  00 01 70";
    known_answer(V5, wire, full_v5_connect());
}

#[test]
fn connect_v5_properties_in_any_order_user_properties_keep_their_order() {
    // Same CONNECT, CONNECT properties shuffled with the user properties interleaved:
    // 35: property length 53
    //   26 "k" "1"; 22 00 05; 26 "k" "2"; 16 00 02 AB CD; 15 00 05 "SCRAM"; 17 00; 19 01;
    //   26 "a" ""; 27 00 00 10 00; 21 00 0A; 11 00 00 00 78
    let wire = "10 79  00 04 4D 51 54 54  05  EE  00 1E
                35  26 00 01 6B 00 01 31  22 00 05  26 00 01 6B 00 01 32  16 00 02 AB CD
                    15 00 05 53 43 52 41 4D  17 00  19 01  26 00 01 61 00 00
                    27 00 00 10 00  21 00 0A  11 00 00 00 78
                00 03 63 69 64
                25  26 00 01 77 00 01 78  09 00 02 C0 DE  08 00 03 72 2F 31
                    03 00 04 74 65 78 74  02 00 00 01 2C  01 01  18 00 00 00 05
                00 01 74  00 03 62 79 65
                00 01 75  00 01 70";
    decodes_to(V5, wire, full_v5_connect());
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    // 10 11: CONNECT, remaining length 17
    // 00 04 "MQTT"  05  42: password flag | clean start  00 3C
    // 00: no properties; 00 00: empty client id; 00 02 "pw": password
    let mut packet = minimal_connect(V5);
    packet.client_id = ByteStr::new();
    packet.password = Some(b(b"pw"));
    known_answer(
        V5,
        "10 11  00 04 4D 51 54 54  05  42  00 3C  00  00 00  00 02 70 77",
        packet,
    );
}

#[test]
fn connect_carries_its_own_version_whatever_the_decoder_or_encoder_is_told() {
    // A 3.1.1 CONNECT decoded by a decoder set to 5.0 is still 3.1.1, and encoding it
    // "as 5.0" writes 3.1.1 (no property length).
    let wire = hex("10 0D  00 04 4D 51 54 54  04  02  00 3C  00 01 61");
    let mut decoder = Decoder::with_version(V5);
    let mut buf = BytesMut::from(&wire[..]);
    let packet = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(packet, Packet::from(minimal_connect(V3_1_1)));
    assert_eq!(encode(V5, &packet).unwrap(), wire);
}

#[test]
fn fresh_decoder_learns_the_version_from_connect() {
    // CONNECT 3.1.1, then a 3.1.1 PUBLISH (no property length) "a/b" "hello",
    // then PINGREQ and DISCONNECT, all in one buffer.
    let wire = hex("10 0D  00 04 4D 51 54 54  04  02  00 3C  00 01 61
                    30 0A  00 03 61 2F 62  68 65 6C 6C 6F
                    C0 00
                    E0 00");
    let mut decoder = Decoder::new();
    assert_eq!(decoder.version(), None);
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Packet::from(minimal_connect(V3_1_1)))
    );
    assert_eq!(decoder.version(), Some(V3_1_1));
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Packet::from(Publish::new(s("a/b"), b(b"hello"))))
    );
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Packet::PingReq));
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Packet::from(Disconnect::default()))
    );
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty());
}

#[test]
fn partial_packets_consume_nothing() {
    // PUBLISH 3.1.1 "a/b" "hello", fed one byte at a time.
    let wire = hex("30 0A  00 03 61 2F 62  68 65 6C 6C 6F");
    let mut decoder = Decoder::with_version(V3_1_1);
    let mut buf = BytesMut::new();
    for (i, byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let result = decoder.decode(&mut buf).unwrap();
        if i + 1 < wire.len() {
            assert_eq!(result, None, "after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1);
        } else {
            assert_eq!(
                result,
                Some(Packet::from(Publish::new(s("a/b"), b(b"hello"))))
            );
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn packet_decode_with_a_parsed_fixed_header() {
    // 40 02: PUBACK, remaining length 2; 00 07: packet id 7
    let wire = Bytes::from(hex("40 02 00 07"));
    let header = FixedHeader::parse(&wire).unwrap().unwrap();
    assert_eq!(header.packet_type, PacketType::PubAck);
    assert_eq!(header.flags, 0);
    assert_eq!(header.remaining_length, 2);
    assert_eq!(header.header_len, 2);
    assert!(header.minimal_length);
    assert_eq!(header.packet_len(), 4);
    let body = wire.slice(usize::from(header.header_len)..);
    let packet = Packet::decode(&header, body, V3_1_1).unwrap();
    assert_eq!(packet, Packet::from(PubAck::new(pid(7))));
}

#[test]
fn fixed_header_remaining_length_boundaries() {
    // Remaining length examples of table 2.4 / 1.5.5: 0 = 00, 127 = 7F, 128 = 80 01,
    // 16383 = FF 7F, 16384 = 80 80 01, 2097151 = FF FF 7F, 2097152 = 80 80 80 01,
    // 268435455 = FF FF FF 7F.
    for (wire, value, len) in [
        ("30 00", 0, 2),
        ("30 7F", 127, 2),
        ("30 80 01", 128, 3),
        ("30 FF 7F", 16_383, 3),
        ("30 80 80 01", 16_384, 4),
        ("30 FF FF 7F", 2_097_151, 4),
        ("30 80 80 80 01", 2_097_152, 5),
        ("30 FF FF FF 7F", 268_435_455, 5),
    ] {
        let header = FixedHeader::parse(&hex(wire)).unwrap().unwrap();
        assert_eq!(header.remaining_length, value, "{wire}");
        assert_eq!(header.header_len, len, "{wire}");
        assert!(header.minimal_length, "{wire}");
    }
    // 30 82 00: remaining length 2 in two bytes: not minimal.
    let header = FixedHeader::parse(&hex("30 82 00")).unwrap().unwrap();
    assert_eq!((header.remaining_length, header.header_len), (2, 3));
    assert!(!header.minimal_length);
    // A header cut short asks for more.
    assert_eq!(FixedHeader::parse(&hex("30 80 80")).unwrap(), None);
    assert_eq!(FixedHeader::parse(&[]).unwrap(), None);
}

// ---- CONNACK ----------------------------------------------------------------------------

#[test]
fn connack_v3_1_1_return_codes_map_to_v5_reason_codes() {
    // 20 02: CONNACK, remaining length 2; 00: no session present; return code 0..5
    for (code, reason) in [
        (0, ReasonCode::SUCCESS),
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ] {
        for version in [V3_1, V3_1_1] {
            known_answer(
                version,
                &format!("20 02 00 {code:02X}"),
                ConnAck::new(false, reason),
            );
        }
    }
}

#[test]
fn connack_v3_1_1_session_present() {
    // 20 02; 01: session present; 00: accepted
    known_answer(
        V3_1_1,
        "20 02 01 00",
        ConnAck::new(true, ReasonCode::SUCCESS),
    );
}

#[test]
fn connack_v3_1_1_maps_v5_only_codes_to_the_nearest_return_code() {
    // Banned -> 5 not authorized; bad authentication method -> 4; quota exceeded -> 3.
    encodes_to(
        V3_1_1,
        ConnAck::new(false, ReasonCode::BANNED),
        "20 02 00 05",
    );
    encodes_to(
        V3_1_1,
        ConnAck::new(false, ReasonCode::BAD_AUTHENTICATION_METHOD),
        "20 02 00 04",
    );
    encodes_to(
        V3_1_1,
        ConnAck::new(false, ReasonCode::QUOTA_EXCEEDED),
        "20 02 00 03",
    );
}

#[test]
fn connack_v3_1_ignores_the_unused_first_byte() {
    // 3.1's first CONNACK byte is unused, so bit 1 set is not an error there.
    // 20 02; 02: unused byte; 00: accepted
    decodes_to(
        V3_1,
        "20 02 02 00",
        ConnAck::new(false, ReasonCode::SUCCESS),
    );
    // Nor is its bit 0 a Session Present: 20 02; 01: unused byte; 00: accepted
    decodes_to(
        V3_1,
        "20 02 01 00",
        ConnAck::new(false, ReasonCode::SUCCESS),
    );
}

// 3.1 has no Session Present: the first byte of its CONNACK variable header is unused
// and sent as 0, whatever the session holds (the flag exists from 3.1.1 on, section
// 3.2.2.2 there).
#[test]
fn connack_v3_1_sends_0_in_the_unused_first_byte() {
    // 20 02; 00: unused byte; 00: accepted
    encodes_to(V3_1, ConnAck::new(true, ReasonCode::SUCCESS), "20 02 00 00");
    // 20 02; 00: unused byte; 05: not authorized
    encodes_to(
        V3_1,
        ConnAck::new(true, ReasonCode::NOT_AUTHORIZED),
        "20 02 00 05",
    );
    // 3.1.1 does send it: 20 02; 01: session present; 00: accepted
    encodes_to(
        V3_1_1,
        ConnAck::new(true, ReasonCode::SUCCESS),
        "20 02 01 00",
    );
}

#[test]
fn connack_v5_minimal_and_failure() {
    // 20 03; 00: flags; 00: success; 00: property length 0
    known_answer(
        V5,
        "20 03 00 00 00",
        ConnAck::new(false, ReasonCode::SUCCESS),
    );
    // 20 03; 01: session present; 00: success; 00
    known_answer(
        V5,
        "20 03 01 00 00",
        ConnAck::new(true, ReasonCode::SUCCESS),
    );
    // 20 03; 00; 86: bad user name or password; 00
    known_answer(
        V5,
        "20 03 00 86 00",
        ConnAck::new(false, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
    );
}

#[test]
fn connack_v5_with_every_property() {
    // 20 44: CONNACK, remaining length 68; 00: flags; 00: success
    // 41: property length 65
    //   11 00 00 0E 10: session expiry interval 3600
    //   21 00 14: receive maximum 20
    //   24 01: maximum QoS 1
    //   25 00: retain available 0
    //   27 00 01 00 00: maximum packet size 65536
    //   12 00 03 "xyz": assigned client identifier
    //   22 00 0A: topic alias maximum 10
    //   1F 00 02 "ok": reason string
    //   28 01: wildcard subscription available
    //   29 00: subscription identifiers not available
    //   2A 01: shared subscription available
    //   13 00 1E: server keep alive 30
    //   1A 00 02 "r/": response information
    //   1C 00 02 "s2": server reference
    //   15 00 01 "M": authentication method
    //   16 00 01 FF: authentication data
    //   26 00 01 "a" 00 01 "b": user property
    let wire = "20 44  00  00
                41  11 00 00 0E 10  21 00 14  24 01  25 00  27 00 01 00 00
                    12 00 03 78 79 7A  22 00 0A  1F 00 02 6F 6B  28 01  29 00  2A 01
                    13 00 1E  1A 00 02 72 2F  1C 00 02 73 32  15 00 01 4D  16 00 01 FF
                    26 00 01 61 00 01 62";
    let packet = ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: ConnAckProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(20),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(65536),
            assigned_client_identifier: Some(s("xyz")),
            topic_alias_maximum: Some(10),
            reason_string: Some(s("ok")),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(30),
            response_information: Some(s("r/")),
            server_reference: Some(s("s2")),
            authentication_method: Some(s("M")),
            authentication_data: Some(b(&[0xFF])),
            user_properties: user(&[("a", "b")]),
        },
    };
    known_answer(V5, wire, packet);
}

// ---- PUBLISH ----------------------------------------------------------------------------

#[test]
fn publish_qos0_v3_1_1_and_v3_1() {
    // 30 0A: PUBLISH QoS 0, remaining length 10; 00 03 "a/b": topic; "hello": payload
    for version in [V3_1, V3_1_1] {
        known_answer(
            version,
            "30 0A  00 03 61 2F 62  68 65 6C 6C 6F",
            Publish::new(s("a/b"), b(b"hello")),
        );
    }
}

#[test]
fn publish_qos1_retain_v3_1_1() {
    // 33: PUBLISH, QoS 1 (02) | retain (01); 07: remaining length
    // 00 01 "t": topic; 00 0A: packet id 10; "hi": payload
    let packet = Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(10)),
        retain: true,
        topic: s("t"),
        payload: b(b"hi"),
        topic_alias: None,
        properties: Default::default(),
    };
    known_answer(V3_1_1, "33 07  00 01 74  00 0A  68 69", packet);
}

#[test]
fn publish_qos2_dup_empty_payload_v3_1_1() {
    // 3C: PUBLISH, DUP (08) | QoS 2 (04); 05: remaining length
    // 00 01 "t": topic; FF FF: packet id 65535; no payload
    let packet = Publish {
        dup: true,
        qos_pid: QosPid::ExactlyOnce(pid(0xFFFF)),
        retain: false,
        topic: s("t"),
        payload: Bytes::new(),
        topic_alias: None,
        properties: Default::default(),
    };
    known_answer(V3_1_1, "3C 05  00 01 74  FF FF", packet);
}

#[test]
fn publish_qos1_v3_1() {
    // 32: PUBLISH QoS 1; 05; 00 01 "t"; 00 01: packet id 1
    let mut packet = Publish::new(s("t"), Bytes::new());
    packet.qos_pid = QosPid::AtLeastOnce(pid(1));
    known_answer(V3_1, "32 05  00 01 74  00 01", packet);
}

#[test]
fn publish_topic_keeps_a_byte_order_mark() {
    // [MQTT-1.5.3-3] / [MQTT-1.5.4-3]: EF BB BF is U+FEFF and must not be stripped.
    // 30 06; 00 04 EF BB BF "a": topic; no payload
    known_answer(
        V3_1_1,
        "30 06  00 04 EF BB BF 61",
        Publish::new(s("\u{FEFF}a"), Bytes::new()),
    );
}

#[test]
fn publish_qos0_v5_no_properties() {
    // 30 07; 00 03 "a/b"; 00: property length 0; "x": payload
    known_answer(
        V5,
        "30 07  00 03 61 2F 62  00  78",
        Publish::new(s("a/b"), b(b"x")),
    );
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    // 32: QoS 1; 0A: remaining length 10
    // 00 00: empty topic name; 00 07: packet id 7
    // 03: property length; 23 00 02: topic alias 2
    // "pl": payload
    let packet = Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(7)),
        retain: false,
        topic: ByteStr::new(),
        payload: b(b"pl"),
        topic_alias: NonZeroU16::new(2),
        properties: Default::default(),
    };
    known_answer(V5, "32 0A  00 00  00 07  03  23 00 02  70 6C", packet);
}

#[test]
fn publish_v5_with_every_property() {
    // 35: QoS 2 (04) | retain (01); 4D: remaining length 77
    // 00 03 "t/1": topic; 00 2A: packet id 42
    // 43: property length 67
    //   23 00 01: topic alias 1 (written first: it is kept apart from the others)
    //   01 01: payload format indicator UTF-8
    //   02 00 00 00 3C: message expiry interval 60
    //   08 00 05 "reply": response topic
    //   09 00 03 01 02 03: correlation data
    //   0B 01 / 0B 80 01 / 0B FF FF FF 7F: subscription identifiers 1, 128, 268435455
    //   03 00 10 "application/json": content type
    //   26 00 01 "a" 00 01 "1" / 26 "a" "2": user properties, same name twice, in order
    // "{}": payload
    let wire = "35 4D  00 03 74 2F 31  00 2A
                43  23 00 01  01 01  02 00 00 00 3C  08 00 05 72 65 70 6C 79
                    09 00 03 01 02 03  0B 01  0B 80 01  0B FF FF FF 7F
                    03 00 10 61 70 70 6C 69 63 61 74 69 6F 6E 2F 6A 73 6F 6E
                    26 00 01 61 00 01 31  26 00 01 61 00 01 32
                7B 7D";
    let packet = Publish {
        dup: false,
        qos_pid: QosPid::ExactlyOnce(pid(42)),
        retain: true,
        topic: s("t/1"),
        payload: b(b"{}"),
        topic_alias: NonZeroU16::new(1),
        properties: PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(60),
            response_topic: Some(s("reply")),
            correlation_data: Some(b(&[1, 2, 3])),
            subscription_identifiers: vec![sub_id(1), sub_id(128), sub_id(268_435_455)],
            content_type: Some(s("application/json")),
            user_properties: user(&[("a", "1"), ("a", "2")]),
        }
        .into(),
    };
    known_answer(V5, wire, packet);
}

#[test]
fn publish_v5_payload_format_unspecified() {
    // 30 08; 00 01 "t"; 02: property length; 01 00: payload format indicator 0; FF 00: payload
    let mut packet = Publish::new(s("t"), b(&[0xFF, 0x00]));
    packet.properties.payload_format_indicator = Some(PayloadFormat::Unspecified);
    known_answer(V5, "30 08  00 01 74  02 01 00  FF 00", packet);
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----------------------------------------------------

#[test]
fn acks_v3_1_1_and_v3_1() {
    for version in [V3_1, V3_1_1] {
        // 40 02: PUBACK; 00 01: packet id 1
        known_answer(version, "40 02 00 01", PubAck::new(pid(1)));
        // 50 02: PUBREC; 00 02: packet id 2
        known_answer(version, "50 02 00 02", PubRec::new(pid(2)));
        // 62 02: PUBREL (flags 0010); 00 03: packet id 3
        known_answer(version, "62 02 00 03", PubRel::new(pid(3)));
        // 70 02: PUBCOMP; 00 04: packet id 4
        known_answer(version, "70 02 00 04", PubComp::new(pid(4)));
    }
}

#[test]
fn acks_v5_remaining_length_2_means_success() {
    // 40 02 00 01: PUBACK, packet id 1, reason code and properties omitted
    known_answer(V5, "40 02 00 01", PubAck::new(pid(1)));
    known_answer(V5, "50 02 00 02", PubRec::new(pid(2)));
    known_answer(V5, "62 02 00 03", PubRel::new(pid(3)));
    known_answer(V5, "70 02 00 04", PubComp::new(pid(4)));
}

#[test]
fn acks_v5_remaining_length_3_reason_code_only() {
    // 40 03; 00 01: packet id; 10: no matching subscribers
    let mut puback = PubAck::new(pid(1));
    puback.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    known_answer(V5, "40 03 00 01 10", puback);
    // 50 03; 00 02; 91: packet identifier in use
    let mut pubrec = PubRec::new(pid(2));
    pubrec.reason_code = ReasonCode::PACKET_IDENTIFIER_IN_USE;
    known_answer(V5, "50 03 00 02 91", pubrec);
    // 62 03; 00 03; 92: packet identifier not found
    let mut pubrel = PubRel::new(pid(3));
    pubrel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    known_answer(V5, "62 03 00 03 92", pubrel);
    // 70 03; 00 04; 92
    let mut pubcomp = PubComp::new(pid(4));
    pubcomp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    known_answer(V5, "70 03 00 04 92", pubcomp);
}

#[test]
fn acks_v5_long_forms_without_properties_decode_to_the_short_form() {
    // 40 03 00 01 00: reason code 0 written out; encodes back as 40 02 00 01
    decodes_to(V5, "40 03 00 01 00", PubAck::new(pid(1)));
    // 40 04 00 01 00 00: reason code 0 and property length 0
    decodes_to(V5, "40 04 00 01 00 00", PubAck::new(pid(1)));
    // 50 04 00 02 10 00: reason code 0x10, property length 0; encodes as 50 03 00 02 10
    let mut pubrec = PubRec::new(pid(2));
    pubrec.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    decodes_to(V5, "50 04 00 02 10 00", pubrec);
}

#[test]
fn puback_v5_full_form() {
    // 40 12: PUBACK, remaining length 18; 00 01: packet id; 80: unspecified error
    // 0E: property length 14
    //   1F 00 04 "oops": reason string
    //   26 00 01 "k" 00 01 "v": user property
    let mut packet = PubAck::new(pid(1));
    packet.reason_code = ReasonCode::UNSPECIFIED_ERROR;
    packet.properties = AckProperties {
        reason_string: Some(s("oops")),
        user_properties: user(&[("k", "v")]),
    };
    known_answer(
        V5,
        "40 12  00 01  80  0E  1F 00 04 6F 6F 70 73  26 00 01 6B 00 01 76",
        packet,
    );
}

#[test]
fn pubrel_v5_full_form() {
    // 62 0A: PUBREL; 00 05: packet id; 92: not found; 06: property length
    //   1F 00 03 "nop": reason string
    let mut packet = PubRel::new(pid(5));
    packet.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    packet.properties.reason_string = Some(s("nop"));
    known_answer(V5, "62 0A  00 05  92  06  1F 00 03 6E 6F 70", packet);
}

#[test]
fn pubcomp_v5_success_with_properties_keeps_the_reason_code() {
    // 70 0B: PUBCOMP; 00 05; 00: success (must be present before properties)
    // 07: property length; 26 00 01 "k" 00 01 "v"
    let mut packet = PubComp::new(pid(5));
    packet.properties.user_properties = user(&[("k", "v")]);
    known_answer(V5, "70 0B  00 05  00  07  26 00 01 6B 00 01 76", packet);
}

#[test]
fn pubrec_v5_full_form_with_reason_string() {
    // 50 0A: PUBREC; 00 09; 97: quota exceeded; 06; 1F 00 03 "max"
    let mut packet = PubRec::new(pid(9));
    packet.reason_code = ReasonCode::QUOTA_EXCEEDED;
    packet.properties.reason_string = Some(s("max"));
    known_answer(V5, "50 0A  00 09  97  06  1F 00 03 6D 61 78", packet);
}

#[test]
fn acks_v3_1_1_drop_v5_fields_on_encode() {
    // A PUBACK with a failure code and a reason string is just the packet id in 3.1.1.
    let mut packet = PubAck::new(pid(1));
    packet.reason_code = ReasonCode::NOT_AUTHORIZED;
    packet.properties.reason_string = Some(s("no"));
    encodes_to(V3_1_1, packet, "40 02 00 01");
}

// ---- SUBSCRIBE --------------------------------------------------------------------------

fn spec_example_subscribe() -> Subscribe {
    Subscribe {
        packet_id: pid(10),
        subscriptions: vec![
            Subscription {
                filter: s("a/b"),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
            },
            Subscription {
                filter: s("c/d"),
                options: SubscriptionOptions::new(QoS::ExactlyOnce),
            },
        ],
        properties: SubscribeProperties::default(),
    }
}

#[test]
fn subscribe_v3_1_1_spec_example() {
    // The 3.1.1 spec's payload example (3.8.3): "a/b" QoS 1, "c/d" QoS 2, packet id 10.
    // 82 0E: SUBSCRIBE (flags 0010), remaining length 14; 00 0A: packet id 10
    // 00 03 "a/b" 01: filter, requested QoS 1
    // 00 03 "c/d" 02: filter, requested QoS 2
    for version in [V3_1, V3_1_1] {
        known_answer(
            version,
            "82 0E  00 0A  00 03 61 2F 62 01  00 03 63 2F 64 02",
            spec_example_subscribe(),
        );
    }
}

#[test]
fn subscribe_v5_options_bits_and_subscription_identifier() {
    // 82 18: SUBSCRIBE, remaining length 24; 00 0A: packet id 10
    // 09: property length 9
    //   0B 05: subscription identifier 5
    //   26 00 01 "k" 00 01 "v": user property
    // 00 03 "a/b" 2D: options 0010 1101 = retain handling 2, retain as published,
    //                 no local, QoS 1
    // 00 03 "c/+" 10: options 0001 0000 = retain handling 1, QoS 0
    let wire = "82 18  00 0A  09  0B 05  26 00 01 6B 00 01 76
                00 03 61 2F 62 2D
                00 03 63 2F 2B 10";
    let packet = Subscribe {
        packet_id: pid(10),
        subscriptions: vec![
            Subscription {
                filter: s("a/b"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription {
                filter: s("c/+"),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
            },
        ],
        properties: SubscribeProperties {
            subscription_identifier: Some(sub_id(5)),
            user_properties: user(&[("k", "v")]),
        },
    };
    known_answer(V5, wire, packet);
}

#[test]
fn subscribe_v5_shared_subscription() {
    // 82 10: SUBSCRIBE, remaining length 16; 00 01: packet id; 00: no properties
    // 00 0A "$share/g/t" 01: shared filter, QoS 1
    let packet = Subscribe::new(pid(1), s("$share/g/t"), QoS::AtLeastOnce);
    known_answer(
        V5,
        "82 10  00 01  00  00 0A 24 73 68 61 72 65 2F 67 2F 74  01",
        packet,
    );
}

#[test]
fn subscribe_v3_1_1_share_prefix_is_an_ordinary_filter() {
    // 3.1.1 has no shared subscriptions: "$share/g" is a plain filter.
    // 82 0D: SUBSCRIBE; 00 01: packet id; 00 08 "$share/g" 00: QoS 0
    known_answer(
        V3_1_1,
        "82 0D  00 01  00 08 24 73 68 61 72 65 2F 67  00",
        Subscribe::new(pid(1), s("$share/g"), QoS::AtMostOnce),
    );
}

#[test]
fn subscribe_wildcard_filters_from_the_spec() {
    // 82 14: SUBSCRIBE, remaining length 20; 00 02: packet id 2
    // 00 07 "sport/#" 00; 00 01 "+" 01; 00 01 "#" 02
    let packet = Subscribe {
        packet_id: pid(2),
        subscriptions: vec![
            Subscription {
                filter: s("sport/#"),
                options: SubscriptionOptions::new(QoS::AtMostOnce),
            },
            Subscription {
                filter: s("+"),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
            },
            Subscription {
                filter: s("#"),
                options: SubscriptionOptions::new(QoS::ExactlyOnce),
            },
        ],
        properties: SubscribeProperties::default(),
    };
    known_answer(
        V3_1_1,
        "82 14  00 02  00 07 73 70 6F 72 74 2F 23 00  00 01 2B 01  00 01 23 02",
        packet,
    );
}

#[test]
fn subscribe_v3_1_1_encodes_only_the_qos_bits() {
    // No Local, Retain As Published and Retain Handling do not exist in 3.1.1.
    let mut packet = Subscribe::new(pid(1), s("t"), QoS::AtLeastOnce);
    packet.subscriptions[0].options.no_local = true;
    packet.subscriptions[0].options.retain_as_published = true;
    packet.subscriptions[0].options.retain_handling = RetainHandling::DoNotSend;
    // 82 06; 00 01; 00 01 "t" 01
    encodes_to(V3_1_1, packet, "82 06  00 01  00 01 74  01");
}

// ---- SUBACK -----------------------------------------------------------------------------

#[test]
fn suback_v3_1_1_with_failure() {
    // 90 06: SUBACK, remaining length 6; 00 0A: packet id 10
    // 00 01 02: granted QoS 0, 1, 2; 80: failure
    let packet = SubAck {
        packet_id: pid(10),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::UNSPECIFIED_ERROR,
        ],
        properties: AckProperties::default(),
    };
    known_answer(V3_1_1, "90 06  00 0A  00 01 02 80", packet);
}

#[test]
fn suback_v3_1() {
    // 90 03; 00 0A; 01: granted QoS 1
    let packet = SubAck {
        packet_id: pid(10),
        reason_codes: vec![ReasonCode::GRANTED_QOS_1],
        properties: AckProperties::default(),
    };
    known_answer(V3_1, "90 03  00 0A  01", packet);
}

#[test]
fn suback_v3_1_1_writes_every_v5_failure_as_0x80() {
    let packet = SubAck {
        packet_id: pid(10),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        ],
        properties: AckProperties::default(),
    };
    // 90 05; 00 0A; 01 80 80
    encodes_to(V3_1_1, packet, "90 05  00 0A  01 80 80");
}

#[test]
fn suback_v5_every_reason_code() {
    // 90 0F: SUBACK, remaining length 15; 00 0A; 00: property length 0
    // 00 01 02 80 83 87 8F 91 97 9E A1 A2: every SUBACK reason code of table 3.8 / 3.9.3
    let codes = [
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    let packet = SubAck {
        packet_id: pid(10),
        reason_codes: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties: AckProperties::default(),
    };
    known_answer(
        V5,
        "90 0F  00 0A  00  00 01 02 80 83 87 8F 91 97 9E A1 A2",
        packet,
    );
}

#[test]
fn suback_v5_with_properties() {
    // 90 11: SUBACK, remaining length 17; 00 0A
    // 0C: property length 12; 1F 00 02 "no": reason string; 26 00 01 "k" 00 01 "v"
    // 02 9E: granted QoS 2, shared subscriptions not supported
    let packet = SubAck {
        packet_id: pid(10),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        ],
        properties: AckProperties {
            reason_string: Some(s("no")),
            user_properties: user(&[("k", "v")]),
        },
    };
    known_answer(
        V5,
        "90 11  00 0A  0C  1F 00 02 6E 6F  26 00 01 6B 00 01 76  02 9E",
        packet,
    );
}

// ---- UNSUBSCRIBE ------------------------------------------------------------------------

#[test]
fn unsubscribe_v3_1_1_and_v3_1() {
    // A2 0A: UNSUBSCRIBE (flags 0010), remaining length 10; 00 0B: packet id 11
    // 00 03 "a/b"; 00 01 "#"
    let packet = Unsubscribe {
        packet_id: pid(11),
        filters: vec![s("a/b"), s("#")],
        properties: UnsubscribeProperties::default(),
    };
    for version in [V3_1, V3_1_1] {
        known_answer(
            version,
            "A2 0A  00 0B  00 03 61 2F 62  00 01 23",
            packet.clone(),
        );
    }
}

#[test]
fn unsubscribe_v5_with_user_property() {
    // A2 0F: remaining length 15; 00 0B
    // 07: property length; 26 00 01 "k" 00 01 "v"
    // 00 03 "a/b"
    let packet = Unsubscribe {
        packet_id: pid(11),
        filters: vec![s("a/b")],
        properties: UnsubscribeProperties {
            user_properties: user(&[("k", "v")]),
        },
    };
    known_answer(
        V5,
        "A2 0F  00 0B  07  26 00 01 6B 00 01 76  00 03 61 2F 62",
        packet,
    );
}

#[test]
fn unsubscribe_v5_shared_filter() {
    // A2 0F; 00 01; 00: no properties; 00 0A "$share/g/t"
    let packet = Unsubscribe {
        packet_id: pid(1),
        filters: vec![s("$share/g/t")],
        properties: UnsubscribeProperties::default(),
    };
    known_answer(
        V5,
        "A2 0F  00 01  00  00 0A 24 73 68 61 72 65 2F 67 2F 74",
        packet,
    );
}

// ---- UNSUBACK ---------------------------------------------------------------------------

#[test]
fn unsuback_v3_1_1_has_no_payload() {
    // B0 02: UNSUBACK; 00 0B: packet id 11
    let packet = UnsubAck {
        packet_id: pid(11),
        reason_codes: vec![],
        properties: AckProperties::default(),
    };
    for version in [V3_1, V3_1_1] {
        known_answer(version, "B0 02  00 0B", packet.clone());
    }
}

#[test]
fn unsuback_v5_reason_codes() {
    // B0 05; 00 0B; 00: no properties; 00: success; 11: no subscription existed
    let packet = UnsubAck {
        packet_id: pid(11),
        reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: AckProperties::default(),
    };
    known_answer(V5, "B0 05  00 0B  00  00 11", packet);
}

#[test]
fn unsuback_v5_with_reason_string() {
    // B0 0A; 00 0B; 05: property length; 1F 00 02 "no"; 8F: topic filter invalid;
    // 87: not authorized
    let packet = UnsubAck {
        packet_id: pid(11),
        reason_codes: vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::NOT_AUTHORIZED],
        properties: AckProperties {
            reason_string: Some(s("no")),
            user_properties: UserProperties::new(),
        },
    };
    known_answer(V5, "B0 0A  00 0B  05  1F 00 02 6E 6F  8F 87", packet);
}

#[test]
fn unsuback_v3_1_1_drops_v5_reason_codes() {
    let packet = UnsubAck {
        packet_id: pid(11),
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: AckProperties::default(),
    };
    encodes_to(V3_1_1, packet, "B0 02 00 0B");
}

// ---- PINGREQ, PINGRESP ------------------------------------------------------------------

#[test]
fn pingreq_and_pingresp_every_version() {
    for version in [V3_1, V3_1_1, V5] {
        // C0 00: PINGREQ, remaining length 0
        known_answer(version, "C0 00", Packet::PingReq);
        // D0 00: PINGRESP, remaining length 0
        known_answer(version, "D0 00", Packet::PingResp);
    }
}

// ---- DISCONNECT -------------------------------------------------------------------------

#[test]
fn disconnect_v3_1_1_and_v3_1_empty() {
    // E0 00: DISCONNECT, remaining length 0
    for version in [V3_1, V3_1_1] {
        known_answer(version, "E0 00", Disconnect::default());
    }
}

#[test]
fn disconnect_v5_empty_means_normal_disconnection() {
    // E0 00
    known_answer(
        V5,
        "E0 00",
        Disconnect::new(ReasonCode::NORMAL_DISCONNECTION),
    );
    // E0 01 00 and E0 02 00 00 are the same packet written out longer.
    decodes_to(V5, "E0 01 00", Disconnect::default());
    decodes_to(V5, "E0 02 00 00", Disconnect::default());
}

#[test]
fn disconnect_v5_one_byte() {
    // E0 01; 04: disconnect with will message, property length left out (3.14.2.2.1)
    decodes_to(
        V5,
        "E0 01 04",
        Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL),
    );
    // E0 01; 8E: session taken over
    decodes_to(
        V5,
        "E0 01 8E",
        Disconnect::new(ReasonCode::SESSION_TAKEN_OVER),
    );
    // The encoder always writes the Property Length after a reason code.
    // E0 02; 8E; 00: session taken over, property length 0
    known_answer(
        V5,
        "E0 02 8E 00",
        Disconnect::new(ReasonCode::SESSION_TAKEN_OVER),
    );
}

#[test]
fn disconnect_v5_with_properties() {
    // E0 1C: DISCONNECT, remaining length 28; 9C: use another server
    // 1A: property length 26
    //   11 00 00 00 00: session expiry interval 0
    //   1F 00 03 "bye": reason string
    //   1C 00 05 "host2": server reference
    //   26 00 01 "a" 00 01 "b": user property
    let packet = Disconnect {
        reason_code: ReasonCode::USE_ANOTHER_SERVER,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("bye")),
            server_reference: Some(s("host2")),
            user_properties: user(&[("a", "b")]),
        },
    };
    known_answer(
        V5,
        "E0 1C  9C  1A  11 00 00 00 00  1F 00 03 62 79 65  1C 00 05 68 6F 73 74 32
                        26 00 01 61 00 01 62",
        packet,
    );
}

#[test]
fn disconnect_v3_1_1_drops_v5_fields() {
    encodes_to(
        V3_1_1,
        Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN),
        "E0 00",
    );
}

// ---- AUTH -------------------------------------------------------------------------------

#[test]
fn auth_v5_empty_means_success() {
    // F0 00: AUTH, remaining length 0
    known_answer(V5, "F0 00", Auth::default());
    // F0 02 00 00: success and property length 0 written out: that form needs an
    // Authentication Method (3.15.2.2.2); only the empty body may leave it out.
    fails(
        V5,
        "F0 02 00 00",
        ErrorKind::AuthWithoutMethod,
        PROTOCOL,
        None,
    );
}

#[test]
fn auth_v5_continue_with_method_and_data() {
    // F0 10: AUTH, remaining length 16; 18: continue authentication
    // 0E: property length 14
    //   15 00 05 "SCRAM": authentication method
    //   16 00 03 01 02 03: authentication data
    let packet = Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2, 3])),
            reason_string: None,
            user_properties: UserProperties::new(),
        },
    };
    known_answer(
        V5,
        "F0 10  18  0E  15 00 05 53 43 52 41 4D  16 00 03 01 02 03",
        packet,
    );
}

#[test]
fn auth_v5_reauthenticate_with_reason_string() {
    // F0 0B; 19: re-authenticate; 09: property length
    //   15 00 01 "M": authentication method; 1F 00 02 "no": reason string
    let packet = Auth {
        reason_code: ReasonCode::REAUTHENTICATE,
        properties: AuthProperties {
            authentication_method: Some(s("M")),
            authentication_data: None,
            reason_string: Some(s("no")),
            user_properties: UserProperties::new(),
        },
    };
    known_answer(V5, "F0 0B  19  09  15 00 01 4D  1F 00 02 6E 6F", packet);
}

// ---- decode failures: fixed header --------------------------------------------------------

#[test]
fn reserved_packet_type_0() {
    // 00 00: packet type 0
    fails(V5, "00 00", ErrorKind::ReservedPacketType, MALFORMED, None);
    fails(
        V3_1_1,
        "00 00",
        ErrorKind::ReservedPacketType,
        MALFORMED,
        None,
    );
}

// Checks 3.1.1 MQTT-2.2.2-2, 5.0 MQTT-2.1.3-1.
#[test]
fn reserved_flags_pubrel_subscribe_unsubscribe() {
    let flags = |found, expected| ErrorKind::ReservedFlags { found, expected };
    // 60 02 00 01: PUBREL with flags 0000 instead of 0010
    fails(
        V3_1_1,
        "60 02 00 01",
        flags(0, 2),
        MALFORMED,
        Some("MQTT-2.2.2-2"),
    );
    fails(
        V5,
        "60 02 00 01",
        flags(0, 2),
        MALFORMED,
        Some("MQTT-2.1.3-1"),
    );
    // 80 06 00 01 00 01 74 00: SUBSCRIBE with flags 0000
    fails(
        V3_1_1,
        "80 06  00 01  00 01 74 00",
        flags(0, 2),
        MALFORMED,
        Some("MQTT-2.2.2-2"),
    );
    // 8A ...: SUBSCRIBE with flags 1010 (DUP set), 5.0 (00: no properties)
    fails(
        V5,
        "8A 07  00 01  00  00 01 74 00",
        flags(0b1010, 2),
        MALFORMED,
        Some("MQTT-2.1.3-1"),
    );
    // A0 05 00 01 00 01 74: UNSUBSCRIBE with flags 0000
    fails(
        V3_1_1,
        "A0 05  00 01  00 01 74",
        flags(0, 2),
        MALFORMED,
        Some("MQTT-2.2.2-2"),
    );
    // A3 ...: UNSUBSCRIBE with flags 0011, 5.0
    fails(
        V5,
        "A3 06  00 01  00  00 01 74",
        flags(3, 2),
        MALFORMED,
        Some("MQTT-2.1.3-1"),
    );
}

#[test]
fn reserved_flags_other_types() {
    let flags = |found| ErrorKind::ReservedFlags { found, expected: 0 };
    let rule_v3 = Some("MQTT-2.2.2-2");
    let rule_v5 = Some("MQTT-2.1.3-1");
    // 11 ...: CONNECT with flags 0001
    fails(
        V3_1_1,
        "11 0D  00 04 4D 51 54 54  04  02  00 3C  00 01 61",
        flags(1),
        MALFORMED,
        rule_v3,
    );
    // 22 02 00 00: CONNACK with flags 0010
    fails(V3_1_1, "22 02 00 00", flags(2), MALFORMED, rule_v3);
    // 41 02 00 01: PUBACK with flags 0001
    fails(V3_1_1, "41 02 00 01", flags(1), MALFORMED, rule_v3);
    fails(V5, "41 02 00 01", flags(1), MALFORMED, rule_v5);
    // 52 02 00 01: PUBREC with flags 0010
    fails(V5, "52 02 00 01", flags(2), MALFORMED, rule_v5);
    // 78 02 00 01: PUBCOMP with flags 1000
    fails(V5, "78 02 00 01", flags(8), MALFORMED, rule_v5);
    // 92 03 00 01 00: SUBACK with flags 0010
    fails(V3_1_1, "92 03 00 01 00", flags(2), MALFORMED, rule_v3);
    // B2 02 00 01: UNSUBACK with flags 0010
    fails(V3_1_1, "B2 02 00 01", flags(2), MALFORMED, rule_v3);
    // C2 00: PINGREQ with flags 0010
    fails(V3_1_1, "C2 00", flags(2), MALFORMED, rule_v3);
    // D1 00: PINGRESP with flags 0001
    fails(V5, "D1 00", flags(1), MALFORMED, rule_v5);
    // E1 00: DISCONNECT with flags 0001 (3.1.1 MQTT-3.14.1-1, 5.0 MQTT-3.14.1-1)
    fails(V3_1_1, "E1 00", flags(1), MALFORMED, rule_v3);
    fails(V5, "E1 00", flags(1), MALFORMED, rule_v5);
    // F1 00: AUTH with flags 0001
    fails(V5, "F1 00", flags(1), MALFORMED, rule_v5);
}

#[test]
fn v3_1_is_lenient_about_pubrel_subscribe_unsubscribe_flags() {
    // 3.1 let clients choose the QoS/DUP bits of PUBREL, SUBSCRIBE and UNSUBSCRIBE.
    // 60 02 00 01: PUBREL, flags 0000
    decodes_to(V3_1, "60 02 00 01", PubRel::new(pid(1)));
    // 6A 02 00 01: PUBREL, DUP | QoS 1
    decodes_to(V3_1, "6A 02 00 01", PubRel::new(pid(1)));
    // 80 ...: SUBSCRIBE, flags 0000; 00 0A; "a/b" QoS 1; "c/d" QoS 2
    decodes_to(
        V3_1,
        "80 0E  00 0A  00 03 61 2F 62 01  00 03 63 2F 64 02",
        spec_example_subscribe(),
    );
    // A0 05 00 01 00 01 74: UNSUBSCRIBE, flags 0000
    decodes_to(
        V3_1,
        "A0 05  00 01  00 01 74",
        Unsubscribe {
            packet_id: pid(1),
            filters: vec![s("t")],
            properties: UnsubscribeProperties::default(),
        },
    );
    // But the flags of types whose bits were always 0 are still checked:
    // 42 02 00 01: PUBACK with flags 0010
    fails(
        V3_1,
        "42 02 00 01",
        ErrorKind::ReservedFlags {
            found: 2,
            expected: 0,
        },
        MALFORMED,
        Some("MQTT-2.2.2-2"),
    );
}

#[test]
fn remaining_length_of_five_bytes() {
    // 30 80 80 80 80 01: the fourth length byte still has its continuation bit set
    for version in [V3_1_1, V5] {
        fails(
            version,
            "30 80 80 80 80 01",
            ErrorKind::VarIntTooLong,
            MALFORMED,
            None,
        );
    }
    // Four continuation bytes are enough to know: no fifth byte needed.
    let err = Decoder::with_version(V5)
        .decode(&mut BytesMut::from(&hex("C0 80 80 80 80")[..]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VarIntTooLong);
}

// Checks 5.0 MQTT-1.5.5-1.
#[test]
fn non_minimal_remaining_length_rejected_in_v5_accepted_in_v3_1_1() {
    // C0 80 00: PINGREQ, remaining length 0 written in two bytes
    fails(
        V5,
        "C0 80 00",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
    decodes_to(V3_1_1, "C0 80 00", Packet::PingReq);
    // 40 82 00 00 01: PUBACK, remaining length 2 in two bytes, packet id 1
    fails(
        V5,
        "40 82 00 00 01",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
    decodes_to(V3_1_1, "40 82 00 00 01", PubAck::new(pid(1)));
    // A 3.1.1 CONNECT with a non-minimal length is accepted by a fresh decoder:
    // 10 8D 00: remaining length 13 in two bytes
    decodes_to(
        V3_1_1,
        "10 8D 00  00 04 4D 51 54 54  04  02  00 3C  00 01 61",
        minimal_connect(V3_1_1),
    );
    // ...and a 5.0 one is not.
    fails(
        V5,
        "10 8E 00  00 04 4D 51 54 54  05  02  00 3C  00  00 01 61",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
}

// Checks 5.0 MQTT-1.5.5-1.
#[test]
fn non_minimal_variable_byte_integers_inside_v5_packets() {
    // 30 05; 00 01 "t"; 80 00: property length 0 written in two bytes
    fails(
        V5,
        "30 05  00 01 74  80 00",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
    // 30 07; 00 01 "t"; 03: property length; 0B 81 00: subscription identifier 1 in two bytes
    fails(
        V5,
        "30 07  00 01 74  03  0B 81 00",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
    // 30 07; 00 01 "t"; 03; 81 00 00: property identifier 1 written in two bytes, value 0
    fails(
        V5,
        "30 07  00 01 74  03  81 00 00",
        ErrorKind::NonMinimalVarInt,
        MALFORMED,
        Some("MQTT-1.5.5-1"),
    );
}

// ---- decode failures: strings and fields ------------------------------------------------

// Checks 3.1.1 MQTT-1.5.3-1, 5.0 MQTT-1.5.4-1.
#[test]
fn invalid_utf8() {
    // 30 03; 00 01 FF: topic of one byte FF, never valid UTF-8
    fails(
        V3_1_1,
        "30 03  00 01 FF",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.3-1"),
    );
    fails(
        V5,
        "30 04  00 01 FF  00",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.4-1"),
    );
    // 30 04; 00 02 C0 80: overlong encoding of U+0000
    fails(
        V3_1_1,
        "30 04  00 02 C0 80",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.3-1"),
    );
    // 30 05; 00 02 C3 28: lead byte of a two-byte sequence without its continuation; 00
    fails(
        V5,
        "30 05  00 02 C3 28  00",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.4-1"),
    );
}

// Checks 3.1.1 MQTT-1.5.3-1, 5.0 MQTT-1.5.4-1.
#[test]
fn encoded_surrogate() {
    // 30 05; 00 03 ED A0 80: U+D800 encoded as UTF-8
    fails(
        V3_1_1,
        "30 05  00 03 ED A0 80",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.3-1"),
    );
    fails(
        V5,
        "30 06  00 03 ED A0 80  00",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.4-1"),
    );
    // In a CONNECT client id: 10 0F ... 00 03 ED BF BF (U+DFFF)
    fails(
        V3_1_1,
        "10 0F  00 04 4D 51 54 54  04  02  00 3C  00 03 ED BF BF",
        ErrorKind::InvalidUtf8,
        MALFORMED,
        Some("MQTT-1.5.3-1"),
    );
}

// Checks 3.1.1 MQTT-1.5.3-2, 5.0 MQTT-1.5.4-2.
#[test]
fn null_character_in_a_string() {
    // 30 05; 00 03 "a" 00 "b": topic containing U+0000
    fails(
        V3_1_1,
        "30 05  00 03 61 00 62",
        ErrorKind::NullCharacter,
        MALFORMED,
        Some("MQTT-1.5.3-2"),
    );
    fails(
        V5,
        "30 06  00 03 61 00 62  00",
        ErrorKind::NullCharacter,
        MALFORMED,
        Some("MQTT-1.5.4-2"),
    );
    // In a 5.0 user property name: 30 0B; 00 01 "t"; 07; 26 00 01 00 00 01 "v"
    fails(
        V5,
        "30 0B  00 01 74  07  26 00 01 00 00 01 76",
        ErrorKind::NullCharacter,
        MALFORMED,
        Some("MQTT-1.5.4-2"),
    );
}

#[test]
fn trailing_bytes() {
    // C0 01 00: PINGREQ with a body byte
    fails(
        V3_1_1,
        "C0 01 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // D0 02 00 00: PINGRESP with two body bytes
    fails(
        V5,
        "D0 02 00 00",
        ErrorKind::TrailingBytes(2),
        MALFORMED,
        None,
    );
    // 40 03 00 01 00: 3.1.1 PUBACK with a third byte
    fails(
        V3_1_1,
        "40 03 00 01 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // 20 03 00 00 00: 3.1.1 CONNACK with a third byte
    fails(
        V3_1_1,
        "20 03 00 00 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // E0 01 00: 3.1.1 DISCONNECT with a body
    fails(
        V3_1_1,
        "E0 01 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // B0 03 00 0B 00: 3.1.1 UNSUBACK with a payload
    fails(
        V3_1_1,
        "B0 03 00 0B 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // 10 0E ... 00 01 "a" FF: CONNECT with a byte after the client id
    fails(
        V3_1_1,
        "10 0E  00 04 4D 51 54 54  04  02  00 3C  00 01 61  FF",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // 40 05 00 01 10 00 00: 5.0 PUBACK with a byte after the (empty) properties
    fails(
        V5,
        "40 05 00 01 10 00 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // E0 03 00 00 00: 5.0 DISCONNECT with a byte after the properties
    fails(
        V5,
        "E0 03 00 00 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // F0 07 18 04 (15 00 01 "m") 00: AUTH with a byte after the properties
    fails(
        V5,
        "F0 07 18 04 15 00 01 6D 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
    // 20 04 00 00 00 00: 5.0 CONNACK with a byte after the properties
    fails(
        V5,
        "20 04 00 00 00 00",
        ErrorKind::TrailingBytes(1),
        MALFORMED,
        None,
    );
}

#[test]
fn truncated_fields() {
    let end = ErrorKind::UnexpectedEnd;
    // 10 03 00 04 4D: protocol name announces 4 bytes, has 1
    fails(V3_1_1, "10 03  00 04 4D", end, MALFORMED, None);
    // 10 0C ... 00 01: CONNECT whose client id length says 1 and the packet ends
    fails(
        V3_1_1,
        "10 0C  00 04 4D 51 54 54  04  02  00 3C  00 01",
        end,
        MALFORMED,
        None,
    );
    // 10 0D ... 82 ... 00 01 "a": user name flag set, user name missing
    fails(
        V3_1_1,
        "10 0D  00 04 4D 51 54 54  04  82  00 3C  00 01 61",
        end,
        MALFORMED,
        None,
    );
    // 32 03 00 01 74: QoS 1 PUBLISH without a packet id
    fails(V3_1_1, "32 03  00 01 74", end, MALFORMED, None);
    // 30 01 00: topic length cut in half
    fails(V3_1_1, "30 01  00", end, MALFORMED, None);
    // 40 01 00: PUBACK packet id cut in half
    fails(V3_1_1, "40 01 00", end, MALFORMED, None);
    // 20 01 00: CONNACK without a return code
    fails(V3_1_1, "20 01 00", end, MALFORMED, None);
    // 30 05 00 01 74 05 02: property length 5, one byte of properties present
    fails(V5, "30 05  00 01 74  05 02", end, MALFORMED, None);
    // 30 06 00 01 74 02 02 00: message expiry interval with 1 of its 4 bytes
    fails(V5, "30 07  00 01 74  02 02 00  00", end, MALFORMED, None);
    // 30 08 00 01 74 04 26 00 01 6B: user property with a name but no value
    fails(V5, "30 08  00 01 74  04 26 00 01 6B", end, MALFORMED, None);
    // 30 03 00 01 74: 5.0 PUBLISH without its property length
    fails(V5, "30 03  00 01 74", end, MALFORMED, None);
    // 82 04 00 01 00 01: SUBSCRIBE filter length 1, filter and options missing
    fails(V3_1_1, "82 04  00 01  00 01", end, MALFORMED, None);
    // 82 05 00 01 00 01 74: SUBSCRIBE filter without its options byte
    fails(V3_1_1, "82 05  00 01  00 01 74", end, MALFORMED, None);
}

// ---- decode failures: PUBLISH -----------------------------------------------------------

#[test]
fn publish_qos_3() {
    // 36 ..: PUBLISH with both QoS bits set; 00 01 "t"; 00 01: packet id; [00: 5.0 properties]
    for (version, wire) in [
        (V3_1_1, "36 05 00 01 74 00 01"),
        (V5, "36 06 00 01 74 00 01 00"),
    ] {
        fails(
            version,
            wire,
            ErrorKind::InvalidQos,
            MALFORMED,
            Some("MQTT-3.3.1-4"),
        );
    }
}

// Checks 3.1.1 MQTT-3.3.1-2, 5.0 MQTT-3.3.1-2.
#[test]
fn publish_dup_on_qos_0() {
    // 38 03 00 01 74: PUBLISH QoS 0 with DUP
    fails(
        V3_1_1,
        "38 03  00 01 74",
        ErrorKind::DupOnQos0,
        MALFORMED,
        Some("MQTT-3.3.1-2"),
    );
    fails(
        V5,
        "38 04  00 01 74  00",
        ErrorKind::DupOnQos0,
        MALFORMED,
        Some("MQTT-3.3.1-2"),
    );
}

// Checks 3.1.1 MQTT-2.3.1-1, 5.0 MQTT-2.2.1-3.
#[test]
fn packet_id_0() {
    // 32 05 00 01 74 00 00: QoS 1 PUBLISH, packet id 0
    fails(
        V3_1_1,
        "32 05  00 01 74  00 00",
        ErrorKind::ZeroPacketId,
        PROTOCOL,
        Some("MQTT-2.3.1-1"),
    );
    fails(
        V5,
        "34 06  00 01 74  00 00  00",
        ErrorKind::ZeroPacketId,
        PROTOCOL,
        Some("MQTT-2.2.1-3"),
    );
    // 82 06 00 00 00 01 74 00: SUBSCRIBE, packet id 0
    fails(
        V3_1_1,
        "82 06  00 00  00 01 74 00",
        ErrorKind::ZeroPacketId,
        PROTOCOL,
        Some("MQTT-2.3.1-1"),
    );
    // A2 06 00 00 00 00 01 74: 5.0 UNSUBSCRIBE, packet id 0
    fails(
        V5,
        "A2 06  00 00  00  00 01 74",
        ErrorKind::ZeroPacketId,
        PROTOCOL,
        Some("MQTT-2.2.1-3"),
    );
    // 40 02 00 00: PUBACK, packet id 0
    fails(
        V5,
        "40 02 00 00",
        ErrorKind::ZeroPacketId,
        PROTOCOL,
        Some("MQTT-2.2.1-3"),
    );
}

// Checks 3.1.1 MQTT-3.3.2-2, 5.0 MQTT-3.3.2-2.
#[test]
fn wildcard_in_publish_topic() {
    // 30 05 00 03 "a/+": topic name with '+'
    fails(
        V3_1_1,
        "30 05  00 03 61 2F 2B",
        ErrorKind::WildcardInTopicName,
        MALFORMED,
        Some("MQTT-3.3.2-2"),
    );
    // 30 06 00 03 "a/#" 00: topic name with '#', 5.0
    fails(
        V5,
        "30 06  00 03 61 2F 23  00",
        ErrorKind::WildcardInTopicName,
        MALFORMED,
        Some("MQTT-3.3.2-2"),
    );
}

// Checks 3.1.1 MQTT-4.7.3-1, 5.0 MQTT-4.7.3-1.
#[test]
fn empty_topic_without_alias() {
    // 30 02 00 00: empty topic name, 3.1.1
    fails(
        V3_1_1,
        "30 02  00 00",
        ErrorKind::EmptyTopicName,
        PROTOCOL,
        Some("MQTT-4.7.3-1"),
    );
    // 30 03 00 00 00: empty topic name, no properties, 5.0
    fails(
        V5,
        "30 03  00 00  00",
        ErrorKind::EmptyTopicName,
        PROTOCOL,
        Some("MQTT-4.7.3-1"),
    );
}

#[test]
fn topic_alias_0() {
    // 30 07; 00 01 "t"; 03; 23 00 00: topic alias 0
    fails(
        V5,
        "30 07  00 01 74  03  23 00 00",
        ErrorKind::InvalidPropertyValue(PropertyId::TopicAlias),
        ReasonCode::TOPIC_ALIAS_INVALID,
        None,
    );
}

// Checks 5.0 MQTT-3.3.2-14.
#[test]
fn response_topic_with_wildcard() {
    // 30 09; 00 01 "t"; 05; 08 00 02 "a#": response topic with '#'
    fails(
        V5,
        "30 09  00 01 74  05  08 00 02 61 23",
        ErrorKind::InvalidResponseTopic,
        PROTOCOL,
        Some("MQTT-3.3.2-14"),
    );
}

#[test]
fn publish_subscription_identifier_0() {
    // 30 06; 00 01 "t"; 02; 0B 00: subscription identifier 0
    fails(
        V5,
        "30 06  00 01 74  02  0B 00",
        ErrorKind::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
        PROTOCOL,
        None,
    );
}

#[test]
fn payload_format_indicator_2() {
    // 30 06; 00 01 "t"; 02; 01 02: payload format indicator 2
    fails(
        V5,
        "30 06  00 01 74  02  01 02",
        ErrorKind::InvalidPropertyValue(PropertyId::PayloadFormatIndicator),
        PROTOCOL,
        None,
    );
}

// ---- decode failures: SUBSCRIBE, UNSUBSCRIBE --------------------------------------------

// Checks 3.1.1 MQTT-3.8.3-3, 5.0 MQTT-3.8.3-2.
#[test]
fn empty_subscribe() {
    // 82 02 00 01: SUBSCRIBE with no payload
    fails(
        V3_1_1,
        "82 02  00 01",
        ErrorKind::EmptySubscribe,
        PROTOCOL,
        Some("MQTT-3.8.3-3"),
    );
    // 82 03 00 01 00: 5.0, no properties, no payload
    fails(
        V5,
        "82 03  00 01  00",
        ErrorKind::EmptySubscribe,
        PROTOCOL,
        Some("MQTT-3.8.3-2"),
    );
}

// Checks 3.1.1 MQTT-3.10.3-2, 5.0 MQTT-3.10.3-2.
#[test]
fn empty_unsubscribe() {
    // A2 02 00 01: UNSUBSCRIBE with no payload
    fails(
        V3_1_1,
        "A2 02  00 01",
        ErrorKind::EmptyUnsubscribe,
        PROTOCOL,
        Some("MQTT-3.10.3-2"),
    );
    fails(
        V5,
        "A2 03  00 01  00",
        ErrorKind::EmptyUnsubscribe,
        PROTOCOL,
        Some("MQTT-3.10.3-2"),
    );
}

// Checks 3.1.1 MQTT-4.7.3-1, 5.0 MQTT-4.7.3-1.
#[test]
fn empty_topic_filter() {
    // 82 05 00 01 00 00 00: zero-length filter, QoS 0
    fails(
        V3_1_1,
        "82 05  00 01  00 00 00",
        ErrorKind::EmptyTopicFilter,
        MALFORMED,
        Some("MQTT-4.7.3-1"),
    );
    // A2 05 00 01 00 00 00: 5.0 UNSUBSCRIBE, zero-length filter
    fails(
        V5,
        "A2 05  00 01  00  00 00",
        ErrorKind::EmptyTopicFilter,
        MALFORMED,
        Some("MQTT-4.7.3-1"),
    );
}

// Checks 3.1.1 MQTT-4.7.1-2, 5.0 MQTT-4.7.1-1, 3.1.1 MQTT-4.7.1-3, 5.0 MQTT-4.7.1-2.
#[test]
fn misplaced_wildcards_in_filters() {
    // 82 0A 00 01 00 05 "a/#/b" 00: '#' not last
    fails(
        V3_1_1,
        "82 0A  00 01  00 05 61 2F 23 2F 62  00",
        ErrorKind::MultiLevelWildcardMisplaced,
        MALFORMED,
        Some("MQTT-4.7.1-2"),
    );
    fails(
        V5,
        "82 0B  00 01  00  00 05 61 2F 23 2F 62  00",
        ErrorKind::MultiLevelWildcardMisplaced,
        MALFORMED,
        Some("MQTT-4.7.1-1"),
    );
    // 82 07 00 01 00 02 "a+" 00: '+' not a whole level
    fails(
        V3_1_1,
        "82 07  00 01  00 02 61 2B  00",
        ErrorKind::SingleLevelWildcardMisplaced,
        MALFORMED,
        Some("MQTT-4.7.1-3"),
    );
    // A2 06 00 01 00 00 02 "+a": 5.0 UNSUBSCRIBE
    fails(
        V5,
        "A2 07  00 01  00  00 02 2B 61",
        ErrorKind::SingleLevelWildcardMisplaced,
        MALFORMED,
        Some("MQTT-4.7.1-2"),
    );
}

// Checks 3.1.1 MQTT-3-8.3-4, 5.0 MQTT-3.8.3-5.
#[test]
fn subscription_options_reserved_bits_v3_1_1_vs_v5() {
    // 82 06 00 01 00 01 "t" 05: options 0000 0101: bit 2 is reserved in 3.1.1...
    fails(
        V3_1_1,
        "82 06  00 01  00 01 74  05",
        ErrorKind::SubscriptionOptionsReserved(0x05),
        MALFORMED,
        Some("MQTT-3-8.3-4"),
    );
    // ...and is No Local in 5.0: 82 07 00 01 00 00 01 "t" 05
    let mut packet = Subscribe::new(pid(1), s("t"), QoS::AtLeastOnce);
    packet.subscriptions[0].options.no_local = true;
    known_answer(V5, "82 07  00 01  00  00 01 74  05", packet);
    // 5.0 reserves bits 7 and 6: options 0100 0001
    fails(
        V5,
        "82 07  00 01  00  00 01 74  41",
        ErrorKind::SubscriptionOptionsReserved(0x41),
        MALFORMED,
        Some("MQTT-3.8.3-5"),
    );
    // options 1000 0000
    fails(
        V5,
        "82 07  00 01  00  00 01 74  80",
        ErrorKind::SubscriptionOptionsReserved(0x80),
        MALFORMED,
        Some("MQTT-3.8.3-5"),
    );
}

// Checks 3.1.1 MQTT-3-8.3-4.
#[test]
fn subscription_qos_3() {
    // 82 06 00 01 00 01 "t" 03: requested QoS 3
    fails(
        V3_1_1,
        "82 06  00 01  00 01 74  03",
        ErrorKind::SubscriptionQos3,
        PROTOCOL,
        Some("MQTT-3-8.3-4"),
    );
    // 5.0: "It is a Protocol Error if the Maximum QoS field has the value 3" (no id)
    fails(
        V5,
        "82 07  00 01  00  00 01 74  03",
        ErrorKind::SubscriptionQos3,
        PROTOCOL,
        None,
    );
}

// Checks 3.1.1 MQTT-3-8.3-4.
#[test]
fn retain_handling_3() {
    // 82 07 00 01 00 00 01 "t" 30: retain handling 3
    fails(
        V5,
        "82 07  00 01  00  00 01 74  30",
        ErrorKind::RetainHandling3,
        PROTOCOL,
        None,
    );
    // In 3.1.1 the same bits are just reserved.
    fails(
        V3_1_1,
        "82 06  00 01  00 01 74  30",
        ErrorKind::SubscriptionOptionsReserved(0x30),
        MALFORMED,
        Some("MQTT-3-8.3-4"),
    );
}

// Checks 5.0 MQTT-3.8.3-4.
#[test]
fn no_local_on_shared_subscription() {
    // 82 10 00 01 00 00 0A "$share/g/t" 04: No Local on a shared subscription
    fails(
        V5,
        "82 10  00 01  00  00 0A 24 73 68 61 72 65 2F 67 2F 74  04",
        ErrorKind::NoLocalOnSharedSubscription,
        PROTOCOL,
        Some("MQTT-3.8.3-4"),
    );
}

// Checks 5.0 MQTT-4.8.2-2.
#[test]
fn invalid_shared_subscription_filters() {
    // 82 0E 00 01 00 00 08 "$share/g" 00: no '/' and topic filter after the share name
    fails(
        V5,
        "82 0E  00 01  00  00 08 24 73 68 61 72 65 2F 67  00",
        ErrorKind::InvalidSharedSubscription,
        MALFORMED,
        Some("MQTT-4.8.2-2"),
    );
    // 82 11 00 01 00 00 0B "$share/g+/t" 00: '+' in the share name
    fails(
        V5,
        "82 11  00 01  00  00 0B 24 73 68 61 72 65 2F 67 2B 2F 74  00",
        ErrorKind::InvalidSharedSubscription,
        MALFORMED,
        Some("MQTT-4.8.2-2"),
    );
    // A2 0E 00 01 00 00 09 "$share/g/": 5.0 UNSUBSCRIBE, nothing after the share name
    fails(
        V5,
        "A2 0E  00 01  00  00 09 24 73 68 61 72 65 2F 67 2F",
        ErrorKind::InvalidSharedSubscription,
        MALFORMED,
        Some("MQTT-4.8.2-2"),
    );
}

#[test]
fn subscribe_subscription_identifier_0_and_twice() {
    // 82 09 00 01 02 0B 00 00 01 "t" 00: subscription identifier 0
    fails(
        V5,
        "82 09  00 01  02 0B 00  00 01 74  00",
        ErrorKind::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
        PROTOCOL,
        None,
    );
    // 82 0B 00 01 04 0B 01 0B 02 ...: subscription identifier twice
    fails(
        V5,
        "82 0B  00 01  04 0B 01 0B 02  00 01 74  00",
        ErrorKind::DuplicateProperty(PropertyId::SubscriptionIdentifier),
        PROTOCOL,
        None,
    );
}

// ---- decode failures: properties --------------------------------------------------------

#[test]
fn duplicate_property() {
    // 30 0F; 00 01 "t"; 0A; 02 00 00 00 01; 02 00 00 00 02: message expiry interval twice
    fails(
        V5,
        "30 0E  00 01 74  0A  02 00 00 00 01  02 00 00 00 02",
        ErrorKind::DuplicateProperty(PropertyId::MessageExpiryInterval),
        PROTOCOL,
        None,
    );
    // 40 0C 00 01 80 08 1F 00 01 "a" 1F 00 01 "b": reason string twice in PUBACK
    fails(
        V5,
        "40 0C  00 01  80  08  1F 00 01 61  1F 00 01 62",
        ErrorKind::DuplicateProperty(PropertyId::ReasonString),
        PROTOCOL,
        None,
    );
}

#[test]
fn property_not_allowed_in_packet() {
    // CONNECT 5.0 with 03 = property length, 23 00 01 = Topic Alias
    fails(
        V5,
        "10 11  00 04 4D 51 54 54  05  02  00 3C  03 23 00 01  00 01 61",
        ErrorKind::PropertyNotAllowed(PropertyId::TopicAlias),
        MALFORMED,
        None,
    );
    // PUBLISH with 11 00 00 00 01 = Session Expiry Interval
    fails(
        V5,
        "30 09  00 01 74  05  11 00 00 00 01",
        ErrorKind::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
        MALFORMED,
        None,
    );
    // PUBACK with 23 00 01 = Topic Alias
    fails(
        V5,
        "40 07  00 01  00  03  23 00 01",
        ErrorKind::PropertyNotAllowed(PropertyId::TopicAlias),
        MALFORMED,
        None,
    );
    // SUBSCRIBE with 1F 00 00 = Reason String
    fails(
        V5,
        "82 0A  00 01  03 1F 00 00  00 01 74  00",
        ErrorKind::PropertyNotAllowed(PropertyId::ReasonString),
        MALFORMED,
        None,
    );
    // DISCONNECT with 24 01 = Maximum QoS
    fails(
        V5,
        "E0 04  00  02  24 01",
        ErrorKind::PropertyNotAllowed(PropertyId::MaximumQos),
        MALFORMED,
        None,
    );
    // Will properties with 11 00 00 00 01 = Session Expiry Interval:
    // 10 19 ... 06: will flag | clean; 00: properties; 00 01 "a"; 05 11 00 00 00 01;
    // 00 01 "t"; 00 00
    fails(
        V5,
        "10 19  00 04 4D 51 54 54  05  06  00 3C  00  00 01 61
                05 11 00 00 00 01  00 01 74  00 00",
        ErrorKind::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
        MALFORMED,
        None,
    );
}

#[test]
fn unknown_property_identifier() {
    // 30 06; 00 01 "t"; 02; 05 00: identifier 0x05 is not defined
    fails(
        V5,
        "30 06  00 01 74  02  05 00",
        ErrorKind::UnknownProperty(0x05),
        MALFORMED,
        None,
    );
    // 30 07; 00 01 "t"; 03; 80 01 00: identifier 128 (two-byte Variable Byte Integer)
    fails(
        V5,
        "30 07  00 01 74  03  80 01 00",
        ErrorKind::UnknownProperty(128),
        MALFORMED,
        None,
    );
}

#[test]
fn property_values_out_of_range() {
    // CONNECT 5.0 with 21 00 00: receive maximum 0
    fails(
        V5,
        "10 11  00 04 4D 51 54 54  05  02  00 3C  03 21 00 00  00 01 61",
        ErrorKind::InvalidPropertyValue(PropertyId::ReceiveMaximum),
        PROTOCOL,
        None,
    );
    // CONNECT 5.0 with 17 02: request problem information 2
    fails(
        V5,
        "10 10  00 04 4D 51 54 54  05  02  00 3C  02 17 02  00 01 61",
        ErrorKind::InvalidPropertyValue(PropertyId::RequestProblemInformation),
        PROTOCOL,
        None,
    );
    // CONNECT 5.0 with 27 00 00 00 00: maximum packet size 0
    fails(
        V5,
        "10 13  00 04 4D 51 54 54  05  02  00 3C  05 27 00 00 00 00  00 01 61",
        ErrorKind::InvalidPropertyValue(PropertyId::MaximumPacketSize),
        PROTOCOL,
        None,
    );
    // CONNACK 5.0 with 24 02: maximum QoS 2
    fails(
        V5,
        "20 05  00 00  02 24 02",
        ErrorKind::InvalidPropertyValue(PropertyId::MaximumQos),
        PROTOCOL,
        None,
    );
    // CONNACK 5.0 with 25 02: retain available 2
    fails(
        V5,
        "20 05  00 00  02 25 02",
        ErrorKind::InvalidPropertyValue(PropertyId::RetainAvailable),
        PROTOCOL,
        None,
    );
}

#[test]
fn authentication_data_without_method() {
    // CONNECT 5.0 with 04 = property length, 16 00 01 AA = authentication data only
    fails(
        V5,
        "10 12  00 04 4D 51 54 54  05  02  00 3C  04 16 00 01 AA  00 01 61",
        ErrorKind::AuthDataWithoutMethod,
        PROTOCOL,
        None,
    );
    // F0 06 18 04 16 00 01 AA: AUTH continue, authentication data only
    fails(
        V5,
        "F0 06  18  04  16 00 01 AA",
        ErrorKind::AuthDataWithoutMethod,
        PROTOCOL,
        None,
    );
}

// ---- decode failures: reason codes ------------------------------------------------------

// Checks 5.0 MQTT-3.2.2-8, 5.0 MQTT-3.4.2-1, 5.0 MQTT-3.5.2-1, 5.0 MQTT-3.6.2-1, 5.0
// MQTT-3.7.2-1, 5.0 MQTT-3.9.3-2, 5.0 MQTT-3.11.3-2, 5.0 MQTT-3.14.2-1, 5.0 MQTT-3.15.2-1.
#[test]
// 5.0 MQTT-3.2.2-8, 5.0 MQTT-3.4.2-1, 5.0 MQTT-3.5.2-1, 5.0 MQTT-3.6.2-1, 5.0 MQTT-3.7.2-1,
// 5.0 MQTT-3.9.3-2, 5.0 MQTT-3.11.3-2, 5.0 MQTT-3.14.2-1, 5.0 MQTT-3.15.2-1: the reason
// codes each packet may carry.
fn invalid_reason_code_for_packet_type() {
    let bad = |code| ErrorKind::InvalidReasonCode(code);
    // 20 03 00 10 00: CONNACK with 0x10 (a PUBACK code)
    fails(
        V5,
        "20 03 00 10 00",
        bad(0x10),
        PROTOCOL,
        Some("MQTT-3.2.2-8"),
    );
    // 40 03 00 01 92: PUBACK with 0x92 (a PUBREL code)
    fails(
        V5,
        "40 03 00 01 92",
        bad(0x92),
        PROTOCOL,
        Some("MQTT-3.4.2-1"),
    );
    // 50 03 00 01 11: PUBREC with 0x11 (an UNSUBACK code)
    fails(
        V5,
        "50 03 00 01 11",
        bad(0x11),
        PROTOCOL,
        Some("MQTT-3.5.2-1"),
    );
    // 62 03 00 01 10: PUBREL with 0x10
    fails(
        V5,
        "62 03 00 01 10",
        bad(0x10),
        PROTOCOL,
        Some("MQTT-3.6.2-1"),
    );
    // 70 03 00 01 80: PUBCOMP with 0x80
    fails(
        V5,
        "70 03 00 01 80",
        bad(0x80),
        PROTOCOL,
        Some("MQTT-3.7.2-1"),
    );
    // 90 04 00 01 00 03: SUBACK with 0x03
    fails(
        V5,
        "90 04 00 01 00 03",
        bad(0x03),
        PROTOCOL,
        Some("MQTT-3.9.3-2"),
    );
    // B0 04 00 01 00 01: UNSUBACK with 0x01
    fails(
        V5,
        "B0 04 00 01 00 01",
        bad(0x01),
        PROTOCOL,
        Some("MQTT-3.11.3-2"),
    );
    // E0 01 01: DISCONNECT with 0x01
    fails(V5, "E0 01 01", bad(0x01), PROTOCOL, Some("MQTT-3.14.2-1"));
    // E0 01 91: DISCONNECT with 0x91 (packet identifier in use)
    fails(V5, "E0 01 91", bad(0x91), PROTOCOL, Some("MQTT-3.14.2-1"));
    // F0 01 80: AUTH with 0x80
    fails(V5, "F0 01 80", bad(0x80), PROTOCOL, Some("MQTT-3.15.2-1"));
}

#[test]
fn v3_1_1_connack_return_code_6() {
    // 20 02 00 06: return code 6 is reserved
    fails(
        V3_1_1,
        "20 02 00 06",
        ErrorKind::ReservedReturnCode(6),
        MALFORMED,
        None,
    );
}

// Checks 3.1.1 MQTT-3.9.3-2.
#[test]
fn v3_1_1_suback_code_3() {
    // 90 03 00 01 03: return code 3 is reserved
    let err = decode_err(V3_1_1, "90 03 00 01 03");
    assert_eq!(err.kind(), ErrorKind::ReservedReturnCode(3));
    assert_eq!(err.reason_code(), MALFORMED);
    assert_eq!(err.rule(), Some("MQTT-3.9.3-2"));
    // 90 03 00 01 87: a 5.0 failure code is not a 3.1.1 return code
    let err = decode_err(V3_1_1, "90 03 00 01 87");
    assert_eq!(err.kind(), ErrorKind::ReservedReturnCode(0x87));
}

// ---- decode failures: CONNECT -----------------------------------------------------------

// Checks 3.1.1 MQTT-3.1.2-1, 5.0 MQTT-3.1.2-1.
#[test]
fn unknown_protocol_name() {
    // 10 0D 00 04 "MQTX" 04 ...
    fails(
        V3_1_1,
        "10 0D  00 04 4D 51 54 58  04  02  00 3C  00 01 61",
        ErrorKind::InvalidProtocolName,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        Some("MQTT-3.1.2-1"),
    );
    // 10 0D 00 04 "mqtt" 04 ...: the name is case sensitive
    fails(
        V5,
        "10 0D  00 04 6D 71 74 74  04  02  00 3C  00 01 61",
        ErrorKind::InvalidProtocolName,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        Some("MQTT-3.1.2-1"),
    );
}

// Checks 5.0 MQTT-3.1.2-2, 3.1.1 MQTT-3.1.2-2.
#[test]
fn unsupported_protocol_level() {
    let level = ErrorKind::UnsupportedProtocolLevel;
    let unsupported = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;
    // 00 04 "MQTT" 06: level 6
    fails(
        V5,
        "10 0D  00 04 4D 51 54 54  06  02  00 3C  00 01 61",
        level(6),
        unsupported,
        Some("MQTT-3.1.2-2"),
    );
    // 00 04 "MQTT" 03: "MQTT" with 3.1's level
    fails(
        V3_1_1,
        "10 0D  00 04 4D 51 54 54  03  02  00 3C  00 01 61",
        level(3),
        unsupported,
        Some("MQTT-3.1.2-2"),
    );
    // 00 06 "MQIsdp" 04: 3.1's name with 3.1.1's level
    fails(
        V3_1,
        "10 0F  00 06 4D 51 49 73 64 70  04  02  00 3C  00 01 61",
        level(4),
        unsupported,
        Some("MQTT-3.1.2-2"),
    );
}

// 3.1.1 MQTT-3.1.2-2, 5.0 MQTT-3.1.2-2: a server answers an unsupported protocol level
// with a CONNACK the client can read: return code 1 in the two-byte 3.1 / 3.1.1 form
// for the levels of those versions and below, 0x84 in the 5.0 form from 5 on. Bit 7 of
// the level is the bridge flag some brokers set (0x83, 0x84): a 3.x bridge.
#[test]
fn unsupported_protocol_level_is_refused_in_a_form_the_client_reads() {
    let refusal = |wire: &str| {
        let err = decode_err(V5, wire);
        let version = err.connack_version();
        let ack = ConnAck::new(false, err.reason_code());
        let bytes = version.map(|v| hex_string(&encode(v, &ack.into()).unwrap()));
        (version, bytes)
    };
    let v3 = (Some(V3_1_1), Some("20 02 00 01".to_owned()));
    let v5 = (Some(V5), Some("20 03 00 84 00".to_owned()));
    for level in [0x00, 0x01, 0x02, 0x03, 0x83, 0x84] {
        // 10 0D; 00 04 "MQTT"; level; 02: clean session; 00 3C; 00 01 "a"
        let wire = format!("10 0D  00 04 4D 51 54 54  {level:02X}  02  00 3C  00 01 61");
        assert_eq!(refusal(&wire), v3, "MQTT level {level:#04x}");
    }
    // 10 0F; 00 06 "MQIsdp" 04: 3.1's name with 3.1.1's level
    let wire = "10 0F  00 06 4D 51 49 73 64 70  04  02  00 3C  00 01 61";
    assert_eq!(refusal(wire), v3, "MQIsdp level 4");
    for level in [0x06, 0x07, 0x85, 0xFF] {
        // 10 0E; 00 04 "MQTT"; level; 02; 00 3C; 00: no properties; 00 01 "a"
        let wire = format!("10 0E  00 04 4D 51 54 54  {level:02X}  02  00 3C  00  00 01 61");
        assert_eq!(refusal(&wire), v5, "MQTT level {level:#04x}");
    }
    // An unknown protocol name gets no CONNACK ([MQTT-3.1.2-1]: the server MAY close):
    // 10 0D; 00 04 "MQTX"; 04; ...
    let wire = "10 0D  00 04 4D 51 54 58  04  02  00 3C  00 01 61";
    assert_eq!(refusal(wire), (None, None), "unknown protocol name");
    // Nor does any other error of a CONNECT (3.1.1 [MQTT-3.2.2-6]): 10 0D ... 03: the
    // reserved flag set
    let wire = "10 0D  00 04 4D 51 54 54  04  03  00 3C  00 01 61";
    assert_eq!(refusal(wire), (None, None), "reserved flag");
}

fn connect_with_flags(version: ProtocolVersion, flags: u8, tail: &str) -> String {
    // 10 LL; protocol name and level of `version`; flags; 00 3C; [00 properties];
    // 00 01 "a"; then `tail`
    let (name, level) = match version {
        V3_1 => ("00 06 4D 51 49 73 64 70", "03"),
        V3_1_1 => ("00 04 4D 51 54 54", "04"),
        V5 => ("00 04 4D 51 54 54", "05"),
    };
    let props = if version == V5 { "00" } else { "" };
    let body = format!("{name} {level} {flags:02X} 00 3C {props} 00 01 61 {tail}");
    format!("10 {:02X} {body}", hex(&body).len())
}

#[test]
fn connect_reserved_flag() {
    // flags 03: clean session | reserved bit 0
    for version in [V3_1_1, V5] {
        fails(
            version,
            &connect_with_flags(version, 0x03, ""),
            ErrorKind::ConnectReservedFlag,
            MALFORMED,
            Some("MQTT-3.1.2-3"),
        );
    }
}

// Checks 3.1.1 MQTT-3.1.2-14, 5.0 MQTT-3.1.2-12.
#[test]
fn will_qos_3() {
    // flags 1E: will QoS 3 | will flag | clean; then will topic "t", will payload ""
    // (5.0 also has an empty will property length first)
    fails(
        V3_1_1,
        &connect_with_flags(V3_1_1, 0x1E, "00 01 74 00 00"),
        ErrorKind::WillQos3,
        MALFORMED,
        Some("MQTT-3.1.2-14"),
    );
    fails(
        V5,
        &connect_with_flags(V5, 0x1E, "00 00 01 74 00 00"),
        ErrorKind::WillQos3,
        MALFORMED,
        Some("MQTT-3.1.2-12"),
    );
}

// Checks 3.1.1 MQTT-3.1.2-13, 5.0 MQTT-3.1.2-11.
#[test]
fn will_qos_without_will_flag() {
    // flags 0A: will QoS 1 | clean, no will flag
    fails(
        V3_1_1,
        &connect_with_flags(V3_1_1, 0x0A, ""),
        ErrorKind::WillQosWithoutWill,
        MALFORMED,
        Some("MQTT-3.1.2-13"),
    );
    fails(
        V5,
        &connect_with_flags(V5, 0x0A, ""),
        ErrorKind::WillQosWithoutWill,
        MALFORMED,
        Some("MQTT-3.1.2-11"),
    );
}

// Checks 3.1.1 MQTT-3.1.2-15, 5.0 MQTT-3.1.2-13.
#[test]
fn will_retain_without_will_flag() {
    // flags 22: will retain | clean, no will flag
    fails(
        V3_1_1,
        &connect_with_flags(V3_1_1, 0x22, ""),
        ErrorKind::WillRetainWithoutWill,
        MALFORMED,
        Some("MQTT-3.1.2-15"),
    );
    fails(
        V5,
        &connect_with_flags(V5, 0x22, ""),
        ErrorKind::WillRetainWithoutWill,
        MALFORMED,
        Some("MQTT-3.1.2-13"),
    );
}

#[test]
fn password_without_username_v3() {
    // flags 42: password | clean, no user name; then password 00 01 "p"
    for version in [V3_1, V3_1_1] {
        fails(
            version,
            &connect_with_flags(version, 0x42, "00 01 70"),
            ErrorKind::PasswordWithoutUsername,
            PROTOCOL,
            Some("MQTT-3.1.2-22"),
        );
    }
}

#[test]
fn connect_helper_builds_valid_packets() {
    // The helper above, with valid flags, builds the minimal CONNECT of each version.
    for version in [V3_1, V3_1_1, V5] {
        decodes_to(
            version,
            &connect_with_flags(version, 0x02, ""),
            minimal_connect(version),
        );
    }
}

// Checks 3.1.1 MQTT-3.3.2-2.
#[test]
fn will_topic_with_wildcard() {
    // flags 06: will flag | clean; will topic "#"; will payload ""
    fails(
        V3_1_1,
        &connect_with_flags(V3_1_1, 0x06, "00 01 23 00 00"),
        ErrorKind::WildcardInTopicName,
        MALFORMED,
        Some("MQTT-3.3.2-2"),
    );
}

// Checks 5.0 MQTT-3.3.2-14.
#[test]
fn will_response_topic_with_wildcard() {
    // flags 06; will properties 05: 08 00 02 "a+"; will topic "t"; will payload ""
    fails(
        V5,
        &connect_with_flags(V5, 0x06, "05 08 00 02 61 2B  00 01 74  00 00"),
        ErrorKind::InvalidResponseTopic,
        PROTOCOL,
        Some("MQTT-3.3.2-14"),
    );
}

// ---- decode failures: CONNACK, AUTH, stream ---------------------------------------------

// Checks 5.0 MQTT-3.2.2-1.
#[test]
fn connack_reserved_flags() {
    // 20 02 02 00: acknowledge flags 0000 0010
    fails(
        V3_1_1,
        "20 02 02 00",
        ErrorKind::ConnAckReservedFlags,
        MALFORMED,
        None,
    );
    // 20 03 80 00 00: acknowledge flags 1000 0000, 5.0
    fails(
        V5,
        "20 03 80 00 00",
        ErrorKind::ConnAckReservedFlags,
        MALFORMED,
        Some("MQTT-3.2.2-1"),
    );
}

#[test]
fn auth_before_v5() {
    // F0 00: AUTH on a 3.1.1 (or 3.1) connection, where type 15 is reserved
    for version in [V3_1, V3_1_1] {
        let err = decode_err(version, "F0 00");
        assert_eq!(err.kind(), ErrorKind::AuthNotInVersion);
        assert_eq!(err.reason_code(), MALFORMED);
        assert_eq!(err.packet_type(), Some(PacketType::Auth));
    }
}

#[test]
fn first_packet_not_connect() {
    // C0 00: PINGREQ as the first packet of a fresh (server) decoder
    let mut decoder = Decoder::new();
    let err = decoder
        .decode(&mut BytesMut::from(&hex("C0 00")[..]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConnect);
    assert_eq!(err.reason_code(), PROTOCOL);
    assert_eq!(err.rule(), Some("MQTT-3.1.0-1"));
    assert_eq!(err.packet_type(), Some(PacketType::PingReq));
    // 30 0A ...: a PUBLISH is refused the same way, as soon as its header is read.
    let err = Decoder::new()
        .decode(&mut BytesMut::from(&hex("30 0A")[..]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConnect);
}

#[test]
fn errors_name_the_packet_type() {
    // 40 02 00 00: PUBACK with packet id 0
    let err = decode_err(V3_1_1, "40 02 00 00");
    assert_eq!(err.packet_type(), Some(PacketType::PubAck));
    // 00 00: reserved type 0 has no packet type
    let err = decode_err(V3_1_1, "00 00");
    assert_eq!(err.packet_type(), None);
}

// ---- size limit -------------------------------------------------------------------------

#[test]
fn oversized_packet_refused_after_five_bytes() {
    // 30 FF FF FF 7F: PUBLISH announcing remaining length 268,435,455 (256 MiB - 1),
    // with none of its body present.
    let mut decoder = Decoder::with_version(V5);
    decoder.set_max_packet_size(1024);
    assert_eq!(decoder.max_packet_size(), 1024);
    let mut buf = BytesMut::from(&hex("30 FF FF FF 7F")[..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    assert_eq!(err.reason_code().0, 0x95);
    assert!(err.is_too_large());
    // Fewer bytes than the whole fixed header: just "need more".
    let mut short = BytesMut::from(&hex("30 FF FF")[..]);
    assert_eq!(decoder.decode(&mut short).unwrap(), None);
}

#[test]
fn oversized_packet_refused_by_a_fresh_server_decoder() {
    // 10 FF FF FF 7F: CONNECT announcing 256 MiB, first packet of a server's decoder.
    let mut decoder = Decoder::new();
    decoder.set_max_packet_size(256);
    let err = decoder
        .decode(&mut BytesMut::from(&hex("10 FF FF FF 7F")[..]))
        .unwrap_err();
    assert!(err.is_too_large());
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn packet_exactly_at_the_limit_is_accepted() {
    // 30 0A 00 03 "a/b" "hello": 12 bytes in all
    let wire = hex("30 0A  00 03 61 2F 62  68 65 6C 6C 6F");
    let mut decoder = Decoder::with_version(V3_1_1);
    decoder.set_max_packet_size(12);
    let packet = decoder
        .decode(&mut BytesMut::from(&wire[..]))
        .unwrap()
        .unwrap();
    assert_eq!(packet, Packet::from(Publish::new(s("a/b"), b(b"hello"))));
    // One byte less and it is refused.
    decoder.set_max_packet_size(11);
    let err = decoder.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PacketTooLarge { size: 12, max: 11 });
}

// ---- fit_to_size ------------------------------------------------------------------------

fn puback_with_diagnostics() -> Packet {
    let mut packet = PubAck::new(pid(1));
    packet.reason_code = ReasonCode::UNSPECIFIED_ERROR;
    packet.properties = AckProperties {
        reason_string: Some(ByteStr::try_from("x".repeat(20)).unwrap()),
        user_properties: user(&[("k", "v")]),
    };
    Packet::from(packet)
}

#[test]
fn fit_to_size_leaves_a_packet_that_fits_alone() {
    // 2 header + 2 id + 1 reason + 1 property length + 23 reason string + 7 user property
    let mut packet = puback_with_diagnostics();
    assert_eq!(packet.encoded_len(V5), 36);
    packet.fit_to_size(V5, 36).unwrap();
    assert_eq!(packet, puback_with_diagnostics());
}

#[test]
fn fit_to_size_drops_the_reason_string_first() {
    let mut packet = puback_with_diagnostics();
    packet.fit_to_size(V5, 35).unwrap();
    let Packet::PubAck(ack) = &packet else {
        panic!("not a PUBACK: {packet:?}")
    };
    assert_eq!(ack.properties.reason_string, None);
    assert_eq!(ack.properties.user_properties, user(&[("k", "v")]));
    assert_eq!(ack.reason_code, ReasonCode::UNSPECIFIED_ERROR);
    // 40 0B; 00 01; 80; 07; 26 00 01 "k" 00 01 "v"
    assert_eq!(
        encode(V5, &packet).unwrap(),
        hex("40 0B  00 01  80  07  26 00 01 6B 00 01 76")
    );
}

#[test]
fn fit_to_size_then_drops_user_properties() {
    let mut packet = puback_with_diagnostics();
    packet.fit_to_size(V5, 12).unwrap();
    let Packet::PubAck(ack) = &packet else {
        panic!("not a PUBACK: {packet:?}")
    };
    assert_eq!(ack.properties, AckProperties::default());
    // 40 03; 00 01; 80
    assert_eq!(encode(V5, &packet).unwrap(), hex("40 03 00 01 80"));
}

#[test]
fn fit_to_size_fails_when_even_the_bare_packet_is_too_big() {
    let mut packet = puback_with_diagnostics();
    assert_eq!(
        packet.fit_to_size(V5, 4),
        Err(EncodeError::PacketTooLarge { size: 5, max: 4 })
    );
    // Trimmed as far as allowed.
    assert_eq!(packet.encoded_len(V5), 5);
}

#[test]
fn fit_to_size_never_trims_a_publish() {
    let mut publish = Publish::new(s("t"), b(b"payload"));
    publish.properties.user_properties = user(&[("k", "v")]);
    let original = Packet::from(publish);
    let mut packet = original.clone();
    // 2 header + 3 topic + 1 property length + 7 user property + 7 payload = 20
    assert_eq!(packet.encoded_len(V5), 20);
    assert_eq!(
        packet.fit_to_size(V5, 19),
        Err(EncodeError::PacketTooLarge { size: 20, max: 19 })
    );
    assert_eq!(packet, original);
}

// ---- encoder refusals -------------------------------------------------------------------

fn refused(version: ProtocolVersion, packet: impl Into<Packet>) -> EncodeError {
    let packet = packet.into();
    let mut out = BytesMut::new();
    let err = packet.encode(version, &mut out).unwrap_err();
    assert!(out.is_empty(), "bytes written before the refusal");
    err
}

#[test]
fn encode_auth_before_v5() {
    for version in [V3_1, V3_1_1] {
        assert_eq!(
            refused(version, Auth::default()),
            EncodeError::NotInVersion {
                packet: PacketType::Auth,
                version
            }
        );
    }
}

#[test]
fn encode_binary_data_over_65535_bytes() {
    let big = Bytes::from(vec![0u8; 65_536]);
    // Password
    let mut connect = minimal_connect(V3_1_1);
    connect.username = Some(s("u"));
    connect.password = Some(big.clone());
    assert_eq!(refused(V3_1_1, connect), EncodeError::BinaryTooLong(65_536));
    // Will payload
    let mut connect = minimal_connect(V5);
    connect.will = Some(Will {
        topic: s("t"),
        payload: big.clone(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    assert_eq!(refused(V5, connect), EncodeError::BinaryTooLong(65_536));
    // Correlation data
    let mut publish = Publish::new(s("t"), Bytes::new());
    publish.properties.correlation_data = Some(big.clone());
    assert_eq!(refused(V5, publish), EncodeError::BinaryTooLong(65_536));
    // Authentication data
    let mut auth = Auth::default();
    auth.properties.authentication_method = Some(s("M"));
    auth.properties.authentication_data = Some(big);
    assert_eq!(refused(V5, auth), EncodeError::BinaryTooLong(65_536));
}

#[test]
fn encode_binary_data_of_exactly_65535_bytes() {
    let mut connect = minimal_connect(V3_1_1);
    connect.username = Some(s("u"));
    connect.password = Some(Bytes::from(vec![7u8; 65_535]));
    let packet = Packet::from(connect);
    let wire = encode(V3_1_1, &packet).unwrap();
    // ... 00 01 "u" FF FF: password length 65535, then the password
    let tail = wire.len() - 65_535;
    assert_eq!(wire[tail - 5..tail], hex("00 01 75 FF FF")[..]);
    assert_eq!(decode(V3_1_1, &wire).unwrap(), packet);
}

#[test]
fn encode_wildcard_topic_in_publish() {
    for (topic, kind) in [
        ("a/#", ErrorKind::WildcardInTopicName),
        ("+", ErrorKind::WildcardInTopicName),
    ] {
        for version in [V3_1_1, V5] {
            assert_eq!(
                refused(version, Publish::new(s(topic), Bytes::new())),
                EncodeError::Invalid(kind)
            );
        }
    }
}

#[test]
fn encode_empty_topic_needs_a_v5_alias() {
    assert_eq!(
        refused(V3_1_1, Publish::new(ByteStr::new(), Bytes::new())),
        EncodeError::Invalid(ErrorKind::EmptyTopicName)
    );
    assert_eq!(
        refused(V5, Publish::new(ByteStr::new(), Bytes::new())),
        EncodeError::Invalid(ErrorKind::EmptyTopicName)
    );
}

#[test]
fn encode_v3_password_without_username() {
    let mut connect = minimal_connect(V3_1_1);
    connect.password = Some(b(b"p"));
    assert_eq!(
        refused(V3_1_1, connect),
        EncodeError::Invalid(ErrorKind::PasswordWithoutUsername)
    );
    let mut connect = minimal_connect(V3_1);
    connect.password = Some(b(b"p"));
    assert_eq!(
        refused(V3_1, connect),
        EncodeError::Invalid(ErrorKind::PasswordWithoutUsername)
    );
}

#[test]
fn encode_dup_on_qos_0() {
    let mut publish = Publish::new(s("t"), Bytes::new());
    publish.dup = true;
    assert_eq!(
        refused(V3_1_1, publish),
        EncodeError::Invalid(ErrorKind::DupOnQos0)
    );
}

#[test]
fn encode_empty_subscribe_and_unsubscribe() {
    let mut subscribe = Subscribe::new(pid(1), s("t"), QoS::AtMostOnce);
    subscribe.subscriptions.clear();
    assert_eq!(
        refused(V3_1_1, subscribe),
        EncodeError::Invalid(ErrorKind::EmptySubscribe)
    );
    let unsubscribe = Unsubscribe {
        packet_id: pid(1),
        filters: vec![],
        properties: UnsubscribeProperties::default(),
    };
    assert_eq!(
        refused(V5, unsubscribe),
        EncodeError::Invalid(ErrorKind::EmptyUnsubscribe)
    );
}

#[test]
fn encode_no_local_on_shared_subscription() {
    let mut subscribe = Subscribe::new(pid(1), s("$share/g/t"), QoS::AtMostOnce);
    subscribe.subscriptions[0].options.no_local = true;
    assert_eq!(
        refused(V5, subscribe),
        EncodeError::Invalid(ErrorKind::NoLocalOnSharedSubscription)
    );
}

#[test]
fn auth_needs_a_method() {
    // F0 02 18 00: Continue authentication, Property Length 0: no Authentication Method
    fails(
        V5,
        "F0 02 18 00",
        ErrorKind::AuthWithoutMethod,
        PROTOCOL,
        None,
    );
    // F0 05 19 03 1F 00 00: Re-authenticate with a reason string but no method
    fails(
        V5,
        "F0 05 19 03 1F 00 00",
        ErrorKind::AuthWithoutMethod,
        PROTOCOL,
        None,
    );
    // F0 01 18: the reason code alone; only the all-default AUTH may omit the properties
    fails(V5, "F0 01 18", ErrorKind::UnexpectedEnd, MALFORMED, None);
    // Encoding refuses the same packet.
    let auth = Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        ..Auth::default()
    };
    let mut buf = BytesMut::new();
    assert_eq!(
        Packet::from(auth).encode(V5, &mut buf),
        Err(EncodeError::Invalid(ErrorKind::AuthWithoutMethod))
    );
    assert!(buf.is_empty());
}
