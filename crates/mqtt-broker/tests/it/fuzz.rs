//! The server end under random and mutated packet streams over real connections: the
//! broker must never panic, must close only the offending connection, and must go on
//! serving well-behaved clients. Bounded: a fixed number of connections, all on
//! 127.0.0.1, each with a time limit.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Connect, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS, QosPid, Subscribe,
    Unsubscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::broker;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// xorshift64*: deterministic, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A plausible session: CONNECT then a few other packets, in one version.
fn valid_stream(rng: &mut Rng) -> Vec<u8> {
    let version = [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ][rng.below(3)];
    let id = PacketId::new(1 + rng.below(60_000) as u16).unwrap();
    let mut connect = Connect::new(
        version,
        ByteStr::try_from(format!("fz{}", rng.below(50))).unwrap(),
    );
    connect.keep_alive = rng.below(5) as u16;
    let mut packets: Vec<Packet> = vec![connect.into()];
    for _ in 0..rng.below(6) {
        let p: Packet = match rng.below(6) {
            0 => {
                let mut p =
                    Publish::new(ByteStr::from_static("fz/t"), Bytes::from_static(b"payload"));
                p.qos_pid = QosPid::new(
                    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)],
                    id,
                );
                p.retain = rng.below(2) == 0;
                p.into()
            }
            1 => Subscribe::new(id, ByteStr::from_static("fz/#"), QoS::AtLeastOnce).into(),
            2 => Unsubscribe {
                packet_id: id,
                filters: vec![ByteStr::from_static("fz/#")],
                properties: Default::default(),
            }
            .into(),
            3 => PubAck::new(id).into(),
            4 => Packet::PingReq,
            _ => mqtt_codec::Disconnect::default().into(),
        };
        packets.push(p);
    }
    let mut out = BytesMut::new();
    for p in &packets {
        let _ = p.encode(version, &mut out);
    }
    out.to_vec()
}

fn mutate(rng: &mut Rng, mut data: Vec<u8>) -> Vec<u8> {
    match rng.below(4) {
        // Random bytes.
        0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        // Overwrite a few bytes.
        1 => {
            for _ in 0..1 + rng.below(4) {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            data
        }
        // Truncate.
        2 => {
            let keep = rng.below(data.len() + 1);
            data.truncate(keep);
            data
        }
        // Splice a random byte run in.
        _ => {
            let at = rng.below(data.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            data.splice(at..at, junk);
            data
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_streams_never_take_the_broker_down() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let (broker, addr) = broker().await;
    // MQTT_FUZZ_CONNECTIONS and MQTT_FUZZ_SEED run it longer or differently by hand.
    let seed = std::env::var("MQTT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let connections: usize = std::env::var("MQTT_FUZZ_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..connections {
        let stream = valid_stream(&mut rng);
        let data = if n % 5 == 0 {
            stream
        } else {
            mutate(&mut rng, stream)
        };
        tasks.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = s.write_all(&data).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 1024];
            // The broker must answer and/or close within its limits.
            let _ = timeout(Duration::from_secs(15), async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
        // At most 32 at once.
        while tasks.len() >= 32 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the broker panicked");

    // Still serving: a clean publish/subscribe round trip.
    let mut opts = rumqttc::MqttOptions::new("after-fuzz", "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("after/fuzz", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish("after/fuzz", rumqttc::QoS::AtLeastOnce, false, "alive")
        .await
        .unwrap();
    let got = timeout(crate::WAIT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) =
                eventloop.poll().await
            {
                return p;
            }
        }
    })
    .await
    .expect("broker still serves");
    assert_eq!(&got.payload[..], b"alive");
    broker.shutdown().await;
}
