//! mqtt-codec: decode and encode cost per packet.
//!
//! Decoding starts from a `BytesMut` that already shares its storage (as a connection's
//! read buffer does after its first packet), so the figure is the steady-state cost:
//! parse, validate, and slice without copying.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::{hint::black_box, num::NonZeroU16};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mqtt_codec::{
    ByteStr, Connect, ConnectProperties, Decoder, Packet, PayloadFormat, ProtocolVersion, Publish,
    PublishProperties, QoS, QosPid, Subscribe, Subscription, SubscriptionId, SubscriptionOptions,
    Will,
};

fn publish(payload_len: usize, version: ProtocolVersion) -> Packet {
    let mut p = Publish::new(
        ByteStr::from_static("tenant/acme/device/0042/telemetry"),
        Bytes::from(vec![0xA5; payload_len]),
    );
    p.qos_pid = QosPid::new(QoS::AtLeastOnce, NonZeroU16::MIN);
    if version.is_v5() {
        p.properties = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Unspecified),
            message_expiry_interval: Some(3600),
            content_type: Some(ByteStr::from_static("application/octet-stream")),
            user_properties: [(
                ByteStr::from_static("trace"),
                ByteStr::from_static("abc123"),
            )]
            .into_iter()
            .collect(),
            ..PublishProperties::default()
        }
        .into();
    }
    p.into()
}

fn connect(version: ProtocolVersion) -> Packet {
    let mut c = Connect::new(version, ByteStr::from_static("device-0042"));
    c.username = Some(ByteStr::from_static("acme"));
    c.password = Some(Bytes::from_static(b"s3cret-token"));
    c.will = Some(Will {
        topic: ByteStr::from_static("tenant/acme/device/0042/status"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    if version.is_v5() {
        c.properties = ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(100),
            ..ConnectProperties::default()
        };
    }
    c.into()
}

fn subscribe(version: ProtocolVersion) -> Packet {
    let filters = [
        "tenant/acme/device/+/status",
        "tenant/acme/cmd/#",
        "$share/workers/jobs/+",
    ];
    let mut s = Subscribe::new(
        NonZeroU16::MIN,
        ByteStr::from_static(filters[0]),
        QoS::AtLeastOnce,
    );
    for f in &filters[1..] {
        if version.is_v5() || !f.starts_with("$share") {
            s.subscriptions.push(Subscription {
                filter: ByteStr::from_static(f),
                options: SubscriptionOptions::new(QoS::ExactlyOnce),
            });
        }
    }
    if version.is_v5() {
        s.properties.subscription_identifier = SubscriptionId::new(42);
    }
    s.into()
}

fn cases() -> Vec<(String, ProtocolVersion, Packet)> {
    let mut out = Vec::new();
    for (v, vname) in [
        (ProtocolVersion::V3_1_1, "3.1.1"),
        (ProtocolVersion::V5, "5.0"),
    ] {
        for (len, lname) in [(16, "16B"), (1024, "1KiB"), (65536, "64KiB")] {
            out.push((format!("publish_{lname}_{vname}"), v, publish(len, v)));
        }
        if v.is_v5() {
            // The same 16 B PUBLISH with no properties: what a 5.0 device sends most.
            out.push((
                "publish_16B_5.0_no_properties".to_owned(),
                v,
                publish(16, ProtocolVersion::V3_1_1),
            ));
        }
        if v.is_v5() {
            // Tracing or routing tags: 16 User Properties, each a short name and value.
            let mut p = publish(16, v);
            if let Packet::Publish(p) = &mut p {
                p.properties.user_properties = (0..16)
                    .map(|i| {
                        (
                            ByteStr::try_from(format!("tag-{i:02}")).expect("valid"),
                            ByteStr::from_static("value-abc123"),
                        )
                    })
                    .collect();
            }
            out.push(("publish_16B_5.0_16_user_properties".to_owned(), v, p));
        }
        out.push((format!("connect_{vname}"), v, connect(v)));
        out.push((format!("subscribe_{vname}"), v, subscribe(v)));
    }
    out
}

fn wire(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .expect("benchmark packets are valid");
    buf
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, version, packet) in cases() {
        let bytes = wire(&packet, version).freeze();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(&name, |b| {
            b.iter_batched(
                || {
                    let mut buf = BytesMut::from(&bytes[..]);
                    // Share the storage now, as a read buffer does after its first packet.
                    drop(buf.split_to(0));
                    buf
                },
                |mut buf| {
                    let mut decoder = Decoder::with_version(version);
                    black_box(decoder.decode(&mut buf))
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Steady state on a connection: many packets back to back in one read buffer, decoded
/// one after another, so the buffer's reference count stays in cache. Per packet.
fn decode_stream(c: &mut Criterion) {
    const PACKETS: usize = 1000;
    let mut group = c.benchmark_group("decode_stream");
    for (name, version, packet) in cases() {
        if !name.starts_with("publish_16B") {
            continue;
        }
        let one = wire(&packet, version);
        let mut stream = BytesMut::with_capacity(one.len() * PACKETS);
        for _ in 0..PACKETS {
            stream.extend_from_slice(&one);
        }
        let stream = stream.freeze();
        group.throughput(Throughput::Elements(PACKETS as u64));
        group.bench_function(&name, |b| {
            b.iter_batched(
                || {
                    let mut buf = BytesMut::from(&stream[..]);
                    drop(buf.split_to(0));
                    (buf, Vec::with_capacity(PACKETS))
                },
                |(mut buf, mut out)| {
                    let mut decoder = Decoder::with_version(version);
                    while let Ok(Some(p)) = decoder.decode(&mut buf) {
                        out.push(p);
                    }
                    out
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, version, packet) in cases() {
        let len = packet.encoded_len(version);
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = BytesMut::with_capacity(len);
        group.bench_function(&name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(&packet).encode(version, &mut buf).expect("valid");
                black_box(buf.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, decode_stream, encode);
criterion_main!(benches);
