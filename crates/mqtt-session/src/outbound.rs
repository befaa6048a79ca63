//! Messages we send: the bounded queue, the in-flight window, packet identifiers and
//! outgoing topic aliases.

use alloc::{
    boxed::Box,
    collections::{BTreeMap, VecDeque},
    vec::Vec,
};
use core::num::NonZeroU16;

use mqtt_codec::{ByteStr, Packet, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode};

use crate::{
    event::{Event, Events},
    message::{DropReason, Limits, Message, MessageId, Refused},
    time::Instant,
};

/// Where a QoS 1/2 message stands in its exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the packets awaited
pub(crate) enum Awaiting {
    /// QoS 1: PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2: PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP. The message itself is no longer needed.
    PubComp,
}

/// A message waiting to be sent. The message itself stays in the [`Store`] from
/// `enqueue` until its exchange ends: queues and the in-flight window move only these
/// small handles, never the message.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    pub(crate) id: MessageId,
    /// Where the message is in the [`Store`].
    pub(crate) slot: usize,
    pub(crate) qos: QoS,
    /// [`Message::size`], counted against the queue quota.
    pub(crate) size: usize,
    pub(crate) expires_at: Option<Instant>,
}

#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) id: MessageId,
    pub(crate) packet_id: PacketId,
    pub(crate) phase: Awaiting,
    /// Where the message is in the [`Store`]; `None` once PUBREL was sent.
    pub(crate) slot: Option<usize>,
    /// [`Message::size`] of the message while it is held (`slot` is `Some`), counted in
    /// [`Outbox::inflight_bytes`].
    pub(crate) size: usize,
    /// Its PUBLISH waits to be sent again on this connection: the session resumed with
    /// more in flight than the peer's Receive Maximum now allows (see
    /// [`Outbox::resend`]).
    pub(crate) waiting: bool,
    /// When its Message Expiry Interval ends, for a resend to carry what is left of it
    /// ([MQTT-3.3.2-6]); `None` for a message without one, or one restored from disk
    /// (which keeps the interval it was last sent with).
    pub(crate) expires_at: Option<Instant>,
}

/// The PUBLISH that sends `m` again for in-flight entry `f`: DUP set, the full topic
/// (aliases do not outlive a connection), and what is left of its Message Expiry
/// Interval ([MQTT-3.3.2-6]).
fn resent_publish(
    m: &Message,
    f: &InFlight,
    now: Instant,
    version: ProtocolVersion,
) -> mqtt_codec::Publish {
    let mut publish = m.to_publish(
        QosPid::new(m.qos, f.packet_id),
        true,
        m.topic.clone(),
        None,
        version.is_v5(),
    );
    if let Some(at) = f.expires_at.filter(|_| version.is_v5()) {
        let left = at.saturating_since(now).as_secs_ceil().max(1);
        publish.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
    }
    publish
}

/// How many packet identifiers there are (1 to 65,535).
const PACKET_IDS: u32 = 65_535;

/// How far `to` is ahead of `from`, counting on from 65,535 to 1: 0 if they are the
/// same, 1 for the next identifier, up to 65,534.
fn ahead(from: PacketId, to: PacketId) -> u32 {
    (u32::from(to.get()) + PACKET_IDS - u32::from(from.get())) % PACKET_IDS
}

/// Outgoing messages, queued or in flight, each written once where it stays: a slab
/// with a free list.
#[derive(Debug, Default)]
pub(crate) struct Store {
    slots: Vec<Option<Message>>,
    free: Vec<usize>,
}

impl Store {
    #[inline(always)]
    fn insert(&mut self, message: Message) -> usize {
        if let Some(slot) = self.free.pop() {
            if let Some(entry) = self.slots.get_mut(slot) {
                *entry = Some(message);
                return slot;
            }
        }
        self.slots.push(Some(message));
        self.slots.len() - 1
    }

    fn get(&self, slot: usize) -> Option<&Message> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Message> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Takes the message out and frees its slot.
    fn take(&mut self, slot: usize) -> Option<Message> {
        let stored = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(stored)
    }

