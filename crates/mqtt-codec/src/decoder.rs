//! Incremental decoding from a byte stream.

use bytes::BytesMut;

use crate::{
    FixedHeader, Packet, PacketType, ProtocolVersion,
    error::{DecodeError, ErrorKind},
    fixed_header::MAX_PACKET_SIZE,
    user_properties::UserPropertyCap,
};

/// Splits a byte stream into packets.
///
/// Feed it the bytes read from the connection, in a `BytesMut`, and call
/// [`Decoder::decode`] until it returns `Ok(None)`. A partial packet stays in the buffer
/// untouched until the rest arrives; complete packets are split off the front without
/// copying, and their strings and payloads are slices of it.
///
/// A new decoder does not know the protocol version: the first packet must be CONNECT
/// (a server reading from a client), which sets it. A client, which knows the version
/// it asked for, uses [`Decoder::with_version`].
///
/// The size limit is enforced from the fixed header, before the body is buffered: a
/// packet announcing more than [`Decoder::max_packet_size`] bytes fails as soon as its
/// Remaining Length has been read, after at most five bytes.
///
/// User Properties (5.0) are capped by count, [`Decoder::max_user_properties`]
/// ([`DEFAULT_MAX_USER_PROPERTIES`] unless set; a CONNECT's will properties count with
/// its own). A packet over the cap fails with [`ErrorKind::TooManyUserProperties`]
/// (Quota exceeded, 0x97) as soon as the first pair over it is reached, before it is
/// read: refusing a packet costs no more memory than accepting one at the cap. (The
/// pairs a packet carries are kept in their wire form, a slice of the packet: what
/// bounds them in memory is the packet size limit; the cap bounds the work a receiver
/// does per packet on each pair, such as forwarding and printing them.)
#[derive(Clone, Debug)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    /// A `u16` so the decoder stays 8 bytes (connection futures hold one); `u16::MAX`
    /// for no limit.
    max_user_properties: u16,
    max_packet_size: u32,
}

/// The most User Properties a [`Decoder`] accepts in one packet unless told otherwise:
/// far more than real clients send (a handful of tracing or routing tags), and few
/// enough that a message keeps at most about 64 KB of property headers.
pub const DEFAULT_MAX_USER_PROPERTIES: usize = 1_000;

