//! AUTH (section 3.15), MQTT 5.0 only.

use bytes::{BufMut, Bytes};

use super::Encode;
use crate::{
    AuthProperties, PacketType, ProtocolVersion, ReasonCode,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_u8},
};

/// A step of enhanced authentication.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success (0x00), Continue authentication (0x18) or Re-authenticate (0x19).
    pub reason_code: ReasonCode,
    /// Properties: the method, its data, diagnostics.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(src: &mut Bytes) -> Result<Self, DecodeError> {
        if src.is_empty() {
            // "The Reason Code and Property Length can be omitted if the Reason Code is
            // 0x00 (Success) and there are no Properties."
            return Ok(Self::default());
        }
        let code = read_u8(src)?;
        if !ReasonCode(code).is_valid_for(PacketType::Auth) {
            return Err(ErrorKind::InvalidReasonCode(code).into());
        }
        let properties = if src.is_empty() {
            AuthProperties::default()
        } else {
            AuthProperties::decode(src)?
        };
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(ErrorKind::AuthDataWithoutMethod.into());
        }
        expect_end(src)?;
        Ok(Self {
            reason_code: ReasonCode(code),
            properties,
        })
    }
}

impl Encode for Auth {
    const TYPE: PacketType = PacketType::Auth;

    fn check(&self, _: ProtocolVersion) -> Result<(), EncodeError> {
        self.properties.check()
    }

    fn body_len(&self, _: ProtocolVersion) -> usize {
        match (
            self.reason_code == ReasonCode::SUCCESS,
            self.properties.is_empty(),
        ) {
            (true, true) => 0,
            (false, true) => 1,
            _ => 1 + self.properties.wire_len(),
        }
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        match self.body_len(version) {
            0 => {}
            1 => dst.put_u8(self.reason_code.0),
            _ => {
                dst.put_u8(self.reason_code.0);
                self.properties.encode(dst);
            }
        }
    }
}
