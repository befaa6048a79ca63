//! The control packets: one type per packet, covering every protocol version.
//!
//! Fields that exist only in MQTT 5.0 (properties, most reason codes) are ignored when
//! encoding for 3.1 or 3.1.1 and come back empty or as `Success` when decoding them.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod subscribe;
mod unsubscribe;

use bytes::{BufMut, Bytes, BytesMut};

pub use self::{
    ack::{PubAck, PubComp, PubRec, PubRel},
    auth::Auth,
    connack::ConnAck,
    connect::{Connect, Will},
    disconnect::Disconnect,
    publish::{Publish, PublishRef, QosPid},
    subscribe::{RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions},
    unsubscribe::{UnsubAck, Unsubscribe},
};
use crate::{
    ByteStr, PacketType, ProtocolVersion, UserProperties,
    error::{DecodeError, EncodeError, ErrorKind},
    fixed_header::{FixedHeader, MAX_REMAINING_LENGTH, var_int_len},
    primitives::{expect_end, read_u16, write_var_int},
    user_properties::UserPropertyCap,
};

/// A packet identifier: never 0 ([MQTT-2.3.1-1] in 3.1.1, [MQTT-2.2.1-3] in 5.0).
pub type PacketId = core::num::NonZeroU16;

/// Any MQTT control packet.
///
/// CONNECT and CONNACK are boxed: they are rare and large, and boxing keeps every
/// `Packet` the size of a PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(alloc::boxed::Box<Connect>),
    /// CONNACK.
    ConnAck(alloc::boxed::Box<ConnAck>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5.0 only).
    Auth(Auth),
}

/// The encoding side of one packet type: its fixed-header flags, body size and body.
pub(crate) trait Encode {
    const TYPE: PacketType;

    /// The low nibble of the first byte.
    fn flags(&self) -> u8 {
        Self::TYPE.required_flags().unwrap_or_default()
    }

    /// Checks what the types do not guarantee (Binary Data lengths, version).
    fn check(&self, _version: ProtocolVersion) -> Result<(), EncodeError> {
        Ok(())
    }

    /// The size of the variable header and payload: the Remaining Length.
    fn body_len(&self, version: ProtocolVersion) -> usize;

    /// Writes the variable header and payload; exactly `body_len` bytes.
    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut);
}

/// The size of a whole packet with this body size.
pub(crate) const fn packet_len(body_len: usize) -> usize {
    1 + var_int_len(body_len as u32) + body_len
}

/// Checks and encodes one packet into `dst`; returns the bytes written.
pub(crate) fn encode_packet<P: Encode>(
    packet: &P,
    version: ProtocolVersion,
    dst: &mut BytesMut,
) -> Result<usize, EncodeError> {
    packet.check(version)?;
    let body_len = packet.body_len(version);
    if body_len > MAX_REMAINING_LENGTH as usize {
        return Err(EncodeError::PacketTooLarge {
            size: packet_len(body_len) as u64,
            max: crate::fixed_header::MAX_PACKET_SIZE,
        });
    }
    let total = packet_len(body_len);
    dst.reserve(total);
    dst.put_u8(((P::TYPE as u8) << 4) | packet.flags());
    write_var_int(dst, body_len as u32);
    packet.write_body(version, dst);
    Ok(total)
}

/// Reads a packet identifier that must not be 0.
pub(crate) fn read_packet_id(src: &mut Bytes) -> Result<PacketId, DecodeError> {
    PacketId::new(read_u16(src)?).ok_or(ErrorKind::ZeroPacketId.into())
}

/// PINGREQ and PINGRESP have no body.
struct Empty<const T: u8>;

impl Encode for Empty<12> {
    const TYPE: PacketType = PacketType::PingReq;
    fn body_len(&self, _: ProtocolVersion) -> usize {
        0
    }
    fn write_body(&self, _: ProtocolVersion, _: &mut impl BufMut) {}
}

impl Encode for Empty<13> {
    const TYPE: PacketType = PacketType::PingResp;
    fn body_len(&self, _: ProtocolVersion) -> usize {
        0
    }
    fn write_body(&self, _: ProtocolVersion, _: &mut impl BufMut) {}
}

