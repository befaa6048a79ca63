//! MQTT 5.0 reason codes, as an open newtype.
//!
//! A reason code is one byte. Values below 0x80 report success, 0x80 and above report
//! failure. The same byte means different things in different packets (0x00 is
//! "Success" in PUBACK, "Normal disconnection" in DISCONNECT and "Granted QoS 0" in SUBACK),
//! so the constants carry the most common name and [`ReasonCode::is_valid_for`] tells
//! which packet may carry which code.
//!
//! MQTT 3.1 and 3.1.1 have no reason codes on most packets; their CONNACK return codes and
//! SUBACK return codes are mapped to and from these values by the packet encoders.

use core::fmt;

use crate::PacketType;

/// A reason code of MQTT 5.0. Unknown values are representable, so a peer's code
/// can always be shown even when this crate has no name for it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal, [$($packet:ident)*]; )*) => {
        impl ReasonCode {
            $( $(#[$doc])* pub const $name: Self = Self($value); )*

            /// The spec's name for this code (the name it has in the packets that use it
            /// most), or `None` for a value the spec does not define.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }

            /// Whether MQTT 5.0 allows a packet of this type to carry this code.
            pub fn is_valid_for(self, packet: PacketType) -> bool {
                $( if self.0 == $value { return matches!(packet, $(PacketType::$packet)|*); } )*
                false
            }
        }
    };
}

