//! Broker configuration: a TOML file, every key optional, unknown keys refused.
//!
//! Every option, with its default, is documented in `docs/configuration.md`. An invalid
//! file is refused at start-up with a message naming the file, line, column and key.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to accept connections. Default: `127.0.0.1:1883` and `[::1]:1883`, loopback
    /// only (as Mosquitto 2.0 without a configuration file).
    pub listeners: Vec<Listener>,
    /// Limits on clients and what they may make the broker hold.
    pub limits: LimitsConfig,
    /// Retained messages.
    pub retain: RetainConfig,
    /// `$SYS/broker/...` statistics.
    pub sys: SysConfig,
    /// Who may connect.
    pub auth: AuthConfig,
    /// The log: level, format, destinations (see [`crate::logging`]).
    pub log: crate::logging::LogConfig,
    /// The process: its pid file.
    pub process: ProcessConfig,
    /// The HTTP listener: metrics, the admin API, the dashboard (see [`crate::http`]).
    pub http: crate::http::HttpConfig,
    /// What outlives the process, and when it is on disk (`docs/durability.md`).
    pub persistence: PersistenceConfig,
}

/// `[persistence]`: where retained messages and persistent sessions are kept, and what
/// an acknowledgement promises (see `docs/durability.md`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// `memory` (the default: nothing outlives the process), `sync` (recommended for
    /// persistent sessions: a message that must be kept is on disk before its PUBACK /
    /// PUBREC) or `batch` (written every `batch_ms`; acknowledged at once).
    pub mode: PersistenceMode,
    /// The store's file (redb). Default: `mqtt-broker.redb` in the working directory.
    pub path: PathBuf,
    /// `batch` mode: milliseconds between commits, at most this much acknowledged data
    /// lost by a crash. Default 100.
    pub batch_ms: u64,
    /// Per persistent session (with `sync` or `batch`), the most bytes of messages it
    /// holds in memory and on disk together: beyond its in-memory window
    /// (`limits.max_queued_messages`, `limits.max_queued_bytes`) its backlog is kept on
    /// disk only, up to this; past it the overflow policy applies. Default 64 MiB.
    pub max_queued_bytes: usize,
}