/// [`DEFAULT_MAX_USER_PROPERTIES`] as stored.
const DEFAULT_MAX_USER_PROPERTIES_U16: u16 = 1_000;

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a server: the version comes from the first packet, CONNECT. No size
    /// limit beyond the protocol's own (268,435,460 bytes); set one with
    /// [`Decoder::set_max_packet_size`].
    pub const fn new() -> Self {
        Self {
            version: None,
            max_packet_size: MAX_PACKET_SIZE,
            max_user_properties: DEFAULT_MAX_USER_PROPERTIES_U16,
        }
    }

    /// A decoder for a connection whose version is already known (a client's).
    pub const fn with_version(version: ProtocolVersion) -> Self {
        Self {
            version: Some(version),
            max_packet_size: MAX_PACKET_SIZE,
            max_user_properties: DEFAULT_MAX_USER_PROPERTIES_U16,
        }
    }

    /// The version packets are decoded as, once known.
    pub const fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the version, for example after the client's CONNECT was answered.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// The largest packet, fixed header included, this decoder accepts.
    pub const fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Sets the largest packet accepted (the Maximum Packet Size a 5.0 peer announces
    /// in CONNECT or CONNACK applies to the other direction: this is our own limit).
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// The most User Properties accepted in one packet (a CONNECT's will properties
    /// included); `usize::MAX` for no limit.
    pub const fn max_user_properties(&self) -> usize {
        match self.max_user_properties {
            u16::MAX => usize::MAX,
            max => max as usize,
        }
    }

    /// Sets the most User Properties accepted in one packet. 65,535 or more means no
    /// limit (`usize::MAX` says so plainly): a cap is meant to be far below that.
    pub fn set_max_user_properties(&mut self, max: usize) {
        self.max_user_properties = u16::try_from(max).unwrap_or(u16::MAX);
    }

    /// Decodes the next packet at the front of `src`.
    ///
    /// - `Ok(Some(packet))`: a packet was split off the front of `src`.
    /// - `Ok(None)`: `src` holds only part of a packet (possibly nothing); nothing was
    ///   consumed. Read more bytes into `src` and call again.
    /// - `Err(e)`: the stream is invalid; close the connection, with `e.reason_code()`
    ///   where the version has reason codes. The bad packet may have been taken off
    ///   `src`; a stream cannot be resumed after an error.
    ///
    /// Never panics, whatever `src` holds.
    #[inline]
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = FixedHeader::parse(src)? else {
            return Ok(None);
        };
        let size = header.packet_len();
        if size > u64::from(self.max_packet_size) {
            return Err(DecodeError::new(ErrorKind::PacketTooLarge {
                size,
                max: self.max_packet_size,
            })
            .within(
                header.packet_type,
                self.version.unwrap_or(ProtocolVersion::V5),
            ));
        }
        let version = match self.version {
            Some(v) => v,
            None if header.packet_type == PacketType::Connect => ProtocolVersion::V5,
            None => {
                return Err(DecodeError::new(ErrorKind::NotConnect)
                    .within(header.packet_type, ProtocolVersion::V5));
            }
        };
        // `size` fits in usize: it is at most `max_packet_size`, a u32.
        let size = size as usize;
        if src.len() < size {
            return Ok(None);
        }
        let mut body = src.split_to(size).freeze();
        bytes::Buf::advance(&mut body, usize::from(header.header_len));
        let cap = UserPropertyCap::new(self.max_user_properties());
        if header.packet_type == PacketType::Publish {
            // The common case, built straight into the result (see `decode_with`).
            return Packet::decode_with(&header, body, version, cap, Some);
        }
        let packet = Packet::decode_with(&header, body, version, cap, |p| p)?;
        if let Packet::Connect(connect) = &packet {
            if self.version.is_none() {
                self.version = Some(connect.version);
            }
        }
        Ok(Some(packet))
    }
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use super::*;
    use crate::{ByteStr, Connect, Publish, ReasonCode};

    fn empty_pairs(n: usize) -> crate::UserProperties {
        core::iter::repeat_n((ByteStr::new(), ByteStr::new()), n).collect()
    }

    fn publish_with(pairs: usize) -> BytesMut {
        let mut p = Publish::new(ByteStr::from_static("t"), bytes::Bytes::new());
        p.properties.user_properties = empty_pairs(pairs);
        let mut wire = BytesMut::new();
        Packet::Publish(p)
            .encode(ProtocolVersion::V5, &mut wire)
            .unwrap();
        wire
    }

    #[test]
    fn the_decoder_stays_eight_bytes() {
        assert_eq!(size_of::<Decoder>(), 8);
        let mut d = Decoder::new();
        d.set_max_user_properties(70_000);
        assert_eq!(d.max_user_properties(), usize::MAX);
        d.set_max_user_properties(65_534);
        assert_eq!(d.max_user_properties(), 65_534);
    }

    #[test]
    fn user_properties_are_capped_with_quota_exceeded() {
        let mut d = Decoder::with_version(ProtocolVersion::V5);
        assert_eq!(d.max_user_properties(), DEFAULT_MAX_USER_PROPERTIES);
        let mut wire = publish_with(DEFAULT_MAX_USER_PROPERTIES);
        assert!(matches!(d.decode(&mut wire), Ok(Some(Packet::Publish(_)))));
        let mut wire = publish_with(DEFAULT_MAX_USER_PROPERTIES + 1);
        let e = d.decode(&mut wire).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::TooManyUserProperties {
                count: DEFAULT_MAX_USER_PROPERTIES + 1,
                max: DEFAULT_MAX_USER_PROPERTIES
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::QUOTA_EXCEEDED);
        d.set_max_user_properties(usize::MAX);
        let mut wire = publish_with(DEFAULT_MAX_USER_PROPERTIES + 1);
        assert!(d.decode(&mut wire).is_ok());
    }

    #[test]
    fn a_connect_counts_its_will_user_properties_too() {
        let mut c = Connect::new(ProtocolVersion::V5, ByteStr::from_static("c"));
        c.properties.user_properties = empty_pairs(2);
        c.will = Some(crate::Will {
            topic: ByteStr::from_static("w"),
            payload: bytes::Bytes::new(),
            qos: crate::QoS::AtMostOnce,
            retain: false,
            properties: crate::WillProperties {
                user_properties: empty_pairs(2),
                ..Default::default()
            },
        });
        let mut wire = BytesMut::new();
        Packet::Connect(c.into())
            .encode(ProtocolVersion::V5, &mut wire)
            .unwrap();
        let mut d = Decoder::new();
        d.set_max_user_properties(3);
        let e = d.decode(&mut wire).unwrap_err();
        assert!(matches!(
            e.kind(),
            ErrorKind::TooManyUserProperties { count: 4, max: 3 }
        ));
    }

    /// A 5.0 QoS 0 PUBLISH to "t" with these encoded properties and no payload.
    fn publish_raw(properties: &[u8]) -> BytesMut {
        let mut body = vec![0, 1, b't'];
        body.push(u8::try_from(properties.len()).unwrap());
        body.extend_from_slice(properties);
        let mut wire = vec![0x30, u8::try_from(body.len()).unwrap()];
        wire.extend_from_slice(&body);
        BytesMut::from(&wire[..])
    }

    #[test]
    fn the_cap_stops_decoding_before_the_pair_over_it() {
        // Three empty pairs, then a fourth whose name is not UTF-8.
        let mut props = [0x26, 0, 0, 0, 0].repeat(3);
        props.extend_from_slice(&[0x26, 0, 1, 0xFF, 0, 0]);
        let mut d = Decoder::with_version(ProtocolVersion::V5);
        d.set_max_user_properties(4);
        let e = d.decode(&mut publish_raw(&props)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUtf8);
        // With a cap of 3 the fourth is never read: refused for the count.
        d.set_max_user_properties(3);
        let e = d.decode(&mut publish_raw(&props)).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::TooManyUserProperties { count: 4, max: 3 }
        );
        assert_eq!(e.packet_type(), Some(PacketType::Publish));
        assert_eq!(e.reason_code(), ReasonCode::QUOTA_EXCEEDED);
    }

    #[test]
    fn user_properties_between_other_properties_keep_their_order_and_count() {
        // a=1, Message Expiry Interval 9, b=2, Subscription Identifier 5, c=3.
        let props = [
            &[0x26, 0, 1, b'a', 0, 1, b'1'][..],
            &[0x02, 0, 0, 0, 9],
            &[0x26, 0, 1, b'b', 0, 1, b'2'],
            &[0x0B, 5],
            &[0x26, 0, 1, b'c', 0, 1, b'3'],
        ]
        .concat();
        let mut d = Decoder::with_version(ProtocolVersion::V5);
        let Some(Packet::Publish(p)) = d.decode(&mut publish_raw(&props)).unwrap() else {
            panic!("a PUBLISH")
        };
        let pairs: Vec<_> = p.properties.user_properties.iter().collect();
        assert_eq!(pairs, [("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(p.properties.message_expiry_interval, Some(9));
        d.set_max_user_properties(2);
        let e = d.decode(&mut publish_raw(&props)).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::TooManyUserProperties { count: 3, max: 2 }
        );
    }
}
