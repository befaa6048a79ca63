//! SUBSCRIBE and SUBACK (sections 3.8 and 3.9).

use alloc::vec::Vec;

use bytes::{BufMut, Bytes};

use super::{Encode, PacketId, read_packet_id};
use crate::{
    AckProperties, ByteStr, PacketType, ProtocolVersion, QoS, ReasonCode, SubscribeProperties,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{read_str, read_u8, write_str},
    topic::{parse_shared, validate_topic_filter},
    user_properties::UserPropertyCap,
};

/// A request to create or replace subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier, echoed in SUBACK.
    pub packet_id: PacketId,
    /// The subscriptions, at least one ([MQTT-3.8.3-3] in 3.1.1, [MQTT-3.8.3-2] in 5.0).
    pub subscriptions: Vec<Subscription>,
    /// SUBSCRIBE properties (5.0).
    pub properties: SubscribeProperties,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter, possibly a 5.0 shared subscription (`$share/{group}/{filter}`).
    pub filter: ByteStr,
    /// The subscription options.
    pub options: SubscriptionOptions,
}

/// The options byte of a subscription. 3.1 and 3.1.1 carry only the QoS; the other
/// fields keep their defaults there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// The maximum QoS the server may deliver with.
    pub qos: QoS,
    /// No Local (5.0): do not deliver the client's own publications back to it.
    pub no_local: bool,
    /// Retain As Published (5.0): keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// Retain Handling (5.0): when to send retained messages.
    pub retain_handling: RetainHandling,
}

/// When the server sends retained messages for a new subscription (5.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: at the time of the subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: at subscribe, only if the subscription did not exist yet.
    SendIfNew,
    /// 2: never.
    DoNotSend,
}

impl SubscriptionOptions {
    /// Options requesting `qos` with every other option at its default.
    pub fn new(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }

    /// The options as the 5.0 Subscription Options byte (QoS, No Local, Retain As
    /// Published, Retain Handling): what a SUBSCRIBE carries, and a compact form to
    /// store a subscription in.
    pub fn to_byte(self) -> u8 {
        self.encode(ProtocolVersion::V5)
    }

    /// Reads a 5.0 Subscription Options byte ([`SubscriptionOptions::to_byte`]); `None`
    /// if a reserved bit is set, the QoS is 3 or the Retain Handling is 3.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::decode(byte, ProtocolVersion::V5).ok()
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, ErrorKind> {
        if version.is_v5() {
            // [MQTT-3.8.3-5]: bits 6 and 7 are reserved.
            if byte & 0b1100_0000 != 0 {
                return Err(ErrorKind::SubscriptionOptionsReserved(byte));
            }
        } else if byte & 0b1111_1100 != 0 {
            // [MQTT-3-8.3-4]: the upper six bits are reserved in 3.1.1.
            return Err(ErrorKind::SubscriptionOptionsReserved(byte));
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(ErrorKind::SubscriptionQos3)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(ErrorKind::RetainHandling3),
        };
        Ok(Self {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

/// Checks a topic filter of SUBSCRIBE or UNSUBSCRIBE. In 5.0 a `$share/` filter must
/// also be a well-formed shared subscription; in 3.1 and 3.1.1 it is an ordinary filter.
pub(super) fn check_filter(filter: &str, version: ProtocolVersion) -> Result<bool, ErrorKind> {
    if version.is_v5() && parse_shared(filter)?.is_some() {
        return Ok(true);
    }
    validate_topic_filter(filter)?;
    Ok(false)
}

impl Subscribe {
    /// A SUBSCRIBE of one filter at `qos`.
    pub fn new(packet_id: PacketId, filter: ByteStr, qos: QoS) -> Self {
        Self {
            packet_id,
            subscriptions: alloc::vec![Subscription {
                filter,
                options: SubscriptionOptions::new(qos)
            }],
            properties: SubscribeProperties::default(),
        }
    }

    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(src)?;
        let properties = if version.is_v5() {
            SubscribeProperties::decode(src, cap)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !src.is_empty() {
            let filter = read_str(src)?;
            let options = SubscriptionOptions::decode(read_u8(src)?, version)?;
            let shared = check_filter(&filter, version)?;
            // [MQTT-3.8.3-4]
            if shared && options.no_local {
                return Err(ErrorKind::NoLocalOnSharedSubscription.into());
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(ErrorKind::EmptySubscribe.into());
        }
        Ok(Self {
            packet_id,
            subscriptions,
            properties,
        })
    }
}

impl Encode for Subscribe {
    const TYPE: PacketType = PacketType::Subscribe;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::Invalid(ErrorKind::EmptySubscribe));
        }
        for sub in &self.subscriptions {
            let shared = check_filter(&sub.filter, version).map_err(EncodeError::Invalid)?;
            if shared && sub.options.no_local {
                return Err(EncodeError::Invalid(ErrorKind::NoLocalOnSharedSubscription));
            }
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
        2 + props
            + self
                .subscriptions
                .iter()
                .map(|s| s.filter.encoded_len() + 1)
                .sum::<usize>()
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
        }
        for sub in &self.subscriptions {
            write_str(dst, &sub.filter);
            dst.put_u8(sub.options.encode(version));
        }
    }
}

/// The server's answer to SUBSCRIBE: one reason code per subscription, in order.
///
/// Reason codes are MQTT 5.0 codes; for 3.1 and 3.1.1 the granted QoS 0, 1, 2 are
/// written as they are and every failure code as 0x80.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per subscription: the granted QoS, or a failure.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(src)?;
        let properties = if version.is_v5() {
            AckProperties::decode(src, cap)?
        } else {
            AckProperties::default()
        };
        let mut reason_codes = Vec::with_capacity(src.len());
        for &code in src.iter() {
            let valid = if version.is_v5() {
                ReasonCode(code).is_valid_for(PacketType::SubAck)
            } else {
                matches!(code, 0 | 1 | 2 | 0x80)
            };
            if !valid {
                return Err(if version.is_v5() {
                    ErrorKind::InvalidReasonCode(code)
                } else {
                    ErrorKind::ReservedReturnCode(code)
                }
                .into());
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

impl Encode for SubAck {
    const TYPE: PacketType = PacketType::SubAck;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
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
        2 + props + self.reason_codes.len()
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        dst.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(dst);
            for code in &self.reason_codes {
                dst.put_u8(code.0);
            }
        } else {
            for code in &self.reason_codes {
                dst.put_u8(if code.is_error() { 0x80 } else { code.0 });
            }
        }
    }
}
