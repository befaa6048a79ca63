//! Decode and encode errors.
//!
//! Every decode failure is a [`DecodeError`]: what was wrong ([`ErrorKind`]), in which
//! packet, the normative statement it breaks (`[MQTT-x.y.z-n]`, numbered as in the
//! version the connection speaks) and the [`ReasonCode`] to close the connection with.

use core::fmt;

use crate::{PacketType, PropertyId, ProtocolVersion, ReasonCode};

/// Why a packet could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The packet type nibble is 0, which every version reserves.
    #[error("packet type 0 is reserved")]
    ReservedPacketType,
    /// AUTH (type 15) was received on a 3.1 or 3.1.1 connection, where the type is reserved.
    #[error("packet type 15 (AUTH) exists only in MQTT 5.0")]
    AuthNotInVersion,
    /// The fixed header's flag bits differ from the values the packet type requires.
    #[error("reserved flag bits of the fixed header are {found:#06b}, must be {expected:#06b}")]
    ReservedFlags {
        /// The flags found.
        found: u8,
        /// The flags required.
        expected: u8,
    },
    /// A Variable Byte Integer's fourth byte still had its continuation bit set.
    #[error("variable byte integer longer than four bytes")]
    VarIntTooLong,
    /// A Variable Byte Integer used more bytes than its value needs (MQTT 5.0).
    #[error("variable byte integer not in its shortest form")]
    NonMinimalVarInt,
    /// The packet is larger than the receiver's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The size the fixed header announces, header included.
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// A field runs past the end of the packet.
    #[error("packet ends inside a field")]
    UnexpectedEnd,
    /// Bytes remain after the last field of the packet.
    #[error("{0} unexpected bytes after the end of the packet")]
    TrailingBytes(usize),
    /// A UTF-8 Encoded String is not well-formed UTF-8 (this includes encoded surrogates).
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A UTF-8 Encoded String contains U+0000.
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// A PUBLISH has QoS 3.
    #[error("QoS 3 is not a valid QoS")]
    InvalidQos,
    /// A QoS 0 PUBLISH has its DUP flag set.
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQos0,
    /// A packet identifier is 0.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A topic name contains `+` or `#`.
    #[error("topic name contains a wildcard character")]
    WildcardInTopicName,
    /// A topic name is empty (and, in 5.0, no Topic Alias stands for it).
    #[error("topic name is empty")]
    EmptyTopicName,
    /// A topic filter is empty.
    #[error("topic filter is empty")]
    EmptyTopicFilter,
    /// A `#` in a topic filter is not alone in the last level.
    #[error("'#' in a topic filter must be the whole last level")]
    MultiLevelWildcardMisplaced,
    /// A `+` in a topic filter does not fill a whole level.
    #[error("'+' in a topic filter must fill a whole level")]
    SingleLevelWildcardMisplaced,
    /// A `$share/` filter has an empty share name.
    #[error("shared subscription filter with an empty share name")]
    EmptyShareName,
    /// A `$share/` filter has a share name with `+` or `#`, or no topic filter after the
    /// share name.
    #[error("invalid shared subscription filter")]
    InvalidSharedSubscription,
    /// A Response Topic contains a wildcard character or is empty.
    #[error("response topic is not a valid topic name")]
    InvalidResponseTopic,
    /// A SUBSCRIBE carries no topic filter.
    #[error("SUBSCRIBE with no topic filter")]
    EmptySubscribe,
    /// An UNSUBSCRIBE carries no topic filter.
    #[error("UNSUBSCRIBE with no topic filter")]
    EmptyUnsubscribe,
    /// Reserved bits of a subscription options byte are set.
    #[error("reserved bits of subscription options set ({0:#04x})")]
    SubscriptionOptionsReserved(u8),
    /// A subscription requests QoS 3.
    #[error("subscription requests QoS 3")]
    SubscriptionQos3,
    /// A subscription's Retain Handling is 3.
    #[error("retain handling 3 is not valid")]
    RetainHandling3,
    /// No Local is set on a shared subscription.
    #[error("No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A property identifier that no packet defines.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property this packet type may not carry.
    #[error("property {0} is not allowed in this packet")]
    PropertyNotAllowed(PropertyId),
    /// A property that may appear once appears again.
    #[error("property {0} appears more than once")]
    DuplicateProperty(PropertyId),
    /// A property's value is outside the values the spec allows.
    #[error("property {0} has a value the spec does not allow")]
    InvalidPropertyValue(PropertyId),
    /// Authentication Data without an Authentication Method.
    #[error("Authentication Data without Authentication Method")]
    AuthDataWithoutMethod,
    /// An AUTH packet with a body but no Authentication Method.
    #[error("AUTH without Authentication Method")]
    AuthWithoutMethod,
    /// A reason code this packet type may not carry.
    #[error("reason code {0:#04x} is not valid in this packet")]
    InvalidReasonCode(u8),
    /// The CONNECT protocol name is neither `MQTT` nor `MQIsdp`.
    #[error("unknown protocol name")]
    InvalidProtocolName,
    /// The CONNECT protocol level is not 3, 4 or 5, or does not match the protocol name.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// The reserved bit 0 of the CONNECT flags is set.
    #[error("reserved bit of the CONNECT flags is set")]
    ConnectReservedFlag,
    /// Will QoS is 3.
    #[error("will QoS is 3")]
    WillQos3,
    /// Will QoS is not 0 while the Will Flag is not set.
    #[error("will QoS set without the will flag")]
    WillQosWithoutWill,
    /// Will Retain is set while the Will Flag is not.
    #[error("will retain set without the will flag")]
    WillRetainWithoutWill,
    /// MQTT 3.1/3.1.1: the Password Flag is set without the User Name Flag.
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// Reserved bits of the CONNACK acknowledge flags are set.
    #[error("reserved bits of the CONNACK acknowledge flags set")]
    ConnAckReservedFlags,
    /// A 3.1/3.1.1 CONNACK return code above 5, or SUBACK return code other than 0, 1, 2, 0x80.
    #[error("return code {0:#04x} is reserved")]
    ReservedReturnCode(u8),
    /// A packet other than CONNECT arrived before the protocol version was known.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// The packet carries more User Properties than the receiver accepts
    /// ([`crate::Decoder::set_max_user_properties`]): a limit of this implementation,
    /// not of the spec, so it is Quota exceeded (0x97). Decoding stops at the first one
    /// over the limit.
    #[error("{count} user properties exceed the limit of {max}")]
    TooManyUserProperties {
        /// How many were counted when decoding stopped: the limit plus one.
        count: usize,
        /// The limit in force.
        max: usize,
    },
}

