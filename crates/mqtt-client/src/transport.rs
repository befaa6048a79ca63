//! Opening the byte stream to the broker: TCP, TLS (rustls), WebSocket and secure
//! WebSocket (subprotocol `mqtt`). Every transport ends up as one boxed
//! `AsyncRead + AsyncWrite`, so the driver does not care which it has.

use std::{
    fs, io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedCipherSuite,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream, lookup_host},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message as WsMessage, client::IntoClientRequest, http::HeaderValue},
};

use crate::{
    error::ConnectError,
    options::{ConnectOptions, TlsOptions, TlsVersion, Transport},
};

/// A connected byte stream: what every transport is once opened.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`]: one allocation per connection, whatever the transport.
pub type BoxIo = Box<dyn Io>;

/// The TLS and WebSocket layers of a transport, prepared once, to put over byte
/// streams the caller opens itself.
///
/// [`connect`](crate::connect) opens the socket and these layers in one go. A program
/// that speaks MQTT itself on many connections (a load generator, which binds each
/// socket to its own source address) opens the sockets and calls [`wrap`](Self::wrap)
/// on each: the TLS configuration (CA files, client certificate, cipher suites) is
/// read and built once, in [`new`](Self::new).
#[derive(Clone, Debug)]
pub struct TransportLayers {
    options: ConnectOptions,
    tls: Option<Arc<ClientConfig>>,
}

impl TransportLayers {
    /// Prepares the layers `options` describe: its transport, host (the TLS server
    /// name and the WebSocket `Host`), port, WebSocket path and TLS settings. Every
    /// other option is ignored.
    pub fn new(options: &ConnectOptions) -> Result<Self, ConnectError> {
        let tls = if options.transport.uses_tls() {
            Some(tls_config(&options.tls)?)
        } else {
            None
        };
        Ok(Self {
            options: options.clone(),
            tls,
        })
    }

    /// The transport these layers make.
    pub fn transport(&self) -> Transport {
        self.options.transport
    }

    /// Puts the layers over `stream`, a byte stream already connected to the broker:
    /// the TLS handshake (TLS, secure WebSocket), then the WebSocket handshake
    /// (WebSocket, secure WebSocket). For plain TCP it returns the stream boxed.
    ///
    /// # Cancel safety
    /// Not resumable: dropping the future drops the stream, half-way through a
    /// handshake.
    pub async fn wrap(&self, stream: BoxIo) -> Result<BoxIo, ConnectError> {
        layer(&self.options, self.tls.as_ref(), stream).await
    }
}

