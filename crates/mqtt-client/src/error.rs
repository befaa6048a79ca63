//! Errors, with messages a person understands.

use std::{io, time::Duration};

use mqtt_codec::ReasonCode;
use mqtt_session::{DropReason, Message};

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The broker URL could not be understood.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An option has a value that cannot be used (a client identifier that is not a
    /// valid MQTT string, a will topic with wildcards, ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The TLS configuration could not be built (unreadable CA file, bad key, ...).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The network connection (TCP, TLS or WebSocket) could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// `host:port` that was tried.
        addr: String,
        /// What the operating system, TLS or WebSocket layer said.
        #[source]
        source: io::Error,
    },
    /// The server answered CONNECT with an error code.
    #[error("connection refused: {}{}", refusal_text(*reason), reason_string.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Refused {
        /// The CONNACK reason code (3.1/3.1.1 return codes are mapped to their 5.0 equivalents).
        reason: ReasonCode,
        /// The server's Reason String (5.0), if it sent one.
        reason_string: Option<String>,
    },
    /// Enhanced authentication (5.0) failed on our side: the
    /// [`crate::Authenticator`] rejected a challenge or the server's final data. (A
    /// server that refuses sends CONNACK with a reason: [`ConnectError::Refused`].)
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server did not answer in time.
    #[error("timed out after {0:?} waiting for the server")]
    Timeout(Duration),
    /// The connection closed before the server answered CONNECT.
    #[error("the server closed the connection before accepting it ({0})")]
    Closed(String),
}

/// The text for a CONNACK refusal, in the words mosquitto's tools use where they have one.
pub fn refusal_text(code: ReasonCode) -> String {
    match code {
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "unacceptable protocol version".into(),
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "identifier rejected".into(),
        ReasonCode::SERVER_UNAVAILABLE => "broker unavailable".into(),
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => "bad user name or password".into(),
        ReasonCode::NOT_AUTHORIZED => "not authorised".into(),
        other => match other.description() {
            Some(d) => d.to_lowercase(),
            None => format!("reason code {:#04x}", other.0),
        },
    }
}

/// Why a request ([`crate::Client::publish`], [`crate::Client::subscribe`], ...) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client has shut down (after `disconnect`, a refused reconnect with
    /// reconnection turned off, or a dropped driver).
    #[error("the client is closed")]
    Closed,
    /// The server refused the message (a PUBACK or PUBREC with an error code, 5.0).
    #[error("the server refused the message: {0}")]
    Rejected(ReasonCode),
    /// The session gave up on the message.
    #[error("message dropped: {}", drop_text(*.0))]
    Dropped(DropReason),
    /// The server refused a subscription or unsubscription.
    #[error("the server refused the request: {0}")]
    Refused(ReasonCode),
    /// The connection ended before the server answered a SUBSCRIBE or UNSUBSCRIBE.
    #[error("the connection was lost before the server answered")]
    ConnectionLost,
    /// A topic name or filter is not valid MQTT.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Re-authentication (5.0) failed or could not start.
    #[error("re-authentication failed: {0}")]
    Auth(String),
    /// Every packet identifier is in use.
    #[error("too many requests in flight: every packet identifier is in use")]
    NoPacketId,
}

fn drop_text(reason: DropReason) -> &'static str {
    match reason {
        DropReason::QueueFull => "the outgoing queue is full",
        DropReason::Offline => "not connected, and QoS 0 messages are not queued while offline",
        DropReason::Expired => "its message expiry interval passed",
        DropReason::TooLarge => "larger than the server's maximum packet size",
        DropReason::SessionDiscarded => "the session was discarded",
        DropReason::NotAuthorized => "not authorized for the client that resumed the session",
        DropReason::QosNotSupported => "the server does not support its QoS",
        DropReason::RetainNotSupported => "the server does not support retained messages",
        _ => "dropped by the session",
    }
}

/// Why [`crate::Client::try_publish`] could not queue a message; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryPublishError {
    /// The request queue is full: the in-flight window and the queue behind it are used up.
    #[error("the client's request queue is full")]
    Full(Box<Message>),
    /// The client is closed.
    #[error("the client is closed")]
    Closed(Box<Message>),
    /// The message is not valid (its topic).
    #[error(transparent)]
    Invalid(ClientError),
}

impl TryPublishError {
    /// The message that was not queued, if it was valid.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Full(m) | Self::Closed(m) => Some(*m),
            Self::Invalid(_) => None,
        }
    }
}
