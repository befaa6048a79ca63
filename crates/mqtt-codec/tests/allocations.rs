//! Decoding a PUBLISH allocates nothing but the box its properties live in, when it has
//! any: topic, payload, string properties and User Properties are slices of the read
//! buffer, shared by reference count. Encoding into a buffer with room allocates nothing.
//!
//! A counting global allocator makes this a fact checked on every test run rather than
//! a claim (the benchmarks measure speed; this measures allocations).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    num::NonZeroU16,
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Decoder, Packet, PayloadFormat, ProtocolVersion, PubAck, Publish, PublishProperties,
    QoS, QosPid,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts calls on the current thread.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

fn publish(with_properties: bool, with_alias: bool) -> Packet {
    let mut p = Publish::new(ByteStr::from_static("a/b/c"), Bytes::from_static(&[7; 16]));
    p.qos_pid = QosPid::new(QoS::AtLeastOnce, NonZeroU16::MIN);
    if with_alias {
        p.topic_alias = NonZeroU16::new(3);
    }
    if with_properties {
        p.properties = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(60),
            response_topic: Some(ByteStr::from_static("reply/here")),
            correlation_data: Some(Bytes::from_static(b"id-1")),
            content_type: Some(ByteStr::from_static("text/plain")),
            ..PublishProperties::default()
        }
        .into();
    }
    p.into()
}

#[test]
fn decoding_a_stream_of_publishes_allocates_only_their_properties() {
    // (version, with properties, with a topic alias, allocations per packet: the
    // properties' box; the alias is kept beside it and needs none)
    for (version, with_properties, with_alias, per_packet) in [
        (ProtocolVersion::V3_1, false, false, 0),
        (ProtocolVersion::V3_1_1, false, false, 0),
        (ProtocolVersion::V5, false, false, 0),
        (ProtocolVersion::V5, false, true, 0),
        (ProtocolVersion::V5, true, false, 1),
        (ProtocolVersion::V5, true, true, 1),
    ] {
        let packet = publish(with_properties, with_alias);
        let mut stream = BytesMut::new();
        for _ in 0..100 {
            packet.encode(version, &mut stream).unwrap();
        }
        let mut decoder = Decoder::with_version(version);
        // The first split turns the buffer into shared storage: one allocation per
        // buffer, not per packet.
        let first = decoder.decode(&mut stream).unwrap();
        assert_eq!(first.as_ref(), Some(&packet));
        let (allocs, decoded) = allocations_during(|| {
            let mut count = 0;
            while let Some(p) = decoder.decode(&mut stream).unwrap() {
                assert!(p == packet);
                count += 1;
            }
            count
        });
        assert_eq!(
            allocs,
            99 * per_packet,
            "{version}: allocations while decoding 99 PUBLISH packets"
        );
        assert_eq!(decoded, 99);
    }
}

#[test]
fn encoding_into_a_buffer_with_room_allocates_nothing() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let packets = [
            publish(version.is_v5(), version.is_v5()),
            PubAck::new(NonZeroU16::MIN).into(),
            Packet::PingReq,
        ];
        let mut buf = BytesMut::with_capacity(4096);
        let (allocs, ()) = allocations_during(|| {
            for _ in 0..10 {
                for p in &packets {
                    p.encode(version, &mut buf).unwrap();
                }
            }
        });
        assert_eq!(allocs, 0, "{version}");
        assert!(buf.len() > 30 * 3);
    }
}

/// User Properties cost no allocation of their own, however many a packet carries, and
/// a packet over the cap is refused without allocating.
#[test]
fn user_properties_are_decoded_without_allocating() {
    let mut p = Publish::new(ByteStr::from_static("a/b/c"), Bytes::from_static(b"x"));
    p.properties.user_properties = (0..1001)
        .map(|i| {
            (
                ByteStr::try_from(format!("k{i}")).unwrap(),
                ByteStr::from_static("v"),
            )
        })
        .collect();
    let packet = Packet::from(p);
    let mut stream = BytesMut::new();
    for _ in 0..3 {
        packet.encode(ProtocolVersion::V5, &mut stream).unwrap();
    }
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    decoder.set_max_user_properties(1001);
    assert_eq!(decoder.decode(&mut stream).unwrap().as_ref(), Some(&packet));
    let (allocs, decoded) = allocations_during(|| decoder.decode(&mut stream));
    assert_eq!(allocs, 1, "the properties' box alone");
    assert_eq!(decoded.unwrap().as_ref(), Some(&packet));
    decoder.set_max_user_properties(1000);
    let (allocs, refused) = allocations_during(|| decoder.decode(&mut stream));
    assert_eq!(allocs, 0);
    assert!(refused.is_err());
}
