//! Who may connect, and what a client may do: the seams authentication and
//! authorization backends plug into.
//!
//! An [`Authenticator`] decides each CONNECT, asynchronously (a backend may hash a
//! password on a blocking thread, or ask a service): it answers with a CONNACK reason
//! code. An [`Authorizer`] decides each PUBLISH and each subscription, synchronously, as
//! it is on the message path. The broker's own rules come first whatever the backends
//! say: `$SYS/` belongs to the broker.
//!
//! Today's backends: [`Anonymous`] (every client is let in) and [`AllowAll`]. A
//! configuration asking for `allow_anonymous = false` has no password backend to check
//! passwords against yet, and is refused at start-up rather than let anyone in who names
//! a user.

use std::{fmt, future::Future, net::SocketAddr, pin::Pin};

use mqtt_codec::ReasonCode;

/// What a CONNECT says about who the client is.
#[derive(Debug)]
#[non_exhaustive]
pub struct Credentials<'a> {
    /// The client identifier (assigned by the broker if the client sent none).
    pub client_id: &'a str,
    /// The User Name, if any.
    pub username: Option<&'a str>,
    /// The Password, if any.
    pub password: Option<&'a [u8]>,
    /// Where the connection comes from: the client's own address, also behind a load
    /// balancer that sends a PROXY protocol header (the listener's `proxy_protocol`).
    pub peer: SocketAddr,
    /// How it reached the broker: the listener, TLS, a verified client certificate.
    pub transport: Transport,
    /// `username` is the client certificate's identity (the listener's
    /// `use_identity_as_username` or `use_subject_as_username`), as Mosquitto does:
    /// the TLS handshake authenticated it, and the CONNECT's own user name and password
    /// were set aside (`password` is `None`).
    pub username_from_certificate: bool,
}

/// How a connection reached the broker: what an [`Authenticator`] may weigh besides the
/// CONNECT (settings of its own per listener, a certificate already checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transport {
    /// The listener's position in `Config::listeners` (0 for the first).
    pub listener: usize,
    /// What carries MQTT on it.
    pub kind: TransportKind,
    /// The client presented a certificate and the TLS handshake verified it (chain to
    /// the listener's CA, dates, revocation lists).
    pub client_certificate: bool,
}

impl Transport {
    /// A connection on listener `listener` of kind `kind`, without a client
    /// certificate.
    pub fn new(listener: usize, kind: TransportKind) -> Self {
        Self {
            listener,
            kind,
            client_certificate: false,
        }
    }
}

/// What carries MQTT on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// MQTT on TCP.
    Tcp,
    /// MQTT on TLS.
    Tls,
    /// MQTT in WebSocket messages on TCP.
    WebSocket,
    /// MQTT in WebSocket messages on TLS.
    WebSocketTls,
}

impl TransportKind {
    /// Whether the connection is encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::WebSocketTls)
    }

    /// Whether MQTT travels in WebSocket messages.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::WebSocket | Self::WebSocketTls)
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::WebSocket => "ws",
            Self::WebSocketTls => "wss",
        })
    }
}

/// The answer of an [`Authenticator`]: `Err` carries the CONNACK reason code to refuse
/// with (for example [`ReasonCode::NOT_AUTHORIZED`] or
/// [`ReasonCode::BAD_USER_NAME_OR_PASSWORD`]; 3.1 and 3.1.1 clients get the matching
/// return code).
pub type AuthResult = Result<(), ReasonCode>;

/// A boxed authentication in progress.
pub type Authenticating<'a> = Pin<Box<dyn Future<Output = AuthResult> + Send + 'a>>;

/// Decides whether a CONNECT is let in.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// Checks `credentials`. May take its time (it runs in the connection's task, so it
    /// delays that connection alone), but must not block the thread: hash passwords on
    /// a blocking thread (`tokio::task::spawn_blocking`).
    fn authenticate<'a>(&'a self, credentials: &'a Credentials<'a>) -> Authenticating<'a>;
}

/// Lets every client in: the default, as `allow_anonymous = true`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Anonymous;

impl Authenticator for Anonymous {
    fn authenticate<'a>(&'a self, _: &'a Credentials<'a>) -> Authenticating<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Decides what a connected client may do. Called on the message path: it must be
/// quick and must not block.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Whether `client_id` may publish to `topic` (a will included). A refused PUBLISH
    /// is answered with 0x87 Not authorized in 5.0 and acknowledged and dropped in 3.x.
    fn may_publish(&self, client_id: &str, topic: &str) -> bool;

    /// Whether `client_id` may subscribe to `filter` (as sent, `$share/` included). A
    /// refused filter is answered with 0x87 in 5.0 and 0x80 in 3.x.
    fn may_subscribe(&self, client_id: &str, filter: &str) -> bool;
}

/// Lets every client publish and subscribe anywhere the broker's own rules allow.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &str, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &str, _: &str) -> bool {
        true
    }
}

/// The backends a broker runs with.
#[derive(Debug)]
pub struct Auth {
    /// Who may connect.
    pub authenticator: Box<dyn Authenticator>,
    /// What they may do.
    pub authorizer: Box<dyn Authorizer>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            authenticator: Box::new(Anonymous),
            authorizer: Box::new(AllowAll),
        }
    }
}