impl ErrorKind {
    /// The normative statement this error breaks, as numbered in `version`'s spec
    /// (MQTT 3.1, which has none, uses 3.1.1's numbering). `None` when the rule has no
    /// conformance identifier.
    pub const fn rule(&self, version: ProtocolVersion) -> Option<&'static str> {
        let v5 = version.is_v5();
        Some(match self {
            Self::ReservedFlags { .. } if v5 => "MQTT-2.1.3-1",
            Self::ReservedFlags { .. } => "MQTT-2.2.2-2",
            Self::NonMinimalVarInt => "MQTT-1.5.5-1",
            Self::InvalidUtf8 if v5 => "MQTT-1.5.4-1",
            Self::InvalidUtf8 => "MQTT-1.5.3-1",
            Self::NullCharacter if v5 => "MQTT-1.5.4-2",
            Self::NullCharacter => "MQTT-1.5.3-2",
            Self::InvalidQos => "MQTT-3.3.1-4",
            Self::DupOnQos0 => "MQTT-3.3.1-2",
            Self::ZeroPacketId if v5 => "MQTT-2.2.1-3",
            Self::ZeroPacketId => "MQTT-2.3.1-1",
            Self::WildcardInTopicName => "MQTT-3.3.2-2",
            Self::EmptyTopicName => "MQTT-4.7.3-1",
            Self::EmptyTopicFilter => "MQTT-4.7.3-1",
            Self::MultiLevelWildcardMisplaced if v5 => "MQTT-4.7.1-1",
            Self::MultiLevelWildcardMisplaced => "MQTT-4.7.1-2",
            Self::SingleLevelWildcardMisplaced if v5 => "MQTT-4.7.1-2",
            Self::SingleLevelWildcardMisplaced => "MQTT-4.7.1-3",
            Self::EmptyShareName if v5 => "MQTT-4.8.2-1",
            Self::InvalidSharedSubscription if v5 => "MQTT-4.8.2-2",
            Self::InvalidResponseTopic if v5 => "MQTT-3.3.2-14",
            Self::EmptySubscribe if v5 => "MQTT-3.8.3-2",
            Self::EmptySubscribe => "MQTT-3.8.3-3",
            Self::EmptyUnsubscribe => "MQTT-3.10.3-2",
            Self::SubscriptionOptionsReserved(_) if v5 => "MQTT-3.8.3-5",
            Self::SubscriptionOptionsReserved(_) | Self::SubscriptionQos3 if !v5 => "MQTT-3-8.3-4",
            Self::NoLocalOnSharedSubscription => "MQTT-3.8.3-4",
            Self::InvalidProtocolName => "MQTT-3.1.2-1",
            Self::UnsupportedProtocolLevel(_) => "MQTT-3.1.2-2",
            Self::ConnectReservedFlag => "MQTT-3.1.2-3",
            Self::WillQos3 if v5 => "MQTT-3.1.2-12",
            Self::WillQos3 => "MQTT-3.1.2-14",
            Self::WillQosWithoutWill if v5 => "MQTT-3.1.2-11",
            Self::WillQosWithoutWill => "MQTT-3.1.2-13",
            Self::WillRetainWithoutWill if v5 => "MQTT-3.1.2-13",
            Self::WillRetainWithoutWill => "MQTT-3.1.2-15",
            Self::PasswordWithoutUsername => "MQTT-3.1.2-22",
            Self::ConnAckReservedFlags if v5 => "MQTT-3.2.2-1",
            Self::NotConnect => "MQTT-3.1.0-1",
            _ => return None,
        })
    }

    /// The version in whose form to answer this error with a CONNACK, when the spec
    /// asks for one: only for [`ErrorKind::UnsupportedProtocolLevel`] (3.1.1
    /// [MQTT-3.1.2-2]: return code 0x01; 5.0 [MQTT-3.1.2-2]: 0x84 may be sent). A client
    /// that sent a level below 5 expects the two-byte CONNACK of 3.1 and 3.1.1 (the
    /// same bytes for a refusal, Session Present being 0), which carries
    /// [`reason_code`](Self::reason_code) as return code 0x01; 5 and above gets the 5.0
    /// form, with Reason Code 0x84. Bit 7 of the level is ignored: some brokers set it
    /// in the CONNECT of a bridge (level 0x83 or 0x84), which then speaks 3.1 or 3.1.1.
    /// Any other error of a CONNECT is answered by closing the connection (an unknown
    /// protocol name included, [MQTT-3.1.2-1]).
    pub const fn connack_version(&self) -> Option<ProtocolVersion> {
        match self {
            Self::UnsupportedProtocolLevel(level) if *level & 0x7F < 5 => {
                Some(ProtocolVersion::V3_1_1)
            }
            Self::UnsupportedProtocolLevel(_) => Some(ProtocolVersion::V5),
            _ => None,
        }
    }

    /// The MQTT 5.0 reason code a receiver closes the connection with (in DISCONNECT,
    /// or in CONNACK when the error is in CONNECT). 3.1 and 3.1.1 just close the
    /// connection, except that an unsupported protocol level is answered with CONNACK
    /// return code 1, which [`crate::ConnAck`] maps [`ReasonCode::UNSUPPORTED_PROTOCOL_VERSION`] to.
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            // Within the Maximum Packet Size, so not 0x95: a limit of ours.
            Self::TooManyUserProperties { .. } => ReasonCode::QUOTA_EXCEEDED,
            Self::InvalidProtocolName | Self::UnsupportedProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::InvalidPropertyValue(PropertyId::TopicAlias) => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::ZeroPacketId
            | Self::EmptySubscribe
            | Self::EmptyUnsubscribe
            | Self::SubscriptionQos3
            | Self::RetainHandling3
            | Self::NoLocalOnSharedSubscription
            | Self::EmptyTopicName
            | Self::InvalidResponseTopic
            | Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::AuthDataWithoutMethod
            | Self::AuthWithoutMethod
            | Self::InvalidReasonCode(_)
            | Self::PasswordWithoutUsername
            | Self::NotConnect => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// A packet that could not be decoded: what, where, which rule, and the reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    kind: ErrorKind,
    packet: Option<PacketType>,
    version: Option<ProtocolVersion>,
}

