//! TLS listeners: rustls with the `ring` provider, TLS 1.2 and 1.3 and its safe suites
//! only (ECDHE key exchange with AES-GCM or ChaCha20-Poly1305: the only ones the
//! provider has), the certificate chain and key from PEM files, client certificates
//! verified against a CA bundle with revocation lists, and ALPN `mqtt` (`http/1.1` on a
//! WebSocket listener) agreed when the client offers it and not required.
//!
//! The rustls configurations sit behind an `ArcSwap` that each handshake reads: a
//! reload ([`Tls::reload`]) reads the files again and swaps them, so new connections
//! get the new certificate and connections already up keep theirs.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::{Acceptor, WebPkiClientVerifier},
};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use crate::config::{ClientCertificates, Listener, Protocol, SanKind, TlsVersion};

use super::subject;

/// Which name of a client certificate becomes the user name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserName {
    /// None: the CONNECT's user name stands.
    Connect,
    /// The subject's Common Name (`use_identity_as_username`).
    CommonName,
    /// The whole subject, RFC 4514 (`use_subject_as_username`).
    Subject,
    /// The first Subject Alternative Name of these kinds (`use_san_as_username`).
    AltName(Box<[SanKind]>),
}

/// A listener's TLS configuration, loaded at start and again on each reload.
pub(super) struct Tls {
    configs: ArcSwap<Configs>,
    /// The listener's settings, whose files a reload reads again.
    listener: Listener,
    alpn: &'static [u8],
    user_name: UserName,
}

/// The rustls configurations of one reading of the files.
struct Configs {
    /// Agrees on `alpn` with a client that offers it.
    with_alpn: Arc<ServerConfig>,
    /// For a client that does not offer `alpn`: rustls would refuse it otherwise.
    without_alpn: Arc<ServerConfig>,
}

/// What the handshake learnt about the client's certificate.
#[derive(Debug, Default)]
pub(super) struct ClientCertificate {
    /// It presented one, and it was verified.
    pub(super) verified: bool,
    /// The name the listener makes the user name, if any.
    pub(super) name: Option<String>,
}

impl Tls {
    /// Reads the listener's files and builds its configuration; the error names the
    /// key and the file.
    pub(super) fn load(listener: &Listener) -> Result<Self, String> {
        let alpn: &'static [u8] = match listener.protocol {
            Protocol::Mqtt => b"mqtt",
            Protocol::WebSockets => b"http/1.1",
        };
        let user_name =
            if listener.use_identity_as_username && !listener.use_san_as_username.is_empty() {
                UserName::AltName(listener.use_san_as_username.clone().into())
            } else if listener.use_identity_as_username {
                UserName::CommonName
            } else if listener.use_subject_as_username {
                UserName::Subject
            } else {
                UserName::Connect
            };
        Ok(Self {
            configs: ArcSwap::from_pointee(Configs::load(listener, alpn)?),
            listener: listener.clone(),
            alpn,
            user_name,
        })
    }

    /// Reads the listener's files again and puts them in force for the next
    /// handshakes; on an error (naming the key and the file) the configuration in force
    /// stays. Blocking.
    pub(super) fn reload(&self) -> Result<(), String> {
        let configs = Configs::load(&self.listener, self.alpn)?;
        self.configs.store(Arc::new(configs));
        Ok(())
    }

    /// The files a reload reads: certificate chain, key, CA file or directory, CRLs.
    pub(super) fn files(&self) -> Vec<PathBuf> {
        let l = &self.listener;
        [&l.certfile, &l.keyfile, &l.cafile, &l.capath, &l.crlfile]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

impl Configs {
    fn load(listener: &Listener, alpn: &'static [u8]) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&SupportedProtocolVersion] = match listener.tls_version {
            Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
            Some(TlsVersion::Tls12) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls_version: {e}"))?;
        let builder = match listener.require_certificate {
            ClientCertificates::None => builder.with_no_client_auth(),
            mode => {
                let mut roots = RootCertStore::empty();
                if let Some(cafile) = &listener.cafile {
                    add_roots(&mut roots, cafile).map_err(|e| format!("cafile: {e}"))?;
                }
                if let Some(capath) = &listener.capath {
                    add_root_dir(&mut roots, capath).map_err(|e| format!("capath: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("cafile / capath: no CA certificate found".into());
                }
                let crls = match &listener.crlfile {
                    Some(path) => read_crls(path).map_err(|e| format!("crlfile: {e}"))?,
                    None => Vec::new(),
                };
                // As Mosquitto (OpenSSL's X509_V_FLAG_CRL_CHECK): the client's own
                // certificate is checked against the lists; one whose issuer has no
                // list is refused.
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .with_crls(crls)
                        .only_check_end_entity_revocation();
                if mode == ClientCertificates::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("require_certificate: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certfile = listener.certfile.as_deref().ok_or("certfile: not set")?;
        let keyfile = listener.keyfile.as_deref().ok_or("keyfile: not set")?;
        let chain = read_chain(certfile).map_err(|e| format!("certfile: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
            format!(
                "keyfile: {}: no private key read (PEM: PKCS#1, PKCS#8 or SEC1, not encrypted): {e}",
                keyfile.display()
            )
        })?;
        let mut with_alpn = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "certfile / keyfile: {} with {}: {e}",
                certfile.display(),
                keyfile.display()
            )
        })?;
        let without_alpn = with_alpn.clone();
        with_alpn.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self {
            with_alpn: Arc::new(with_alpn),
            without_alpn: Arc::new(without_alpn),
        })
    }
}

impl Tls {
    /// The TLS handshake. ALPN is agreed only with a client that offers the
    /// listener's protocol: rustls refuses a client whose offers it shares none of, and
    /// ALPN is not required here.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping it drops the connection.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, ClientCertificate)> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let offered = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offers| offers.any(|p| p == self.alpn));
        let config = {
            let configs = self.configs.load();
            if offered {
                Arc::clone(&configs.with_alpn)
            } else {
                Arc::clone(&configs.without_alpn)
            }
        };
        let stream = start.into_stream(config).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        let client = match leaf {
            None => ClientCertificate::default(),
            Some(leaf) => ClientCertificate {
                verified: true,
                name: match &self.user_name {
                    UserName::Connect => None,
                    UserName::CommonName => subject::common_name(leaf),
                    UserName::Subject => subject::rfc4514(leaf),
                    UserName::AltName(kinds) => subject::subject_alt_name(leaf, kinds),
                },
            },
        };
        Ok((stream, client))
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(chain)
}

fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    for cert in read_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: a CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

/// Every file of `dir` with PEM certificates in it (as OpenSSL's hashed names, or any
/// other); files without any are skipped.
fn add_root_dir(roots: &mut RootCertStore, dir: &Path) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if !path.is_file() {
            continue;
        }
        let Ok(certs) = CertificateDer::pem_file_iter(&path) else {
            continue;
        };
        for cert in certs.flatten() {
            roots
                .add(cert)
                .map_err(|e| format!("{}: a CA certificate: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|crls| crls.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!("{}: no PEM X509 CRL in it", path.display()));
    }
    Ok(crls)
}