reason_codes! {
    /// 0x00 Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH), Normal disconnection (DISCONNECT), Granted QoS 0 (SUBACK).
    SUCCESS = 0x00, "Success", [ConnAck PubAck PubRec PubRel PubComp SubAck UnsubAck Disconnect Auth];
    /// 0x01 Granted QoS 1 (SUBACK).
    GRANTED_QOS_1 = 0x01, "Granted QoS 1", [SubAck];
    /// 0x02 Granted QoS 2 (SUBACK).
    GRANTED_QOS_2 = 0x02, "Granted QoS 2", [SubAck];
    /// 0x04 Disconnect with Will Message (DISCONNECT).
    DISCONNECT_WITH_WILL = 0x04, "Disconnect with Will Message", [Disconnect];
    /// 0x10 No matching subscribers (PUBACK, PUBREC).
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers", [PubAck PubRec];
    /// 0x11 No subscription existed (UNSUBACK).
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed", [UnsubAck];
    /// 0x18 Continue authentication (AUTH).
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication", [Auth];
    /// 0x19 Re-authenticate (AUTH).
    REAUTHENTICATE = 0x19, "Re-authenticate", [Auth];
    /// 0x80 Unspecified error.
    UNSPECIFIED_ERROR = 0x80, "Unspecified error", [ConnAck PubAck PubRec SubAck UnsubAck Disconnect];
    /// 0x81 Malformed Packet.
    MALFORMED_PACKET = 0x81, "Malformed Packet", [ConnAck Disconnect];
    /// 0x82 Protocol Error.
    PROTOCOL_ERROR = 0x82, "Protocol Error", [ConnAck Disconnect];
    /// 0x83 Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error", [ConnAck PubAck PubRec SubAck UnsubAck Disconnect];
    /// 0x84 Unsupported Protocol Version (CONNACK).
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported Protocol Version", [ConnAck];
    /// 0x85 Client Identifier not valid (CONNACK).
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client Identifier not valid", [ConnAck];
    /// 0x86 Bad User Name or Password (CONNACK).
    BAD_USER_NAME_OR_PASSWORD = 0x86, "Bad User Name or Password", [ConnAck];
    /// 0x87 Not authorized.
    NOT_AUTHORIZED = 0x87, "Not authorized", [ConnAck PubAck PubRec SubAck UnsubAck Disconnect];
    /// 0x88 Server unavailable (CONNACK).
    SERVER_UNAVAILABLE = 0x88, "Server unavailable", [ConnAck];
    /// 0x89 Server busy.
    SERVER_BUSY = 0x89, "Server busy", [ConnAck Disconnect];
    /// 0x8A Banned (CONNACK).
    BANNED = 0x8A, "Banned", [ConnAck];
    /// 0x8B Server shutting down (DISCONNECT).
    SERVER_SHUTTING_DOWN = 0x8B, "Server shutting down", [Disconnect];
    /// 0x8C Bad authentication method.
    BAD_AUTHENTICATION_METHOD = 0x8C, "Bad authentication method", [ConnAck Disconnect];
    /// 0x8D Keep Alive timeout (DISCONNECT).
    KEEP_ALIVE_TIMEOUT = 0x8D, "Keep Alive timeout", [Disconnect];
    /// 0x8E Session taken over (DISCONNECT).
    SESSION_TAKEN_OVER = 0x8E, "Session taken over", [Disconnect];
    /// 0x8F Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8F, "Topic Filter invalid", [SubAck UnsubAck Disconnect];
    /// 0x90 Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90, "Topic Name invalid", [ConnAck PubAck PubRec Disconnect];
    /// 0x91 Packet Identifier in use.
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet Identifier in use", [PubAck PubRec SubAck UnsubAck];
    /// 0x92 Packet Identifier not found (PUBREL, PUBCOMP).
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet Identifier not found", [PubRel PubComp];
    /// 0x93 Receive Maximum exceeded (DISCONNECT).
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive Maximum exceeded", [Disconnect];
    /// 0x94 Topic Alias invalid (DISCONNECT).
    TOPIC_ALIAS_INVALID = 0x94, "Topic Alias invalid", [Disconnect];
    /// 0x95 Packet too large.
    PACKET_TOO_LARGE = 0x95, "Packet too large", [ConnAck Disconnect];
    /// 0x96 Message rate too high (DISCONNECT).
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high", [Disconnect];
    /// 0x97 Quota exceeded.
    QUOTA_EXCEEDED = 0x97, "Quota exceeded", [ConnAck PubAck PubRec SubAck Disconnect];
    /// 0x98 Administrative action (DISCONNECT).
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action", [Disconnect];
    /// 0x99 Payload format invalid.
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid", [ConnAck PubAck PubRec Disconnect];
    /// 0x9A Retain not supported.
    RETAIN_NOT_SUPPORTED = 0x9A, "Retain not supported", [ConnAck Disconnect];
    /// 0x9B QoS not supported.
    QOS_NOT_SUPPORTED = 0x9B, "QoS not supported", [ConnAck Disconnect];
    /// 0x9C Use another server.
    USE_ANOTHER_SERVER = 0x9C, "Use another server", [ConnAck Disconnect];
    /// 0x9D Server moved.
    SERVER_MOVED = 0x9D, "Server moved", [ConnAck Disconnect];
    /// 0x9E Shared Subscriptions not supported.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "Shared Subscriptions not supported", [SubAck Disconnect];
    /// 0x9F Connection rate exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9F, "Connection rate exceeded", [ConnAck Disconnect];
    /// 0xA0 Maximum connect time (DISCONNECT).
    MAXIMUM_CONNECT_TIME = 0xA0, "Maximum connect time", [Disconnect];
    /// 0xA1 Subscription Identifiers not supported.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "Subscription Identifiers not supported", [SubAck Disconnect];
    /// 0xA2 Wildcard Subscriptions not supported.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "Wildcard Subscriptions not supported", [SubAck Disconnect];
}

impl ReasonCode {
    /// 0x00 under its DISCONNECT name.
    pub const NORMAL_DISCONNECTION: Self = Self::SUCCESS;
    /// 0x00 under its SUBACK name.
    pub const GRANTED_QOS_0: Self = Self::SUCCESS;

    /// True for codes below 0x80, which report success.
    pub const fn is_success(self) -> bool {
        self.0 < 0x80
    }

    /// True for codes of 0x80 and above, which report failure.
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(name) => write!(f, "ReasonCode({:#04x} {name})", self.0),
            None => write!(f, "ReasonCode({:#04x})", self.0),
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(name) => write!(f, "{name} ({:#04x})", self.0),
            None => write!(f, "unknown reason code {:#04x}", self.0),
        }
    }
}

impl From<u8> for ReasonCode {
    fn from(value: u8) -> Self {
        Self(value)
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> Self {
        code.0
    }
}
