//! A race between two clients, in a test binary of its own so that no other test loads
//! the machine while it runs: a just-connected client's SUBSCRIBE is taken as fast as a
//! busy client's. B connects and subscribes and, without waiting for SUBACK, A publishes
//! (QoS 1) to that topic. Two connections have no order between them in the spec, but a
//! single-threaded broker (Mosquitto: 0 of 200 lost) takes them in the order they came,
//! and clients count on it. Measured against this broker's binary: 158 of 200 lost while
//! a new connection parked at once after CONNACK, 51 with a grace before parking, 3-9
//! (debug build; 0-3 release) once a connection woken by input also yields before
//! routing. Looped, and bounded at 10 % so that either cause coming back fails it.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Connect, Decoder, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, Subscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

/// The broker binary on a free loopback port, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Raw {
    s: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        let mut raw = Self {
            s: TcpStream::connect(addr).await.unwrap(),
            decoder: Decoder::with_version(V),
            buf: BytesMut::new(),
        };
        raw.send(Connect::new(V, ByteStr::try_from(id.to_owned()).unwrap()).into())
            .await;
        assert!(matches!(
            raw.next(Duration::from_secs(10)).await,
            Some(Packet::ConnAck(_))
        ));
        raw
    }

    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.encode(V, &mut b).unwrap();
        self.s.write_all(&b).await.unwrap();
    }

    /// The next packet, or `None` when nothing comes within `wait` or the connection
    /// closes.
    async fn next(&mut self, wait: Duration) -> Option<Packet> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            match timeout(wait, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_connected_subscriber_wins_the_race_against_a_later_publish() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _broker = Broker(
        Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a = Raw::connect(addr, "racer-a").await;
    let rounds = 200u16;
    let mut missed = Vec::new();
    for round in 1..=rounds {
        let mut b = Raw::connect(addr, &format!("racer-b-{round}")).await;
        let topic = ByteStr::try_from(format!("race/{round}")).unwrap();
        b.send(Subscribe::new(PacketId::MIN, topic.clone(), QoS::AtLeastOnce).into())
            .await;
        let mut p = Publish::new(topic, Bytes::from_static(b"now"));
        p.qos_pid = QosPid::new(QoS::AtLeastOnce, PacketId::new(round).unwrap());
        a.send(p.into()).await;
        assert!(matches!(
            a.next(Duration::from_secs(10)).await,
            Some(Packet::PubAck(_))
        ));
        let mut got = false;
        while let Some(packet) = b.next(Duration::from_millis(300)).await {
            if matches!(packet, Packet::Publish(_)) {
                got = true;
                break;
            }
        }
        if !got {
            missed.push(round);
        }
    }
    assert!(
        missed.len() * 10 <= usize::from(rounds),
        "lost {} of {rounds} races: rounds {missed:?}",
        missed.len()
    );
}