/// How durable the broker's state is (`[persistence] mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceMode {
    /// Nothing outlives the process.
    #[default]
    Memory,
    /// Acknowledgements of messages that must be kept wait for their commit (fsync).
    Sync,
    /// Commits every `batch_ms`; acknowledgements do not wait.
    Batch,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            mode: PersistenceMode::Memory,
            path: PathBuf::from("mqtt-broker.redb"),
            batch_ms: 100,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[process]`: what a service manager wants to know of the broker's process.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// A file the broker writes its pid to at start, and removes at exit (Mosquitto's
    /// `pid_file`). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
}

/// One listener: an address, a transport (TCP, TLS, WebSocket, WebSocket over TLS) and
/// its own settings. Build one with [`Listener::new`] (plain TCP) and set what differs.
///
/// TLS is on when `certfile` is set, as in Mosquitto; the keys carry Mosquitto's names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The address to bind, e.g. `"0.0.0.0:1883"` or `"[::1]:1884"` (Mosquitto's
    /// `listener PORT ADDRESS`).
    pub bind: SocketAddr,
    /// Whether clients without a user name may connect here; `None`: `auth`'s.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// The password file for clients of this listener; `None`: `auth`'s.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The ACL file for clients of this listener; `None`: `auth`'s.
    #[serde(default)]
    pub acl_file: Option<PathBuf>,
    /// SCRAM-SHA-256 credentials for MQTT 5.0 enhanced authentication on this listener
    /// (`mqtt-passwd --scram` writes them); `None`: `auth`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_file: Option<PathBuf>,
    /// MQTT directly on the stream, or inside WebSocket (Mosquitto's `protocol`).
    #[serde(default)]
    pub protocol: Protocol,
    /// The HTTP path a WebSocket client must ask for; `None`: `/mqtt`. Only with
    /// `protocol = "websockets"`.
    #[serde(default)]
    pub websocket_path: Option<String>,
    /// Connections this listener has open at once, CONNECT sent or not; past it a new
    /// socket is closed at once (Mosquitto's per-listener `max_connections`). `None`:
    /// only `limits.max_connections` applies.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer, which gives the client's real address; one without a valid header is
    /// closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The server's certificate chain (PEM, leaf first); setting it turns TLS on.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#1, PKCS#8 or SEC1).
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// A directory of CA certificates (PEM files), as `cafile`.
    #[serde(default)]
    pub capath: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates.
    #[serde(default)]
    pub crlfile: Option<PathBuf>,
    /// Whether clients present a certificate: not asked (`false`), verified if
    /// presented (`"optional"`), or required (`true`).
    #[serde(default)]
    pub require_certificate: ClientCertificates,
    /// The client certificate's subject Common Name is the user name (the CONNECT's
    /// user name and password are ignored).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// The client certificate's whole subject (RFC 4514, as
    /// `CN=client,O=Example,C=GB`) is the user name.
    #[serde(default)]
    pub use_subject_as_username: bool,
    /// The oldest TLS version accepted; `None`: TLS 1.2 (1.2 and 1.3).
    #[serde(default)]
    pub tls_version: Option<TlsVersion>,
    /// JWT as the password for clients of this listener; `None`: `auth`'s (unless this
    /// listener has a `password_file` of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// With `use_identity_as_username`: the certificate's first Subject Alternative
    /// Name of these kinds is the user name, rather than its Common Name (see
    /// [`SanKind`]). Empty (the default): the Common Name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub use_san_as_username: Vec<SanKind>,
}

impl Listener {
    /// A plain TCP listener on `bind` with every other setting at its default.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            protocol: Protocol::Mqtt,
            websocket_path: None,
            max_connections: None,
            proxy_protocol: false,
            certfile: None,
            keyfile: None,
            cafile: None,
            capath: None,
            crlfile: None,
            require_certificate: ClientCertificates::None,
            use_identity_as_username: false,
            use_subject_as_username: false,
            tls_version: None,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            jwt: None,
            use_san_as_username: Vec::new(),
            scram_file: None,
        }
    }

    /// Plain TCP on `127.0.0.1:port` and `[::1]:port`: the default listeners (port
    /// 1883), reachable from this machine only.
    pub fn loopback(port: u16) -> Vec<Self> {
        vec![
            Self::new(SocketAddr::from(([127, 0, 0, 1], port))),
            Self::new(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))),
        ]
    }

    /// Whether it overrides any of `auth`'s settings.
    pub fn overrides_auth(&self) -> bool {
        self.allow_anonymous.is_some()
            || self.password_file.is_some()
            || self.acl_file.is_some()
            || self.jwt.is_some()
    }

    /// Whether it speaks TLS (`certfile` is set).
    pub fn is_tls(&self) -> bool {
        self.certfile.is_some()
    }

    /// The WebSocket path (`websocket_path`, or `/mqtt`).
    pub fn websocket_path(&self) -> &str {
        self.websocket_path.as_deref().unwrap_or("/mqtt")
    }

    /// Whether its clients are authenticated by their certificates rather than by a
    /// password (`use_identity_as_username` or `use_subject_as_username`).
    pub fn certificate_is_username(&self) -> bool {
        self.use_identity_as_username || self.use_subject_as_username
    }

    /// Checks the settings that only make sense together: the key and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let tls = self.is_tls();
        if tls && self.keyfile.is_none() {
            return Err(("keyfile", "needed with certfile (TLS)"));
        }
        if !tls {
            let only_tls = [
                ("keyfile", self.keyfile.is_some()),
                ("cafile", self.cafile.is_some()),
                ("capath", self.capath.is_some()),
                ("crlfile", self.crlfile.is_some()),
                (
                    "require_certificate",
                    self.require_certificate != ClientCertificates::None,
                ),
                ("use_identity_as_username", self.use_identity_as_username),
                ("use_subject_as_username", self.use_subject_as_username),
                ("tls_version", self.tls_version.is_some()),
            ];
            if let Some((key, _)) = only_tls.iter().find(|(_, set)| *set) {
                return Err((key, "only with TLS: set certfile and keyfile too"));
            }
        }
        let has_ca = self.cafile.is_some() || self.capath.is_some();
        if self.require_certificate != ClientCertificates::None && !has_ca {
            return Err((
                "require_certificate",
                "client certificates are verified against cafile or capath: set one",
            ));
        }
        if self.crlfile.is_some() && self.require_certificate == ClientCertificates::None {
            return Err((
                "crlfile",
                "client certificates are not asked for: set require_certificate",
            ));
        }
        if self.use_identity_as_username && self.use_subject_as_username {
            return Err((
                "use_subject_as_username",
                "use_identity_as_username is set too: choose one",
            ));
        }
        if self.certificate_is_username() && self.require_certificate == ClientCertificates::None {
            let key = if self.use_identity_as_username {
                "use_identity_as_username"
            } else {
                "use_subject_as_username"
            };
            return Err((
                key,
                "needs a client certificate: set require_certificate to true or \"optional\"",
            ));
        }
        match &self.websocket_path {
            Some(_) if self.protocol != Protocol::WebSockets => {
                return Err(("websocket_path", "only with protocol = \"websockets\""));
            }
            Some(path) if !path.starts_with('/') => {
                return Err(("websocket_path", "must start with /"));
            }
            _ => {}
        }
        if !self.use_san_as_username.is_empty() && !self.use_identity_as_username {
            return Err((
                "use_san_as_username",
                "picks the name use_identity_as_username takes: set that too",
            ));
        }
        if self.jwt.is_some() && self.password_file.is_some() {
            return Err((
                "jwt",
                "password_file is set too: a listener checks passwords one way, choose one",
            ));
        }
        if let Some(jwt) = &self.jwt {
            jwt.check().map_err(|why| ("jwt", why))?;
        }
        if self.max_connections == Some(0) {
            return Err((
                "max_connections",
                "must be at least 1 (leave it out for no limit but limits.max_connections)",
            ));
        }
        Ok(())
    }
}

/// What a listener speaks inside its byte stream (TCP or TLS).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT packets on the stream: `"mqtt"`.
    #[default]
    Mqtt,
    /// MQTT packets in WebSocket binary messages (RFC 6455, subprotocol `mqtt`):
    /// `"websockets"`.
    WebSockets,
}

/// Whether a TLS listener asks its clients for a certificate (`require_certificate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Not asked for (`false`).
    #[default]
    None,
    /// Asked for and verified if presented; a client without one is let in
    /// (`"optional"`).
    Optional,
    /// Required: a client without a valid one fails the TLS handshake (`true`).
    Required,
}

