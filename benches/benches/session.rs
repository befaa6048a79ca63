//! mqtt-session: the cost of one complete QoS 1 and QoS 2 exchange through both state
//! machines (client publishes, server receives and acknowledges, client completes),
//! without the codec: the state machines alone; and the server's SUBACK and UNSUBACK for
//! SUBSCRIBE and UNSUBSCRIBE packets of 1,000 to 100,000 filters, which must grow as
//! n log n, not n².
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mqtt_codec::{
    ByteStr, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions, Unsubscribe,
};
use mqtt_session::{ClientOptions, ClientSession, Event, Instant, Limits, Message, ServerSession};

fn connected(version: ProtocolVersion) -> (ClientSession, ServerSession) {
    connected_with(version, Limits::default())
}

fn connected_with(version: ProtocolVersion, limits: Limits) -> (ClientSession, ServerSession) {
    let now = Instant::ZERO;
    let mut client = ClientSession::new(ClientOptions::new(version, ByteStr::from_static("bench")));
    let mut server = ServerSession::new(ByteStr::from_static("bench"), limits);
    client.connect(now);
    let Some(Packet::Connect(connect)) = client.poll_transmit(now) else {
        unreachable!("a new session sends CONNECT first")
    };
    server.accept(now, &connect, Default::default());
    while let Some(p) = server.poll_transmit(now) {
        client.handle_packet(now, p).expect("CONNACK is accepted");
    }
    while client.poll_event().is_some() {}
    (client, server)
}

fn exchange(client: &mut ClientSession, server: &mut ServerSession, message: &Message) {
    let now = Instant::ZERO;
    let _ = client.publish(now, message.clone());
    loop {
        let mut moved = false;
        while let Some(p) = client.poll_transmit(now) {
            let _ = server.handle_packet(now, p);
            moved = true;
        }
        while let Some(p) = server.poll_transmit(now) {
            let _ = client.handle_packet(now, p);
            moved = true;
        }
        while let Some(e) = server.poll_event() {
            black_box(&e);
        }
        while let Some(e) = client.poll_event() {
            if let Event::Delivered { id, .. } = e {
                black_box(id);
            }
        }
        if !moved {
            break;
        }
    }
}

fn exchanges(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_exchange");
    group.throughput(Throughput::Elements(1));
    for (version, vname) in [
        (ProtocolVersion::V3_1_1, "3.1.1"),
        (ProtocolVersion::V5, "5.0"),
    ] {
        for (qos, qname) in [
            (QoS::AtMostOnce, "qos0"),
            (QoS::AtLeastOnce, "qos1"),
            (QoS::ExactlyOnce, "qos2"),
        ] {
            let (mut client, mut server) = connected(version);
            let message = Message::new(
                ByteStr::from_static("tenant/acme/device/42"),
                Bytes::from(vec![7u8; 16]),
                qos,
            );
            group.bench_function(format!("{qname}_{vname}"), |b| {
                b.iter(|| exchange(&mut client, &mut server, black_box(&message)));
            });
        }
    }
    group.finish();
}

/// SUBSCRIBE of `n` distinct filters answered by a fresh session (every filter new),
/// then UNSUBSCRIBE of them all from a session holding them.
fn subscriptions(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_suback");
    group.sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        let filters: Vec<ByteStr> = (0..n)
            .map(|i| ByteStr::try_from(format!("tenant/{i}/+/temperature")).expect("valid"))
            .collect();
        let packet_id = PacketId::new(1).expect("non-zero");
        let subscribe = Subscribe {
            packet_id,
            subscriptions: filters
                .iter()
                .map(|f| Subscription {
                    filter: f.clone(),
                    options: SubscriptionOptions::new(QoS::AtLeastOnce),
                })
                .collect(),
            properties: Default::default(),
        };
        let unsubscribe = Unsubscribe {
            packet_id,
            filters,
            properties: Default::default(),
        };
        let codes = vec![ReasonCode::GRANTED_QOS_1; n];
        let limits = Limits {
            max_subscriptions: n,
            ..Limits::default()
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("suback_{n}"), |b| {
            b.iter_batched(
                || connected_with(ProtocolVersion::V5, limits.clone()).1,
                |mut server| {
                    server.suback(black_box(&subscribe), codes.clone());
                    server
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_function(format!("unsuback_{n}"), |b| {
            b.iter_batched(
                || {
                    let mut server = connected_with(ProtocolVersion::V5, limits.clone()).1;
                    server.suback(&subscribe, codes.clone());
                    while server.poll_transmit(Instant::ZERO).is_some() {}
                    server
                },
                |mut server| {
                    server.unsuback(black_box(&unsubscribe), Vec::new());
                    server
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, exchanges, subscriptions);
criterion_main!(benches);
