//! Routing: a PUBLISH is matched against the subscription index in the publishing
//! connection's own task and handed to each subscriber's session, whose bounded queue is
//! the outbox. A publisher never waits on a subscriber: a session that cannot take a
//! message loses it alone ([`Shared::overflow`]), and a global budget of queued bytes
//! protects the process (decision 0014).

use std::sync::{Arc, atomic::Ordering};

use bytes::BytesMut;
use mqtt_codec::{ProtocolVersion, PublishRef, QoS, QosPid, SubscriptionId};
use mqtt_session::{DropReason, Message};
use mqtt_topics::{GroupId, Matches, ShardedIndex, TopicName};

use crate::{
    sessions::{SessionCell, SessionHandle, Sub},
    shared::Shared,
};

/// The most bytes of encoded packets a session holds before its messages go the usual
/// way, through its queue: one full write. Measured on fan-out 1 -> 100 at QoS 0
/// against holding 256 packets: 0.185 -> 0.151 CPU s per million deliveries, 6.6 ->
/// 15.5 MiB peak.
pub(crate) const ENCODED_BYTES: usize = crate::connection::WRITE_HIGH_WATER;

/// At most one log line about dropped messages per this many milliseconds.
pub(crate) const DROP_LOG_INTERVAL_MS: u64 = 10_000;

/// One subscriber's terms for a routed message: its session, the highest QoS its
/// matching subscriptions granted, whether any keeps RETAIN as published, and their
/// subscription identifiers ([MQTT-3.3.4-2], [MQTT-3.3.4-3]).
pub(crate) struct Recipient<'a> {
    pub(crate) handle: &'a Arc<SessionHandle>,
    pub(crate) granted: QoS,
    pub(crate) retain_as_published: bool,
    pub(crate) ids: Vec<SubscriptionId>,
}

impl Recipient<'_> {
    /// `message` (the routed one, or a copy) on this recipient's terms: at most the
    /// granted QoS, RETAIN kept only if asked, its own subscription identifiers.
    pub(crate) fn shape(self, mut message: Message) -> Message {
        message.qos = message.qos.min(self.granted);
        message.retain = message.retain && self.retain_as_published;
        message.properties.set_subscription_identifiers(self.ids);
        message
    }
}

/// A QoS 0 message encoded once for every subscriber that takes it as it is (see
/// `ServerSession::takes_encoded_publish`): one PUBLISH per protocol family (3.1 and
/// 3.1.1 encode alike) and RETAIN flag, encoded on first use. Fan-out to many
/// subscribers then costs a copy of the packet's bytes per subscriber instead of a copy
/// of the message, a trip through its session and an encoding.
///
/// A publishing connection keeps one in its [`Routes`] and [`clear`](Self::clear)s it
/// for each message, so that encoding reuses the buffers of the last message instead of
/// allocating (and freeing) one per message: that, and building a `Publish` around
/// the message, were most of the 830 instructions encoding took per message.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    /// One buffer per slot; slot `i` holds this message's packet if bit `i` of `ready`
    /// is set.
    packets: [BytesMut; 4],
    ready: u8,
}

/// The largest buffer [`Encoded`] keeps from one message to the next: a busy publisher
/// of large messages allocates one per message rather than pin that much per slot.
const ENCODED_KEEP: usize = 4 * 1024;

impl Encoded {
    /// Whether `message` can go out as the same bytes to every subscriber: QoS 0, no
    /// Message Expiry Interval, which a session counts down while the message waits,
    /// and no Subscription Identifier, which belongs to each subscriber (a client may not
    /// send one, [MQTT-3.3.4-6]; a message that has one goes the usual way).
    pub(crate) fn suits(message: &Message, granted: QoS) -> bool {
        message.qos.min(granted) == QoS::AtMostOnce
            && message.properties.get().is_none_or(|p| {
                p.message_expiry_interval.is_none() && p.subscription_identifiers.is_empty()
            })
    }

    /// Forgets the last message's packets, keeping the buffers of small ones.
    pub(crate) fn clear(&mut self) {
        if self.ready == 0 {
            return;
        }
        for packet in &mut self.packets {
            if packet.capacity() > ENCODED_KEEP {
                *packet = BytesMut::new();
            } else {
                packet.clear();
            }
        }
        self.ready = 0;
    }

