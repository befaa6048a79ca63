//! A QoS 1 or QoS 2 exchange through both state machines allocates nothing once the
//! queues have warmed up: messages move by reference count.

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
        // `exchange` clones the message for `publish`: one box per exchange, no more.
        assert_eq!(allocations, 1000, "{qos}: allocations in 1000 exchanges");
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