/// Builds the rustls configuration for `tls`.
pub(crate) fn tls_config(tls: &TlsOptions) -> Result<Arc<ClientConfig>, ConnectError> {
    if let Some(config) = &tls.config {
        return Ok(config.clone());
    }
    let err = |what: String| ConnectError::TlsConfig(what);
    let mut roots = RootCertStore::empty();
    if tls.ca_file.is_none() && tls.ca_path.is_none() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // Skip system certificates rustls cannot use, as browsers do.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(err(
                "no CA certificates found on this system: give a CA file".into(),
            ));
        }
    }
    if let Some(file) = &tls.ca_file {
        let certs = read_certs(file)?;
        if certs.is_empty() {
            return Err(err(format!("no certificate in CA file {}", file.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| err(format!("CA file {}: {e}", file.display())))?;
        }
    }
    if let Some(dir) = &tls.ca_path {
        let entries =
            fs::read_dir(dir).map_err(|e| err(format!("CA directory {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "pem" | "crt") {
                for cert in read_certs(&path).unwrap_or_default() {
                    let _ = roots.add(cert);
                }
            }
        }
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(list) = &tls.ciphers {
        provider.cipher_suites = cipher_suites(list)?;
    }
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.version {
        None => rustls::DEFAULT_VERSIONS,
        Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| err(format!("{e}: the cipher suites do not fit the TLS version")))?;
    let roots = Arc::new(roots);
    let builder = if tls.insecure_skip_hostname {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| err(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoHostnameVerifier(inner)))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match &tls.client_cert {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            if chain.is_empty() {
                return Err(err(format!("no certificate in {}", cert.display())));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(format!("private key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols.clone_from(&tls.alpn_protocols);
    Ok(Arc::new(config))
}

/// The cipher suites ring implements, by OpenSSL name and IANA name.
const CIPHERS: &[(&str, &str, SupportedCipherSuite)] = {
    use rustls::crypto::ring::cipher_suite as cs;
    &[
        (
            "TLS_AES_128_GCM_SHA256",
            "TLS13_AES_128_GCM_SHA256",
            cs::TLS13_AES_128_GCM_SHA256,
        ),
        (
            "TLS_AES_256_GCM_SHA384",
            "TLS13_AES_256_GCM_SHA384",
            cs::TLS13_AES_256_GCM_SHA384,
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256",
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// The suites of an OpenSSL-style cipher list. As OpenSSL's `--ciphers`, a list that
/// names no TLS 1.3 suite keeps the default TLS 1.3 suites.
fn cipher_suites(list: &str) -> Result<Vec<SupportedCipherSuite>, ConnectError> {
    let mut suites: Vec<SupportedCipherSuite> = Vec::new();
    for name in list.split([':', ',', ' ']).filter(|n| !n.is_empty()) {
        let found = CIPHERS.iter().find(|(openssl, iana, _)| {
            name.eq_ignore_ascii_case(openssl) || name.eq_ignore_ascii_case(iana)
        });
        let Some(&(_, _, suite)) = found else {
            let known: Vec<&str> = CIPHERS.iter().map(|(o, _, _)| *o).collect();
            return Err(ConnectError::TlsConfig(format!(
                "unknown or unsupported cipher {name:?}: this build supports {}",
                known.join(", ")
            )));
        };
        if !suites.iter().any(|s| s.suite() == suite.suite()) {
            suites.push(suite);
        }
    }
    if suites.is_empty() {
        return Err(ConnectError::TlsConfig("the cipher list is empty".into()));
    }
    if !suites.iter().any(|s| s.tls13().is_some()) {
        suites.extend(CIPHERS.iter().filter_map(|(_, _, s)| s.tls13().map(|_| *s)));
    }
    Ok(suites)
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConnectError::TlsConfig(format!("{}: {e}", path.display())))
}

/// Verifies the chain but not the name (`--insecure`).
#[derive(Debug)]
struct NoHostnameVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for NoHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Where the connection goes, for error messages.
fn describe(options: &ConnectOptions) -> String {
    #[cfg(unix)]
    if let Some(path) = &options.unix_path {
        return path.display().to_string();
    }
    let addr = if options.host.contains(':') {
        format!("[{}]:{}", options.host, options.port)
    } else {
        format!("{}:{}", options.host, options.port)
    };
    match &options.proxy {
        Some(p) => format!("{addr} through the SOCKS5 proxy {}:{}", p.host, p.port),
        None => addr,
    }
}

/// The byte stream under TLS and WebSocket: a Unix socket, TCP through a SOCKS5
/// proxy, or TCP, bound to the local address asked for.
async fn connect_stream(options: &ConnectOptions) -> io::Result<BoxIo> {
    #[cfg(unix)]
    if let Some(path) = &options.unix_path {
        return Ok(Box::new(tokio::net::UnixStream::connect(path).await?));
    }
    let bind = options.bind_address.as_deref();
    match &options.proxy {
        Some(proxy) => {
            let mut tcp = tcp_connect(&proxy.host, proxy.port, bind).await?;
            crate::socks5::connect(&mut tcp, proxy, &options.host, options.port).await?;
            Ok(Box::new(tcp))
        }
        None => Ok(Box::new(
            tcp_connect(&options.host, options.port, bind).await?,
        )),
    }
}

/// TCP to `host:port`, from `bind` (an IP address or a name) when given: each address
/// of the host is tried from a local address of the same family.
async fn tcp_connect(host: &str, port: u16, bind: Option<&str>) -> io::Result<TcpStream> {
    let tcp = match bind {
        None => TcpStream::connect((host, port)).await?,
        Some(bind) => {
            let bind_err =
                |e: io::Error| io::Error::new(e.kind(), format!("cannot bind to {bind}: {e}"));
            let locals: Vec<SocketAddr> = lookup_host((bind, 0)).await.map_err(bind_err)?.collect();
            let mut last = None;
            let mut found = None;
            for remote in lookup_host((host, port)).await? {
                let Some(local) = locals.iter().find(|l| l.is_ipv4() == remote.is_ipv4()) else {
                    last = Some(io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!("{bind} has no address of the family of {remote}"),
                    ));
                    continue;
                };
                let socket = if remote.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(*local).map_err(bind_err)?;
                match socket.connect(remote).await {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match found {
                Some(s) => s,
                None => {
                    return Err(last.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the host has no address")
                    }));
                }
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Opens the transport `options` describe. `tls` is the prepared configuration for
/// TLS transports.
pub(crate) async fn open(
    options: &ConnectOptions,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<BoxIo, ConnectError> {
    let addr = describe(options);
    let io_err = |source: io::Error| ConnectError::Io {
        addr: addr.clone(),
        source,
    };
    let tcp = connect_stream(options).await.map_err(io_err)?;
    layer(options, tls, tcp).await
}

/// Puts TLS and WebSocket over `tcp`, as `options` say.
async fn layer(
    options: &ConnectOptions,
    tls: Option<&Arc<ClientConfig>>,
    tcp: BoxIo,
) -> Result<BoxIo, ConnectError> {
    let addr = describe(options);
    let io_err = |source: io::Error| ConnectError::Io {
        addr: addr.clone(),
        source,
    };
    let stream: BoxIo = match (options.transport.uses_tls(), tls) {
        (true, Some(config)) => {
            let name = options.tls.server_name.as_deref().unwrap_or(&options.host);
            let name = ServerName::try_from(name.to_owned()).map_err(|e| {
                ConnectError::TlsConfig(format!("{name:?} is not a valid server name: {e}"))
            })?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            Box::new(connector.connect(name, tcp).await.map_err(io_err)?)
        }
        (true, None) => {
            return Err(ConnectError::TlsConfig("no TLS configuration".into()));
        }
        (false, _) => Box::new(tcp),
    };
    match options.transport {
        Transport::Tcp | Transport::Tls => Ok(stream),
        Transport::Ws | Transport::Wss => {
            let scheme = if options.transport == Transport::Wss {
                "wss"
            } else {
                "ws"
            };
            let host = if options.host.contains(':') {
                format!("[{}]", options.host)
            } else {
                options.host.clone()
            };
            let path = if options.ws_path.starts_with('/') {
                options.ws_path.clone()
            } else {
                format!("/{}", options.ws_path)
            };
            let url = format!("{scheme}://{host}:{}{path}", options.port);
            let ws_err = |e: tungstenite::Error| {
                io_err(io::Error::other(format!("WebSocket handshake: {e}")))
            };
            let mut request = url.into_client_request().map_err(ws_err)?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (ws, _response) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(ws_err)?;
            Ok(Box::new(WsIo {
                inner: ws,
                read: Bytes::new(),
            }))
        }
    }
}

/// A WebSocket as a byte stream: each write is one binary message, reads concatenate
/// binary messages (MQTT packets may span or share messages).
struct WsIo {
    inner: WebSocketStream<BoxIo>,
    read: Bytes,
}

fn ws_io_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        other => io::Error::other(other),
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None | Some(Ok(WsMessage::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(WsMessage::Binary(data))) => self.read = data,
                Some(Ok(WsMessage::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent a WebSocket text message; MQTT uses binary ones",
                    )));
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_io_err(e))),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(ws_io_err)?;
        Pin::new(&mut self.inner)
            .start_send(WsMessage::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(ws_io_err)
    }
}
