//! A QoS 1 or QoS 2 exchange through both state machines allocates nothing once the
//! queues have warmed up: messages move by reference count. A message fanned out to
//! many sessions holds its properties once, and is charged at least what it holds.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use bytes::Bytes;
use mqtt_codec::{ByteStr, Packet, ProtocolVersion, QoS};
use mqtt_session::{ClientOptions, ClientSession, Event, Instant, Limits, Message, ServerSession};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated and not yet freed, on this thread (wrapping: frees of memory
    /// allocated elsewhere may take it below zero).
    static LIVE_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn live_bytes() -> usize {
    LIVE_BYTES.with(Cell::get)
}

// SAFETY: defers to the system allocator; only counts calls on the current thread.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        let _ = LIVE_BYTES.try_with(|n| n.set(n.get().wrapping_add(layout.size())));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE_BYTES.try_with(|n| n.set(n.get().wrapping_sub(layout.size())));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        let _ = LIVE_BYTES.try_with(|n| {
            n.set(n.get().wrapping_sub(layout.size()).wrapping_add(new_size));
        });
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn connected(version: ProtocolVersion) -> (ClientSession, ServerSession) {
    connected_with(version, Limits::default())
}

fn connected_with(version: ProtocolVersion, limits: Limits) -> (ClientSession, ServerSession) {
    let now = Instant::ZERO;
    let mut client = ClientSession::new(ClientOptions::new(version, ByteStr::from_static("c")));
    let mut server = ServerSession::new(ByteStr::from_static("c"), limits);
    client.connect(now);
    let Some(Packet::Connect(connect)) = client.poll_transmit(now) else {
        panic!()
    };
    server.accept(now, &connect, Default::default());
    let connack = server.poll_transmit(now).unwrap();
    client.handle_packet(now, connack).unwrap();
    while client.poll_event().is_some() {}
    (client, server)
}

/// One complete exchange of `message`, client to server.
fn exchange(client: &mut ClientSession, server: &mut ServerSession, message: &Message) -> usize {
    let now = Instant::ZERO;
    client.publish(now, message.clone()).unwrap();
    let mut delivered = 0;
    loop {
        let mut moved = false;
        while let Some(p) = client.poll_transmit(now) {
            server.handle_packet(now, p).unwrap();
            moved = true;
        }
        while let Some(p) = server.poll_transmit(now) {
            client.handle_packet(now, p).unwrap();
            moved = true;
        }
        while let Some(e) = server.poll_event() {
            assert!(matches!(e, Event::Message(..)));
        }
        while let Some(e) = client.poll_event() {
            if matches!(e, Event::Delivered { .. }) {
                delivered += 1;
            }
        }
        if !moved {
            return delivered;
        }
    }
}

/// Allocations in 1,000 exchanges of `message`, after a warm-up that lets every queue
/// reach its working capacity.
fn allocations_in_1000_exchanges(
    client: &mut ClientSession,
    server: &mut ServerSession,
    message: &Message,
) -> usize {
    for _ in 0..16 {
        assert_eq!(exchange(client, server, message), 1);
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..1000 {
        assert_eq!(exchange(client, server, message), 1);
    }
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn qos1_and_qos2_exchanges_allocate_nothing() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let (mut client, mut server) = connected(version);
            let message =
                Message::new(ByteStr::from_static("a/b"), Bytes::from(vec![1u8; 16]), qos);
            let allocations = allocations_in_1000_exchanges(&mut client, &mut server, &message);
            assert_eq!(
                allocations, 0,
                "{version} {qos}: allocations in 1000 exchanges"
            );
        }
    }
}

/// A message with 5.0 properties sent to a 3.1.1 peer, which has none: its property
/// set is not copied into each PUBLISH.
#[test]
fn properties_are_not_copied_for_a_3_1_1_peer() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let (mut client, mut server) = connected(ProtocolVersion::V3_1_1);
        let mut message =
            Message::new(ByteStr::from_static("a/b"), Bytes::from(vec![1u8; 16]), qos);
        message.properties.content_type = Some(ByteStr::from_static("text/plain"));
        let allocations = allocations_in_1000_exchanges(&mut client, &mut server, &message);
        // `exchange` clones the message for `publish`, which shares its property set.
        assert_eq!(allocations, 0, "{qos}: allocations in 1000 exchanges");
    }
}