    /// The PUBLISH of `message` for `version` with RETAIN `retain`.
    pub(crate) fn get(
        &mut self,
        message: &Message,
        version: ProtocolVersion,
        retain: bool,
    ) -> Option<&[u8]> {
        let index = usize::from(version.is_v5()) * 2 + usize::from(retain);
        let bit = 1u8 << index;
        let slot = self.packets.get_mut(index)?;
        if self.ready & bit == 0 {
            slot.clear();
            // 3.x packets carry no properties: `encode` leaves them out.
            PublishRef {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain,
                topic: &message.topic,
                payload: &message.payload,
                topic_alias: None,
                properties: &message.properties,
            }
            .encode(version, slot)
            .ok()?;
            self.ready |= bit;
        }
        Some(slot)
    }
}

/// Where the last topic a connection published to went: its matching subscriptions, kept
/// while the index is unchanged ([`ShardedIndex::generation`]). A publisher usually
/// sends to the same few topics, and the lookup was most of a small message's cost
/// (fan-in of 16 B messages: about 1,100 of 3,800 instructions a message).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    matches: Matches<u64, Sub>,
    /// The packets of the message being routed, in buffers kept from message to message.
    encoded: Encoded,
    topic: String,
    /// The index's generation when `matches` was looked up; `None`: never looked up.
    generation: Option<u64>,
}

impl Routes {
    /// The subscriptions matching `topic`: the last answer if it was for this topic and
    /// the index has not changed since, else looked up again; and the [`Encoded`] of
    /// the message, cleared.
    fn matching(
        &mut self,
        index: &ShardedIndex<u64, Sub>,
        topic: TopicName<'_>,
    ) -> (&Matches<u64, Sub>, &mut Encoded) {
        let generation = index.generation();
        if self.generation != Some(generation) || self.topic != topic.as_str() {
            index.matches(topic, &mut self.matches);
            self.topic.clear();
            self.topic.push_str(topic.as_str());
            self.generation = Some(generation);
        }
        self.encoded.clear();
        (&self.matches, &mut self.encoded)
    }
}

impl Shared {
    /// Retains a message published by session `from` if it says so, and routes it
    /// ([`Shared::fan_out`]). For what has nobody to answer (a will, `$SYS`, a peer's
    /// message): one the store failed to retain is routed all the same (the failure is
    /// logged). A client's PUBLISH goes through `connection::publish`, which refuses it
    /// then.
    pub(crate) fn route(
        &self,
        from: u64,
        message: Message,
        routes: &mut Routes,
        now: mqtt_session::Instant,
    ) -> usize {
        if message.retain {
            let _ = self.retain(&message);
        }
        self.fan_out(from, message, routes, now)
    }

