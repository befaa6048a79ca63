//! Application messages and the limits a session works within.

use core::num::NonZeroU16;

use bytes::Bytes;
use mqtt_codec::{ByteStr, PacketId, PropertyBox, Publish, PublishProperties, QoS, QosPid};

use crate::time::{Duration, Instant};

/// An application message: what a PUBLISH carries, without the per-connection parts
/// (packet identifier, DUP, topic alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The topic name.
    pub topic: ByteStr,
    /// The payload.
    pub payload: Bytes,
    /// The QoS to send with.
    pub qos: QoS,
    /// The RETAIN flag to send with.
    pub retain: bool,
    /// MQTT 5.0 properties (the Topic Alias is not one of them: aliases belong to a
    /// connection, and the session assigns them). `message_expiry_interval` counts down while the message
    /// waits in the session. Boxed, and nothing when there are none (most messages): a
    /// message is moved through several queues on its way, and an empty [`PropertyBox`]
    /// is one pointer where the set itself is 160 bytes. Copies of a message share
    /// the set (copy on write), so fan-out to many sessions holds it once.
    pub properties: PropertyBox<PublishProperties>,
}

/// The per-connection parts of a received PUBLISH, which [`Message`] leaves out: how
/// this copy of the message arrived, not what it says. Reported beside the message in
/// [`Event::Message`](crate::Event::Message), for tools that show them (mosquitto_sub's
/// `%m` and `%A`); forwarding and storing need only the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// The packet identifier the PUBLISH carried: `Some` for QoS 1 and 2, `None` for
    /// QoS 0.
    pub packet_id: Option<PacketId>,
    /// The topic alias the PUBLISH carried (5.0), as received: the message's topic is
    /// already resolved from it. `None` when the PUBLISH had none.
    pub topic_alias: Option<NonZeroU16>,
}

impl Arrival {
    /// The per-connection parts of `publish`; read before the session resolves its
    /// topic alias.
    #[inline]
    pub fn of(publish: &Publish) -> Self {
        Self {
            packet_id: publish.packet_id(),
            topic_alias: publish.topic_alias,
        }
    }
}

impl Message {
    /// A message with no properties.
    pub fn new(topic: ByteStr, payload: Bytes, qos: QoS) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain: false,
            properties: PropertyBox::new(),
        }
    }

    /// The message a received PUBLISH carries (its topic already resolved from an alias).
    #[inline]
    pub fn from_publish(p: Publish) -> Self {
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            properties: p.properties,
        }
    }

    /// The bytes this message holds, as counted against a session's queue quota
    /// ([`Limits::max_queued_bytes`]): the topic's and the payload's bytes, the memory
    /// of its property set ([`PropertyBox::memory_size`]: the set itself and the bytes
    /// its values hold, User Properties at their wire size), and the properties' wire
    /// size ([`PropertyBox::wire_len`]), plus [`OVERHEAD`](Self::OVERHEAD) for the copy
    /// itself: a decoded message's strings are slices of the packet's buffer, which
    /// stays alive whole, property bytes included. So it is at least what the message
    /// keeps on the heap, not just its wire size: 200,000 empty User Properties are
    /// 1 MB on the wire, held as 1 MB, and are charged 2 MB.
    ///
    /// A set shared by several sessions' copies is charged to each of them in full:
    /// each copy keeps it alive. A message with no properties costs its topic and
    /// payload, as before. O(number of Subscription Identifiers).
    pub fn size(&self) -> usize {
        let properties = if self.properties.get().is_some() {
            self.properties.memory_size() + self.properties.wire_len()
        } else {
            0
        };
        Self::OVERHEAD + self.topic.len() + self.payload.len() + properties
    }

    /// What a queued copy costs besides its bytes, charged by [`size`](Self::size): the
    /// message itself in the session's store and its entry in the queue. Without it,
    /// 100,000 queued copies of a one-byte message would be charged 100 kB and hold
    /// about 17 MB.
    pub const OVERHEAD: usize = 2 * size_of::<Self>();

    /// A QoS 0 PUBLISH of this message, by move, sent as `topic` with `topic_alias`.
    #[inline]
    pub(crate) fn into_publish(self, topic: ByteStr, topic_alias: Option<NonZeroU16>) -> Publish {
        Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: self.retain,
            topic,
            payload: self.payload,
            topic_alias,
            properties: self.properties,
        }
    }

    /// A PUBLISH of this message, sent as `topic` with `topic_alias`; without its
    /// properties unless `v5` (3.1 and 3.1.1 have none). A copy of the set is shared,
    /// not allocated.
    #[inline]
    pub(crate) fn to_publish(
        &self,
        qos_pid: QosPid,
        dup: bool,
        topic: ByteStr,
        topic_alias: Option<NonZeroU16>,
        v5: bool,
    ) -> Publish {
        Publish {
            dup,
            qos_pid,
            retain: self.retain,
            topic,
            payload: self.payload.clone(),
            topic_alias,
            // Copying a box is a reference count (or a null pointer when empty).
            properties: if v5 {
                self.properties.clone()
            } else {
                PropertyBox::new()
            },
        }
    }

    /// When the message expires, if it has a Message Expiry Interval.
    pub(crate) fn expires_at(&self, now: Instant) -> Option<Instant> {
        self.properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)))
    }
}