    /// Drops the message where it is and frees its slot.
    #[inline]
    fn remove(&mut self, slot: usize) {
        if let Some(entry @ Some(_)) = self.slots.get_mut(slot) {
            *entry = None;
            self.free.push(slot);
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }
}

/// What a peer's acknowledgement meant for our outgoing messages.
pub(crate) enum AckOutcome {
    /// The exchange finished (PUBACK, PUBCOMP, or PUBREC with an error code).
    Done(MessageId),
    /// PUBREC with success: send PUBREL now.
    SendPubRel,
    /// No message is waiting for this acknowledgement.
    Unknown,
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) queue: VecDeque<Queued>,
    pub(crate) queued_bytes: usize,
    /// How many messages of `queue` are QoS 0.
    pub(crate) queued_qos0: usize,
    pub(crate) inflight: VecDeque<InFlight>,
    /// Whether `inflight`'s packet identifiers may be out of order: false while each
    /// entry's identifier is ahead of the one before it (counting on from 65,535 to 1)
    /// and the whole window spans fewer than 65,535 of them, as when every one was
    /// allocated here in turn (see [`Outbox::id_in_use`]). Only a restored window can
    /// break that; the flag clears when the window empties.
    inflight_unordered: bool,
    /// [`Message::size`] of the messages `inflight` still holds (until PUBACK, PUBREC).
    pub(crate) inflight_bytes: usize,
    /// How many entries of `inflight` wait to be sent again ([`InFlight::waiting`]),
    /// and where in `inflight` the first of them is at the earliest.
    pub(crate) waiting: usize,
    waiting_from: usize,
    /// The messages of `queue` and `inflight`.
    pub(crate) store: Store,
    /// Packet identifiers in use outside the in-flight window (a client's pending
    /// SUBSCRIBE and UNSUBSCRIBE).
    pub(crate) other_ids: Vec<PacketId>,
    pub(crate) next_packet_id: u16,
    pub(crate) next_message_id: u64,
    /// Outgoing topic aliases of this connection; `None` until the first is assigned
    /// (most connections never use any).
    aliases: Option<Box<Aliases>>,
}

/// Outgoing topic aliases, found both ways in O(log n) at most: alias to topic by
/// index, topic to alias through an ordered map. Both hold at most the peer's Topic
/// Alias Maximum entries; a topic's bytes are shared between them, not copied.
#[derive(Debug, Default)]
struct Aliases {
    /// Alias `i + 1` stands for `topics[i]`.
    topics: Vec<ByteStr>,
    /// The alias slot (index in `topics`) of each topic.
    slots: BTreeMap<ByteStr, u16>,
    /// The slot to reassign next once every alias is taken.
    next_victim: usize,
}

impl Aliases {
    /// The alias slot for `topic` and whether it is new to the peer (send the topic
    /// with it), assigning one below `max` (> 0) if `topic` has none: a free one while
    /// any is left, then round-robin, which is cheap and fair to topics seen once.
    fn slot_for(&mut self, topic: &ByteStr, max: u16) -> Option<(usize, bool)> {
        if let Some(&slot) = self.slots.get(topic.as_str()) {
            return Some((usize::from(slot), false));
        }
        let slot = if self.topics.len() < usize::from(max) {
            self.topics.push(topic.clone());
            self.topics.len() - 1
        } else {
            let slot = self.next_victim % self.topics.len().max(1);
            self.next_victim = slot + 1;
            let old = core::mem::replace(self.topics.get_mut(slot)?, topic.clone());
            self.slots.remove(old.as_str());
            slot
        };
        self.slots.insert(topic.clone(), u16::try_from(slot).ok()?);
        Some((slot, true))
    }
}

