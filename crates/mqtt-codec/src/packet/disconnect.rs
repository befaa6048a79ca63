//! DISCONNECT (section 3.14).

use bytes::{BufMut, Bytes};

use super::Encode;
use crate::{
    DisconnectProperties, PacketType, ProtocolVersion, ReasonCode,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{expect_end, read_u8},
    user_properties::UserPropertyCap,
};

/// The end of a connection. In 3.1 and 3.1.1 only the client sends it and it has no
/// body; in 5.0 either side sends it, with a reason code and properties.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why (5.0); `NormalDisconnection` on 3.1 and 3.1.1.
    pub reason_code: ReasonCode,
    /// Properties (5.0).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        src: &mut Bytes,
        version: ProtocolVersion,
        cap: UserPropertyCap,
    ) -> Result<Self, DecodeError> {
        if !version.is_v5() || src.is_empty() {
            // 5.0: "The Reason Code and Property Length can be omitted if the Reason Code
            // is 0x00 (Normal disconnecton) and there are no Properties."
            expect_end(src)?;
            return Ok(Self::default());
        }
        let code = read_u8(src)?;
        if !ReasonCode(code).is_valid_for(PacketType::Disconnect) {
            return Err(ErrorKind::InvalidReasonCode(code).into());
        }
        let properties = if src.is_empty() {
            DisconnectProperties::default()
        } else {
            DisconnectProperties::decode(src, cap)?
        };
        expect_end(src)?;
        Ok(Self {
            reason_code: ReasonCode(code),
            properties,
        })
    }
}

impl Encode for Disconnect {
    const TYPE: PacketType = PacketType::Disconnect;

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() {
            self.properties.check()
        } else {
            Ok(())
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        if !version.is_v5() {
            return 0;
        }
        // Only the all-default DISCONNECT is shortened. A reason code is always followed
        // by its Property Length: the one-byte form is legal, but some clients (rumqttc
        // 0.24) cannot read it, and two bytes cost one more.
        if self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty() {
            0
        } else {
            1 + self.properties.wire_len()
        }
    }

    fn write_body(&self, version: ProtocolVersion, dst: &mut impl BufMut) {
        if self.body_len(version) > 0 {
            dst.put_u8(self.reason_code.0);
            self.properties.encode(dst);
        }
    }
}
