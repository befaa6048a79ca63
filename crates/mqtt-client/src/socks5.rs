//! The client half of a SOCKS5 CONNECT (RFC 1928) with no authentication or user name
//! and password (RFC 1929). The target's host name goes to the proxy unresolved
//! (`socks5h`). Every read has a known, small length, so a misbehaving proxy cannot
//! make us allocate; the whole exchange runs under the connect timeout.

use std::{fmt, io, net::IpAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ConnectError;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// A SOCKS5 proxy, as mosquitto's `--proxy socks5h://[user[:password]@]host[:port]`.
/// Host names of brokers are resolved by the proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct Socks5Proxy {
    /// The proxy's host.
    pub host: String,
    /// The proxy's port (1080 by default).
    pub port: u16,
    /// User name and password (RFC 1929), if the proxy wants them.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for Socks5Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socks5Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl Socks5Proxy {
    /// Parses `socks5h://[user[:password]@]host[:port]`; `%25`, `%3A` and `%40` in the
    /// user name and password stand for `%`, `:` and `@`, as in mosquitto.
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let bad = |reason| ConnectError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("socks5h") => rest,
            _ => return Err(bad("a proxy URL must start with socks5h://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let (h, after) = stripped
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the proxy host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("no proxy host"));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the proxy port is not a number from 0 to 65535"))?,
            None => 1080,
        };
        let credentials = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (unescape(user), unescape(pass))
        });
        if let Some((user, pass)) = &credentials {
            if user.is_empty() || user.len() > 255 || pass.len() > 255 {
                return Err(bad(
                    "the proxy user name must have 1 to 255 bytes, the password at most 255",
                ));
            }
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials,
        })
    }
}

fn unescape(s: &str) -> String {
    s.replace("%3A", ":")
        .replace("%3a", ":")
        .replace("%40", "@")
        .replace("%25", "%")
}

fn error(what: impl Into<String>) -> io::Error {
    io::Error::other(format!("SOCKS5 proxy: {}", what.into()))
}

/// Asks the proxy on `stream` to connect to `host:port`.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &Socks5Proxy,
    host: &str,
    port: u16,
) -> io::Result<()> {
    // Greeting: the methods we can do.
    let method = if proxy.credentials.is_some() {
        USER_PASS
    } else {
        NO_AUTH
    };
    stream.write_all(&[VERSION, 1, method]).await?;
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).await?;
    match reply {
        [VERSION, m] if m == method => {}
        [VERSION, NO_ACCEPTABLE] => {
            return Err(error(if method == NO_AUTH {
                "the proxy requires authentication: give user:password@ in the proxy URL"
            } else {
                "the proxy accepts no user name and password authentication"
            }));
        }
        [VERSION, m] => {
            return Err(error(format!(
                "the proxy chose method {m:#04x}, not offered"
            )));
        }
        [v, _] => return Err(error(format!("not a SOCKS5 proxy (version {v})"))),
    }
    if let Some((user, pass)) = &proxy.credentials {
        // RFC 1929: VER 1, ULEN, UNAME, PLEN, PASSWD (lengths checked when parsed).
        let mut msg = Vec::with_capacity(3 + user.len() + pass.len());
        msg.push(1);
        msg.push(u8::try_from(user.len()).map_err(|_| error("user name too long"))?);
        msg.extend_from_slice(user.as_bytes());
        msg.push(u8::try_from(pass.len()).map_err(|_| error("password too long"))?);
        msg.extend_from_slice(pass.as_bytes());
        stream.write_all(&msg).await?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await?;
        if status[1] != 0 {
            return Err(error("the proxy refused the user name and password"));
        }
    }
    // CONNECT: an IP address as such, any other host as a name the proxy resolves.
    let mut req = vec![VERSION, CMD_CONNECT, 0];
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            req.push(ATYP_V4);
            req.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            req.push(ATYP_V6);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len())
                .map_err(|_| error("the host name is longer than 255 bytes"))?;
            req.push(ATYP_DOMAIN);
            req.push(len);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&req).await?;
    // Reply: VER, REP, RSV, ATYP, BND.ADDR, BND.PORT.
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let [ver, rep, _, atyp] = head;
    if ver != VERSION {
        return Err(error(format!("not a SOCKS5 reply (version {ver})")));
    }
    if rep != 0 {
        return Err(error(reply_text(rep)));
    }
    let addr_len = match atyp {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_DOMAIN => {
            let mut n = [0u8; 1];
            stream.read_exact(&mut n).await?;
            usize::from(n[0])
        }
        other => {
            return Err(error(format!(
                "unknown address type {other:#04x} in the reply"
            )));
        }
    };
    // At most 255 + 2 bytes: the bound address, which we do not need.
    let mut rest = [0u8; 257];
    let bound = rest
        .get_mut(..addr_len + 2)
        .ok_or_else(|| error("reply too long"))?;
    stream.read_exact(bound).await?;
    Ok(())
}

/// RFC 1928 section 6.
fn reply_text(rep: u8) -> String {
    match rep {
        0x01 => "general SOCKS server failure".into(),
        0x02 => "connection not allowed by ruleset".into(),
        0x03 => "network unreachable".into(),
        0x04 => "host unreachable".into(),
        0x05 => "connection refused by the destination".into(),
        0x06 => "TTL expired".into(),
        0x07 => "command not supported".into(),
        0x08 => "address type not supported".into(),
        other => format!("failed with reply code {other:#04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = Socks5Proxy::from_url("socks5h://us%40er:p%3Ass@proxy.example:9050").unwrap();
        assert_eq!(p.host, "proxy.example");
        assert_eq!(p.port, 9050);
        assert_eq!(p.credentials, Some(("us@er".into(), "p:ss".into())));
        assert!(
            !format!("{p:?}").contains("p:ss"),
            "the password stays out of logs"
        );
        let p = Socks5Proxy::from_url("socks5h://[::1]").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials),
            ("::1", 1080, None)
        );
        assert!(Socks5Proxy::from_url("socks4://h").is_err());
        assert!(Socks5Proxy::from_url("socks5h://h:x").is_err());
    }

    #[tokio::test]
    async fn handshake_bytes_and_refusal() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let proxy = Socks5Proxy::from_url("socks5h://u:p@x").unwrap();
        let serve = async {
            let mut buf = [0u8; 64];
            server.read_exact(&mut buf[..3]).await.unwrap();
            assert_eq!(&buf[..3], [5, 1, 2]);
            server.write_all(&[5, 2]).await.unwrap();
            server.read_exact(&mut buf[..5]).await.unwrap();
            assert_eq!(&buf[..5], [1, 1, b'u', 1, b'p']);
            server.write_all(&[1, 0]).await.unwrap();
            server.read_exact(&mut buf[..13]).await.unwrap();
            assert_eq!(&buf[..13], b"\x05\x01\x00\x03\x06broker\x07\x5b");
            server
                .write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
        };
        let (r, ()) = tokio::join!(connect(&mut client, &proxy, "broker", 1883), serve);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("connection refused by the destination"), "{e}");
    }
}