impl Outbox {
    /// Whether it holds nothing but its counters: no message, no packet identifier in
    /// use, no topic alias.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.inflight.is_empty()
            && self.other_ids.is_empty()
            && self.aliases.is_none()
    }

    /// Notes that `packet_id` is about to join the back of the in-flight window.
    fn note_inflight_push(&mut self, packet_id: PacketId) {
        if let (Some(front), Some(back)) = (self.inflight.front(), self.inflight.back()) {
            let step = ahead(back.packet_id, packet_id);
            if step == 0 || ahead(front.packet_id, back.packet_id) + step >= PACKET_IDS {
                self.inflight_unordered = true;
            }
        }
    }

    /// Notes that the in-flight window may have emptied.
    fn note_inflight_removed(&mut self) {
        if self.inflight.is_empty() {
            self.inflight_unordered = false;
        }
    }

    /// Gives back the memory of empty queues and an empty message store.
    pub(crate) fn shrink(&mut self) {
        if self.queue.is_empty() && self.inflight.is_empty() {
            self.queue = VecDeque::new();
            self.inflight = VecDeque::new();
            self.store = Store::default();
        }
        if self.other_ids.is_empty() {
            self.other_ids = Vec::new();
        }
    }

    pub(crate) fn next_id(&mut self) -> MessageId {
        self.next_message_id += 1;
        MessageId(self.next_message_id)
    }

    /// Puts a message in the queue, at the back or (to send it again first) the front,
    /// with no quota check.
    #[inline]
    pub(crate) fn push_queued(
        &mut self,
        id: MessageId,
        message: Message,
        expires_at: Option<Instant>,
        front: bool,
    ) {
        let size = message.size();
        let qos = message.qos;
        let slot = self.store.insert(message);
        self.queued_bytes += size;
        self.queued_qos0 += usize::from(qos == QoS::AtMostOnce);
        let queued = Queued {
            id,
            slot,
            qos,
            size,
            expires_at,
        };
        if front {
            self.queue.push_front(queued);
        } else {
            self.queue.push_back(queued);
        }
    }

    /// Puts a message in the in-flight window (restoring a session).
    pub(crate) fn push_inflight(
        &mut self,
        id: MessageId,
        packet_id: PacketId,
        phase: Awaiting,
        message: Option<Message>,
    ) {
        let size = message.as_ref().map_or(0, Message::size);
        let slot = message.map(|m| self.store.insert(m));
        self.inflight_bytes += size;
        self.note_inflight_push(packet_id);
        self.inflight.push_back(InFlight {
            id,
            packet_id,
            phase,
            slot,
            size,
            waiting: false,
            expires_at: None,
        });
    }

    /// The message of a queued or in-flight entry (rebuilt: for saving the session).
    pub(crate) fn message(&self, slot: Option<usize>) -> Option<Message> {
        self.store.get(slot?).cloned()
    }

    /// Empties the in-flight window, handing back its entries with their messages, in
    /// order.
    pub(crate) fn drain_inflight(&mut self) -> Vec<(InFlight, Option<Message>)> {
        let inflight: Vec<InFlight> = self.inflight.drain(..).collect();
        self.inflight_bytes = 0;
        self.inflight_unordered = false;
        self.waiting = 0;
        self.waiting_from = 0;
        inflight
            .into_iter()
            .map(|f| {
                let message = f.slot.and_then(|slot| self.store.take(slot));
                (f, message)
            })
            .collect()
    }

    /// Queues a message, applying the overflow policy. Evicted QoS 0 messages are
    /// reported to `events`.
    #[inline]
    pub(crate) fn enqueue(
        &mut self,
        now: Instant,
        message: Message,
        limits: &Limits,
        events: &mut Events,
    ) -> Result<MessageId, Refused> {
        let size = message.size();
        let fits = |q: &Self| {
            q.queue.len() < limits.max_queued_messages
                && q.queued_bytes.saturating_add(size) <= limits.max_queued_bytes
        };
        if !fits(self) {
            if message.qos == QoS::AtMostOnce {
                return Err(Refused {
                    message: message.into(),
                    reason: DropReason::QueueFull,
                });
            }
            // Make room by dropping queued QoS 0 messages, oldest first.
            while !fits(self) {
                let Some(pos) = self.queue.iter().position(|q| q.qos == QoS::AtMostOnce) else {
                    return Err(Refused {
                        message: message.into(),
                        reason: DropReason::QueueFull,
                    });
                };
                if let Some(old) = self.queue.remove(pos) {
                    self.queued_bytes -= old.size;
                    self.queued_qos0 -= 1;
                    self.store.remove(old.slot);
                    events.push(Event::Dropped {
                        id: old.id,
                        reason: DropReason::QueueFull,
                    });
                }
            }
        }
        let id = self.next_id();
        let expires_at = message.expires_at(now);
        let qos = message.qos;
        let slot = self.store.insert(message);
        self.queued_bytes += size;
        self.queued_qos0 += usize::from(qos == QoS::AtMostOnce);
        self.queue.push_back(Queued {
            id,
            slot,
            qos,
            size,
            expires_at,
        });
        Ok(id)
    }

    /// Whether `id` is taken, by the in-flight window or by `other_ids`. The window is
    /// searched only when `id` falls between its first and last identifiers: a window
    /// in order (`inflight_unordered` false) holds none outside them, and the next
    /// identifier in turn is outside unless the window spans nearly all 65,535. Without
    /// that, taking an identifier cost a search of the whole window (hundreds of
    /// entries for a subscriber with a large Receive Maximum) for every message sent.
    fn id_in_use(&self, id: PacketId) -> bool {
        if self.other_ids.contains(&id) {
            return true;
        }
        match (self.inflight.front(), self.inflight.back()) {
            (Some(front), Some(back))
                if !self.inflight_unordered
                    && ahead(front.packet_id, id) > ahead(front.packet_id, back.packet_id) =>
            {
                false
            }
            (None, _) => false,
            _ => self.inflight.iter().any(|f| f.packet_id == id),
        }
    }

    /// Where `id` is in the in-flight window: found by bisection while the window is in
    /// order (acknowledgements in any order then cost O(log n) each, not a search of a
    /// window that a peer's Receive Maximum lets grow to 65,535), else by a search.
    /// The oldest entry is looked at first: most peers acknowledge in order.
    fn inflight_position(&self, id: PacketId) -> Option<usize> {
        match self.inflight.front() {
            Some(front) if front.packet_id == id => Some(0),
            Some(front) if !self.inflight_unordered => {
                let from = front.packet_id;
                self.inflight
                    .binary_search_by_key(&ahead(from, id), |f| ahead(from, f.packet_id))
                    .ok()
            }
            _ => self.inflight.iter().position(|f| f.packet_id == id),
        }
    }

    /// A packet identifier not in use ([MQTT-2.2.1-3], [MQTT-2.2.1-4]), or `None` if
    /// all 65,535 are.
    pub(crate) fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_packet_id) {
                if !self.id_in_use(id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Takes the next message that may be sent now, as a PUBLISH packet with its topic
    /// alias applied (`alias_max` is the peer's Topic Alias Maximum, 0 for none), moving
    /// QoS 1/2 into the in-flight window. Expired and oversized messages are skipped and
    /// reported to `events`.
    pub(crate) fn next_publish(
        &mut self,
        now: Instant,
        window: usize,
        max_packet_size: u32,
        alias_max: u16,
        version: ProtocolVersion,
        events: &mut Events,
    ) -> Option<Packet> {
        // A first use of a topic alias adds three bytes.
        let alias_overhead = if alias_max > 0 { 3 } else { 0 };
        loop {
            let front = self.queue.front()?;
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                // [MQTT-4.9.0-2]: the send quota is used up. Messages behind wait too,
                // so order is kept.
                return None;
            }
            let (id, slot, qos, size, expires_at) = (
                front.id,
                front.slot,
                front.qos,
                front.size,
                front.expires_at,
            );
            if let Some(expires_at) = expires_at {
                // [MQTT-3.3.2-5]: expired before onward delivery started: delete it.
                if now >= expires_at {
                    self.pop_front_dropped(events, DropReason::Expired);
                    continue;
                }
                // [MQTT-3.3.2-6]: send the time that is left.
                let left = expires_at.saturating_since(now).as_secs_ceil();
                let left = Some(u32::try_from(left).unwrap_or(u32::MAX));
                if let Some(message) = self.store.get_mut(slot) {
                    // Written only when it changed: the set may be shared with other
                    // sessions' copies, and writing copies it.
                    if message.properties.message_expiry_interval != left {
                        message.properties.message_expiry_interval = left;
                    }
                }
            }
            let qos_pid = match qos {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                // Every identifier is in flight: wait.
                qos => QosPid::new(qos, self.allocate_packet_id()?),
            };
            // [MQTT-3.1.2-25]: a message too large for the peer is discarded, as if
            // delivered. The quick bound (fixed header, topic length, packet identifier,
            // Property Length: 13 bytes) spares computing the exact size.
            let limit = max_packet_size as usize;
            if size + 13 + alias_overhead > limit {
                let too_large = self.store.get(slot).is_none_or(|m| {
                    let publish =
                        m.to_publish(qos_pid, false, m.topic.clone(), None, version.is_v5());
                    publish.encoded_len(version) + alias_overhead > limit
                });
                if too_large {
                    self.pop_front_dropped(events, DropReason::TooLarge);
                    continue;
                }
            }
            self.queue.pop_front();
            self.queued_bytes -= size;
            self.queued_qos0 -= usize::from(qos == QoS::AtMostOnce);
            let packet_id = match qos_pid {
                QosPid::AtMostOnce => {
                    // QoS 0 is not kept: move it into the packet instead of copying.
                    let mut message = self.store.take(slot)?;
                    let topic = core::mem::take(&mut message.topic);
                    let (topic, topic_alias) = self.alias(topic, alias_max);
                    return Some(Packet::Publish(message.into_publish(topic, topic_alias)));
                }
                QosPid::AtLeastOnce(packet_id) | QosPid::ExactlyOnce(packet_id) => packet_id,
            };
            let phase = if qos == QoS::AtLeastOnce {
                Awaiting::PubAck
            } else {
                Awaiting::PubRec
            };
            self.inflight_bytes += size;
            self.note_inflight_push(packet_id);
            self.inflight.push_back(InFlight {
                id,
                packet_id,
                phase,
                slot: Some(slot),
                size,
                waiting: false,
                expires_at,
            });
            let topic = self.store.get(slot)?.topic.clone();
            let (topic, topic_alias) = self.alias(topic, alias_max);
            let message = self.store.get(slot)?;
            return Some(Packet::Publish(message.to_publish(
                qos_pid,
                false,
                topic,
                topic_alias,
                version.is_v5(),
            )));
        }
    }

    /// Drops the front of the queue, reporting it with `reason`.
    fn pop_front_dropped(&mut self, events: &mut Events, reason: DropReason) {
        if let Some(q) = self.queue.pop_front() {
            self.queued_bytes -= q.size;
            self.queued_qos0 -= usize::from(q.qos == QoS::AtMostOnce);
            self.store.remove(q.slot);
            events.push(Event::Dropped { id: q.id, reason });
        }
    }

    /// Applies PUBACK, PUBREC or PUBCOMP (`expect` says which phase it ends).
    #[inline]
    pub(crate) fn acknowledge(
        &mut self,
        packet_id: PacketId,
        expect: Awaiting,
        code: ReasonCode,
    ) -> AckOutcome {
        let Some(pos) = self.inflight_position(packet_id) else {
            return AckOutcome::Unknown;
        };
        if self.inflight.get(pos).is_none_or(|f| f.phase != expect) {
            return AckOutcome::Unknown;
        }
        if expect == Awaiting::PubRec && code.is_success() {
            // [MQTT-4.3.3-4]: answer with PUBREL; [MQTT-4.3.3-6]: never resend the PUBLISH.
            if let Some(f) = self.inflight.get_mut(pos) {
                f.phase = Awaiting::PubComp;
                // Acknowledged before it was sent again (the peer had it already).
                self.waiting = self
                    .waiting
                    .saturating_sub(usize::from(core::mem::take(&mut f.waiting)));
                if let Some(slot) = f.slot.take() {
                    self.store.remove(slot);
                    self.inflight_bytes -= core::mem::take(&mut f.size);
                }
            }
            return AckOutcome::SendPubRel;
        }
        // [MQTT-4.4.0-2]: an error code also ends the exchange.
        let removed = self.inflight.remove(pos);
        self.note_inflight_removed();
        if pos < self.waiting_from {
            self.waiting_from -= 1;
        }
        match removed {
            Some(f) => {
                self.waiting = self.waiting.saturating_sub(usize::from(f.waiting));
                if let Some(slot) = f.slot {
                    self.store.remove(slot);
                    self.inflight_bytes -= f.size;
                }
                AckOutcome::Done(f.id)
            }
            None => AckOutcome::Unknown,
        }
    }

    /// The packets to resend on a resumed session, in their original order
    /// ([MQTT-4.4.0-1], [MQTT-4.6.0-1]): PUBLISH with DUP set, or PUBREL. Only as many
    /// as the new connection's `window` allows are sent now ([MQTT-3.3.4-9]: a Receive
    /// Maximum is per connection, and may be lower than the last one's); the others
    /// wait, in order, for [`next_resend`](Self::next_resend). A message that no longer
    /// fits in the peer's `max_packet_size` is dropped as if sent ([MQTT-3.1.2-25]); one
    /// whose Message Expiry Interval has passed meanwhile is dropped
    /// ([`DropReason::Expired`]: delivery had begun, so this goes beyond
    /// [MQTT-3.3.2-5], as Mosquitto does, rather than hand the client a message past its
    /// expiry); a dropped QoS 2 message gets PUBREL in its place (see
    /// [`drop_inflight`](Self::drop_inflight)). The others carry what is left of their
    /// interval ([MQTT-3.3.2-6]).
    pub(crate) fn resend(
        &mut self,
        now: Instant,
        version: ProtocolVersion,
        window: usize,
        max_packet_size: u32,
        events: &mut Events,
    ) -> Vec<Packet> {
        let mut packets = Vec::new();
        let (mut out, mut at) = (0usize, 0usize);
        // What waited on the last connection is decided anew for this one.
        for f in &mut self.inflight {
            f.waiting = false;
        }
        self.waiting = 0;
        self.waiting_from = 0;
        while let Some(f) = self.inflight.get(at) {
            let packet = match (f.slot.and_then(|slot| self.store.get(slot)), f.phase) {
                (_, Awaiting::PubComp) => Some(mqtt_codec::PubRel::new(f.packet_id).into()),
                (Some(_), _) if f.expires_at.is_some_and(|t| now >= t) => {
                    match self.drop_inflight(at, events, DropReason::Expired) {
                        Some(pubrel) => Some(pubrel),
                        None => continue,
                    }
                }
                (Some(m), _) => {
                    let publish = resent_publish(m, f, now, version);
                    if u32::try_from(publish.encoded_len(version))
                        .is_ok_and(|len| len <= max_packet_size)
                    {
                        Some(Packet::from(publish))
                    } else {
                        match self.drop_inflight(at, events, DropReason::TooLarge) {
                            Some(pubrel) => Some(pubrel),
                            None => continue,
                        }
                    }
                }
                (None, _) => None,
            };
            let is_publish = matches!(packet, Some(Packet::Publish(_)));
            match packet {
                Some(packet) if !is_publish || out < window => {
                    out += 1;
                    packets.push(packet);
                }
                Some(_) => {
                    if self.waiting == 0 {
                        self.waiting_from = at;
                    }
                    self.waiting += 1;
                    if let Some(f) = self.inflight.get_mut(at) {
                        f.waiting = true;
                    }
                }
                None => {}
            }
            at += 1;
        }
        packets
    }

    /// The next PUBLISH of a resumed session to send again, once the window has room
    /// for it (see [`resend`](Self::resend)); one expired while it waited is dropped.
    pub(crate) fn next_resend(
        &mut self,
        now: Instant,
        window: usize,
        version: ProtocolVersion,
        events: &mut Events,
    ) -> Option<Packet> {
        loop {
            if self.waiting == 0 || self.inflight.len().saturating_sub(self.waiting) >= window {
                return None;
            }
            let at = self
                .inflight
                .iter()
                .skip(self.waiting_from)
                .position(|f| f.waiting)
                .map(|i| i + self.waiting_from)?;
            let f = self.inflight.get_mut(at)?;
            if f.expires_at.is_some_and(|t| now >= t) {
                match self.drop_inflight(at, events, DropReason::Expired) {
                    Some(pubrel) => return Some(pubrel),
                    None => continue,
                }
            }
            f.waiting = false;
            self.waiting = self.waiting.saturating_sub(1);
            self.waiting_from = at + 1;
            let f = self.inflight.get(at)?;
            let m = self.store.get(f.slot?)?;
            return Some(Packet::from(resent_publish(m, f, now, version)));
        }
    }

    /// Drops the message of the in-flight entry at `at` for `reason`. A QoS 1 entry
    /// goes. A QoS 2 one (PUBREC awaited) moves on to PUBREL, returned to send, as in
    /// [`drop_where`](Self::drop_where): its PUBLISH went out on an earlier connection,
    /// so the peer may hold the identifier for it, and a later message given that
    /// identifier would be taken for a duplicate.
    fn drop_inflight(
        &mut self,
        at: usize,
        events: &mut Events,
        reason: DropReason,
    ) -> Option<Packet> {
        let f = self.inflight.get_mut(at)?;
        let (id, packet_id, phase) = (f.id, f.packet_id, f.phase);
        if let Some(slot) = f.slot.take() {
            self.store.remove(slot);
            self.inflight_bytes -= core::mem::take(&mut f.size);
        }
        let was_waiting = core::mem::take(&mut f.waiting);
        self.waiting = self.waiting.saturating_sub(usize::from(was_waiting));
        events.push(Event::Dropped { id, reason });
        if phase == Awaiting::PubRec {
            f.phase = Awaiting::PubComp;
            return Some(mqtt_codec::PubRel::new(packet_id).into());
        }
        self.inflight.remove(at);
        if at < self.waiting_from {
            self.waiting_from -= 1;
        }
        self.note_inflight_removed();
        None
    }

    /// Drops everything (clean start, or the peer has no session): returns the ids of
    /// the messages lost.
    pub(crate) fn discard(&mut self) -> Vec<MessageId> {
        let lost = self
            .inflight
            .drain(..)
            .map(|f| f.id)
            .chain(self.queue.drain(..).map(|q| q.id))
            .collect();
        self.store.clear();
        self.queued_bytes = 0;
        self.inflight_bytes = 0;
        self.inflight_unordered = false;
        self.waiting = 0;
        self.waiting_from = 0;
        self.queued_qos0 = 0;
        self.other_ids.clear();
        lost
    }

    /// Drops the messages queued or in flight for which `refuse` says so, each reported
    /// to `events` with `reason`; returns their ids. A QoS 2 message in flight (PUBREC
    /// awaited) is not resent: its exchange moves on to PUBREL, which releases the
    /// packet identifier the client may hold for it (4.3.3; a client that never got
    /// the PUBLISH answers PUBCOMP all the same, with 0x92 in 5.0), so that a later
    /// message with that identifier is not taken for a duplicate.
    pub(crate) fn drop_where(
        &mut self,
        mut refuse: impl FnMut(&Message) -> bool,
        reason: DropReason,
        events: &mut Events,
    ) -> Vec<MessageId> {
        let mut dropped = Vec::new();
        let (store, queued_bytes, queued_qos0) = (
            &mut self.store,
            &mut self.queued_bytes,
            &mut self.queued_qos0,
        );
        self.queue.retain(|q| {
            if !store.get(q.slot).is_some_and(&mut refuse) {
                return true;
            }
            store.remove(q.slot);
            *queued_bytes -= q.size;
            *queued_qos0 -= usize::from(q.qos == QoS::AtMostOnce);
            events.push(Event::Dropped { id: q.id, reason });
            dropped.push(q.id);
            false
        });
        let inflight_bytes = &mut self.inflight_bytes;
        // Removing entries keeps the window's order: `inflight_unordered` stays as it is.
        self.inflight.retain_mut(|f| {
            let Some(slot) = f.slot.filter(|&s| store.get(s).is_some_and(&mut refuse)) else {
                return true;
            };
            store.remove(slot);
            *inflight_bytes -= core::mem::take(&mut f.size);
            f.slot = None;
            events.push(Event::Dropped { id: f.id, reason });
            dropped.push(f.id);
            match f.phase {
                Awaiting::PubRec => {
                    f.phase = Awaiting::PubComp;
                    f.waiting = false;
                    true
                }
                _ => false,
            }
        });
        self.note_inflight_removed();
        self.waiting = self.inflight.iter().filter(|f| f.waiting).count();
        self.waiting_from = 0;
        dropped
    }

    /// Forgets the aliases of the connection that ended ([MQTT-3.3.2-7]).
    pub(crate) fn reset_aliases(&mut self) {
        self.aliases = None;
    }

    /// The topic and Topic Alias to send `topic` with, where the peer allows aliases
    /// (`peer_max` > 0): the first use of a topic sends topic and alias, later uses the
    /// alias alone, with an empty topic.
    fn alias(&mut self, topic: ByteStr, peer_max: u16) -> (ByteStr, Option<NonZeroU16>) {
        if peer_max == 0 || topic.is_empty() {
            return (topic, None);
        }
        let aliases = self.aliases.get_or_insert_with(Box::default);
        match aliases.slot_for(&topic, peer_max) {
            // Known to the peer: the alias alone, with an empty topic.
            Some((slot, false)) => (ByteStr::new(), alias_number(slot)),
            // [MQTT-3.1.2-26]: never above the peer's maximum; the slot is below it.
            Some((slot, true)) => (topic, alias_number(slot)),
            None => (topic, None),
        }
    }
}