/// Identifies one outgoing message for the life of the session: the application learns
/// of its completion ([`crate::Event::Delivered`]) or loss ([`crate::Event::Dropped`])
/// by this id. Packet identifiers are assigned later, when the message is sent, and are
/// reused; message ids are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// The limits a session works within. Every queue a peer can grow is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How many QoS 1 and 2 PUBLISH packets we accept unacknowledged from the peer:
    /// announced as Receive Maximum (5.0); exceeding it is Protocol Error 0x93. A
    /// server also holds 3.1 and 3.1.1 clients, which are told nothing, to it for QoS 2
    /// messages awaiting PUBREL, and closes the connection beyond it: otherwise such a
    /// client could make it keep all 65,535 packet identifiers.
    pub receive_maximum: u16,
    /// How many QoS 1 and 2 PUBLISH packets we send before waiting for acknowledgements,
    /// when the peer sets no Receive Maximum (3.1, 3.1.1) or a larger one.
    pub max_inflight: u16,
    /// Messages waiting to be sent (beyond the in-flight window), at most.
    pub max_queued_messages: usize,
    /// Bytes of messages waiting to be sent, at most ([`Message::size`]).
    pub max_queued_bytes: usize,
    /// Keep QoS 0 messages for an offline session (Mosquitto's `queue_qos0_messages`).
    pub queue_qos0_offline: bool,
    /// How many topic aliases we accept from the peer (5.0 Topic Alias Maximum); 0 for none.
    pub topic_alias_maximum: u16,
    /// Whether we assign topic aliases to messages we send, within the peer's maximum.
    pub send_topic_aliases: bool,
    /// The largest packet we accept, announced as Maximum Packet Size (5.0).
    pub max_packet_size: u32,
    /// For a client: how long to wait for PINGRESP before calling the server silent.
    pub ping_timeout: Duration,
    /// For a server: the longest Keep Alive a 5.0 client may use, in seconds; a longer
    /// one, or 0, is replaced by this in CONNACK (Server Keep Alive). 0 for no cap.
    pub max_keep_alive: u16,
    /// For a server: the longest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
    /// For a server: how long, in seconds, the session of a 3.1 / 3.1.1 client with
    /// Clean Session 0 outlives its connection (those versions have no Session Expiry
    /// Interval); `u32::MAX` for never, the default.
    pub persistent_session_expiry: u32,
    /// For a server: leave the acknowledgement of each received QoS 1/2 PUBLISH to the
    /// caller, who decides it after authorization and routing and sends it with
    /// [`ServerSession::settle_publish`](crate::ServerSession::settle_publish). When
    /// false (the default) the session acknowledges with success as it takes the
    /// message.
    pub defer_publish_acks: bool,
    /// For a server: the most subscriptions one session holds. A SUBSCRIBE's new
    /// filters beyond it are refused with 0x97 Quota exceeded (5.0) or 0x80 Failure
    /// (3.1.1) by [`ServerSession::suback`](crate::ServerSession::suback); replacing a
    /// filter the session holds is always allowed.
    pub max_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            receive_maximum: 65_535,
            max_inflight: 32,
            max_queued_messages: 1_000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
            topic_alias_maximum: 0,
            send_topic_aliases: true,
            max_packet_size: mqtt_codec::MAX_PACKET_SIZE,
            ping_timeout: Duration::from_secs(10),
            max_keep_alive: 0,
            max_session_expiry: u32::MAX,
            persistent_session_expiry: u32::MAX,
            defer_publish_acks: false,
            // Far more than a device uses (AWS IoT allows 50 per connection); a bridge
            // that mirrors many topics may need it raised.
            max_subscriptions: 10_000,
        }
    }
}

/// Why an outgoing message was refused ([`crate::Refused`]) or dropped
/// ([`crate::Event::Dropped`]). More reasons may come in minor releases: a `match`
/// outside this crate needs a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The session's queue was full (messages or bytes). A QoS 0 message is dropped, or
    /// refused, first; a QoS 1/2 message is refused only when no QoS 0 message is queued.
    QueueFull,
    /// A QoS 0 message for an offline session that does not queue QoS 0.
    Offline,
    /// Its Message Expiry Interval passed while it waited ([MQTT-3.3.2-5]).
    Expired,
    /// It does not fit in the peer's Maximum Packet Size ([MQTT-3.1.2-25]).
    TooLarge,
    /// The session was discarded (clean start, or the peer had no session).
    SessionDiscarded,
    /// Server end: the client that resumed the session may not read it (its user, or
    /// the rules, changed since the message was queued).
    NotAuthorized,
    /// Client end: the server's Maximum QoS is below the message's QoS ([MQTT-3.2.2-11]).
    QosNotSupported,
    /// Client end: the server does not support retained messages ([MQTT-3.2.2-14]).
    RetainNotSupported,
}

/// An outgoing message the session would not take, handed back with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The message (boxed: refusals are rare, and a `Result` should stay small).
    pub message: alloc::boxed::Box<Message>,
    /// Why.
    pub reason: DropReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    // A PUBLISH whose only property is a topic alias gives a message without a
    // properties box, which then costs nothing to copy for each delivery.
    #[test]
    fn a_message_received_with_only_an_alias_holds_no_properties() {
        let mut p = Publish::new(ByteStr::from_static("a/b"), Bytes::from_static(b"x"));
        p.topic_alias = NonZeroU16::new(1);
        assert!(p.properties.get().is_none());
        let m = Message::from_publish(p);
        assert!(m.properties.get().is_none());
        let resent = m.to_publish(QosPid::AtMostOnce, false, m.topic.clone(), None, true);
        assert!(resent.properties.get().is_none());
    }
}