    /// Routes a message published by session `from` to every matching subscriber, and
    /// says to how many sessions it went (shared-subscription groups count once):
    /// none is 5.0's "No matching subscribers". `routes` is the caller's reusable [`Routes`], so
    /// routing allocates nothing per message in the steady state beyond the copies each
    /// subscriber gets. Nothing here waits: a subscriber that cannot take the message
    /// loses it ([`Shared::overflow`]).
    pub(crate) fn fan_out(
        &self,
        from: u64,
        message: Message,
        routes: &mut Routes,
        now: mqtt_session::Instant,
    ) -> usize {
        let Ok(topic) = TopicName::new(&message.topic) else {
            return 0;
        };
        // Remote subscribers first: the message is still whole (the last local recipient
        // may take it).
        let mut recipients = self.route_remote(from, topic, &message);
        let (matches, encoded) = routes.matching(&self.index, topic);
        // [MQTT-3.3.4-2], [MQTT-3.3.4-3]: one copy per subscriber at the highest granted
        // QoS, with every matching subscription identifier (`Recipient::shape`).
        // Recipients that take the message as encoded bytes need no copy of it at all,
        // and take it at once. The others are delivered once the next of them is found,
        // so the last one can take the message itself instead of a copy (with one
        // subscriber: no copy at all).
        let mut previous = None;
        for subscriber in matches.subscribers() {
            let key = *subscriber.key();
            let mut handle = None;
            let mut granted = None::<QoS>;
            let mut retain_as_published = false;
            let mut ids = Vec::new();
            for sub in subscriber.values() {
                // [MQTT-3.8.3-3]: No Local keeps a client's own messages from it.
                if sub.options.no_local && key == from {
                    continue;
                }
                handle = Some(&sub.handle);
                granted = Some(granted.map_or(sub.options.qos, |q| q.max(sub.options.qos)));
                retain_as_published |= sub.options.retain_as_published;
                if let Some(id) = sub.identifier {
                    ids.push(id);
                }
            }
            let (Some(handle), Some(granted)) = (handle, granted) else {
                continue;
            };
            recipients += 1;
            let next = Recipient {
                handle,
                granted,
                retain_as_published,
                ids,
            };
            if self.deliver_encoded(&next, encoded, &message) {
                continue;
            }
            if let Some(to) = previous.replace(next) {
                let h = to.handle;
                self.deliver(h, now, to.shape(message.clone()), None);
            }
        }
        let mut groups = matches.shared().peekable();
        if let Some(to) = previous {
            let h = to.handle;
            if groups.peek().is_some() {
                self.deliver(h, now, to.shape(message.clone()), None);
            } else {
                // The last recipient takes the message itself.
                self.deliver(h, now, to.shape(message), None);
                return recipients;
            }
        }
        for group in groups {
            recipients += 1;
            self.deliver_to_group(group.id(), group.members(), &message, now, None);
        }
        recipients
    }

    /// Queues `message` on a connection as encoded bytes shared with its other
    /// subscribers, if it and the session allow it (see [`Encoded`]) and the session
    /// holds less than `ENCODED_BYTES` of them; false if it must go the usual way.
    pub(crate) fn deliver_encoded(
        &self,
        to: &Recipient<'_>,
        encoded: &mut Encoded,
        message: &Message,
    ) -> bool {
        if !to.ids.is_empty() || !Encoded::suits(message, to.granted) {
            return false;
        }
        // A packet is longer than its message's topic and payload: one that cannot fit
        // is not worth encoding. (Not `Message::size`, which walks the properties, once
        // per recipient; a packet too long is refused below all the same.) A large
        // payload goes out without a copy from the session's queue instead (see
        // `WRITE_COPY_MAX`).
        if message.payload.len() >= crate::connection::WRITE_COPY_MAX
            || message.topic.len() + message.payload.len() >= ENCODED_BYTES
        {
            return false;
        }
        let handle = to.handle;
        let mut cell = handle.lock();
        // A client whose authorizer refuses it the topic does not get it (and nothing
        // else is to be done about it).
        if !self.may_receive(&handle.client_id, cell.principal.as_deref(), &message.topic) {
            return true;
        }
        // Nothing queued at all, of any QoS: the spec lets a QoS 0 message go ahead of
        // QoS 1/2 ones waiting ([MQTT-4.6.0-6] orders a topic per QoS), but clients
        // read a session's messages in the order they were routed to it, as a broker
        // with one queue per client sends them.
        let waiting = cell.encoded_len();
        if cell.session.queued_messages() > 0 || (waiting > 0 && self.over_budget()) {
            return false;
        }
        // Encoded at most once per message and slot, so asking the session after
        // encoding (once, with the packet's size) costs nothing more when it refuses.
        let version = cell.session.version();
        let Some(packet) = encoded.get(message, version, message.retain && to.retain_as_published)
        else {
            return false;
        };
        if waiting + packet.len() > ENCODED_BYTES
            || !cell.session.takes_encoded_publish(packet.len())
        {
            return false;
        }
        let len = packet.len();
        cell.push_encoded(packet);
        self.account(&mut cell);
        let half = ENCODED_BYTES / 2;
        if waiting > 0 && (waiting >= half || waiting + len < half) {
            // The packets already waiting were signalled when the first of them came,
            // and the connection takes them all at once, under this lock, after that
            // signal: it takes this one with them. (A busy subscriber's writer takes
            // dozens a batch: one signal each was most of the cost of waking it.) Once
            // more, at half of what may wait: a writer waiting for more (write
            // coalescing) has enough.
            return true;
        }
        self.wake_locked(handle, cell);
        true
    }

