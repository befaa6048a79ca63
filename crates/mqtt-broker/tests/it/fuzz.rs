//! The server end under random and mutated packet streams over real connections: the
//! broker must never panic, must close only the offending connection, and must go on
//! serving well-behaved clients. Bounded: a fixed number of connections, all on
//! 127.0.0.1, each with a time limit.

use std::{
    net::SocketAddr,
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
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

use crate::{
    broker,
    spec::{Client, publish},
};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this test binary in [`PANICS`] (broker tasks' included, which
/// tokio would otherwise swallow). Installed once, whichever test comes first.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
    });
}

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
    count_panics();
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

/// The seeds of the `broker_connection` fuzz target.
const SEEDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fuzz/seeds/broker_connection"
);

/// How the `broker_connection` fuzz target cuts a stream into writes, copied from
/// `mqtt_broker::fuzzing` (behind a feature these tests do not turn on): `mode` 0
/// writes it whole; otherwise each write is 1 to `mode` bytes long, the lengths drawn
/// from an xorshift seeded with `mode`.
fn chunks(mode: u8, stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut state = u32::from(mode) | 0x100;
    while !rest.is_empty() {
        let len = if mode == 0 {
            rest.len()
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + state as usize % usize::from(mode)
        };
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// Sends an input of the `broker_connection` fuzz target (a split mode byte, then the
/// stream) over TCP as that target does over its in-memory stream: the writes, a
/// half-close, then reads until the broker closes. Returns whether the broker closed
/// within [`crate::WAIT`].
async fn replay(addr: SocketAddr, input: &[u8]) -> bool {
    let (mode, stream) = input.split_first().map_or((0, &[][..]), |(&m, s)| (m, s));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.split();
    let write = async {
        for chunk in chunks(mode, stream) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut sink = [0u8; 4096];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    timeout(crate::WAIT, async { tokio::join!(write, read) })
        .await
        .is_ok()
}

/// A well-formed client's round trip: CONNECT, SUBSCRIBE, PUBLISH, its message back.
async fn still_serves(addr: SocketAddr, version: ProtocolVersion, id: &str) {
    let mut c = Client::connect(addr, version, id).await;
    let topic = format!("fuzz/check/{id}");
    c.sub(&topic, QoS::AtLeastOnce).await;
    c.send(publish(&topic, b"alive", QoS::AtLeastOnce, false))
        .await;
    let got = c
        .find(|p| match p {
            Packet::Publish(p) if *p.topic == *topic => Some(p.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&got[..], b"alive", "{id}");
}

/// Every seed of the `broker_connection` fuzz target, then a few thousand streams
/// (valid, mutated or random, split at random points) from a fixed seed, over TCP to one
/// broker: each connection ends once its client half-closes, nothing panics, and a
/// well-formed client is served after every seed and after the random streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_seeds_and_split_streams_leave_the_broker_serving() {
    count_panics();
    let panics = PANICS.load(Ordering::SeqCst);
    let (broker, addr) = broker().await;
    let mut seeds: Vec<_> = std::fs::read_dir(SEEDS)
        .expect("the seed corpus")
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{} seeds in {SEEDS}", seeds.len());
    for (n, path) in seeds.iter().enumerate() {
        let input = std::fs::read(path).unwrap();
        assert!(replay(addr, &input).await, "{}: not closed", path.display());
        let version = [ProtocolVersion::V3_1_1, ProtocolVersion::V5][n % 2];
        still_serves(addr, version, &format!("after-seed-{n}")).await;
    }

    // MQTT_FUZZ_SPLIT_STREAMS runs more by hand; MQTT_FUZZ_SEED is shared with the test
    // above.
    let seed = std::env::var("MQTT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2545_F491_4F6C_DD1D);
    let streams: usize = std::env::var("MQTT_FUZZ_SPLIT_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..streams {
        let mut input = vec![rng.next() as u8];
        let stream = valid_stream(&mut rng);
        input.extend(if n % 4 == 0 {
            stream
        } else {
            mutate(&mut rng, stream)
        });
        tasks.spawn(async move { replay(addr, &input).await.then_some(()).ok_or(input) });
        while tasks.len() >= 32 {
            let closed = tasks.join_next().await.unwrap().unwrap();
            assert_eq!(closed, Ok(()), "a connection was not closed");
        }
    }
    while let Some(closed) = tasks.join_next().await {
        assert_eq!(closed.unwrap(), Ok(()), "a connection was not closed");
    }
    eprintln!("{streams} split streams in {:?}", started.elapsed());
    still_serves(addr, ProtocolVersion::V5, "after-split-streams").await;
    assert_eq!(PANICS.load(Ordering::SeqCst), panics, "something panicked");
    broker.shutdown().await;
}
