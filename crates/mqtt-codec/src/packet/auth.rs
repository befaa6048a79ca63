//! AUTH (section 3.15), MQTT 5.0 only.

use bytes::{BufMut, Bytes};

use super::Encode;
use crate::{
    AuthProperties, PacketType, ProtocolVersion, ReasonCode,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_u8},
    user_properties::UserPropertyCap,
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
    /// The all-default AUTH (Success, no properties), which encodes with no body.
    fn is_empty(&self) -> bool {
        self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty()
    }

    pub(crate) fn decode(src: &mut Bytes, cap: UserPropertyCap) -> Result<Self, DecodeError> {
        if src.is_empty() {
            // "The Reason Code and Property Length can be omitted if the Reason Code is
            // 0x00 (Success) and there are no Properties."
            return Ok(Self::default());
        }
        let code = read_u8(src)?;
        if !ReasonCode(code).is_valid_for(PacketType::Auth) {
            return Err(ErrorKind::InvalidReasonCode(code).into());
        }
        // Only the all-default AUTH may leave out the Property Length (3.15.2.1).
        let properties = AuthProperties::decode(src, cap)?;
        // 3.15.2.2.2: "It is a Protocol Error to omit the Authentication Method".
        if properties.authentication_method.is_none() {
            return Err(if properties.authentication_data.is_some() {
                ErrorKind::AuthDataWithoutMethod
            } else {
                ErrorKind::AuthWithoutMethod
            }
            .into());
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
        if !self.is_empty() && self.properties.authentication_method.is_none() {
            return Err(EncodeError::Invalid(ErrorKind::AuthWithoutMethod));
        }
        self.properties.check()
    }

    fn body_len(&self, _: ProtocolVersion) -> usize {
        if self.is_empty() {
            0
        } else {
            1 + self.properties.wire_len()
        }
    }

    fn write_body(&self, _: ProtocolVersion, dst: &mut impl BufMut) {
        if !self.is_empty() {
            dst.put_u8(self.reason_code.0);
            self.properties.encode(dst);
        }
    }
}