    /// Delivers `message` to one member of a shared subscription group: round robin,
    /// preferring connected members with room, never `exclude` (a member whose session
    /// ended).
    pub(crate) fn deliver_to_group(
        &self,
        group: GroupId,
        members: &[(u64, Sub)],
        message: &Message,
        now: mqtt_session::Instant,
        exclude: Option<u64>,
    ) {
        let candidates = || members.iter().filter(|(key, _)| Some(*key) != exclude);
        let count = candidates().count();
        if count == 0 {
            return;
        }
        let start = self.stats.publish_received.load(Ordering::Relaxed) as usize % count;
        // Members whose client may not read the topic are passed over, as long as
        // another can take it (`deliver` drops it for them anyway).
        let readable = |s: &Sub, cell: &SessionCell| {
            self.may_receive(
                &s.handle.client_id,
                cell.principal.as_deref(),
                &message.topic,
            )
        };
        let ready = |s: &Sub| {
            let cell = s.handle.lock();
            // A member with messages waiting on disk is behind, even between pages.
            cell.session.is_connected()
                && cell.session.queued_messages() == 0
                && !Self::is_paging(&cell)
                && readable(s, &cell)
        };
        let pick = candidates()
            .cycle()
            .skip(start)
            .take(count)
            .find(|(_, s)| ready(s))
            .or_else(|| {
                candidates().cycle().skip(start).take(count).find(|(_, s)| {
                    let cell = s.handle.lock();
                    cell.session.is_connected()
                        && cell.session.queue_room() > 0
                        && readable(s, &cell)
                })
            })
            .or_else(|| candidates().nth(start));
        let Some((_, sub)) = pick else { return };
        let mut out = message.clone();
        out.qos = message.qos.min(sub.options.qos);
        out.retain = message.retain && sub.options.retain_as_published;
        out.properties
            .set_subscription_identifiers(sub.identifier.into_iter().collect());
        self.deliver(&sub.handle, now, out, Some(group));
    }

    /// A session ended: its unacknowledged QoS 1 messages from shared subscriptions go to
    /// other members of their groups.
    pub(crate) fn redistribute_shared(&self, from: &SessionHandle) {
        let orphans: Vec<(GroupId, Message)> = from.lock().take_shared().into_values().collect();
        self.redistribute(from, orphans);
    }

    /// Delivers messages `from` had from shared subscriptions to other members of
    /// their groups.
    pub(crate) fn redistribute(&self, from: &SessionHandle, orphans: Vec<(GroupId, Message)>) {
        if orphans.is_empty() {
            return;
        }
        let now = self.now();
        let mut matches = Matches::default();
        for (group, mut message) in orphans {
            message.properties.set_subscription_identifiers(Vec::new());
            let Ok(topic) = TopicName::new(&message.topic) else {
                continue;
            };
            matches.clear();
            self.index.matches(topic, &mut matches);
            if let Some(g) = matches.shared().find(|g| g.id() == group) {
                self.deliver_to_group(group, g.members(), &message, now, Some(from.key));
            }
        }
    }