impl Serialize for ClientCertificates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_bool(false),
            Self::Optional => serializer.serialize_str("optional"),
            Self::Required => serializer.serialize_bool(true),
        }
    }
}

impl<'de> Deserialize<'de> for ClientCertificates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClientCertificates;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"optional\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    ClientCertificates::Required
                } else {
                    ClientCertificates::None
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "optional" => Ok(ClientCertificates::Optional),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The oldest TLS version a listener accepts (`tls_version`, Mosquitto's values).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3: `"tlsv1.2"`.
    #[serde(rename = "tlsv1.2")]
    Tls12,
    /// TLS 1.3 only: `"tlsv1.3"`.
    #[serde(rename = "tlsv1.3")]
    Tls13,
}

/// Limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections open at once; more are refused (CONNACK 0x89 Server busy / 3.x 3).
    pub max_connections: usize,
    /// The largest packet accepted from a client, in bytes (announced in 5.0 CONNACK).
    pub max_packet_size: u32,
    /// QoS 1/2 messages sent to a client before waiting for acknowledgements.
    pub max_inflight: u16,
    /// QoS 2 messages a 5.0 client may have unacknowledged towards the broker.
    pub receive_maximum: u16,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes queued per session.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for disconnected persistent sessions.
    pub queue_qos0_messages: bool,
    /// Topic aliases a 5.0 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// The longest keep-alive a 5.0 client may use, in seconds (0: no cap).
    pub max_keep_alive: u16,
    /// The longest session expiry granted to a 5.0 client, in seconds.
    pub max_session_expiry: u32,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Seconds a write to a client may make no progress (the client reads nothing)
    /// before its connection is closed; keep-alive cannot see this, as the client may
    /// still be sending.
    pub write_timeout: u64,
    /// Seconds of silence before TCP keep-alive probes a connection (0: off). Probes
    /// find half-open connections whose client set MQTT keep-alive 0.
    pub tcp_keepalive: u64,
    /// Sessions the broker keeps, connected or not; a CONNECT that would create one more
    /// is refused (CONNACK 0x97 Quota exceeded; 3.x: 3, server unavailable).
    pub max_sessions: usize,
    /// The longest Client Identifier accepted, in bytes (the protocol allows 65,535); a
    /// longer one is refused (CONNACK 0x85; 3.x: 2, identifier rejected).
    pub max_client_id_len: usize,
    /// Seconds a 3.1 / 3.1.1 persistent session (Clean Session 0) outlives its
    /// connection; 0 for never (Mosquitto's `persistent_client_expiration`). 5.0
    /// clients say it themselves, capped by `max_session_expiry`.
    pub persistent_client_expiration: u32,
    /// Subscriptions one session may hold; new filters beyond it are refused (SUBACK
    /// 0x97 Quota exceeded in 5.0, 0x80 in 3.1.1).
    pub max_subscriptions: usize,
    /// Bytes queued in all sessions together; past it, only sessions with an empty
    /// queue take new messages, so many slow subscribers cannot exhaust memory.
    pub max_queued_bytes_total: usize,
    /// Whether a subscriber fed a sustained stream of small batches (eight in a row,
    /// each within 200 µs of the last write) writes about once per millisecond instead
    /// of once per batch: fewer system calls on both ends, at up to about 1.5 ms of
    /// added latency for that subscriber. `false` writes every batch at once.
    pub coalesce_writes: bool,
}