impl DecodeError {
    pub(crate) const fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            packet: None,
            version: None,
        }
    }

    /// Fills in the packet type and version where an inner decoder left them open.
    pub(crate) const fn within(mut self, packet: PacketType, version: ProtocolVersion) -> Self {
        if self.packet.is_none() {
            self.packet = Some(packet);
        }
        if self.version.is_none() {
            self.version = Some(version);
        }
        self
    }

    /// What was wrong.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The type of the packet being decoded, when the fixed header was read.
    pub const fn packet_type(&self) -> Option<PacketType> {
        self.packet
    }

    /// The normative statement broken, numbered as in the connection's version.
    pub const fn rule(&self) -> Option<&'static str> {
        let version = match self.version {
            Some(v) => v,
            None => ProtocolVersion::V5,
        };
        // Reason codes are governed packet by packet.
        match (self.kind, self.packet) {
            (ErrorKind::InvalidReasonCode(_), Some(packet)) => reason_code_rule(packet),
            (ErrorKind::ReservedReturnCode(_), Some(PacketType::SubAck)) => Some("MQTT-3.9.3-2"),
            _ => self.kind.rule(version),
        }
    }

    /// The version in whose form to answer with a CONNACK, if the spec asks for one;
    /// see [`ErrorKind::connack_version`]. A server reading its client's first packet
    /// encodes `ConnAck::new(false, self.reason_code())` in this version, sends it and
    /// closes; with `None` it just closes.
    pub const fn connack_version(&self) -> Option<ProtocolVersion> {
        self.kind.connack_version()
    }

    /// The MQTT 5.0 reason code to close the connection with; see [`ErrorKind::reason_code`].
    pub const fn reason_code(&self) -> ReasonCode {
        self.kind.reason_code()
    }

    /// True when the error is a packet over the size limit (reason code 0x95).
    pub const fn is_too_large(&self) -> bool {
        matches!(self.kind, ErrorKind::PacketTooLarge { .. })
    }
}