    /// Queues a message on a session and wakes its writer. A persistent session whose
    /// queue is full, or past the global budget, or with messages on disk already,
    /// keeps it on disk if the store pages ([`Shared::page_out`]). A session that cannot
    /// take it otherwise (QoS 0 while it is offline, or no store to page to) loses it,
    /// and only it: see [`Shared::overflow`]. One whose client may not read the topic
    /// (`Authorizer::may_receive`) does not get it.
    pub(crate) fn deliver(
        &self,
        handle: &Arc<SessionHandle>,
        now: mqtt_session::Instant,
        message: Message,
        group: Option<GroupId>,
    ) {
        let mut cell = handle.lock();
        if !self.may_receive(&handle.client_id, cell.principal.as_deref(), &message.topic) {
            return;
        }
        if self.pages && Self::is_paging(&cell) && self.may_page_out(&cell, &message) {
            // Behind the messages it holds on disk.
            return self.page_out_or_drop(handle, cell, message);
        }
        // Past the global budget only a session with nothing queued takes more: each
        // subscriber keeps moving, and the slow ones stop growing.
        if cell.session.queued_messages() > 0 && self.over_budget() {
            if self.may_page_out(&cell, &message) {
                return self.page_out_or_drop(handle, cell, message);
            }
            drop(cell);
            self.overflow(handle, DropReason::QueueFull, true);
            return;
        }
        // One that waits for its client to come back, for however long that takes,
        // stops pinning the read buffer it came in (which held other messages too).
        let message = if !cell.session.is_connected() {
            crate::owned::own_held(message)
        } else {
            message
        };
        // A QoS 1 message from a shared subscription is kept to hand to another member
        // should this one leave without acknowledging it.
        let keep = (group.is_some() && message.qos == QoS::AtLeastOnce).then(|| message.clone());
        match cell.session.deliver(now, message) {
            Ok(id) => {
                if let (Some(group), Some(copy)) = (group, keep) {
                    cell.keep_shared(id, group, copy);
                }
                if self.durable {
                    self.session_changed(handle, &cell);
                }
                self.account(&mut cell);
                self.wake_locked(handle, cell);
            }
            Err(refused)
                if refused.reason == DropReason::QueueFull
                    && self.may_page_out(&cell, &refused.message) =>
            {
                self.page_out_or_drop(handle, cell, *refused.message);
            }
            Err(refused) => {
                drop(cell);
                self.overflow(handle, refused.reason, false);
            }
        }
    }

    /// [`Shared::page_out`], or the overflow policy if it cannot.
    fn page_out_or_drop(
        &self,
        handle: &Arc<SessionHandle>,
        mut cell: std::sync::MutexGuard<'_, SessionCell>,
        message: Message,
    ) {
        if let Err(reason) = self.page_out(handle, &mut cell, message) {
            drop(cell);
            self.overflow(handle, reason, false);
        }
    }

    /// The overflow policy's last step: a message `handle`'s session could not take is
    /// dropped, counted by reason for `$SYS`, and logged at most once per
    /// `DROP_LOG_INTERVAL_MS`. This is where a durable store would take an overflowing
    /// persistent session's message to disk instead.
    pub(crate) fn overflow(&self, handle: &SessionHandle, reason: DropReason, budget: bool) {
        let stats = &self.stats;
        stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        if budget {
            stats.dropped_memory_budget.fetch_add(1, Ordering::Relaxed);
        } else if reason == DropReason::QueueFull {
            stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        } else {
            // QoS 0 for a session without a connection, which does not queue it: what
            // such a client expects, not news for the log.
            if reason == DropReason::Offline {
                stats.dropped_offline.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let now = self.now().as_millis().max(1);
        let last = self.last_drop_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= DROP_LOG_INTERVAL_MS)
            && self
                .last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client = %handle.client_id,
                reason = if budget { "memory budget (limits.max_queued_bytes_total)" } else { "queue full" },
                dropped_queue_full = stats.dropped_queue_full.load(Ordering::Relaxed),
                dropped_memory_budget = stats.dropped_memory_budget.load(Ordering::Relaxed),
                "a slow subscriber is losing messages (at most one such line per 10 s)"
            );
        }
    }

    /// Whether the queued bytes of all sessions are past `limits.max_queued_bytes_total`.
    pub(crate) fn over_budget(&self) -> bool {
        self.queued_total.load(Ordering::Relaxed) > self.live.max_queued_bytes_total()
    }

    /// Brings the session's share of [`Shared::queued_total`] up to date: what its
    /// queue, its in-flight window and its encoded packets hold now. Called under the session's lock wherever the
    /// queue grows (delivery) and where its writer drains it, so the total is exact
    /// whenever no session is between the two.
    #[inline(always)]
    pub(crate) fn account(&self, cell: &mut SessionCell) {
        let now = cell.session.held_bytes() + cell.encoded_len();
        let before = std::mem::replace(&mut cell.charged, now);
        if now > before {
            self.queued_total.fetch_add(now - before, Ordering::Relaxed);
        } else if before > now {
            self.queued_total.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Takes the session's share out of [`Shared::queued_total`]: it is gone.
    pub(crate) fn uncharge(&self, cell: &mut SessionCell) {
        let before = std::mem::take(&mut cell.charged);
        self.queued_total.fetch_sub(before, Ordering::Relaxed);
    }
}
