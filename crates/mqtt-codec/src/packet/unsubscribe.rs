//! UNSUBSCRIBE and UNSUBACK (sections 3.10 and 3.11).

use alloc::vec::Vec;

use bytes::{BufMut, Bytes};

use super::{Encode, PacketId, read_packet_id, subscribe::check_filter};
use crate::{
    AckProperties, ByteStr, PacketType, ProtocolVersion, ReasonCode, UnsubscribeProperties,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_str, write_str},
    user_properties::UserPropertyCap,
};

/// A request to remove subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier, echoed in UNSUBACK.
    pub packet_id: PacketId,
    /// The topic filters to remove, at least one ([MQTT-3.10.3-2]).
    pub filters: Vec<ByteStr>,
    /// UNSUBSCRIBE properties (5.0).
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(src)?;
        let properties = if version.is_v5() {
            UnsubscribeProperties::decode(src, cap)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !src.is_empty() {
            let filter = read_str(src)?;
            check_filter(&filter, version)?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(ErrorKind::EmptyUnsubscribe.into());
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }
}

impl Encode for Unsubscribe {
    const TYPE: PacketType = PacketType::Unsubscribe;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Invalid(ErrorKind::EmptyUnsubscribe));
        }
        for filter in &self.filters {
            check_filter(filter, version).map_err(EncodeError::Invalid)?;
        }
        if version.is_v5() {
            self.properties.check()
        } else {
            Ok(())
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        let props = if version.is_v5() {
            self.properties.wire_len()
        } else {
            0
        };
        2 + props + self.filters.iter().map(ByteStr::encoded_len).sum::<usize>()
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
        }
        for filter in &self.filters {
            write_str(dst, filter);
        }
    }
}

/// The server's answer to UNSUBSCRIBE. In 5.0 it has one reason code per filter; in
/// 3.1 and 3.1.1 it has none and `reason_codes` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per filter (5.0).
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(src)?;
        if !version.is_v5() {
            expect_end(src)?;
            return Ok(Self {
                packet_id,
                reason_codes: Vec::new(),
                properties: AckProperties::default(),
            });
        }
        let properties = AckProperties::decode(src, cap)?;
        let mut reason_codes = Vec::with_capacity(src.len());
        for &code in src.iter() {
            if !ReasonCode(code).is_valid_for(PacketType::UnsubAck) {
                return Err(ErrorKind::InvalidReasonCode(code).into());
            }
            reason_codes.push(ReasonCode(code));
        }
        Ok(Self {
            packet_id,
            reason_codes,
            properties,
        })
    }
}

impl Encode for UnsubAck {
    const TYPE: PacketType = PacketType::UnsubAck;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() {
            self.properties.check()
        } else {
            Ok(())
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
            2 + self.properties.wire_len() + self.reason_codes.len()
        } else {
            2
        }
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
            for code in &self.reason_codes {
                dst.put_u8(code.0);
            }
        }
    }
}
