//! CONNECT (section 3.1).

use bytes::{BufMut, Bytes};

use super::Encode;
use crate::{
    ByteStr, ConnectProperties, PacketType, ProtocolVersion, QoS, WillProperties,
    error::{DecodeError, EncodeError, ErrorKind},
    primitives::{
        binary_len, check_binary, expect_end, read_binary, read_str, read_u8, read_u16,
        write_binary, write_str,
    },
    topic::validate_topic_name,
    user_properties::UserPropertyCap,
};

/// A client's request to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version; it decides how every later packet on the connection is encoded.
    pub version: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1, 3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// The Client Identifier. May be empty (the server then assigns one, where allowed).
    pub client_id: ByteStr,
    /// The Will Message, if the Will Flag is set.
    pub will: Option<Will>,
    /// The User Name, if the User Name Flag is set.
    pub username: Option<ByteStr>,
    /// The Password, if the Password Flag is set. 3.1 and 3.1.1 allow it only with a
    /// user name ([MQTT-3.1.2-22]); 5.0 allows it alone.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: ConnectProperties,
}

/// The Will Message of a CONNECT: published by the server if the connection ends
/// without a normal DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// The will topic, a topic name.
    pub topic: ByteStr,
    /// The will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: WillProperties,
}

const CLEAN_START: u8 = 0b0000_0010;
const WILL: u8 = 0b0000_0100;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0b0010_0000;
const PASSWORD: u8 = 0b0100_0000;
const USERNAME: u8 = 0b1000_0000;

impl Connect {
    /// A CONNECT with the given version and client identifier, a clean start, a
    /// 60-second keep-alive and nothing else.
    pub fn new(version: ProtocolVersion, client_id: ByteStr) -> Self {
        Self {
            version,
            clean_start: true,
            keep_alive: 60,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    pub(crate) fn decode(src: &mut Bytes, cap: UserPropertyCap) -> Result<Self, DecodeError> {
        let name = read_binary(src)?;
        let level = read_u8(src)?;
        let version = ProtocolVersion::from_name_and_level(&name, level).ok_or_else(|| {
            if &name[..] == b"MQTT" || &name[..] == b"MQIsdp" {
                ErrorKind::UnsupportedProtocolLevel(level)
            } else {
                ErrorKind::InvalidProtocolName
            }
        })?;
        let fail =
            |kind: ErrorKind| Err(DecodeError::new(kind).within(PacketType::Connect, version));

        let flags = read_u8(src)?;
        if flags & 1 != 0 {
            return fail(ErrorKind::ConnectReservedFlag);
        }
        let has_will = flags & WILL != 0;
        let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
        let Some(will_qos) = QoS::from_u8(will_qos_bits) else {
            return fail(ErrorKind::WillQos3);
        };
        let will_retain = flags & WILL_RETAIN != 0;
        if !has_will && will_qos_bits != 0 {
            return fail(ErrorKind::WillQosWithoutWill);
        }
        if !has_will && will_retain {
            return fail(ErrorKind::WillRetainWithoutWill);
        }
        if !version.is_v5() && flags & PASSWORD != 0 && flags & USERNAME == 0 {
            return fail(ErrorKind::PasswordWithoutUsername);
        }
        let keep_alive = read_u16(src)?;

        let properties = if version.is_v5() {
            let props = ConnectProperties::decode(src, cap)?;
            if props.authentication_data.is_some() && props.authentication_method.is_none() {
                return fail(ErrorKind::AuthDataWithoutMethod);
            }
            props
        } else {
            ConnectProperties::default()
        };

        let client_id = read_str(src)?;
        // The will's User Properties count with the CONNECT's.
        let will_cap = cap.after(properties.user_properties.len());
        let will = if has_will {
            let properties = if version.is_v5() {
                let props = WillProperties::decode(src, will_cap)?;
                if let Some(topic) = &props.response_topic {
                    if validate_topic_name(topic).is_err() {
                        return fail(ErrorKind::InvalidResponseTopic);
                    }
                }
                props
            } else {
                WillProperties::default()
            };
            let topic = read_str(src)?;
            validate_topic_name(&topic).map_err(DecodeError::new)?;
            let payload = read_binary(src)?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if flags & USERNAME != 0 {
            Some(read_str(src)?)
        } else {
            None
        };
        let password = if flags & PASSWORD != 0 {
            Some(read_binary(src)?)
        } else {
            None
        };
        expect_end(src)?;
        Ok(Self {
            version,
            clean_start: flags & CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        flags
    }
}

/// The version a CONNECT body announces, if it can be read; used to number the rules
/// in errors found before the whole packet is read.
pub(super) fn peek_version(body: &Bytes) -> Option<ProtocolVersion> {
    let mut src = body.clone();
    let name = read_binary(&mut src).ok()?;
    let level = read_u8(&mut src).ok()?;
    ProtocolVersion::from_name_and_level(&name, level)
}

impl Encode for Connect {
    const TYPE: PacketType = PacketType::Connect;

    fn check(&self, _: ProtocolVersion) -> Result<(), EncodeError> {
        if let Some(password) = &self.password {
            check_binary(password)?;
            if !self.version.is_v5() && self.username.is_none() {
                return Err(EncodeError::Invalid(ErrorKind::PasswordWithoutUsername));
            }
        }
        if let Some(will) = &self.will {
            check_binary(&will.payload)?;
            validate_topic_name(&will.topic).map_err(EncodeError::Invalid)?;
            if self.version.is_v5() {
                will.properties.check()?;
            }
        }
        if self.version.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, _: ProtocolVersion) -> usize {
        let v5 = self.version.is_v5();
        let mut len = 2 + self.version.protocol_name().len() + 1 + 1 + 2;
        if v5 {
            len += self.properties.wire_len();
        }
        len += self.client_id.encoded_len();
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.wire_len();
            }
            len += will.topic.encoded_len() + binary_len(&will.payload);
        }
        len += self.username.as_ref().map_or(0, ByteStr::encoded_len);
        len += self.password.as_ref().map_or(0, |p| binary_len(p));
        len
    }

    fn write_body(&self, _: ProtocolVersion, dst: &mut impl BufMut) {
        let v5 = self.version.is_v5();
        write_binary(dst, self.version.protocol_name().as_bytes());
        dst.put_u8(self.version.level());
        dst.put_u8(self.flags());
        dst.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(dst);
        }
        write_str(dst, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(dst);
            }
            write_str(dst, &will.topic);
            write_binary(dst, &will.payload);
        }
        if let Some(username) = &self.username {
            write_str(dst, username);
        }
        if let Some(password) = &self.password {
            write_binary(dst, password);
        }
    }
}
