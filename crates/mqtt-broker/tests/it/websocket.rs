//! WebSocket and WebSocket over TLS listeners: Python paho-mqtt over `ws` and `wss`,
//! and a raw client writing frames by hand for what paho does not do (a packet split
//! across frames, several packets in one frame, Ping, Close, text and oversized frames).
//! The browser's turn is in `browser.rs`.

use std::time::Duration;

use mqtt_broker::{
    Auth,
    auth::TransportKind,
    config::{Listener, Protocol},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    WAIT,
    pki::{Pki, Recorder, broker_on, closed_within, connect_bytes, tls_listener},
};

fn ws_listener(path: Option<&str>) -> Listener {
    let mut l = Listener::new("127.0.0.1:0".parse().unwrap());
    l.protocol = Protocol::WebSockets;
    l.websocket_path = path.map(str::to_owned);
    l
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opens a WebSocket to `path` offering `protocols`: the stream and the response head.
async fn upgrade(addr: std::net::SocketAddr, path: &str, protocols: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// Reads one server frame (unmasked): its first byte and payload.
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            s.read_exact(&mut ext).await.unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            s.read_exact(&mut ext).await.unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

/// Reads binary frames until `n` bytes of MQTT have come (packets may span frames).
async fn read_mqtt(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let (first, payload) = read_frame(s).await;
        assert_eq!(first, 0x82, "a binary frame");
        got.extend(payload);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_ws_and_wss() {
    let _timing = crate::TIMING.read().await;
    crate::paho::require_paho();
    let pki = Pki::new();
    let mut wss = tls_listener(&pki.cert, &pki.key);
    wss.protocol = Protocol::WebSockets;
    wss.websocket_path = Some("/custom".into());
    let (broker, addrs) = broker_on(vec![ws_listener(None), wss], Auth::default(), |_| {}).await;
    crate::paho::transports("ws", addrs[0].port(), None, None).await;
    crate::paho::transports("wss", addrs[1].port(), Some(&pki.ca), Some("/custom")).await;
    broker.shutdown().await;
}

/// Packets split across frames and several in one frame; Ping answered with Pong; the
/// subprotocol `mqtt` agreed; the Authenticator told it is WebSocket.
// 3.1.1 MQTT-6.0.0-2, 5.0 MQTT-6.0.0-2: packets do not align with frames.
// 3.1.1 MQTT-6.0.0-4, 5.0 MQTT-6.0.0-4: the subprotocol returned is "mqtt".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_a_byte_stream() {
    let _timing = crate::TIMING.read().await;
    let recorder = Recorder::default();
    let (broker, addrs) = broker_on(vec![ws_listener(None)], recorder.auth(), |_| {}).await;
    let (mut s, head) = upgrade(addrs[0], "/mqtt", "mqtt").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
    // CONNECT in three frames of one message (binary, continuation, continuation).
    let connect = connect_bytes("ws-raw", None);
    let (a, rest) = connect.split_at(3);
    let (b, c) = rest.split_at(5);
    let mut wire = frame(0x02, a);
    wire.extend(frame(0x00, b));
    wire.extend(frame(0x89, b"are you there")); // a Ping between fragments
    wire.extend(frame(0x80, c));
    s.write_all(&wire).await.unwrap();
    let (first, payload) = read_frame(&mut s).await;
    let (first, payload) = if first == 0x8A {
        assert_eq!(payload, b"are you there");
        read_frame(&mut s).await
    } else {
        let pong = read_frame(&mut s).await;
        assert_eq!(pong, (0x8A, b"are you there".to_vec()));
        (first, payload)
    };
    assert_eq!((first, payload), (0x82, vec![0x20, 2, 0, 0]), "CONNACK");
    // SUBSCRIBE and a QoS 0 PUBLISH to it in one frame.
    let mut two = vec![0x82, 8, 0, 1, 0, 3, b'w', b'/', b's', 0];
    two.extend_from_slice(&[0x30, 7, 0, 3, b'w', b'/', b's', b'h', b'i']);
    s.write_all(&frame(0x82, &two)).await.unwrap();
    let got = read_mqtt(&mut s, 5 + 9).await;
    assert_eq!(&got[..5], &[0x90, 3, 0, 1, 0], "SUBACK");
    assert_eq!(&got[5..], &[0x30, 7, 0, 3, b'w', b'/', b's', b'h', b'i']);
    let seen = recorder.seen("ws-raw").await;
    assert_eq!(seen.transport.kind, TransportKind::WebSocket);
    // A Close is answered with a Close, and the connection ends.
    s.write_all(&frame(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (first, payload) = read_frame(&mut s).await;
    assert_eq!((first, payload), (0x88, 1000u16.to_be_bytes().to_vec()));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    broker.shutdown().await;
}

/// A text frame, an unmasked frame and a frame over the limit close the connection with
/// a Close saying why; a wrong path is answered 404; the upgrade is under the connect
/// timeout.
// 3.1.1 MQTT-6.0.0-1, 5.0 MQTT-6.0.0-1: a data frame that is not binary closes the
// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_refused() {
    let _timing = crate::TIMING.read().await;
    let (broker, addrs) = broker_on(vec![ws_listener(None)], Auth::default(), |c| {
        c.limits.max_packet_size = 1024;
        c.limits.connect_timeout = 1;
    })
    .await;
    let addr = addrs[0];
    let (_, head) = upgrade(addr, "/elsewhere", "mqtt").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    for (wire, code) in [
        (frame(0x81, b"\x10"), 1003u16),
        (vec![0x82, 0x02, 0x10, 0x00], 1002),
        (frame(0x82, &vec![0u8; 1024 + 4096 + 1]), 1009),
    ] {
        let (mut s, head) = upgrade(addr, "/mqtt?client=1", "mqttv3.1").await;
        assert!(
            head.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
            "{head}"
        );
        s.write_all(&wire).await.unwrap();
        let (first, payload) = read_frame(&mut s).await;
        assert_eq!((first, payload), (0x88, code.to_be_bytes().to_vec()));
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    }
    // Half an upgrade request, then silence: closed after the connect timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    broker.shutdown().await;
}

/// The number of sockets the broker counts as still setting up (before CONNECT's
/// answer), from `/metrics`.
async fn handshaking(http: std::net::SocketAddr) -> f64 {
    let (status, scrape) =
        tokio::task::spawn_blocking(move || crate::ops::http(http, "GET", "/metrics", None))
            .await
            .unwrap();
    assert_eq!(status, 200);
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix("mqtt_connections_handshaking ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no mqtt_connections_handshaking in:\n{scrape}"))
}

/// A client that sends Pings one at a time and never reads, then a CONNECT that does
/// not decode, holds no place among the connections being set up once the connect
/// timeout has passed. The broker answers one Ping at a time and reads on only when its
/// Pong is out, and the refusing CONNACK has a bound. Answering every Ping filled the
/// socket, after which the refusal's write waited for ever, and with it the place
/// this socket took against `max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_and_never_reads_is_let_go() {
    let _timing = crate::TIMING.read().await;
    let (broker, addrs) = broker_on(vec![ws_listener(None)], Auth::default(), |c| {
        c.limits.connect_timeout = 5;
        c.http.bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (addr, http) = (addrs[0], broker.http_addr().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let request = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    // One Ping a write, paced so that the broker reads each on its own, for 3 s: some
    // 30,000 Pongs owed, more than a socket buffers (about 3 MB here), or until the
    // broker stops reading them (the writes stall).
    let ping = frame(0x89, &[0x55; 125]);
    let started = std::time::Instant::now();
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let s = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        while started.elapsed() < Duration::from_secs(3) && s.write_all(&ping).is_ok() {
            std::thread::sleep(Duration::from_micros(30));
        }
        s
    })
    .await
    .unwrap();
    s.set_nonblocking(true).unwrap();
    let mut s = TcpStream::from_std(s).unwrap();
    assert_eq!(handshaking(http).await, 1.0);
    // CONNECT with protocol level 6, which the broker would refuse with a CONNACK.
    let connect = frame(
        0x82,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00,
        ],
    );
    let _ = tokio::time::timeout(Duration::from_millis(200), s.write_all(&connect)).await;
    // The connect timeout (5 s from the upgrade) and the bound on a refusal (1 s), with
    // room to spare.
    let mut left = 1.0;
    while started.elapsed() < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = handshaking(http).await;
        if left == 0.0 {
            break;
        }
    }
    assert_eq!(left, 0.0, "the socket still counts as setting up");
    drop(s);
    broker.shutdown().await;
}
