//! Incremental decoding from a byte stream.

use bytes::BytesMut;

use crate::{
    FixedHeader, Packet, PacketType, ProtocolVersion,
    error::{DecodeError, ErrorKind},
    fixed_header::MAX_PACKET_SIZE,
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
/// ([`DEFAULT_MAX_USER_PROPERTIES`] unless set): each costs two 32-byte string headers
/// in memory for as little as 5 bytes on the wire, so a 1 MB packet of empty ones
/// decodes into about 16 MB, kept for as long as the message is. A packet over the cap
/// fails with [`ErrorKind::TooManyUserProperties`] (Quota exceeded, 0x97); it is
/// checked once the packet is decoded, so decoding one packet still takes memory in
/// proportion to its size (bounded by the packet size limit).
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
        if header.packet_type == PacketType::Publish {
            // The common case, built straight into the result (see `decode_with`).
            let packet = Packet::decode_with(&header, body, version, Some)?;
            return match &packet {
                Some(Packet::Publish(p)) if p.properties.get().is_some() => {
                    self.check_user_properties(packet, version)
                }
                _ => Ok(packet),
            };
        }
        let packet = Packet::decode(&header, body, version)?;
        let packet = self.check_user_properties(Some(packet), version)?;
        let Some(packet) = packet else {
            return Ok(None);
        };
        if let Packet::Connect(connect) = &packet {
            if self.version.is_none() {
                self.version = Some(connect.version);
            }
        }
        Ok(Some(packet))
    }

    /// `packet`, or [`ErrorKind::TooManyUserProperties`] if it carries more User
    /// Properties than allowed.
    #[inline]
    fn check_user_properties(
        &self,
        packet: Option<Packet>,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        let Some(p) = &packet else {
            return Ok(packet);
        };
        if !version.is_v5() {
            return Ok(packet);
        }
        let count = p.user_property_count();
        let max = self.max_user_properties();
        if count > max {
            return Err(
                DecodeError::new(ErrorKind::TooManyUserProperties { count, max })
                    .within(p.packet_type(), version),
            );
        }
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::{ByteStr, Connect, Publish, ReasonCode};

    fn publish_with(pairs: usize) -> BytesMut {
        let mut p = Publish::new(ByteStr::from_static("t"), bytes::Bytes::new());
        p.properties.user_properties = vec![(ByteStr::new(), ByteStr::new()); pairs];
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
        c.properties.user_properties = vec![(ByteStr::new(), ByteStr::new()); 2];
        c.will = Some(crate::Will {
            topic: ByteStr::from_static("w"),
            payload: bytes::Bytes::new(),
            qos: crate::QoS::AtMostOnce,
            retain: false,
            properties: crate::WillProperties {
                user_properties: vec![(ByteStr::new(), ByteStr::new()); 2],
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
}
