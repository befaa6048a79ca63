//! Who may connect, and what a client may do: the seams authentication and
//! authorization backends plug into, and the backends Mosquitto users bring as files.
//!
//! An [`Authenticator`] decides each CONNECT, asynchronously (a backend may hash a
//! password on a blocking thread, or ask a service): it answers with a CONNACK reason
//! code. An [`Authorizer`] decides each PUBLISH, each subscription and, if it filters
//! deliveries, each message routed to a client, synchronously, as it is on the message
//! path. The broker's own rules come first whatever the backends say: `$SYS/` belongs to
//! the broker.
//!
//! The backends:
//! - [`Anonymous`] (every client is let in) and [`AllowAll`]: the defaults, which cost
//!   nothing per message.
//! - [`PasswordFile`]: Mosquitto's `password_file`, as `mosquitto_passwd` (or
//!   `mqtt-passwd`) writes it, in the hash forms of [`password`].
//! - [`AclFile`]: Mosquitto's `acl_file`.
//! - [`Jwt`]: JWT as the password (`jwt`), the token naming the user.
//! - [`ScramFile`]: SCRAM-SHA-256 credentials (`scram_file`) for MQTT 5.0 enhanced
//!   authentication, an exchange of AUTH packets rather than an [`Authenticator`].
//!
//! [`Auth::from_files`] makes the pair a configuration's `password_file` and `acl_file`
//! name; a listener's own keys override them for that listener (Mosquitto's
//! `per_listener_settings`). A configuration asking for `allow_anonymous = false` with
//! no password file has nothing to check passwords against, and is refused at start-up
//! rather than let anyone in who names a user.
//!
//! Each file backend keeps its data behind an `ArcSwap`, replaced whole by its
//! `reload`: what a reload trigger (SIGHUP, a file watch) will call.

mod acl;
pub(crate) mod failures;
pub mod jwt;
pub mod password;
mod password_file;
mod scram_file;

use std::{fmt, future::Future, net::SocketAddr, path::Path, path::PathBuf, pin::Pin};

use mqtt_codec::ReasonCode;

pub use self::{acl::AclFile, jwt::Jwt, password_file::PasswordFile, scram_file::ScramFile};

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
    /// The listener it came in on: its index in `Config::listeners`.
    pub listener: usize,
    /// How it reached the broker: the listener, TLS, a verified client certificate.
    pub transport: Transport,
    /// `username` is the client certificate's identity (the listener's
    /// `use_identity_as_username` or `use_subject_as_username`), as Mosquitto does:
    /// the TLS handshake authenticated it, and the CONNECT's own user name and password
    /// were set aside (`password` is `None`).
    pub username_from_certificate: bool,
}

impl<'a> Credentials<'a> {
    /// The credentials of a CONNECT on the first listener.
    pub fn new(
        client_id: &'a str,
        username: Option<&'a str>,
        password: Option<&'a [u8]>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            client_id,
            username,
            password,
            peer,
            listener: 0,
            transport: Transport::new(0, TransportKind::Tcp),
            username_from_certificate: false,
        }
    }
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

/// Who a connected client is, as an [`Authorizer`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo<'a> {
    /// Its client identifier.
    pub client_id: &'a str,
    /// The user name it connected with, if any.
    pub username: Option<&'a str>,
    /// The listener it connected on: its index in `Config::listeners`.
    pub listener: usize,
}

impl<'a> ClientInfo<'a> {
    /// A client on the first listener.
    pub fn new(client_id: &'a str, username: Option<&'a str>) -> Self {
        Self {
            client_id,
            username,
            listener: 0,
        }
    }

    /// The same client on listener `listener`.
    pub fn on_listener(self, listener: usize) -> Self {
        Self { listener, ..self }
    }
}

