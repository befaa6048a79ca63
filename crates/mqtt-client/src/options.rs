//! How to connect: broker address, transport, CONNECT fields, limits and reconnection.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use mqtt_codec::{ByteStr, ConnectProperties, Packet, ProtocolVersion, Will};
use mqtt_session::{ClientOptions, Limits};

use crate::{auth::Authenticator, error::ConnectError, socks5::Socks5Proxy};

/// The network transport to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (`mqtt://`, default port 1883).
    Tcp,
    /// TLS over TCP (`mqtts://`, default port 8883).
    Tls,
    /// WebSocket (`ws://`, default port 80), subprotocol `mqtt`.
    Ws,
    /// WebSocket over TLS (`wss://`, default port 443), subprotocol `mqtt`.
    Wss,
}

impl Transport {
    /// The usual port of the transport.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tcp => 1883,
            Self::Tls => 8883,
            Self::Ws => 80,
            Self::Wss => 443,
        }
    }

    pub(crate) fn uses_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }
}

/// A TLS protocol version (rustls speaks 1.2 and 1.3 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// TLS settings (for [`Transport::Tls`] and [`Transport::Wss`]).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A PEM file of CA certificates to trust. With neither this nor `ca_path`, the
    /// system's roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates to trust (every `*.pem` / `*.crt` file).
    pub ca_path: Option<PathBuf>,
    /// A client certificate chain (PEM) and its private key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Do not check that the server's certificate names the host connected to (the
    /// chain is still verified). Like mosquitto's `--insecure`: for tests only.
    pub insecure_skip_hostname: bool,
    /// The name to verify the certificate against, when not the host connected to.
    pub server_name: Option<String>,
    /// Speak only this TLS version (mosquitto's `--tls-version`); `None`: 1.2 or 1.3.
    pub version: Option<TlsVersion>,
    /// The cipher suites to offer, as OpenSSL's cipher list (mosquitto's `--ciphers`):
    /// names separated by `:`, `,` or spaces, in OpenSSL's spelling
    /// (`ECDHE-RSA-AES128-GCM-SHA256`) or IANA's (`TLS_AES_128_GCM_SHA256`). As in
    /// OpenSSL, naming only TLS 1.2 suites leaves the TLS 1.3 ones at their default.
    /// A name rustls does not implement is an error naming it.
    pub ciphers: Option<String>,
    /// The ALPN protocols to offer, most preferred first (mosquitto's `--tls-alpn`),
    /// for servers that serve several protocols on one port. Empty: no ALPN.
    pub alpn_protocols: Vec<Vec<u8>>,
    /// A ready-made rustls configuration; when set, the fields above are ignored
    /// (except `server_name`).
    pub config: Option<Arc<rustls::ClientConfig>>,
}

/// Automatic reconnection: exponential backoff with jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectOptions {
    /// Reconnect when an established connection is lost.
    pub enabled: bool,
    /// The delay before the first attempt.
    pub initial_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

/// Everything needed to connect: where, how, and what goes into CONNECT.
///
/// ```
/// use mqtt_client::{ConnectOptions, ProtocolVersion};
/// let options = ConnectOptions::from_url("mqtt://user:secret@localhost:1883")
///     .unwrap()
///     .version(ProtocolVersion::V5)
///     .client_id("sensor-7")
///     .keep_alive(30);
/// assert_eq!(options.port(), 1883);
/// ```
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) transport: Transport,
    pub(crate) ws_path: String,
    pub(crate) tls: TlsOptions,
    pub(crate) session: ClientOptions,
    pub(crate) reconnect: ReconnectOptions,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_held_messages: usize,
    pub(crate) max_held_bytes: usize,
    /// An option that could not be set, reported by `connect`.
    pub(crate) invalid: Option<String>,
    /// The local address to bind outgoing TCP connections to.
    pub(crate) bind_address: Option<String>,
    /// Connect over this Unix domain socket instead of TCP.
    pub(crate) unix_path: Option<PathBuf>,
    /// Connect through this SOCKS5 proxy.
    pub(crate) proxy: Option<Socks5Proxy>,
    /// The enhanced-authentication exchange (5.0).
    pub(crate) authenticator: Option<SharedAuthenticator>,
    /// Told of every packet sent and received.
    pub(crate) packet_observer: Option<PacketObserver>,
}

/// Which way a packet went, for [`ConnectOptions::on_packet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketDirection {
    /// To the server: encoded into the write buffer.
    Sent,
    /// From the server: decoded.
    Received,
}

/// The function [`ConnectOptions::on_packet`] takes.
type ObserverFn = dyn Fn(PacketDirection, &Packet) + Send + Sync;

