//! Listeners behind a load balancer (`proxy_protocol = true`): a raw client sends the
//! PROXY protocol header a balancer would (v1 text, v2 binary), and the address in it
//! is the one the Authenticator sees; a connection without a valid header is closed.

use std::{net::SocketAddr, time::Duration};

use mqtt_broker::config::Listener;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::pki::{Pki, Recorder, broker_on, closed_within, mqtt_connect, tls_listener};

fn proxied(mut l: Listener) -> Listener {
    l.proxy_protocol = true;
    l
}

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_reaches_the_authenticator() {
    let _timing = crate::TIMING.read().await;
    let pki = Pki::new();
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(
        vec![
            proxied(Listener::new("127.0.0.1:0".parse().unwrap())),
            proxied(tls_listener(&pki.cert, &pki.key)),
        ],
        recorder.auth(),
        |_| {},
    )
    .await;
    let plain = addrs[0];
    let mut ipv6_block = vec![0x20, 0x01, 0x0d, 0xb8];
    ipv6_block.extend_from_slice(&[0; 11]);
    ipv6_block.push(7); // 2001:db8::7
    ipv6_block.extend_from_slice(&[0; 16]); // destination
    ipv6_block.extend_from_slice(&[0x9C, 0x41, 0x07, 0x5B]);
    ipv6_block.extend_from_slice(&[0x01, 0x00, 0x02, 0xAB, 0xCD]); // a TLV, skipped
    let cases: Vec<(&str, Vec<u8>, Option<SocketAddr>)> = vec![
        (
            "v1-tcp4",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 1883\r\n".to_vec(),
            Some("192.0.2.7:40001".parse().unwrap()),
        ),
        (
            "v1-tcp6",
            b"PROXY TCP6 2001:db8::9 2001:db8::1 40002 1883\r\n".to_vec(),
            Some("[2001:db8::9]:40002".parse().unwrap()),
        ),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec(), None),
        (
            "v2-tcp4",
            v2(
                1,
                0x11,
                &[203, 0, 113, 5, 198, 51, 100, 1, 0x9C, 0x43, 0x07, 0x5B],
            ),
            Some("203.0.113.5:40003".parse().unwrap()),
        ),
        (
            "v2-tcp6",
            v2(1, 0x21, &ipv6_block),
            Some("[2001:db8::7]:40001".parse().unwrap()),
        ),
        ("v2-local", v2(0, 0x00, &[]), None),
    ];
    for (id, header, expected) in cases {
        let mut s = TcpStream::connect(plain).await.unwrap();
        let own = s.local_addr().unwrap();
        // The header in two writes, then CONNECT in a third.
        let (a, b) = header.split_at(header.len() / 2);
        s.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b).await.unwrap();
        assert_eq!(mqtt_connect(&mut s, id).await.unwrap(), 0, "{id}");
        assert_eq!(
            recorder.seen(id).await.peer,
            expected.unwrap_or(own),
            "{id}"
        );
    }
    // The header and CONNECT in one write: the header is read to its last byte and no
    // further, and CONNECT after it.
    for (id, header, expected) in [
        (
            "v1-one-write",
            b"PROXY TCP4 192.0.2.8 198.51.100.1 40005 1883\r\n".to_vec(),
            "192.0.2.8:40005",
        ),
        (
            "v2-one-write",
            v2(
                1,
                0x11,
                &[203, 0, 113, 6, 198, 51, 100, 1, 0x9C, 0x46, 0x07, 0x5B],
            ),
            "203.0.113.6:40006",
        ),
    ] {
        let mut s = TcpStream::connect(plain).await.unwrap();
        let mut wire = header;
        wire.extend(crate::pki::connect_bytes(id, None));
        s.write_all(&wire).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut connack)
            .await
            .unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{id}");
        assert_eq!(
            recorder.seen(id).await.peer,
            expected.parse::<SocketAddr>().unwrap(),
            "{id}"
        );
    }
    // Before TLS: the header, then the handshake.
    let mut tcp = TcpStream::connect(addrs[1]).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.99 198.51.100.1 41000 8883\r\n")
        .await
        .unwrap();
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_config(None, v13, &[]))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(mqtt_connect(&mut tls, "behind-tls").await.unwrap(), 0);
    let seen = recorder.seen("behind-tls").await;
    assert_eq!(seen.peer, "192.0.2.99:41000".parse().unwrap());
    assert_eq!(seen.transport.listener, 1);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_garbled_header_closes_the_connection() {
    let _timing = crate::TIMING.read().await;
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(
        vec![proxied(Listener::new("127.0.0.1:0".parse().unwrap()))],
        recorder.auth(),
        |c| c.limits.connect_timeout = 1,
    )
    .await;
    let addr = addrs[0];
    let mut bad_v2 = v2(1, 0x11, &[203, 0, 113, 5]); // address block too short
    bad_v2.extend(crate::pki::connect_bytes("x", None));
    for wire in [
        crate::pki::connect_bytes("no-header", None),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 1883\r\n".to_vec(),
        b"PROXY TCP4 not-an-address 198.51.100.1 1 1883\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 1883\n".to_vec(),
        bad_v2,
        vec![b'P'; 200],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "{:?}",
            String::from_utf8_lossy(&wire)
        );
    }
    // Half a header, then silence: closed after the connect timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.").await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(recorder.count(), 0, "nothing reached CONNECT");
    broker.shutdown().await;
}
