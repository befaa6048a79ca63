//! Encoder, decoder and validator for every control packet of MQTT 3.1, 3.1.1 and 5.0.
//!
//! This is the bottom layer of the workspace. It turns bytes into typed packets and
//! packets into bytes, and checks every rule of the specs that can be checked on a
//! single packet. It does no I/O, keeps no connection state beyond the protocol version
//! a [`Decoder`] has seen in CONNECT, and never allocates on decode beyond reference
//! counts, except for lists (subscriptions, reason codes, user properties that other
//! properties split in several runs) and the box a PUBLISH's properties live in when it
//! has any ([`PropertyBox`]). User Properties are kept in their wire form
//! ([`UserProperties`]).
//!
//! It is `#![no_std]` with `alloc`; the `std` feature (on by default) adds only
//! conveniences.
//!
//! # Layers
//! - [`FixedHeader`]: packet type, flags, Remaining Length; read from at most 5 bytes.
//! - [`Packet`]: one type per control packet ([`Connect`], [`Publish`], ...). The same
//!   type serves every version; the version is a parameter of [`Packet::decode`] and
//!   [`Packet::encode`], and 5.0-only fields are ignored for older versions.
//! - Properties: one typed struct per packet ([`PublishProperties`], ...), so a property
//!   cannot be put in a packet that may not carry it.
//! - [`Decoder`]: splits a byte stream into packets, incrementally, with a size limit.
//!
//! # Guarantees
//! - Decoding never panics and never reads past the packet's declared length, whatever
//!   the input. Every failure is a [`DecodeError`] naming the rule broken
//!   (`[MQTT-x.y.z-n]`) and the [`ReasonCode`] to close the connection with.
//! - Encoding checks everything first ([`EncodeError`]) and then cannot fail; a checked
//!   packet is one the decoder accepts. [`Packet::encoded_len`] gives the size before
//!   encoding, and [`Packet::fit_to_size`] drops what MQTT 5.0 allows to be dropped to
//!   respect a peer's Maximum Packet Size.
//!
//! # Example
//! ```
//! use bytes::{Bytes, BytesMut};
//! use mqtt_codec::{ByteStr, Decoder, Packet, ProtocolVersion, Publish, QoS, QosPid, PacketId};
//!
//! let mut publish = Publish::new(ByteStr::from_static("home/kitchen/temp"), Bytes::from_static(b"21.5"));
//! publish.qos_pid = QosPid::new(QoS::AtLeastOnce, PacketId::new(7).unwrap());
//! let packet = Packet::from(publish);
//!
//! let mut wire = BytesMut::new();
//! let written = packet.encode(ProtocolVersion::V5, &mut wire).unwrap();
//! assert_eq!(written, packet.encoded_len(ProtocolVersion::V5));
//!
//! // A half-received packet yields "need more", and consumes nothing.
//! let mut partial = BytesMut::from(&wire[..5]);
//! let mut decoder = Decoder::with_version(ProtocolVersion::V5);
//! assert_eq!(decoder.decode(&mut partial).unwrap(), None);
//! assert_eq!(partial.len(), 5);
//!
//! assert_eq!(decoder.decode(&mut wire).unwrap(), Some(packet));
//! assert!(wire.is_empty());
//! ```
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod decoder;
mod error;
mod fixed_header;
mod packet;
mod primitives;
mod properties;
mod reason;
pub mod topic;
mod user_properties;
mod version;

pub use crate::{
    decoder::{DEFAULT_MAX_USER_PROPERTIES, Decoder},
    error::{DecodeError, EncodeError, ErrorKind},
    fixed_header::{FixedHeader, MAX_PACKET_SIZE, MAX_REMAINING_LENGTH, PacketType},
    packet::{
        Auth, ConnAck, Connect, Disconnect, Packet, PacketId, PubAck, PubComp, PubRec, PubRel,
        Publish, PublishRef, QosPid, RetainHandling, SubAck, Subscribe, Subscription,
        SubscriptionOptions, UnsubAck, Unsubscribe, Will,
    },
    primitives::{ByteStr, MAX_STRING_LEN, StringError},
    properties::{
        AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
        PayloadFormat, PropertyBox, PropertyId, PropertySet, PublishProperties,
        SubscribeProperties, SubscriptionId, UnsubscribeProperties, WillProperties,
    },
    reason::ReasonCode,
    user_properties::{UserProperties, UserPropertiesIter},
    version::{ProtocolVersion, QoS},
};
