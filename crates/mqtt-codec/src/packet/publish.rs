//! PUBLISH (section 3.3).

use core::num::NonZeroU16;

use bytes::{BufMut, Bytes};

use super::{Encode, PacketId, read_packet_id};
use crate::{
    ByteStr, PacketType, PropertyBox, PropertyId, ProtocolVersion, PublishProperties, QoS,
    error::{DecodeError, EncodeError, ErrorKind},
    fixed_header::{MAX_REMAINING_LENGTH, var_int_len},
    primitives::{read_topic_name, write_str, write_var_int},
    properties::Slot,
    topic::validate_topic_name,
    user_properties::UserPropertyCap,
};

/// The QoS of a PUBLISH together with its packet identifier, which QoS 1 and 2 must
/// carry and QoS 0 must not ([MQTT-2.2.1-2]): the pairing is part of the type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosPid {
    /// QoS 0, no packet identifier.
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(PacketId),
}

impl QosPid {
    /// The QoS.
    pub const fn qos(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce(_) => QoS::AtLeastOnce,
            Self::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, for QoS 1 and 2.
    pub const fn packet_id(self) -> Option<PacketId> {
        match self {
            Self::AtMostOnce => None,
            Self::AtLeastOnce(id) | Self::ExactlyOnce(id) => Some(id),
        }
    }

    /// Pairs a QoS with a packet identifier; the identifier is dropped for QoS 0.
    pub const fn new(qos: QoS, packet_id: PacketId) -> Self {
        match qos {
            QoS::AtMostOnce => Self::AtMostOnce,
            QoS::AtLeastOnce => Self::AtLeastOnce(packet_id),
            QoS::ExactlyOnce => Self::ExactlyOnce(packet_id),
        }
    }
}

/// An application message in transit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this is a re-delivery of an earlier attempt (QoS 1 and 2 only).
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos_pid: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// The topic name. Empty only in 5.0, when `topic_alias` stands for it.
    pub topic: ByteStr,
    /// The payload: the rest of the packet, shared with the input buffer.
    pub payload: Bytes,
    /// The Topic Alias property (5.0): a number standing for the topic name on this
    /// connection. It is a property on the wire, but it belongs to the connection, not
    /// to the message, and a connection that uses aliases sets it on most PUBLISH
    /// packets: kept here, it costs no allocation.
    pub topic_alias: Option<NonZeroU16>,
    /// The other PUBLISH properties (5.0), boxed: nearly every PUBLISH carries none, and
    /// an empty [`PropertyBox`] is one pointer where the set itself is 152 bytes.
    pub properties: PropertyBox<PublishProperties>,
}

impl Publish {
    /// A QoS 0 PUBLISH of `payload` to `topic` with no flags and no properties.
    pub fn new(topic: ByteStr, payload: Bytes) -> Self {
        Self {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic,
            payload,
            topic_alias: None,
            properties: PropertyBox::new(),
        }
    }

