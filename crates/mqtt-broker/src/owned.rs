//! Copy-on-store: what outlives the read that brought it gets memory of its own.
//!
//! Decoded strings and payloads are slices of the connection's read buffer, which is
//! what makes routing cheap; but a slice keeps its whole buffer alive. A tiny message
//! read in the same buffer as a 1 MB packet, then kept (retained, queued for a slow or
//! offline subscriber), would keep the megabyte with it. So:
//! - CONNECT (client identifier, will) and SUBSCRIBE (filters) are always copied: the
//!   session keeps them, and they are rare;
//! - a PUBLISH is copied when it came in a large buffer (`LARGE_BUFFER`, beyond what a
//!   busy connection reads at once) and is small beside it (under three quarters of it:
//!   a buffer grown for a large packet may be twice its size); in the reads of ordinary
//!   traffic it stays a slice, and a large message read into a buffer of its own size is
//!   most of that buffer;
//! - a message kept for as long as someone else decides ([`own_held`]: retained, or
//!   queued for a session whose client is offline) is copied then, once per route
//!   however many sessions keep it. A busy publisher's read (up to `MAX_READ_CHUNK`,
//!   32 KiB) carries many messages; the ones delivered at once pin it briefly, and an
//!   online subscriber's queue is bounded (`max_queued_messages`, the in-flight window)
//!   and drained or dropped (the slow-subscriber policy), so at most that many reads.
//!   Copying those too was measured: 0.35-0.5 CPU µs more per message at saturation
//!   (fan-in QoS 1, where the subscriber's queue is deep), for a bound that the queue
//!   limits already give.

use std::cell::RefCell;

use bytes::Bytes;
use mqtt_codec::{ByteStr, Connect, Publish, Subscribe, UserProperties};
use mqtt_session::Message;

/// A read buffer this large may hold a packet whose slices would pin much more than
/// themselves.
pub(crate) const LARGE_BUFFER: usize = 2 * crate::connection::MAX_READ_CHUNK;

fn own(s: &mut ByteStr) {
    if let Ok(copy) = ByteStr::try_from(s.as_str()) {
        *s = copy;
    }
}

fn own_bytes(b: &mut Bytes) {
    *b = Bytes::copy_from_slice(b);
}

/// Copies the strings and bytes of the properties a will and a PUBLISH share.
fn own_message_properties(
    strings: [&mut Option<ByteStr>; 2],
    correlation_data: &mut Option<Bytes>,
    user_properties: &mut UserProperties,
) {
    for s in strings.into_iter().flatten() {
        own(s);
    }
    if let Some(data) = correlation_data {
        own_bytes(data);
    }
    // All pairs in one buffer: one copy.
    user_properties.detach();
}

/// Copies what the session keeps of CONNECT: client identifier and will.
pub(crate) fn own_connect(connect: &mut Connect) {
    own(&mut connect.client_id);
    if let Some(will) = &mut connect.will {
        own(&mut will.topic);
        own_bytes(&mut will.payload);
        let p = &mut will.properties;
        own_message_properties(
            [&mut p.content_type, &mut p.response_topic],
            &mut p.correlation_data,
            &mut p.user_properties,
        );
    }
}

/// Copies the filters of a SUBSCRIBE, which the session records.
pub(crate) fn own_subscribe(subscribe: &mut Subscribe) {
    for s in &mut subscribe.subscriptions {
        own(&mut s.filter);
    }
}

/// Copies a PUBLISH read from a buffer of `buffer` bytes if it is small beside it.
pub(crate) fn own_publish_from(publish: &mut Publish, buffer: usize) {
    // The buffer first: ordinary traffic stops here without sizing its properties.
    if buffer < LARGE_BUFFER {
        return;
    }
    let size = publish.topic.len() + publish.payload.len() + publish.properties.encoded_len();
    if size.saturating_mul(4) >= buffer.saturating_mul(3) {
        return;
    }
    own(&mut publish.topic);
    own_bytes(&mut publish.payload);
    if publish.properties.get().is_some() {
        let p = publish.properties.make_mut();
        own_message_properties(
            [&mut p.content_type, &mut p.response_topic],
            &mut p.correlation_data,
            &mut p.user_properties,
        );
    }
}