/// Retained messages.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetainConfig {
    /// Whether retained messages are supported (5.0 Retain Available).
    pub enabled: bool,
    /// The most retained messages kept; a new topic beyond it is not retained.
    pub max_messages: usize,
    /// The most memory retained messages may take, in bytes, each charged its topic,
    /// payload and properties plus about 700 bytes for its entry; a message that would
    /// take the store beyond it is not retained (it is still routed).
    pub max_bytes: usize,
}

/// `$SYS` topics.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between updates; 0 turns `$SYS` off.
    pub interval: u64,
}

/// Authentication and authorization, for every listener that does not say otherwise.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// A Mosquitto password file (`mosquitto_passwd` / `mqtt-passwd`): who may connect
    /// with a user name.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto ACL file: what each client may publish, subscribe to and receive.
    pub acl_file: Option<PathBuf>,
    /// SCRAM-SHA-256 credentials (`user:SCRAM-SHA-256$...` lines, as `mqtt-passwd
    /// --scram` writes them): MQTT 5.0 clients with Authentication Method
    /// `SCRAM-SHA-256` authenticate against it. Without one, that method gets CONNACK
    /// 0x8C (Bad authentication method).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scram_file: Option<PathBuf>,
    /// Whether a client may connect with an empty Client Identifier (and be assigned
    /// one; 3.1.1 with Clean Session only, 5.0); Mosquitto's
    /// `allow_zero_length_clientid`.
    pub allow_zero_length_client_id: bool,
    /// JWT as the password (`[auth.jwt]`), instead of a password file: the token is
    /// verified, and one of its claims is the user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: Listener::loopback(1883),
            limits: LimitsConfig::default(),
            retain: RetainConfig::default(),
            sys: SysConfig::default(),
            auth: AuthConfig::default(),
            log: crate::logging::LogConfig::default(),
            process: ProcessConfig::default(),
            http: crate::http::HttpConfig::default(),
            persistence: PersistenceConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            max_inflight: 100,
            receive_maximum: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_messages: false,
            topic_alias_maximum: 64,
            max_keep_alive: 65_535,
            max_session_expiry: u32::MAX,
            connect_timeout: 10,
            max_subscriptions: 10_000,
            max_sessions: 1_000_000,
            max_client_id_len: 256,
            persistent_client_expiration: 0,
            write_timeout: 60,
            tcp_keepalive: 300,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            coalesce_writes: true,
        }
    }
}

impl Default for RetainConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_messages: 1_000_000,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        Self { interval: 10 }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            scram_file: None,
            allow_zero_length_client_id: true,
            jwt: None,
        }
    }
}