/// Evaluates `$body` with `$p` bound to the packet inside any variant.
macro_rules! with_packet {
    ($packet:expr, $p:ident => $body:expr) => {
        match $packet {
            Packet::Connect($p) => {
                let $p = &**$p;
                $body
            }
            Packet::ConnAck($p) => {
                let $p = &**$p;
                $body
            }
            Packet::Publish($p) => $body,
            Packet::PubAck($p) => $body,
            Packet::PubRec($p) => $body,
            Packet::PubRel($p) => $body,
            Packet::PubComp($p) => $body,
            Packet::Subscribe($p) => $body,
            Packet::SubAck($p) => $body,
            Packet::Unsubscribe($p) => $body,
            Packet::UnsubAck($p) => $body,
            Packet::Disconnect($p) => $body,
            Packet::Auth($p) => $body,
            Packet::PingReq => {
                let $p = &Empty::<12>;
                $body
            }
            Packet::PingResp => {
                let $p = &Empty::<13>;
                $body
            }
        }
    };
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        fn ty<P: Encode>(_: &P) -> PacketType {
            P::TYPE
        }
        with_packet!(self, p => ty(p))
    }

    /// How many User Properties (5.0) the packet carries; for CONNECT, its will's
    /// included. 0 for a packet without properties.
    pub fn user_property_count(&self) -> usize {
        match self {
            Self::Connect(c) => {
                c.properties.user_properties.len()
                    + c.will
                        .as_ref()
                        .map_or(0, |w| w.properties.user_properties.len())
            }
            Self::ConnAck(c) => c.properties.user_properties.len(),
            Self::Publish(p) => p.properties.user_properties.len(),
            Self::PubAck(a) => a.properties.user_properties.len(),
            Self::PubRec(a) => a.properties.user_properties.len(),
            Self::PubRel(a) => a.properties.user_properties.len(),
            Self::PubComp(a) => a.properties.user_properties.len(),
            Self::Subscribe(s) => s.properties.user_properties.len(),
            Self::SubAck(a) => a.properties.user_properties.len(),
            Self::Unsubscribe(u) => u.properties.user_properties.len(),
            Self::UnsubAck(a) => a.properties.user_properties.len(),
            Self::Disconnect(d) => d.properties.user_properties.len(),
            Self::Auth(a) => a.properties.user_properties.len(),
            Self::PingReq | Self::PingResp => 0,
        }
    }

    /// Decodes one packet from its fixed header and exactly its body (`remaining_length`
    /// bytes). Strings, binary data and the payload share `body`'s buffer.
    ///
    /// CONNECT carries its own version; every other packet is decoded as `version`.
    /// User Properties are not capped here: a [`Decoder`](crate::Decoder) caps them.
    pub fn decode(
        header: &FixedHeader,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        Self::decode_with(header, body, version, UserPropertyCap::NONE, |p| p)
    }

    /// [`Packet::decode`] failing as soon as the packet's User Properties pass `cap`,
    /// handing the packet to `wrap`: a PUBLISH is built straight into `wrap`'s result
    /// instead of being copied through each wrapper.
    #[inline(always)]
    pub(crate) fn decode_with<R>(
        header: &FixedHeader,
        body: Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
        wrap: impl FnOnce(Self) -> R,
    ) -> Result<R, DecodeError> {
        if header.packet_type != PacketType::Publish {
            return Self::decode_other(header, body, version, cap).map(wrap);
        }
        if version.is_v5() && !header.minimal_length {
            return Err(
                DecodeError::new(ErrorKind::NonMinimalVarInt).within(PacketType::Publish, version)
            );
        }
        Publish::decode_with(header.flags, body, version, cap, |p| wrap(Self::Publish(p)))
    }

    /// [`Packet::decode`] for every type but PUBLISH.
    #[inline(never)]
    fn decode_other(
        header: &FixedHeader,
        mut body: Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let ty = header.packet_type;
        let flags = header.flags;
        let version = match ty {
            PacketType::Connect => connect::peek_version(&body).unwrap_or(version),
            _ => version,
        };
        let fail = |e: DecodeError| e.within(ty, version);
        if ty == PacketType::Auth && !version.is_v5() {
            return Err(fail(ErrorKind::AuthNotInVersion.into()));
        }
        if version.is_v5() && !header.minimal_length {
            return Err(fail(ErrorKind::NonMinimalVarInt.into()));
        }
        if let Some(expected) = ty.required_flags() {
            // MQTT 3.1 clients send PUBREL, SUBSCRIBE and UNSUBSCRIBE with QoS and DUP bits
            // of their own choosing; 3.1 did not reserve them, so only 3.1.1 and 5.0 check.
            let lax = version == ProtocolVersion::V3_1 && expected != 0;
            if flags != expected && !lax {
                return Err(fail(
                    ErrorKind::ReservedFlags {
                        found: flags,
                        expected,
                    }
                    .into(),
                ));
            }
        }
        let packet = match ty {
            PacketType::Connect => Connect::decode(&mut body, cap).map(|c| Self::Connect(c.into())),
            PacketType::ConnAck => {
                ConnAck::decode(&mut body, version, cap).map(|c| Self::ConnAck(c.into()))
            }
            // Decoded by `decode_with`, which never comes here with a PUBLISH.
            PacketType::Publish => Publish::decode_with(flags, body, version, cap, Self::Publish),
            PacketType::PubAck => PubAck::decode(&mut body, version, cap).map(Self::PubAck),
            PacketType::PubRec => PubRec::decode(&mut body, version, cap).map(Self::PubRec),
            PacketType::PubRel => PubRel::decode(&mut body, version, cap).map(Self::PubRel),
            PacketType::PubComp => PubComp::decode(&mut body, version, cap).map(Self::PubComp),
            PacketType::Subscribe => {
                Subscribe::decode(&mut body, version, cap).map(Self::Subscribe)
            }
            PacketType::SubAck => SubAck::decode(&mut body, version, cap).map(Self::SubAck),
            PacketType::Unsubscribe => {
                Unsubscribe::decode(&mut body, version, cap).map(Self::Unsubscribe)
            }
            PacketType::UnsubAck => UnsubAck::decode(&mut body, version, cap).map(Self::UnsubAck),
            PacketType::PingReq => expect_end(&body).map(|()| Self::PingReq),
            PacketType::PingResp => expect_end(&body).map(|()| Self::PingResp),
            PacketType::Disconnect => {
                Disconnect::decode(&mut body, version, cap).map(Self::Disconnect)
            }
            PacketType::Auth => Auth::decode(&mut body, cap).map(Self::Auth),
        };
        packet.map_err(fail)
    }

    /// The size of the whole encoded packet, fixed header included: the figure to
    /// compare with the peer's Maximum Packet Size.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        with_packet!(self, p => packet_len(Encode::body_len(p, version)))
    }

    /// Encodes the packet into `dst` and returns the number of bytes written.
    ///
    /// CONNECT is encoded in its own version, whatever `version` says. Every check runs
    /// before anything is written, so on error `dst` is unchanged.
    pub fn encode(
        &self,
        version: ProtocolVersion,
        dst: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        if let Self::Auth(_) = self {
            if !version.is_v5() {
                return Err(EncodeError::NotInVersion {
                    packet: PacketType::Auth,
                    version,
                });
            }
        }
        with_packet!(self, p => encode_packet(p, version, dst))
    }

    /// Makes the packet fit in `max_size` bytes the way MQTT 5.0 allows: drop the Reason
    /// String, then the User Properties ([MQTT-3.2.2-19], [MQTT-3.2.2-20], [MQTT-3.4.2-2],
    /// [MQTT-3.4.2-3] and their equivalents for the other acknowledgements, DISCONNECT
    /// and AUTH). CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE are never altered: a
    /// PUBLISH that does not fit must be dropped instead ([MQTT-3.1.2-25]).
    ///
    /// Returns an error, leaving the packet trimmed, when it still does not fit.
    pub fn fit_to_size(
        &mut self,
        version: ProtocolVersion,
        max_size: u32,
    ) -> Result<(), EncodeError> {
        let fits = |p: &Self| p.encoded_len(version) as u64 <= u64::from(max_size);
        if !fits(self) {
            if let Some((reason_string, _)) = self.diagnostics_mut() {
                *reason_string = None;
            }
        }
        if !fits(self) {
            if let Some((_, user_properties)) = self.diagnostics_mut() {
                user_properties.clear();
            }
        }
        if fits(self) {
            Ok(())
        } else {
            Err(EncodeError::PacketTooLarge {
                size: self.encoded_len(version) as u64,
                max: max_size,
            })
        }
    }

    fn diagnostics_mut(&mut self) -> Option<(&mut Option<ByteStr>, &mut UserProperties)> {
        let (reason, user) = match self {
            Self::ConnAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRec(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRel(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubComp(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::SubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::UnsubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Disconnect(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Auth(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            _ => return None,
        };
        Some((reason, user))
    }
}

macro_rules! from_packet {
    ($($variant:ident($ty:ty) $(boxed $boxed:tt)?),*) => {$(
        impl From<$ty> for Packet {
            fn from(p: $ty) -> Self {
                Self::$variant(from_packet!(@wrap p $($boxed)?))
            }
        }
    )*};
    (@wrap $p:ident) => { $p };
    (@wrap $p:ident $b:tt) => { alloc::boxed::Box::new($p) };
}

from_packet!(
    Connect(Connect) boxed x, ConnAck(ConnAck) boxed x, Publish(Publish), PubAck(PubAck),
    PubRec(PubRec), PubRel(PubRel), PubComp(PubComp), Subscribe(Subscribe), SubAck(SubAck),
    Unsubscribe(Unsubscribe), UnsubAck(UnsubAck), Disconnect(Disconnect), Auth(Auth)
);