/// A 5.0 client that sends topic aliases (the server allows them): the alias travels
/// beside the properties, so a PUBLISH with no other property allocates nothing to
/// send or to decode.
#[test]
fn exchanges_with_topic_aliases_allocate_nothing() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let limits = Limits {
            topic_alias_maximum: 10,
            ..Limits::default()
        };
        let (mut client, mut server) = connected_with(ProtocolVersion::V5, limits);
        let message = Message::new(ByteStr::from_static("a/b"), Bytes::from(vec![1u8; 16]), qos);
        let allocations = allocations_in_1000_exchanges(&mut client, &mut server, &message);
        assert_eq!(allocations, 0, "{qos}: allocations in 1000 exchanges");
        client.publish(Instant::ZERO, message.clone()).unwrap();
        let Some(Packet::Publish(p)) = client.poll_transmit(Instant::ZERO) else {
            panic!("a PUBLISH");
        };
        assert!(p.topic_alias.is_some(), "the client sends an alias");
    }
}

/// A 1 MB 5.0 PUBLISH of 200,000 empty User Properties, decoded, then delivered to 10
/// sessions and sent by each: the property set is allocated once, at decode (the pairs
/// themselves are a slice of the packet), and every session's copy and PUBLISH shares
/// it. Each session charges its queue at least what the message keeps alive.
#[test]
fn fan_out_shares_user_properties_and_charges_their_memory() {
    const PAIRS: usize = 200_000;
    let mut publish = mqtt_codec::Publish::new(ByteStr::from_static("a/b"), Bytes::new());
    publish.properties.user_properties =
        std::iter::repeat_n((ByteStr::new(), ByteStr::new()), PAIRS).collect();
    let mut wire = bytes::BytesMut::new();
    Packet::Publish(publish)
        .encode(ProtocolVersion::V5, &mut wire)
        .unwrap();
    assert!(wire.len() > 1_000_000, "{} bytes", wire.len());

    let before = live_bytes();
    let mut decoder = mqtt_codec::Decoder::with_version(ProtocolVersion::V5);
    // Far over the decoder's default cap: lifted, to see what such a message costs.
    decoder.set_max_user_properties(usize::MAX);
    let Some(Packet::Publish(p)) = decoder.decode(&mut wire).unwrap() else {
        panic!("a PUBLISH")
    };
    let message = Message::from_publish(p);
    let held = live_bytes().wrapping_sub(before);
    assert_eq!(message.properties.user_properties.len(), PAIRS);
    assert!(
        held < 1024,
        "decoding allocated {held} bytes besides the packet"
    );
    // 4 bytes a pair and the identifier between pairs: the packet's bytes it keeps.
    let kept = 5 * PAIRS - 1;
    assert!(
        message.size() >= held + kept,
        "size() {} must cover the {held} bytes held and the {kept} bytes kept",
        message.size()
    );

    let limits = Limits {
        max_queued_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    };
    let mut sessions: Vec<_> = (0..10)
        .map(|_| connected_with(ProtocolVersion::V5, limits.clone()).1)
        .collect();
    let before = live_bytes();
    let allocations = ALLOCATIONS.with(Cell::get);
    let mut sent = Vec::new();
    for server in &mut sessions {
        server.deliver(Instant::ZERO, message.clone()).unwrap();
        while let Some(p) = server.poll_transmit(Instant::ZERO) {
            sent.push(p);
        }
    }
    let fan_out_bytes = live_bytes().wrapping_sub(before);
    let fan_out_allocations = ALLOCATIONS.with(Cell::get) - allocations;
    assert_eq!(sent.len(), 10);
    for p in &sent {
        let Packet::Publish(p) = p else {
            panic!("a PUBLISH")
        };
        assert!(p.properties.shares_with(&message.properties));
    }
    // Queues and packets only: a few small allocations per session, nothing in
    // proportion to the 200,000 pairs.
    assert!(
        fan_out_bytes < kept / 10,
        "fan-out to 10 sessions kept {fan_out_bytes} bytes ({fan_out_allocations} allocations)"
    );
}
