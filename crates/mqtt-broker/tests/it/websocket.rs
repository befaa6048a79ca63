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