    /// The size of the whole encoded packet in `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        super::packet_len(self.body_len(version))
    }

    /// The QoS.
    pub const fn qos(&self) -> QoS {
        self.qos_pid.qos()
    }

    /// The packet identifier, for QoS 1 and 2.
    pub const fn packet_id(&self) -> Option<PacketId> {
        self.qos_pid.packet_id()
    }

    /// Decodes a PUBLISH body and hands the packet to `wrap`, whose result is built in
    /// place: a PUBLISH is large, and every move through a `Result`, `Option` or `Packet`
    /// wrapper is a copy of all of it. Errors carry the packet type and `version`.
    #[inline(always)]
    pub(crate) fn decode_with<R>(
        flags: u8,
        mut src: Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
        wrap: impl FnOnce(Self) -> R,
    ) -> Result<R, DecodeError> {
        let fail = |kind: ErrorKind| DecodeError::new(kind).within(PacketType::Publish, version);
        let within = |e: DecodeError| e.within(PacketType::Publish, version);
        let dup = flags & 0b1000 != 0;
        let retain = flags & 0b0001 != 0;
        // [MQTT-3.3.1-4]: both QoS bits set is a Malformed Packet.
        let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
            return Err(fail(ErrorKind::InvalidQos));
        };
        // [MQTT-3.3.1-2]: DUP must be 0 on QoS 0.
        if dup && qos == QoS::AtMostOnce {
            return Err(fail(ErrorKind::DupOnQos0));
        }
        // [MQTT-3.3.2-2]: no wildcards in a topic name. Emptiness is checked below,
        // since 5.0 allows it together with a Topic Alias.
        let topic = read_topic_name(&mut src).map_err(within)?;
        let qos_pid = match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(read_packet_id(&mut src).map_err(within)?),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(read_packet_id(&mut src).map_err(within)?),
        };
        if !version.is_v5() {
            // [MQTT-4.7.3-1]
            if topic.is_empty() {
                return Err(fail(ErrorKind::EmptyTopicName));
            }
            return Ok(wrap(Self {
                dup,
                qos_pid,
                retain,
                topic,
                payload: src,
                topic_alias: None,
                properties: PropertyBox::new(),
            }));
        }
        // Most 5.0 PUBLISH packets carry no properties: a Property Length of 0.
        if src.first() == Some(&0) {
            bytes::Buf::advance(&mut src, 1);
            if topic.is_empty() {
                return Err(fail(ErrorKind::EmptyTopicName));
            }
            return Ok(wrap(Self {
                dup,
                qos_pid,
                retain,
                topic,
                payload: src,
                topic_alias: None,
                properties: PropertyBox::new(),
            }));
        }
        let mut topic_alias = None;
        let properties = PublishProperties::decode_with(&mut src, cap, |id, props| {
            if id != PropertyId::TopicAlias {
                return Ok(false);
            }
            Slot::read(&mut topic_alias, id, props)?;
            Ok(true)
        })
        .map_err(within)?;
        if let Some(response_topic) = &properties.response_topic {
            // [MQTT-3.3.2-14]
            if validate_topic_name(response_topic).is_err() {
                return Err(fail(ErrorKind::InvalidResponseTopic));
            }
        }
        // In 5.0 "a zero length Topic Name and no Topic Alias" is a Protocol Error.
        if topic.is_empty() && topic_alias.is_none() {
            return Err(fail(ErrorKind::EmptyTopicName));
        }
        Ok(wrap(Self {
            dup,
            qos_pid,
            retain,
            topic,
            payload: src,
            topic_alias,
            // A PUBLISH whose only property was its alias keeps no box.
            properties: properties.into(),
        }))
    }
}

/// A PUBLISH made of borrowed parts, to encode without a [`Publish`]: what a server
/// does to write one message for many connections, with no reference count taken on
/// the message's topic and payload and no packet built around them. It encodes exactly
/// as the [`Publish`] with the same fields ([`Publish::borrowed`]), which encodes
/// through it.
#[derive(Clone, Copy, Debug)]
pub struct PublishRef<'a> {
    /// DUP: this is a re-delivery of an earlier attempt (QoS 1 and 2 only).
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos_pid: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// The topic name. Empty only in 5.0, when `topic_alias` stands for it.
    pub topic: &'a ByteStr,
    /// The payload.
    pub payload: &'a [u8],
    /// The Topic Alias property (5.0).
    pub topic_alias: Option<NonZeroU16>,
    /// The other PUBLISH properties (5.0).
    pub properties: &'a PropertyBox<PublishProperties>,
}