fn alias_number(slot: usize) -> Option<NonZeroU16> {
    u16::try_from(slot + 1).ok().and_then(NonZeroU16::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).unwrap()
    }

    /// Puts `id` in flight as `next_publish` does after allocating it.
    fn send(outbox: &mut Outbox, id: PacketId) {
        outbox.push_inflight(MessageId(u64::from(id.get())), id, Awaiting::PubAck, None);
    }

    fn ack(outbox: &mut Outbox, id: PacketId) {
        assert!(matches!(
            outbox.acknowledge(id, Awaiting::PubAck, ReasonCode::SUCCESS),
            AckOutcome::Done(_)
        ));
    }

    #[test]
    fn identifiers_across_the_wrap_are_found_in_use() {
        let mut outbox = Outbox::default();
        for id in [65_534, 65_535, 1, 2] {
            send(&mut outbox, pid(id));
        }
        assert!(!outbox.inflight_unordered);
        for id in [65_534, 65_535, 1, 2] {
            assert!(outbox.id_in_use(pid(id)), "{id}");
        }
        for id in [3, 100, 65_533] {
            assert!(!outbox.id_in_use(pid(id)), "{id}");
        }
        outbox.next_packet_id = 65_533;
        assert_eq!(outbox.allocate_packet_id(), Some(pid(3)));
        // The front acknowledged: 65,534 is free again.
        ack(&mut outbox, pid(65_534));
        outbox.next_packet_id = 65_533;
        assert_eq!(outbox.allocate_packet_id(), Some(pid(65_534)));
    }

    #[test]
    fn a_restored_window_out_of_order_is_searched() {
        let mut outbox = Outbox::default();
        // 10, 5 is in order (5 is 65,530 ahead of 10, past 65,535); 12 after 5 is not.
        for id in [10, 5, 12] {
            send(&mut outbox, pid(id));
        }
        assert!(outbox.inflight_unordered);
        outbox.next_packet_id = 4;
        assert_eq!(outbox.allocate_packet_id(), Some(pid(6)));
        outbox.next_packet_id = 9;
        assert_eq!(outbox.allocate_packet_id(), Some(pid(11)));
        for id in [10, 5, 12] {
            ack(&mut outbox, pid(id));
        }
        assert!(!outbox.inflight_unordered, "an empty window is in order");
    }

    #[test]
    fn a_window_of_nearly_every_identifier_is_searched() {
        let mut outbox = Outbox::default();
        send(&mut outbox, pid(1));
        send(&mut outbox, pid(65_535));
        assert!(!outbox.inflight_unordered);
        outbox.next_packet_id = 65_535;
        assert_eq!(outbox.allocate_packet_id(), Some(pid(2)));
        // One more past the first would wrap onto it: out of order from then on.
        send(&mut outbox, pid(2));
        assert!(outbox.inflight_unordered);
        assert!(outbox.id_in_use(pid(2)) && outbox.id_in_use(pid(1)));
        assert!(!outbox.id_in_use(pid(3)));
    }

    /// Allocations and acknowledgements in a pseudo-random order, a slow one (the
    /// oldest) held for long stretches: the quick answer always matches a search.
    #[test]
    fn in_use_matches_a_search_of_the_window() {
        let mut outbox = Outbox::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..100_000u32 {
            let r = next();
            let len = outbox.inflight.len();
            if len > 0 && (r % 3 == 0 || len > 400) {
                // Mostly the newest acknowledgements; the oldest only now and then.
                let pos = if round % 25_000 < 20_000 {
                    1 + (r as usize >> 8) % len.max(2).saturating_sub(1)
                } else {
                    (r as usize >> 8) % len
                };
                if let Some(id) = outbox.inflight.get(pos.min(len - 1)).map(|f| f.packet_id) {
                    ack(&mut outbox, id);
                }
            } else if let Some(id) = outbox.allocate_packet_id() {
                send(&mut outbox, id);
            }
            for _ in 0..4 {
                let probe = pid(u16::try_from(next() % 65_535 + 1).unwrap());
                let searched = outbox.inflight.iter().position(|f| f.packet_id == probe);
                assert_eq!(outbox.id_in_use(probe), searched.is_some(), "round {round}");
                assert_eq!(outbox.inflight_position(probe), searched, "round {round}");
            }
            if let Some(back) = outbox.inflight.back() {
                assert!(outbox.id_in_use(back.packet_id));
            }
        }
    }
}