/// JWT as the password (`[auth.jwt]`, or a listener's `jwt`): how tokens are verified
/// and which claim names the user. See `docs/security.md`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The one algorithm tokens must be signed with (`alg` in their header): `"HS256"`,
    /// `"RS256"` or `"ES256"`. Anything else, `none` included, is refused.
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the shared secret (its bytes, less one trailing newline).
    /// RS256 and ES256: the public key, PEM (`PUBLIC KEY`; RS256 also `RSA PUBLIC
    /// KEY`). Either this or `jwks_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A JSON Web Key Set file (`{"keys": [...]}`): the key is the one whose `kid` the
    /// token's header names, or any of them if it names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` a token must have; `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `aud` a token must have (or have among its audiences); `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The claim whose value (a string) is the user name, which ACLs see as `%u`.
    /// Default: `"sub"`.
    #[serde(default = "JwtConfig::default_username_claim")]
    pub username_claim: String,
    /// Whether a token without `exp` is refused. Default: `true`.
    #[serde(default = "JwtConfig::default_require_exp")]
    pub require_exp: bool,
    /// Seconds of clock difference allowed when checking `exp` and `nbf`. Default: 30.
    #[serde(default = "JwtConfig::default_leeway")]
    pub leeway: u64,
    /// The claim holding what the token allows, as EMQX reads it: an object with `pub`,
    /// `sub` and `all` arrays of topic filters (`{"pub": ["devices/7/#"], "sub":
    /// ["cmd/7/#"]}`). A client whose token has it may publish only where a `pub` or
    /// `all` filter matches and subscribe only to filters a `sub` or `all` filter
    /// covers, on top of what the ACL allows. A token without the claim is not limited
    /// by it. `None` (the default): tokens carry no permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_claim: Option<String>,
    /// Whether a connection is closed when its token runs out (`exp` plus `leeway`):
    /// DISCONNECT 0x87 Not authorized in 5.0, the connection closed in 3.1.1, the will
    /// published, as EMQX's `disconnect_after_expire`. Default: `true`; `false` lets a
    /// connection outlive its token, which is checked at CONNECT only.
    #[serde(default = "JwtConfig::default_disconnect_after_expire")]
    pub disconnect_after_expire: bool,
}

impl JwtConfig {
    /// Tokens signed with `algorithm`, verified with the key in `key_file`, every other
    /// setting at its default.
    pub fn new(algorithm: JwtAlgorithm, key_file: impl Into<PathBuf>) -> Self {
        Self {
            algorithm,
            key_file: Some(key_file.into()),
            jwks_file: None,
            issuer: None,
            audience: None,
            username_claim: Self::default_username_claim(),
            require_exp: Self::default_require_exp(),
            leeway: Self::default_leeway(),
            acl_claim: None,
            disconnect_after_expire: Self::default_disconnect_after_expire(),
        }
    }

    fn default_disconnect_after_expire() -> bool {
        true
    }

    fn default_username_claim() -> String {
        "sub".to_owned()
    }

    fn default_require_exp() -> bool {
        true
    }

    fn default_leeway() -> u64 {
        30
    }

    /// Checks the settings that only make sense together: why not.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        match (&self.key_file, &self.jwks_file) {
            (Some(_), Some(_)) => Err("key_file and jwks_file are both set: choose one"),
            (None, None) => Err("needs key_file or jwks_file"),
            _ if self.username_claim.is_empty() => Err("username_claim is empty"),
            _ => Ok(()),
        }
    }
}

/// The signature algorithm JWTs are checked with.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret: `"HS256"`.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256: `"RS256"`.
    RS256,
    /// ECDSA on P-256 with SHA-256: `"ES256"`.
    ES256,
}

/// A kind of Subject Alternative Name (`use_san_as_username`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SanKind {
    /// A DNS name: `"dns"`.
    Dns,
    /// An e-mail address (RFC 822 name): `"email"`.
    Email,
    /// A URI (for example a SPIFFE ID): `"uri"`.
    Uri,
}

/// Why `allow_anonymous = false` without a password file is refused: honest, rather
/// than letting in anyone who names a user.
pub(crate) const NO_PASSWORD_BACKEND: &str = "false needs a password backend: a \
     password_file or jwt (in [auth] or on the listener); without one any password would be \
     accepted, so the broker refuses to start";

