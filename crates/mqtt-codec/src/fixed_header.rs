//! The fixed header: packet type, flags and Remaining Length.
//!
//! [`FixedHeader::parse`] reads at most five bytes, so a stream decoder can refuse an
//! oversized packet before any of its body is buffered.

use core::fmt;

use crate::error::{DecodeError, ErrorKind};

/// The largest Remaining Length four Variable Byte Integer bytes can carry.
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

/// The largest whole packet: a five-byte fixed header plus [`MAX_REMAINING_LENGTH`].
pub const MAX_PACKET_SIZE: u32 = MAX_REMAINING_LENGTH + 5;

/// The type of a control packet, from the high nibble of its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// CONNECT (1): client request to connect.
    Connect = 1,
    /// CONNACK (2): connect acknowledgement.
    ConnAck = 2,
    /// PUBLISH (3): an application message.
    Publish = 3,
    /// PUBACK (4): QoS 1 acknowledgement.
    PubAck = 4,
    /// PUBREC (5): QoS 2 delivery part 1.
    PubRec = 5,
    /// PUBREL (6): QoS 2 delivery part 2.
    PubRel = 6,
    /// PUBCOMP (7): QoS 2 delivery part 3.
    PubComp = 7,
    /// SUBSCRIBE (8): subscribe request.
    Subscribe = 8,
    /// SUBACK (9): subscribe acknowledgement.
    SubAck = 9,
    /// UNSUBSCRIBE (10): unsubscribe request.
    Unsubscribe = 10,
    /// UNSUBACK (11): unsubscribe acknowledgement.
    UnsubAck = 11,
    /// PINGREQ (12): keep-alive request.
    PingReq = 12,
    /// PINGRESP (13): keep-alive response.
    PingResp = 13,
    /// DISCONNECT (14): disconnect notification.
    Disconnect = 14,
    /// AUTH (15): authentication exchange, MQTT 5.0 only.
    Auth = 15,
}

impl PacketType {
    /// The packet type of a fixed header's first byte, or `None` for the reserved type 0.
    pub const fn from_first_byte(byte: u8) -> Option<Self> {
        Some(match byte >> 4 {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The flag bits (low nibble) this type must carry. PUBLISH has no fixed flags
    /// and returns `None`.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// The upper-case name the spec uses for this packet.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// The Remaining Length: the size of the variable header and payload.
    pub remaining_length: u32,
    /// The size of the fixed header itself, 2 to 5 bytes.
    pub header_len: u8,
    /// Whether the Remaining Length used the fewest bytes possible. MQTT 5.0 requires
    /// it ([MQTT-1.5.5-1]); 3.1.1 does not, so the check waits until the version is known.
    pub minimal_length: bool,
}

impl FixedHeader {
    /// Parses the fixed header at the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` ends before the header does (at most five bytes are
    /// needed), and an error for the reserved packet type 0 or a Remaining Length longer
    /// than four bytes. Reads nothing past the header.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, DecodeError> {
        let Some((&first, rest)) = buf.split_first() else {
            return Ok(None);
        };
        let packet_type = PacketType::from_first_byte(first)
            .ok_or(DecodeError::new(ErrorKind::ReservedPacketType))?;
        let Some((remaining_length, len_bytes)) = parse_var_int(rest)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            packet_type,
            flags: first & 0x0F,
            remaining_length,
            header_len: 1 + len_bytes,
            minimal_length: usize::from(len_bytes) == var_int_len(remaining_length),
        }))
    }

    /// The size of the whole packet: header plus body.
    pub const fn packet_len(&self) -> u64 {
        self.header_len as u64 + self.remaining_length as u64
    }
}

/// Parses a Variable Byte Integer at the start of `buf`: `Ok(Some((value, bytes_used)))`,
/// `Ok(None)` if `buf` ends first, or an error if a fourth byte still has its continuation
/// bit set ([MQTT-1.5.5-1] in 5.0, 2.2.3 in 3.1.1).
pub(crate) fn parse_var_int(buf: &[u8]) -> Result<Option<(u32, u8)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // `i` is at most 3 here.
            return Ok(Some((value, i as u8 + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::new(ErrorKind::VarIntTooLong))
    } else {
        Ok(None)
    }
}

/// The number of bytes the Variable Byte Integer encoding of `value` takes.
pub(crate) const fn var_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