/// A function told of every packet, shared by the clones of [`ConnectOptions`].
#[derive(Clone)]
pub(crate) struct PacketObserver(pub(crate) Arc<ObserverFn>);

impl fmt::Debug for PacketObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketObserver")
    }
}

/// An [`Authenticator`] shared by the clones of [`ConnectOptions`]; the driver locks
/// it only between awaits.
#[derive(Clone)]
pub(crate) struct SharedAuthenticator {
    pub(crate) method: String,
    pub(crate) inner: Arc<Mutex<dyn Authenticator>>,
}

impl fmt::Debug for SharedAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Plain TCP to `host:port`, MQTT 3.1.1, an empty client identifier (the server
    /// assigns one; 3.1.1 requires a clean session for that), clean start, 60 s keep-alive.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let limits = Limits {
            // What a 5.0 server may send us unacknowledged.
            receive_maximum: 64,
            max_packet_size: 16 * 1024 * 1024,
            ..Limits::default()
        };
        let mut session = ClientOptions::new(ProtocolVersion::V3_1_1, ByteStr::new());
        session.limits = limits;
        Self {
            host: host.into(),
            port,
            transport: Transport::Tcp,
            ws_path: "/mqtt".into(),
            tls: TlsOptions::default(),
            session,
            reconnect: ReconnectOptions::default(),
            connect_timeout: Duration::from_secs(10),
            request_capacity: 16,
            event_capacity: 256,
            max_pending: 64,
            max_held_messages: 4096,
            max_held_bytes: 8 * 1024 * 1024,
            invalid: None,
            bind_address: None,
            unix_path: None,
            proxy: None,
            authenticator: None,
            packet_observer: None,
        }
    }

    /// Options from a URL: `mqtt://`, `mqtts://`, `ws://` or `wss://`, with an optional
    /// `user:password@` (percent-encoded), port and (WebSocket) path.
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let bad = |reason| ConnectError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Transport::Tcp,
            "mqtts" | "ssl" | "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return Err(bad("the scheme must be mqtt, mqtts, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let (h, after) = stripped
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the host")),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
            None => transport.default_port(),
        };
        let mut options = Self::new(host, port);
        options.transport = transport;
        if matches!(transport, Transport::Ws | Transport::Wss) && !path.is_empty() {
            options.ws_path = path.to_owned();
        }
        if let Some(userinfo) = userinfo {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding"))?;
            let pass = pass
                .map(|p| percent_decode(p).ok_or_else(|| bad("bad percent-encoding")))
                .transpose()?;
            options = options
                .credentials(&user, pass.as_deref().map(str::as_bytes))
                .map_err(|_| bad("the user name is not a valid MQTT string"))?;
        }
        Ok(options)
    }

    /// The host to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The transport.
    pub fn transport_kind(&self) -> Transport {
        self.transport
    }

    /// Sets the transport (the port is unchanged).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the port.
    pub fn set_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The WebSocket path (default `/mqtt`).
    pub fn ws_path(mut self, path: impl Into<String>) -> Self {
        self.ws_path = path.into();
        self
    }

    /// TLS settings.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// The protocol version (default 3.1.1).
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.session.version = version;
        self
    }

    /// The protocol version in use.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.session.version
    }

    /// The client identifier; empty asks the server to assign one.
    ///
    /// An identifier that is not a valid MQTT string (U+0000, longer than 65,535
    /// bytes) is reported by [`crate::connect`] as [`ConnectError::InvalidOption`].
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        match ByteStr::try_from(id.as_str()) {
            Ok(s) => self.session.client_id = s,
            Err(e) => self.invalid = Some(format!("client identifier {id:?}: {e}")),
        }
        self
    }

    /// Clean Start (5.0) / Clean Session (3.x) on the first connection (default true).
    /// Reconnections always ask to resume the session.
    pub fn clean_start(mut self, clean: bool) -> Self {
        self.session.clean_start = clean;
        self
    }

    /// Keep Alive in seconds; 0 turns it off (default 60).
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.session.keep_alive = secs;
        self
    }

    /// Session Expiry Interval in seconds (5.0; default 0). Set it above 0 for a
    /// session that survives reconnection on a 5.0 server.
    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.session.session_expiry_interval = secs;
        self
    }

    /// The will message.
    pub fn will(mut self, will: Will) -> Self {
        self.session.will = Some(will);
        self
    }

    /// User name and optional password.
    pub fn credentials(
        mut self,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<Self, ConnectError> {
        self.session.username = Some(
            ByteStr::try_from(username)
                .map_err(|e| ConnectError::InvalidOption(format!("user name: {e}")))?,
        );
        self.session.password = password.map(Bytes::copy_from_slice);
        Ok(self)
    }

    /// A password without a user name (5.0 only).
    pub fn password(mut self, password: &[u8]) -> Self {
        self.session.password = Some(Bytes::copy_from_slice(password));
        self
    }

    /// Further CONNECT properties (5.0): user properties, request/problem information,
    /// authentication method and data.
    pub fn properties(mut self, properties: ConnectProperties) -> Self {
        self.session.properties = properties;
        self
    }

    /// The session's limits (in-flight window, queue sizes, maximum packet size, ...).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.session.limits = limits;
        self
    }

    /// The session's limits, to adjust in place.
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.session.limits
    }

    /// Reconnection policy.
    pub fn reconnect(mut self, reconnect: ReconnectOptions) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// How long to wait for the network connection and CONNACK (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many requests may wait for the driver (default 16). Past this,
    /// [`crate::Client::publish`] waits and [`crate::Client::try_publish`] fails.
    pub fn request_capacity(mut self, n: usize) -> Self {
        self.request_capacity = n.max(1);
        self
    }

    /// How many incoming events may wait for the application (default 256). Past this
    /// the driver stops reading from the network (acknowledgements and pings still go out).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// How many outgoing messages the session may hold, in flight and queued, before
    /// the driver stops taking new ones (default 64).
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// How much the driver reads ahead of an application that does not keep up with
    /// its events: incoming PUBLISH packets, not yet acknowledged, beyond
    /// [`event_capacity`](Self::event_capacity) (default 4,096 messages and 8 MiB, as
    /// they came on the wire, properties included). Past either bound it stops reading
    /// from the network.
    pub fn read_ahead(mut self, messages: usize, bytes: usize) -> Self {
        self.max_held_messages = messages.max(1);
        self.max_held_bytes = bytes.max(1);
        self
    }

    /// Binds outgoing TCP connections to this local IP address or host name
    /// (mosquitto's `-A`), to choose the interface they leave by. With a proxy, the
    /// connection to the proxy is bound.
    pub fn bind_address(mut self, local: impl Into<String>) -> Self {
        self.bind_address = Some(local.into());
        self
    }

    /// Connects over the Unix domain socket at `path` instead of TCP (mosquitto's
    /// `--unix`). The transport still says what runs over it: [`Transport::Tcp`] for
    /// plain MQTT; TLS and WebSocket work over it too, with [`host`](Self::host) as the
    /// TLS server name.
    #[cfg(unix)]
    pub fn unix_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix_path = Some(path.into());
        self
    }

    /// Connects through a SOCKS5 proxy (mosquitto's `--proxy`); the proxy resolves the
    /// broker's host name.
    pub fn proxy(mut self, proxy: Socks5Proxy) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// MQTT 5.0 enhanced authentication: CONNECT carries `authenticator`'s method and
    /// first data, and the driver answers the server's AUTH challenges with it. See
    /// [`Authenticator`]. Any Authentication Method set with
    /// [`properties`](Self::properties) is replaced.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        let method = authenticator.method().to_owned();
        match ByteStr::try_from(method.as_str()) {
            Ok(m) => self.session.properties.authentication_method = Some(m),
            Err(e) => self.invalid = Some(format!("authentication method {method:?}: {e}")),
        }
        self.authenticator = Some(SharedAuthenticator {
            method,
            inner: Arc::new(Mutex::new(authenticator)),
        });
        self
    }

    /// Calls `observer` with every packet the driver sends (as it is queued for writing)
    /// and receives (as it is decoded), on every connection: a packet trace, such as
    /// the `-d` output of command-line tools. It runs on the driver task, so it must
    /// be quick and must not block.
    pub fn on_packet(
        mut self,
        observer: impl Fn(PacketDirection, &Packet) + Send + Sync + 'static,
    ) -> Self {
        self.packet_observer = Some(PacketObserver(Arc::new(observer)));
        self
    }

    /// The session options (CONNECT fields and limits), to adjust in place.
    pub fn session_options_mut(&mut self) -> &mut ClientOptions {
        &mut self.session
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = ConnectOptions::from_url("mqtts://us%40er:p%3Ass@example.com").unwrap();
        assert_eq!(o.transport, Transport::Tls);
        assert_eq!(o.port, 8883);
        assert_eq!(o.host, "example.com");
        assert_eq!(o.session.username.as_deref(), Some("us@er"));
        assert_eq!(o.session.password.as_deref(), Some(&b"p:ss"[..]));
        let o = ConnectOptions::from_url("ws://[::1]:9001/ws").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.ws_path.as_str()),
            ("::1", 9001, "/ws")
        );
        assert!(ConnectOptions::from_url("http://x").is_err());
        assert!(ConnectOptions::from_url("mqtt://x:99999").is_err());
        assert!(ConnectOptions::from_url("mqtt://:1").is_err());
    }
}