impl PublishRef<'_> {
    /// The QoS.
    pub const fn qos(&self) -> QoS {
        self.qos_pid.qos()
    }

    /// The packet identifier, for QoS 1 and 2.
    pub const fn packet_id(&self) -> Option<PacketId> {
        self.qos_pid.packet_id()
    }

    /// The size of the whole encoded packet in `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        super::packet_len(self.body_len(version))
    }

    /// Checks and encodes the packet into `dst`, as [`Packet::encode`](crate::Packet::encode)
    /// does a [`Publish`]; returns the bytes written.
    pub fn encode(
        &self,
        version: ProtocolVersion,
        dst: &mut bytes::BytesMut,
    ) -> Result<usize, EncodeError> {
        super::encode_packet(self, version, dst)
    }

    /// Checks and encodes the packet into `dst` up to its payload, which the caller
    /// sends right after these bytes from where it is (a vectored write), instead of
    /// copying it; returns the size of the whole packet, payload included. The head
    /// and the payload together are the bytes [`encode`](Self::encode) writes.
    pub fn encode_head(
        &self,
        version: ProtocolVersion,
        dst: &mut bytes::BytesMut,
    ) -> Result<usize, EncodeError> {
        self.check(version)?;
        let body_len = self.body_len(version);
        if body_len > MAX_REMAINING_LENGTH as usize {
            return Err(EncodeError::PacketTooLarge {
                size: super::packet_len(body_len) as u64,
                max: crate::fixed_header::MAX_PACKET_SIZE,
            });
        }
        let total = super::packet_len(body_len);
        dst.reserve(total - self.payload.len());
        dst.put_u8(((PacketType::Publish as u8) << 4) | self.flags());
        write_var_int(dst, body_len as u32);
        self.write_head(version, dst);
        Ok(total)
    }

    /// The size of the properties (5.0), the Topic Alias included, without their
    /// Property Length.
    fn properties_len(&self) -> usize {
        Slot::len(&self.topic_alias) + self.properties.encoded_len()
    }

    /// Writes the variable header: the body up to the payload.
    #[inline(always)]
    fn write_head(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        write_str(dst, self.topic);
        if let Some(id) = self.packet_id() {
            dst.put_u16(id.get());
        }
        if version.is_v5() {
            write_var_int(dst, self.properties_len() as u32);
            Slot::write(&self.topic_alias, PropertyId::TopicAlias, dst);
            if let Some(properties) = self.properties.get() {
                properties.write_properties(dst);
            }
        }
    }
}

impl Publish {
    /// The packet as borrowed parts (see [`PublishRef`]).
    #[inline]
    pub fn borrowed(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos_pid: self.qos_pid,
            retain: self.retain,
            topic: &self.topic,
            payload: &self.payload,
            topic_alias: self.topic_alias,
            properties: &self.properties,
        }
    }
}

impl Encode for PublishRef<'_> {
    const TYPE: PacketType = PacketType::Publish;

    fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos() as u8) << 1) | u8::from(self.retain)
    }

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.dup && self.qos() == QoS::AtMostOnce {
            return Err(EncodeError::Invalid(ErrorKind::DupOnQos0));
        }
        if !(self.topic.is_empty() && version.is_v5() && self.topic_alias.is_some()) {
            validate_topic_name(self.topic).map_err(EncodeError::Invalid)?;
        }
        if version.is_v5() {
            self.properties.check()
        } else {
            Ok(())
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        let mut len = self.topic.encoded_len() + self.payload.len();
        if self.packet_id().is_some() {
            len += 2;
        }
        if version.is_v5() {
            let properties = self.properties_len();
            len += var_int_len(properties as u32) + properties;
        }
        len
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        self.write_head(version, dst);
        dst.put_slice(self.payload);
    }
}

impl Encode for Publish {
    const TYPE: PacketType = PacketType::Publish;

    #[inline]
    fn flags(&self) -> u8 {
        self.borrowed().flags()
    }

    #[inline]
    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        self.borrowed().check(version)
    }

    #[inline]
    fn body_len(&self, version: ProtocolVersion) -> usize {
        self.borrowed().body_len(version)
    }

    #[inline]
    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        self.borrowed().write_body(version, dst);
    }
}
