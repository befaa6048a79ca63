//! Copy-on-store: what outlives the read that brought it gets memory of its own.
//!
//! Decoded strings and payloads are slices of the connection's read buffer, which is
//! what makes routing cheap; but a slice keeps its whole buffer alive. A tiny message
//! read in the same buffer as a 1 MB packet, then kept (retained, queued for a slow or
//! offline subscriber), would keep the megabyte with it. So:
//! - CONNECT (client identifier, will) and SUBSCRIBE (filters) are always copied: the
//!   session keeps them, and they are rare;
//! - a PUBLISH is copied when it came in a large buffer (`LARGE_BUFFER`) and is small
//!   beside it (under three quarters of it: a buffer grown for a large packet may be
//!   twice its size); in the small buffers of ordinary traffic it stays a slice, and a
//!   large message read into a buffer of its own size is most of that buffer.

use bytes::Bytes;
use mqtt_codec::{ByteStr, Connect, Publish, Subscribe, UserProperties};

/// A read buffer this large may hold a packet whose slices would pin much more than
/// themselves.
pub(crate) const LARGE_BUFFER: usize = 16 * 1024;

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
