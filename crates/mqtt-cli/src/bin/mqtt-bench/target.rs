//! Where the broker is and how to reach it: host and port or a URL, TCP, TLS or
//! WebSocket, user name and password. [`Dialer::open`] is the one place every scenario
//! (throughput, idle connections and their `hold` processes, latency) opens a stream.
//!
//! Plain TCP stays a concrete `TcpStream` (the hot path: no indirection, and reads that
//! do not wait); TLS and WebSocket are mqtt-client's own layers
//! ([`mqtt_client::TransportLayers`]) over a socket opened here, boxed once per
//! connection.

use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
};

use bytes::Bytes;
use clap::Args;
use mqtt_cli::{CredentialArgs, TlsArgs};
use mqtt_client::{BoxIo, ConnectOptions, Transport, TransportLayers};
use mqtt_codec::{ByteStr, ProtocolVersion};
use tokio::net::TcpSocket;

use crate::wire::{Stream, WireError};

/// The broker and how to reach it (the flags of mqtt-pub and mqtt-sub, with their
/// names).
#[derive(Debug, Args, Clone)]
pub(crate) struct Target {
    /// Broker host.
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Broker port (default 1883; 8883 with TLS; 80 with --ws, 443 with --ws and TLS).
    #[arg(short = 'p', long = "port")]
    pub(crate) port: Option<u16>,
    /// Broker URL instead of -h: mqtt(s)://user:password@host:port or
    /// ws(s)://user:password@host:port/path; sets the transport and the credentials
    /// (-p, -u and -P override them).
    #[arg(short = 'L', long = "url")]
    pub(crate) url: Option<String>,
    /// Speak MQTT over WebSocket (path /mqtt; secure WebSocket with the TLS flags).
    #[arg(long = "ws")]
    pub(crate) ws: bool,
    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

impl Target {
    /// The connection options these flags describe (transport, host, port, TLS,
    /// credentials from a URL).
    fn options(&self) -> Result<ConnectOptions, String> {
        let mut o = match &self.url {
            Some(url) => ConnectOptions::from_url(url).map_err(|e| e.to_string())?,
            None => ConnectOptions::new(self.host.clone(), 1883),
        };
        let tls = self.tls.enabled() || o.transport_kind() == Transport::Tls;
        let ws = self.ws || o.transport_kind() == Transport::Ws;
        let transport = match (ws || o.transport_kind() == Transport::Wss, tls) {
            (false, false) => Transport::Tcp,
            (false, true) => Transport::Tls,
            (true, false) => Transport::Ws,
            (true, true) => Transport::Wss,
        };
        if transport != o.transport_kind() {
            o = o.transport(transport);
            // As mqtt-pub: the transport's port unless a URL named one.
            if self.url.is_none() {
                o = o.set_port(transport.default_port());
            }
        }
        if let Some(port) = self.port {
            o = o.set_port(port);
        }
        o = o.tls(self.tls.options().map_err(|f| f.message)?);
        Ok(o)
    }

    /// Resolves the broker and prepares the transport and the credentials for CONNECTs
    /// of `version`.
    pub(crate) fn dialer(&self, version: ProtocolVersion) -> Result<Dialer, String> {
        let mut o = self.options()?;
        let (mut username, mut password) = {
            let s = o.session_options_mut();
            (s.username.clone(), s.password.clone())
        };
        // -u and -P override the URL's.
        if let Some(user) = &self.credentials.username {
            username = Some(
                ByteStr::try_from(user.as_str()).map_err(|e| format!("user name {user:?}: {e}"))?,
            );
        }
        if let Some(pw) = &self.credentials.password {
            password = Some(Bytes::copy_from_slice(pw.as_bytes()));
        }
        if username.is_none() && password.is_some() && !version.is_v5() {
            return Err(
                "a password without a user name is not allowed in MQTT 3.1.1 [MQTT-3.1.2-22]: \
                 give a user name (-u) too"
                    .to_owned(),
            );
        }
        let (host, port) = (o.host().to_owned(), o.port());
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{host}:{port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}:{port}: no address"))?;
        let layers = match o.transport_kind() {
            Transport::Tcp => None,
            _ => Some(TransportLayers::new(&o).map_err(|e| e.to_string())?),
        };
        Ok(Dialer {
            addr,
            layers,
            username,
            password,
        })
    }

    /// These flags again, for a `hold` process.
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["-h".into(), self.host.clone().into()];
        if let Some(p) = self.port {
            a.extend(["-p".into(), p.to_string().into()]);
        }
        if let Some(url) = &self.url {
            a.extend(["-L".into(), url.into()]);
        }
        if self.ws {
            a.push("--ws".into());
        }
        if let Some(u) = &self.credentials.username {
            a.extend(["-u".into(), u.into()]);
        }
        if let Some(p) = &self.credentials.password {
            a.extend(["-P".into(), p.into()]);
        }
        a.extend(self.tls.to_args());
        a
    }
}

/// Opens connections to one broker: resolved once, TLS configuration built once.
#[derive(Debug)]
pub(crate) struct Dialer {
    /// The broker's address.
    pub(crate) addr: SocketAddr,
    /// TLS and WebSocket over TCP; `None` for plain TCP.
    layers: Option<TransportLayers>,
    /// The user name every CONNECT carries.
    pub(crate) username: Option<ByteStr>,
    /// The password every CONNECT carries.
    pub(crate) password: Option<Bytes>,
}

impl Dialer {
    /// The transport's name: tcp, tls, ws or wss.
    pub(crate) fn transport(&self) -> &'static str {
        match self.layers.as_ref().map(TransportLayers::transport) {
            None | Some(Transport::Tcp) => "tcp",
            Some(Transport::Tls) => "tls",
            Some(Transport::Ws) => "ws",
            Some(Transport::Wss) => "wss",
        }
    }

    /// Opens a stream to the broker from `source` (if given): TCP with Nagle off, then
    /// TLS and WebSocket when asked for.
    pub(crate) async fn open(&self, source: Option<IpAddr>) -> Result<Stream, WireError> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(WireError::io("socket"))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(WireError::io("bind to the source address"))?;
        }
        let tcp = socket
            .connect(self.addr)
            .await
            .map_err(WireError::io("connect"))?;
        tcp.set_nodelay(true).map_err(WireError::io("nodelay"))?;
        match &self.layers {
            None => Ok(Stream::Tcp(tcp)),
            Some(layers) => {
                let io: BoxIo = Box::new(tcp);
                let io = layers
                    .wrap(io)
                    .await
                    .map_err(|e| WireError::Transport(e.to_string()))?;
                Ok(Stream::Layered(io))
            }
        }
    }
}