/// A configuration file that could not be used.
#[derive(Debug)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: String) -> Self {
        Self { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a configuration file: TOML, or Mosquitto's `mosquitto.conf`
    /// (told apart by content, see [`crate::mosquitto_conf::looks_like_mosquitto`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            message: format!("{}: {e}", path.display()),
        })?;
        if crate::mosquitto_conf::looks_like_mosquitto(&text) {
            return crate::mosquitto_conf::parse(&text, path);
        }
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((0, 0), |span| line_col(text, span.start));
            ConfigError {
                message: format!("{origin}:{line}:{col}: {}", e.message()),
            }
        })?;
        config.validate().map_err(|(key, why)| ConfigError {
            message: format!("{origin}: {key}: {why}"),
        })?;
        config.validate_listeners(text, origin)?;
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<(), (String, &'static str)> {
        if let Some(key) = self.anonymous_without_passwords() {
            return Err((key, NO_PASSWORD_BACKEND));
        }
        if let Some(jwt) = &self.auth.jwt {
            if self.auth.password_file.is_some() {
                return Err((
                    "auth.jwt".to_owned(),
                    "auth.password_file is set too: passwords are checked one way, choose one",
                ));
            }
            jwt.check().map_err(|why| ("auth.jwt".to_owned(), why))?;
        }
        self.validate_limits()
            .map_err(|(key, why)| (key.to_owned(), why))
    }

    /// The key that refuses anonymous clients on a listener that has no password file
    /// (`auth.allow_anonymous` or `listeners[N].allow_anonymous`), if any: the
    /// configuration could not check anyone's password.
    pub(crate) fn anonymous_without_passwords(&self) -> Option<String> {
        let global = !self.auth.allow_anonymous
            && self.auth.password_file.is_none()
            && self.auth.jwt.is_none();
        if self.listeners.is_empty() && global {
            return Some("auth.allow_anonymous".to_owned());
        }
        self.listeners.iter().enumerate().find_map(|(i, l)| {
            let anonymous = l.allow_anonymous.unwrap_or(self.auth.allow_anonymous);
            let passwords = l.password_file.is_some()
                || self.auth.password_file.is_some()
                || l.jwt.is_some()
                || self.auth.jwt.is_some();
            (!anonymous && !passwords).then(|| match l.allow_anonymous {
                Some(_) => format!("listeners[{i}].allow_anonymous"),
                None => "auth.allow_anonymous".to_owned(),
            })
        })
    }

    fn validate_limits(&self) -> Result<(), (&'static str, &'static str)> {
        self.log.validate()?;
        self.http.validate()?;
        let l = &self.limits;
        if l.max_packet_size < 64 {
            return Err(("limits.max_packet_size", "must be at least 64 bytes"));
        }
        if l.max_inflight == 0 {
            return Err(("limits.max_inflight", "must be at least 1"));
        }
        if l.receive_maximum == 0 {
            return Err(("limits.receive_maximum", "must be at least 1"));
        }
        if l.max_queued_messages == 0 {
            return Err(("limits.max_queued_messages", "must be at least 1"));
        }
        if l.write_timeout == 0 {
            return Err(("limits.write_timeout", "must be at least 1 second"));
        }
        if l.connect_timeout == 0 {
            return Err(("limits.connect_timeout", "must be at least 1 second"));
        }
        Ok(())
    }

    /// The configuration as a TOML file would say it (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot be written as TOML: {e}\n"))
    }

    /// Checks each listener's settings; the error names the listener's line.
    fn validate_listeners(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        for (i, listener) in self.listeners.iter().enumerate() {
            if let Err((key, why)) = listener.check() {
                // The line of its `[[listeners]]` header, when written that way.
                let line = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.trim_start().starts_with("[[listeners]]"))
                    .nth(i)
                    .map_or(String::new(), |(n, _)| format!("{}: ", n + 1));
                return Err(ConfigError {
                    message: format!(
                        "{origin}:{line}listeners[{i}] ({}): {key}: {why}",
                        listener.bind
                    ),
                });
            }
        }
        Ok(())
    }

    /// How long a new connection has to send CONNECT.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.connect_timeout)
    }

    /// The session limits for each client session.
    pub fn session_limits(&self) -> mqtt_session::Limits {
        let l = &self.limits;
        mqtt_session::Limits {
            receive_maximum: l.receive_maximum,
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            queue_qos0_offline: l.queue_qos0_messages,
            topic_alias_maximum: l.topic_alias_maximum,
            send_topic_aliases: true,
            max_packet_size: l.max_packet_size,
            ping_timeout: mqtt_session::Duration::from_secs(10),
            max_keep_alive: l.max_keep_alive,
            max_session_expiry: l.max_session_expiry,
            // The broker decides each acknowledgement after authorization and routing.
            defer_publish_acks: true,
            max_subscriptions: l.max_subscriptions,
            persistent_session_expiry: match l.persistent_client_expiration {
                0 => u32::MAX,
                secs => secs,
            },
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", "broker.toml").unwrap(), Config::default());
    }

    #[test]
    fn values_are_read() {
        let c = Config::parse(
            "[[listeners]]\nbind = \"127.0.0.1:1999\"\n[limits]\nmax_inflight = 5\n[sys]\ninterval = 0\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(
            c.listeners,
            [Listener::new("127.0.0.1:1999".parse().unwrap())]
        );
        assert_eq!(c.limits.max_inflight, 5);
        assert_eq!(c.sys.interval, 0);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse(
            "[limits]\nmax_inflight = 5\nmax_inflite = 6\n",
            "/etc/broker.toml",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/broker.toml:3:1:"), "{msg}");
        assert!(msg.contains("max_inflite"), "{msg}");
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let err = Config::parse("[limits]\n\nmax_inflight = \"many\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.toml:3:"), "{err}");
        let err = Config::parse("[[listeners]]\nbind = \"nowhere\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.toml:2:"), "{err}");
    }

    #[test]
    fn printed_toml_reads_back_the_same() {
        let mut c = Config::default();
        c.limits.max_inflight = 7;
        c.log.dest = vec![crate::logging::LogDest::File];
        c.log.file = Some("/var/log/b.log".into());
        c.process.pid_file = Some("/run/b.pid".into());
        assert_eq!(Config::parse(&c.to_toml(), "printed").unwrap(), c);
        let d = Config::default();
        assert_eq!(Config::parse(&d.to_toml(), "printed").unwrap(), d);
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::parse("[limits]\nmax_inflight = 0\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "b.toml: limits.max_inflight: must be at least 1");
    }

    #[test]
    fn auth_keys_globally_and_per_listener() {
        let c = Config::parse(
            concat!(
                "[auth]\nallow_anonymous = false\npassword_file = \"/etc/mqtt/pw\"\n",
                "acl_file = \"/etc/mqtt/acl\"\n",
                "[[listeners]]\nbind = \"127.0.0.1:1883\"\n",
                "[[listeners]]\nbind = \"127.0.0.1:1884\"\nallow_anonymous = true\n",
                "acl_file = \"/etc/mqtt/guest-acl\"\n",
            ),
            "b.toml",
        )
        .unwrap();
        assert_eq!(
            c.auth.password_file.as_deref(),
            Some(Path::new("/etc/mqtt/pw"))
        );
        assert_eq!(c.auth.acl_file.as_deref(), Some(Path::new("/etc/mqtt/acl")));
        assert!(!c.listeners[0].overrides_auth());
        assert_eq!(c.listeners[1].allow_anonymous, Some(true));
        assert_eq!(
            c.listeners[1].acl_file.as_deref(),
            Some(Path::new("/etc/mqtt/guest-acl"))
        );
        assert_eq!(c.listeners[1].password_file, None);
    }

    #[test]
    fn anonymous_refused_needs_a_password_file_where_it_is_refused() {
        let err = |text: &str| {
            Config::parse(text, "b.toml")
                .map(drop)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("[auth]\nallow_anonymous = false\n")
                .starts_with("b.toml: auth.allow_anonymous: false needs a password backend"),
        );
        assert!(
            err("[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"127.0.0.1:2\"\nallow_anonymous = false\n")
                .starts_with("b.toml: listeners[1].allow_anonymous: false needs a password backend"),
        );
        // A password file in [auth] or on the listener is one.
        for ok in [
            "[auth]\nallow_anonymous = false\npassword_file = \"pw\"\n",
            "[[listeners]]\nbind = \"127.0.0.1:1\"\nallow_anonymous = false\npassword_file = \"pw\"\n",
            "[auth]\nallow_anonymous = false\n[[listeners]]\nbind = \"127.0.0.1:1\"\npassword_file = \"pw\"\n",
        ] {
            assert!(Config::parse(ok, "b.toml").is_ok(), "{ok}");
        }
    }

    #[test]
    fn listeners_of_every_kind() {
        let c = Config::parse(
            r#"
[[listeners]]
bind = "0.0.0.0:8883"
certfile = "server.pem"
keyfile = "server.key"
cafile = "ca.pem"
crlfile = "crl.pem"
require_certificate = true
use_identity_as_username = true
tls_version = "tlsv1.3"
max_connections = 10

[[listeners]]
bind = "127.0.0.1:8080"
protocol = "websockets"
websocket_path = "/ws"
proxy_protocol = true

[[listeners]]
bind = "127.0.0.1:8443"
protocol = "websockets"
certfile = "server.pem"
keyfile = "server.key"
capath = "/etc/ssl/certs"
require_certificate = "optional"
"#,
            "b.toml",
        )
        .unwrap();
        let [tls, ws, wss] = &c.listeners[..] else {
            panic!("{:?}", c.listeners)
        };
        assert!(tls.is_tls() && tls.protocol == Protocol::Mqtt);
        assert_eq!(tls.require_certificate, ClientCertificates::Required);
        assert_eq!(tls.tls_version, Some(TlsVersion::Tls13));
        assert_eq!(tls.max_connections, Some(10));
        assert!(tls.certificate_is_username());
        assert!(!ws.is_tls() && ws.proxy_protocol && ws.websocket_path() == "/ws");
        assert!(wss.is_tls() && wss.protocol == Protocol::WebSockets);
        assert_eq!(wss.websocket_path(), "/mqtt");
        assert_eq!(wss.require_certificate, ClientCertificates::Optional);
    }

    #[test]
    fn the_default_listens_on_loopback_only() {
        let c = Config::default();
        assert_eq!(c.listeners.len(), 2);
        assert!(
            c.listeners
                .iter()
                .all(|l| l.bind.ip().is_loopback() && !l.is_tls())
        );
    }

    #[test]
    fn listener_settings_that_do_not_fit_name_line_listener_and_key() {
        let cases = [
            ("certfile = \"a\"\n", "keyfile: needed with certfile"),
            ("cafile = \"a\"\n", "cafile: only with TLS"),
            (
                "certfile = \"a\"\nkeyfile = \"b\"\nrequire_certificate = true\n",
                "require_certificate: client certificates are verified against cafile",
            ),
            (
                "certfile = \"a\"\nkeyfile = \"b\"\ncafile = \"c\"\nuse_identity_as_username = true\n",
                "use_identity_as_username: needs a client certificate",
            ),
            (
                "certfile = \"a\"\nkeyfile = \"b\"\ncafile = \"c\"\ncrlfile = \"d\"\n",
                "crlfile: client certificates are not asked for",
            ),
            (
                "websocket_path = \"/x\"\n",
                "websocket_path: only with protocol",
            ),
            (
                "protocol = \"websockets\"\nwebsocket_path = \"x\"\n",
                "websocket_path: must start with /",
            ),
            (
                "max_connections = 0\n",
                "max_connections: must be at least 1",
            ),
        ];
        for (keys, expected) in cases {
            let text = format!(
                "[limits]\nmax_inflight = 5\n\n[[listeners]]\nbind = \"127.0.0.1:1\"\n\n[[listeners]]\nbind = \"127.0.0.1:2\"\n{keys}"
            );
            let err = Config::parse(&text, "b.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("b.toml:7: listeners[1] (127.0.0.1:2): ") && err.contains(expected),
                "{keys}: {err}"
            );
        }
    }

    #[test]
    fn listener_values_are_checked_where_they_are() {
        for (text, line) in [
            (
                "[[listeners]]\nbind = \"127.0.0.1:1\"\nrequire_certificate = \"sometimes\"\n",
                3,
            ),
            (
                "[[listeners]]\nbind = \"127.0.0.1:1\"\ntls_version = \"tlsv1.1\"\n",
                3,
            ),
            (
                "[[listeners]]\nbind = \"127.0.0.1:1\"\nprotocol = \"http\"\n",
                3,
            ),
            (
                "[[listeners]]\nbind = \"127.0.0.1:1\"\ncertfiles = \"a\"\n",
                3,
            ),
        ] {
            let err = Config::parse(text, "b.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("b.toml:{line}:")), "{err}");
        }
    }
}