/// Decides what a connected client may do. Called on the message path: it must be
/// quick and must not block.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Whether `client` may publish to `topic` (a will included, when its CONNECT
    /// comes). A refused PUBLISH is answered with 0x87 Not authorized in 5.0 and
    /// acknowledged and dropped in 3.x; a refused will refuses the CONNECT (0x87; 3.x:
    /// 5).
    fn may_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool;

    /// Whether `client` may subscribe to `filter` (as sent, `$share/` included). A
    /// refused filter is answered with 0x87 in 5.0 and 0x80 in 3.x.
    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool;

    /// Whether a message on `topic` may be delivered to `client` (a retained one
    /// included): asked for each message routed to each of its subscriptions, only if
    /// [`Authorizer::filters_delivery`] says so. A message refused is not sent to that
    /// client, silently.
    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }

    /// Whether [`Authorizer::may_receive`] can refuse anything: asked once, when the
    /// broker starts. `false` (the default) spares every delivery the call.
    fn filters_delivery(&self) -> bool {
        false
    }
}

/// Lets every client publish and subscribe anywhere the broker's own rules allow.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &ClientInfo<'_>, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &ClientInfo<'_>, _: &str) -> bool {
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

impl Auth {
    /// The backends files name, as `[auth]` and each listener's keys do: a
    /// [`PasswordFile`] (else [`Anonymous`]) and an [`AclFile`] (else [`AllowAll`]).
    /// Reads the files: blocking, call it at start-up or on a blocking thread.
    ///
    /// # Errors
    /// The first file that cannot be read or has a malformed line.
    pub fn from_files(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
    ) -> Result<Self, AuthFileError> {
        Ok(Self {
            authenticator: match password_file {
                Some(path) => Box::new(PasswordFile::load(path)?),
                None => Box::new(Anonymous),
            },
            authorizer: match acl_file {
                Some(path) => Box::new(AclFile::load(path)?),
                None => Box::new(AllowAll),
            },
        })
    }
}

/// A listener's own backends, from its `password_file` and `acl_file` (`None`: the
/// broker's).
pub(crate) type ListenerBackends = (Option<Box<dyn Authenticator>>, Option<Box<dyn Authorizer>>);

/// What a listener's own keys change of the broker's backends (Mosquitto's
/// `per_listener_settings`): each `None` is the broker's.
#[derive(Debug, Default)]
pub(crate) struct ListenerAuth {
    /// Whether clients without a user name may connect on it.
    pub(crate) allow_anonymous: bool,
    /// Its `password_file`.
    pub(crate) authenticator: Option<Box<dyn Authenticator>>,
    /// Its `acl_file`.
    pub(crate) authorizer: Option<Box<dyn Authorizer>>,
    /// Its `jwt`, or `auth`'s: the password is a token, which names the user.
    pub(crate) jwt: Option<std::sync::Arc<Jwt>>,
}

/// A password or ACL file that cannot be used: which file, which line (none if the
/// file could not be read), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFileError {
    path: PathBuf,
    line: Option<usize>,
    reason: String,
}

impl AuthFileError {
    pub(crate) fn new(path: &Path, reason: String) -> Self {
        Self {
            path: path.to_owned(),
            line: None,
            reason,
        }
    }

    pub(crate) fn at(path: &Path, line: usize, reason: String) -> Self {
        Self {
            path: path.to_owned(),
            line: Some(line),
            reason,
        }
    }

    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        Self::new(path, e.to_string())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line (from 1), if the file was read.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for AuthFileError {}

/// A shared authenticator: the broker keeps one handle to read its files again on a
/// reload while connections use the other.
impl<T: Authenticator + ?Sized> Authenticator for std::sync::Arc<T> {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials<'a>) -> Authenticating<'a> {
        (**self).authenticate(credentials)
    }
}

/// A shared authorizer, as for [`Authenticator`].
impl<T: Authorizer + ?Sized> Authorizer for std::sync::Arc<T> {
    fn may_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        (**self).may_publish(client, topic)
    }

    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        (**self).may_subscribe(client, filter)
    }

    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        (**self).may_receive(client, topic)
    }

    fn filters_delivery(&self) -> bool {
        (**self).filters_delivery()
    }
}
