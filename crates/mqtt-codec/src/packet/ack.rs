//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7): a packet identifier, and in
//! 5.0 a reason code and properties, each of which may be left off when it has its
//! default value.

use bytes::{BufMut, Bytes};

use super::{Encode, PacketId, read_packet_id};
use crate::{
    AckProperties, PacketType, ProtocolVersion, ReasonCode,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_u8},
    user_properties::UserPropertyCap,
};

macro_rules! ack_packet {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            /// The packet identifier of the exchange.
            pub packet_id: PacketId,
            /// The result (5.0); `Success` on 3.1 and 3.1.1.
            pub reason_code: ReasonCode,
            /// Properties (5.0).
            pub properties: AckProperties,
        }

        impl $name {
            /// A successful acknowledgement of `packet_id`.
            pub fn new(packet_id: PacketId) -> Self {
                Self { packet_id, reason_code: ReasonCode::SUCCESS, properties: AckProperties::default() }
            }

            pub(crate) fn decode(
                src: &mut Bytes,
                version: ProtocolVersion,
                cap: UserPropertyCap,
            ) -> Result<Self, DecodeError> {
                let (packet_id, reason_code, properties) = decode_ack(src, version, cap, PacketType::$ty)?;
                Ok(Self { packet_id, reason_code, properties })
            }
        }

        impl Encode for $name {
            const TYPE: PacketType = PacketType::$ty;

            fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
                if version.is_v5() { self.properties.check() } else { Ok(()) }
            }

            fn body_len(&self, version: ProtocolVersion) -> usize {
                ack_body_len(version, self.reason_code, &self.properties)
            }

            fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
                write_ack(dst, version, self.packet_id, self.reason_code, &self.properties);
            }
        }
    };
}

ack_packet!(
    /// PUBACK: the receiver's acknowledgement of a QoS 1 PUBLISH.
    PubAck, PubAck
);
ack_packet!(
    /// PUBREC: the receiver's answer to a QoS 2 PUBLISH (step 1 of 3).
    PubRec, PubRec
);
ack_packet!(
    /// PUBREL: the sender's answer to PUBREC (step 2 of 3).
    PubRel, PubRel
);
ack_packet!(
    /// PUBCOMP: the receiver's answer to PUBREL (step 3 of 3).
    PubComp, PubComp
);

fn decode_ack(
    src: &mut Bytes,
    version: ProtocolVersion,
    cap: UserPropertyCap,
    ty: PacketType,
) -> Result<(PacketId, ReasonCode, AckProperties), DecodeError> {
    let packet_id = read_packet_id(src)?;
    if !version.is_v5() || src.is_empty() {
        // 5.0: "The Reason Code and Property Length can be omitted if the Reason Code is
        // 0x00 (Success) and there are no Properties."
        expect_end(src)?;
        return Ok((packet_id, ReasonCode::SUCCESS, AckProperties::default()));
    }
    let code = read_u8(src)?;
    let reason_code = ReasonCode(code);
    if !reason_code.is_valid_for(ty) {
        return Err(ErrorKind::InvalidReasonCode(code).into());
    }
    // "If the Remaining Length is less than 4 there is no Property Length and the value
    // of 0 is used."
    let properties = if src.is_empty() {
        AckProperties::default()
    } else {
        AckProperties::decode(src, cap)?
    };
    expect_end(src)?;
    Ok((packet_id, reason_code, properties))
}

fn ack_body_len(version: ProtocolVersion, code: ReasonCode, props: &AckProperties) -> usize {
    if !version.is_v5() {
        return 2;
    }
    let props_len = props.encoded_len();
    match (code == ReasonCode::SUCCESS, props_len) {
        (true, 0) => 2,
        (false, 0) => 3,
        _ => 3 + props.wire_len(),
    }
}

fn write_ack(
    dst: &mut impl BufMut,
    version: ProtocolVersion,
    packet_id: PacketId,
    code: ReasonCode,
    props: &AckProperties,
) {
    dst.put_u16(packet_id.get());
    match ack_body_len(version, code, props) {
        2 => {}
        3 => dst.put_u8(code.0),
        _ => {
            dst.put_u8(code.0);
            props.encode(dst);
        }
    }
}