/// The 5.0 statement that lists the reason codes a packet type may carry.
const fn reason_code_rule(packet: PacketType) -> Option<&'static str> {
    Some(match packet {
        PacketType::ConnAck => "MQTT-3.2.2-8",
        PacketType::PubAck => "MQTT-3.4.2-1",
        PacketType::PubRec => "MQTT-3.5.2-1",
        PacketType::PubRel => "MQTT-3.6.2-1",
        PacketType::PubComp => "MQTT-3.7.2-1",
        PacketType::SubAck => "MQTT-3.9.3-2",
        PacketType::UnsubAck => "MQTT-3.11.3-2",
        PacketType::Disconnect => "MQTT-3.14.2-1",
        PacketType::Auth => "MQTT-3.15.2-1",
        _ => return None,
    })
}

impl From<ErrorKind> for DecodeError {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = if self.reason_code() == ReasonCode::MALFORMED_PACKET {
            "malformed"
        } else {
            "invalid"
        };
        match self.packet {
            Some(packet) => write!(f, "{class} {packet}: {}", self.kind)?,
            None => write!(f, "{class} packet: {}", self.kind)?,
        }
        if let Some(rule) = self.rule() {
            write!(f, " [{rule}]")?;
        }
        Ok(())
    }
}

impl core::error::Error for DecodeError {}

/// Why a packet could not be encoded. The checks run before any byte is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet is larger than the peer accepts (or than any MQTT packet can be).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The encoded size.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A Binary Data field (password, will payload, correlation or authentication data)
    /// is longer than 65,535 bytes.
    #[error("binary data of {0} bytes is longer than 65535 bytes")]
    BinaryTooLong(usize),
    /// The packet breaks a rule that a receiver's decoder would reject it for (a wildcard
    /// in a topic name, an invalid topic filter, a password without a user name in 3.1.1).
    #[error("packet would be refused by its receiver: {0}")]
    Invalid(ErrorKind),
    /// The packet type does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet} does not exist in {version}")]
    NotInVersion {
        /// The packet type.
        packet: PacketType,
        /// The version asked for.
        version: ProtocolVersion,
    },
}
