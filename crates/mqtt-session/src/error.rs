//! Why a session closes the connection.

use core::fmt;

use mqtt_codec::{DecodeError, ReasonCode};

/// The peer broke a rule: close the connection, with `reason` in a DISCONNECT (5.0) or
/// CONNACK (before the connection is accepted) where the version has reason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The reason code to close with.
    pub reason: ReasonCode,
    /// The normative statement broken, when the spec numbers it (`"MQTT-4.9.0-2"`).
    pub rule: Option<&'static str>,
    /// What happened, for logs.
    pub what: &'static str,
}

impl ProtocolError {
    pub(crate) const fn new(
        reason: ReasonCode,
        rule: Option<&'static str>,
        what: &'static str,
    ) -> Self {
        Self { reason, rule, what }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.what, self.reason)?;
        if let Some(rule) = self.rule {
            write!(f, " [{rule}]")?;
        }
        Ok(())
    }
}

impl core::error::Error for ProtocolError {}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        Self {
            reason: e.reason_code(),
            rule: e.rule(),
            what: "undecodable packet",
        }
    }
}
