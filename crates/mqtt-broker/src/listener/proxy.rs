//! The PROXY protocol (HAProxy's, versions 1 and 2) that a load balancer (HAProxy, AWS
//! NLB, ...) sends before the client's bytes, giving the client's address.
//!
//! The header is read off the socket to the byte, never past it: what follows it
//! (MQTT, TLS) stays in the socket, which stays a plain TCP stream (it can park). A listener with `proxy_protocol = true` closes a connection whose first bytes
//! are not a valid header.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::{io::AsyncReadExt, net::TcpStream};

/// The longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Version 2's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What is read into memory: a version 1 header, or version 2's fixed part and the
/// longest address block read (two IPv6 addresses and ports). TLVs after the addresses
/// are read and dropped.
const PEEK: usize = 16 + 36 + 64;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// More bytes are needed.
    Incomplete,
    /// Not a valid header.
    Invalid(&'static str),
    /// A header of `len` bytes; `client` is `None` for a connection the balancer made
    /// itself (v2 LOCAL, a health check) or one whose family it did not know (v1
    /// UNKNOWN, v2 UNSPEC or UNIX): the socket's own address stands.
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
}

/// Parses a header from the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Header {
    if is_prefix(buf, b"PROXY ") {
        return if buf.len() < 6 {
            Header::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    if is_prefix(buf, V2_SIGNATURE) {
        return parse_v2(buf);
    }
    Header::Invalid("no PROXY protocol header")
}

/// `buf` and `expected` agree on their common length.
fn is_prefix(buf: &[u8], expected: &[u8]) -> bool {
    buf.iter().zip(expected).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Header {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Header::Invalid("PROXY v1: no CRLF within 107 bytes")
        } else {
            Header::Incomplete
        };
    };
    let Some(line) = window.get(..end).and_then(|l| std::str::from_utf8(l).ok()) else {
        return Header::Invalid("PROXY v1: not ASCII");
    };
    let len = end + 2;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let family = fields.next();
    if family == Some("UNKNOWN") {
        // The rest of the line is to be ignored.
        return Header::Complete { len, client: None };
    }
    let rest: Vec<&str> = fields.collect();
    let [source, _destination, source_port, destination_port] = rest.as_slice() else {
        return Header::Invalid("PROXY v1: not 6 fields");
    };
    let source: Option<IpAddr> = match family {
        Some("TCP4") => source.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        Some("TCP6") => source.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => return Header::Invalid("PROXY v1: family not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(ip), Some(port), Some(_)) = (source, port(source_port), port(destination_port))
    else {
        return Header::Invalid("PROXY v1: bad address or port");
    };
    Header::Complete {
        len,
        client: Some(SocketAddr::new(ip, port)),
    }
}

/// A decimal port, without a sign or leading zeros.
fn port(text: &str) -> Option<u16> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    (digits && !leading_zero)
        .then(|| text.parse().ok())
        .flatten()
}

fn parse_v2(buf: &[u8]) -> Header {
    let Some(&[version_command, family, len_hi, len_lo]) = buf.get(12..16) else {
        return Header::Incomplete;
    };
    if version_command >> 4 != 2 {
        return Header::Invalid("PROXY v2: version not 2");
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        _ => return Header::Invalid("PROXY v2: command neither LOCAL nor PROXY"),
    };
    let block = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let len = 16 + block;
    let addresses = match family {
        // TCP over IPv4 / IPv6: source, destination, source port, destination port.
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    if block < addresses {
        return Header::Invalid("PROXY v2: address block too short for its family");
    }
    if local || addresses == 0 {
        // A health check, or a family without an address to use (UNSPEC, UNIX, UDP).
        return Header::Complete { len, client: None };
    }
    let Some(block) = buf.get(16..16 + addresses) else {
        return Header::Incomplete;
    };
    let client = match block {
        [a, b, c, d, _, _, _, _, p1, p2, _, _] => SocketAddr::new(
            IpAddr::from([*a, *b, *c, *d]),
            u16::from_be_bytes([*p1, *p2]),
        ),
        _ => {
            let source = block.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok());
            let port = block.get(32..34).and_then(|p| <[u8; 2]>::try_from(p).ok());
            let (Some(source), Some(port)) = (source, port) else {
                return Header::Invalid("PROXY v2: address block");
            };
            SocketAddr::new(IpAddr::from(source), u16::from_be_bytes(port))
        }
    };
    Header::Complete {
        len,
        client: Some(client),
    }
}

/// Reads the header off `stream`: the client's address, or `None` when the socket's
/// own stands. The caller bounds it in time (`limits.connect_timeout`).
///
/// Never a byte past the header, and no polling: each read asks for bytes the header
/// still has to hold and waits until they come. The first byte tells a header from
/// anything else (which is refused at once); the shortest header of either version is
/// 15 bytes (`PROXY UNKNOWN\r\n`); a version 1 line then goes a byte at a time to its
/// CRLF, a version 2 header to its fixed part, then its address block.
pub(super) async fn read_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let invalid = |why: &'static str| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut buf = [0u8; PEEK];
    let mut have = 1;
    stream
        .read_exact(buf.get_mut(..have).unwrap_or_default())
        .await?;
    loop {
        let read = buf.get(..have).unwrap_or_default();
        let want = match parse(read) {
            Header::Complete { len, client } => {
                // TLVs beyond what was read are read and dropped.
                let mut left = len.saturating_sub(have);
                while left > 0 {
                    let chunk = buf.get_mut(..left.min(PEEK)).unwrap_or_default();
                    let n = stream.read(chunk).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= n;
                }
                return Ok(client);
            }
            Header::Invalid(why) => return Err(invalid(why)),
            Header::Incomplete if have < 15 => 15,
            Header::Incomplete if is_prefix(read, b"PROXY ") => have + 1,
            Header::Incomplete => match read.get(14..16) {
                Some(&[hi, lo]) => (16 + usize::from(u16::from_be_bytes([hi, lo]))).min(PEEK),
                _ => 16,
            },
        };
        if want <= have || want > PEEK {
            return Err(invalid("PROXY header too long"));
        }
        stream
            .read_exact(buf.get_mut(have..want).unwrap_or_default())
            .await?;
        have = want;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn version_1() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 1883\r\nMQTT";
        assert_eq!(
            parse(line),
            Header::Complete {
                len: line.len() - 4,
                client: Some("192.0.2.7:40001".parse().unwrap())
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 8883\r\n";
        assert_eq!(
            parse(line),
            Header::Complete {
                len: line.len(),
                client: Some("[2001:db8::7]:40001".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Complete {
                len: 15,
                client: None
            }
        );
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 40001\r\n"[..],
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 2\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
            b"\x10\x0c\x00\x04MQTT",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(matches!(parse(bad), Header::Invalid(_)), "{bad:?}");
        }
        assert_eq!(parse(b"PRO"), Header::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Header::Incomplete);
        assert!(matches!(parse(&[b'A'; 200]), Header::Invalid(_)));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert!(matches!(parse(&long), Header::Invalid(_)));
    }

    #[test]
    fn version_2() {
        let block = [192, 0, 2, 7, 198, 51, 100, 1, 0x9C, 0x41, 0x07, 0x5B];
        let h = v2(1, 0x11, &block);
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 28,
                client: Some("192.0.2.7:40001".parse().unwrap())
            }
        );
        let mut six = vec![0u8; 36];
        six[0] = 0x20;
        six[1] = 0x01;
        six[15] = 7;
        six[32] = 0x9C;
        six[33] = 0x41;
        // With a TLV after the addresses.
        six.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
        let h = v2(1, 0x21, &six);
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 16 + 41,
                client: Some("[2001::7]:40001".parse().unwrap())
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Header::Complete {
                len: 16,
                client: None
            }
        );
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])),
            Header::Complete {
                len: 232,
                client: None
            }
        );
        assert!(matches!(parse(&v2(2, 0x11, &block)), Header::Invalid(_)));
        assert!(matches!(
            parse(&v2(1, 0x11, &block[..8])),
            Header::Invalid(_)
        ));
        let mut wrong_version = v2(1, 0x11, &block);
        wrong_version[12] = 0x11;
        assert!(matches!(parse(&wrong_version), Header::Invalid(_)));
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_corruption_is_handled() {
        let block = [192, 0, 2, 7, 198, 51, 100, 1, 0x9C, 0x41, 0x07, 0x5B];
        let inputs = [
            v2(1, 0x11, &block),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 1883\r\n".to_vec(),
        ];
        for whole in &inputs {
            for cut in 0..whole.len() {
                assert_eq!(
                    parse(&whole[..cut]),
                    Header::Incomplete,
                    "{cut} of {whole:?}"
                );
            }
            // A deterministic walk over single-byte changes: never a panic, and a
            // header found is never longer than the input's declared bound.
            let mut seed = 0x2545F491u32;
            for i in 0..whole.len() {
                for _ in 0..8 {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let mut bad = whole.clone();
                    bad[i] = seed as u8;
                    if let Header::Complete { len, .. } = parse(&bad) {
                        assert!(len <= 16 + 65535);
                    }
                }
            }
        }
    }
}