thread_local! {
    /// The last message [`own_held`] copied on this thread, and its copy. The original
    /// is kept alive here, so that a message whose topic and payload start at the same
    /// addresses with the same lengths is the same message, not a new one in freed
    /// memory; one per thread, it pins one small message's read buffer at most (under
    /// `LARGE_BUFFER`).
    static LAST_OWNED: RefCell<Option<(Message, Message)>> = const { RefCell::new(None) };
}

/// `message` with memory of its own, for a session or the retained store to hold: its
/// topic, payload and properties no longer slices of the read buffer they came in. The
/// copies a route makes for many sessions share one copy of the topic and payload.
pub(crate) fn own_held(mut message: Message) -> Message {
    // A message this large is most of the buffer it came in (a smaller one in a large
    // buffer was copied when it was read: `own_publish_from`): it pins at most about
    // its own size again, and copying it for each offline session would multiply it.
    // So the cache below only ever keeps a small message's buffer (64 KiB at most).
    if message.topic.len() + message.payload.len() >= crate::connection::MAX_READ_CHUNK / 2 {
        return message;
    }
    let properties_of = |m: &Message| m.properties.get().map(std::ptr::from_ref);
    let shared = LAST_OWNED.with(|last| {
        let last = last.borrow();
        let (original, copy) = last.as_ref()?;
        let same = original.topic.as_ptr() == message.topic.as_ptr()
            && original.topic.len() == message.topic.len()
            && original.payload.as_ptr() == message.payload.as_ptr()
            && original.payload.len() == message.payload.len();
        let same_properties = properties_of(original) == properties_of(&message);
        same.then(|| {
            (
                copy.topic.clone(),
                copy.payload.clone(),
                same_properties.then(|| copy.properties.clone()),
            )
        })
    });
    let original = match shared {
        Some((topic, payload, properties)) => {
            message.topic = topic;
            message.payload = payload;
            match properties {
                // The set the route's other copies share (user properties and all).
                Some(properties) => message.properties = properties,
                None => own_properties(&mut message),
            }
            None
        }
        None => {
            let original = message.clone();
            own(&mut message.topic);
            own_bytes(&mut message.payload);
            own_properties(&mut message);
            Some(original)
        }
    };
    if let Some(original) = original {
        let copy = message.clone();
        LAST_OWNED.with(|last| *last.borrow_mut() = Some((original, copy)));
    }
    message
}

/// Copies the strings and bytes of a message's properties, if it has any.
fn own_properties(message: &mut Message) {
    if message.properties.get().is_some() {
        let p = message.properties.make_mut();
        own_message_properties(
            [&mut p.content_type, &mut p.response_topic],
            &mut p.correlation_data,
            &mut p.user_properties,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_one_buffer(
        buffer: &Bytes,
        topic: std::ops::Range<usize>,
        payload: std::ops::Range<usize>,
    ) -> Message {
        let mut m = Message::new(
            ByteStr::from_static("placeholder"),
            buffer.slice(payload),
            mqtt_codec::QoS::AtLeastOnce,
        );
        m.topic = ByteStr::try_from(buffer.slice(topic)).unwrap();
        m
    }

    // A held message stops pinning its read buffer; the sessions of one route share one
    // copy; another message is copied anew, even at the same place of a reused buffer.
    #[test]
    fn held_messages_pin_nothing_but_themselves_and_share_a_copy() {
        let buffer = Bytes::from(b"a/b payload and the rest of a 64 KiB read".to_vec());
        let m = from_one_buffer(&buffer, 0..3, 4..11);
        let first = own_held(m.clone());
        let second = own_held(m.clone());
        assert_eq!(
            (&*first.topic, &first.payload[..]),
            ("a/b", &b"payload"[..])
        );
        assert_ne!(first.payload.as_ptr(), buffer[4..].as_ptr());
        assert_eq!(first.payload.as_ptr(), second.payload.as_ptr());
        assert_eq!(first.topic.as_ptr(), second.topic.as_ptr());
        let other = from_one_buffer(&buffer, 0..1, 4..11);
        let third = own_held(other);
        assert_eq!(&*third.topic, "a");
        assert_ne!(third.payload.as_ptr(), first.payload.as_ptr());
        // A large message is most of its buffer: kept as it is, shared by all.
        let big = Bytes::from(vec![b'x'; crate::connection::MAX_READ_CHUNK]);
        let large = from_one_buffer(&big, 0..1, 1..big.len());
        assert_eq!(own_held(large).payload.as_ptr(), big[1..].as_ptr());
    }
}
