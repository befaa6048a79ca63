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
#[derive(Clone, Debug)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

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
        }
    }

    /// A decoder for a connection whose version is already known (a client's).
    pub const fn with_version(version: ProtocolVersion) -> Self {
        Self {
            version: Some(version),
            max_packet_size: MAX_PACKET_SIZE,
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
            return Packet::decode_with(&header, body, version, Some);
        }
        let packet = Packet::decode(&header, body, version)?;
        if let Packet::Connect(connect) = &packet {
            if self.version.is_none() {
                self.version = Some(connect.version);
            }
        }
        Ok(Some(packet))
    }
}
