//! CONNACK (section 3.2).

use bytes::{BufMut, Bytes};

use super::Encode;
use crate::{
    ConnAckProperties, PacketType, ProtocolVersion, ReasonCode,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_u8},
    user_properties::UserPropertyCap,
};

/// The server's answer to CONNECT.
///
/// The reason code is always an MQTT 5.0 code. For 3.1 and 3.1.1 the encoder maps it to
/// the return code of the older versions (see [`ConnAck::v3_return_code`]) and the
/// decoder maps return codes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present: the server resumed a stored session. 3.1 has no such flag:
    /// its CONNACK is encoded with the byte that carries it in later versions set to 0.
    pub session_present: bool,
    /// The result of the connection attempt.
    pub reason_code: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK with `reason_code` and no properties.
    pub fn new(session_present: bool, reason_code: ReasonCode) -> Self {
        Self {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        }
    }

    /// The 3.1/3.1.1 return code for a 5.0 reason code. Codes without an exact
    /// counterpart become 3, "Server unavailable", the closest of the six.
    pub const fn v3_return_code(code: ReasonCode) -> u8 {
        match code {
            ReasonCode::SUCCESS => 0,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::BAD_AUTHENTICATION_METHOD => 4,
            ReasonCode::NOT_AUTHORIZED | ReasonCode::BANNED => 5,
            _ => 3,
        }
    }

    fn from_v3_return_code(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::SUCCESS,
            1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            3 => ReasonCode::SERVER_UNAVAILABLE,
            4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            5 => ReasonCode::NOT_AUTHORIZED,
            _ => return None,
        })
    }

    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        let flags = read_u8(src)?;
        // 3.1 left the whole byte unused; 3.1.1 and 5.0 reserve bits 7-1 ([MQTT-3.2.2-1] in 5.0).
        if version != ProtocolVersion::V3_1 && flags & 0xFE != 0 {
            return Err(ErrorKind::ConnAckReservedFlags.into());
        }
        let code = read_u8(src)?;
        let (reason_code, properties) = if version.is_v5() {
            let reason_code = ReasonCode(code);
            if !reason_code.is_valid_for(PacketType::ConnAck) {
                return Err(ErrorKind::InvalidReasonCode(code).into());
            }
            (reason_code, ConnAckProperties::decode(src, cap)?)
        } else {
            let reason_code =
                Self::from_v3_return_code(code).ok_or(ErrorKind::ReservedReturnCode(code))?;
            (reason_code, ConnAckProperties::default())
        };
        expect_end(src)?;
        Ok(Self {
            // 3.1 has no Session Present: whatever its unused byte holds, nothing is said.
            session_present: version != ProtocolVersion::V3_1 && flags & 1 != 0,
            reason_code,
            properties,
        })
    }
}

impl Encode for ConnAck {
    const TYPE: PacketType = PacketType::ConnAck;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() {
            self.properties.check()
        } else {
            Ok(())
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.wire_len()
        } else {
            0
        }
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        // Session Present exists from 3.1.1 on (its section 3.2.2.2); 3.1 leaves the
        // whole byte unused, so it goes out as 0.
        let session_present = self.session_present && version != ProtocolVersion::V3_1;
        dst.put_u8(u8::from(session_present));
        if version.is_v5() {
            dst.put_u8(self.reason_code.0);
            self.properties.encode(dst);
        } else {
            dst.put_u8(Self::v3_return_code(self.reason_code));
        }
    }
}
