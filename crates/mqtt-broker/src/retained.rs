//! Retained messages: the store, sharded by the topic's first level so that retained
//! publishes on different first levels never wait on one another, their expiry, and the
//! streaming of a new subscription's retained messages in batches that fit its queue.

use std::{collections::VecDeque, sync::atomic::Ordering};

use mqtt_codec::QoS;
use mqtt_session::Message;
use mqtt_topics::{RetainedStore, TopicFilter, TopicName};

use crate::{
    sessions::SessionHandle,
    shared::Shared,
    store::{RetainedRecord, StoreError},
};

/// How many retained-store shards there are.
pub(crate) const RETAINED_SHARDS: usize = 16;

/// The shard of a topic (or literal filter) by its first level (FNV-1a).
pub(crate) fn retained_shard(topic: &str) -> usize {
    let first = topic.split('/').next().unwrap_or("");
    let h = first.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % RETAINED_SHARDS as u64) as usize
}

/// What a retained entry costs besides [`Message::size`]: its node and edge in the
/// topic trie and the shard's bookkeeping. `tests/memory_patterns.rs` (3b) measures a
/// tiny retained message at about 680 B besides its bytes, of which `Message::size`
/// charges [`Message::OVERHEAD`].
pub(crate) const RETAINED_ENTRY_EXTRA: usize = 512;

/// A retained message, when it expires (5.0 Message Expiry Interval), and what it is
/// charged against `retain.max_bytes`.
#[derive(Clone, Debug)]
pub(crate) struct RetainedMessage {
    pub(crate) message: Message,
    pub(crate) expires_at: Option<mqtt_session::Instant>,
    /// [`Message::size`] plus [`RETAINED_ENTRY_EXTRA`] (0 for the broker's own `$SYS`
    /// topics), counted in `Shared::retained_bytes` while the entry is stored.
    pub(crate) cost: usize,
}

impl Shared {
    /// Stores, replaces or (empty payload) deletes a retained message, and tells the
    /// store. `Err` if the store failed: then nothing changed.
    pub(crate) fn retain(&self, message: &Message) -> Result<(), StoreError> {
        let expires_at = message
            .properties
            .message_expiry_interval
            .map(|secs| self.now() + mqtt_session::Duration::from_secs(u64::from(secs)));
        self.put_retained(message, expires_at, true)
    }

    /// [`Shared::retain`] with the time the message expires (`None`: never) and whether
    /// to tell the store (`write`; not for what it read back). A change is written
    /// under the shard's lock, so that the store sees a topic's changes in their order;
    /// nothing is written for `$SYS/` topics, a deletion of nothing, or a message over
    /// the quota.
    pub(crate) fn put_retained(
        &self,
        message: &Message,
        expires_at: Option<mqtt_session::Instant>,
        write: bool,
    ) -> Result<(), StoreError> {
        if !self.config.retain.enabled {
            return Ok(());
        }
        let Ok(topic) = TopicName::new(&message.topic) else {
            return Ok(());
        };
        let Some(lock) = self.retained.get(retained_shard(&message.topic)) else {
            return Ok(());
        };
        // The broker's own `$SYS` topics do not use up the clients' retained quota, and
        // are published again every interval rather than kept.
        let is_sys = message.topic.starts_with("$SYS/");
        let write = write && self.durable && !is_sys;
        let mut shard = lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if message.payload.is_empty() {
            if shard.get(topic).is_none() {
                return Ok(());
            }
            if write {
                self.store
                    .retain(&message.topic, None)
                    .inspect_err(|e| self.store_failed("a retained message", e))?;
            }
            if let Some(old) = shard.remove(topic) {
                self.retained_count.fetch_sub(1, Ordering::Relaxed);
                self.retained_bytes.fetch_sub(old.cost, Ordering::Relaxed);
                if is_sys {
                    self.retained_sys.fetch_sub(1, Ordering::Relaxed);
                }
                if old.expires_at.is_some() {
                    self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        let replaced = shard.get(topic).map(|r| r.cost);
        let used = self
            .retained_count
            .load(Ordering::Relaxed)
            .saturating_sub(self.retained_sys.load(Ordering::Relaxed));
        // Kept for long: memory of its own, not a slice of the publisher's read.
        let mut stored = crate::owned::own_held(message.clone());
        stored.retain = true;
        stored.properties.set_subscription_identifiers(Vec::new());
        // The broker's own `$SYS` topics are not charged: they are a fixed set.
        let cost = if is_sys {
            0
        } else {
            stored.size() + RETAINED_ENTRY_EXTRA
        };
        // The quotas: a new topic beyond `max_messages`, or a message that would take
        // the store past `max_bytes`, is not retained (it is still routed). The
        // broker's own `$SYS` topics are outside both.
        let bytes_after = self
            .retained_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(replaced.unwrap_or(0))
            .saturating_add(cost);
        if !is_sys
            && ((replaced.is_none() && used >= self.live.retain_max_messages())
                || bytes_after > self.live.retain_max_bytes())
        {
            drop(shard);
            self.retained_over_quota(&message.topic);
            return Ok(());
        }
        let exists = replaced.is_some();
        if write {
            let record = RetainedRecord::new(
                stored.clone(),
                expires_at.and_then(|at| self.wall_clock(at)),
            );
            self.store
                .retain(&message.topic, Some(&record))
                .inspect_err(|e| self.store_failed("a retained message", e))?;
        }
        if !exists && is_sys {
            self.retained_sys.fetch_add(1, Ordering::Relaxed);
        }
        if expires_at.is_some() {
            self.retained_expiring.fetch_add(1, Ordering::Relaxed);
        }
        match shard.insert(
            topic,
            RetainedMessage {
                message: stored,
                expires_at,
                cost,
            },
        ) {
            None => {
                self.retained_count.fetch_add(1, Ordering::Relaxed);
                self.retained_bytes.fetch_add(cost, Ordering::Relaxed);
            }
            Some(old) => {
                self.retained_bytes.fetch_add(cost, Ordering::Relaxed);
                self.retained_bytes.fetch_sub(old.cost, Ordering::Relaxed);
                if old.expires_at.is_some() {
                    self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        drop(shard);
        // Stored first: a purge that runs meanwhile finds it.
        if let Some(at) = expires_at {
            self.timers.purge_retained_by(at);
        }
        Ok(())
    }

    /// A retained message as a subscriber gets it: `None` once expired (5.0 Message
    /// Expiry Interval); otherwise with the time it has left ([MQTT-3.3.2-6]).
    pub(crate) fn retained_copy(
        &self,
        stored: &RetainedMessage,
        now: mqtt_session::Instant,
    ) -> Option<Message> {
        let mut m = stored.message.clone();
        if let Some(at) = stored.expires_at {
            if now >= at {
                return None;
            }
            let left = at.saturating_since(now).as_secs_ceil();
            m.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
        }
        Some(m)
    }

    /// Drops expired retained messages (delivery skips them anyway; this bounds memory),
    /// and the store's copies. Scans under the read lock, removes under the write lock;
    /// does nothing while no retained message has an expiry. Returns the earliest expiry of those left, for
    /// the timer service to purge again then.
    pub(crate) fn purge_expired_retained(&self) -> Option<mqtt_session::Instant> {
        if self.retained_expiring.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.now();
        let mut next = None::<mqtt_session::Instant>;
        for shard in &self.retained {
            let expired: Vec<String> = {
                let store = shard
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Every topic, `$`-prefixed ones too (`#` would skip them).
                store
                    .iter()
                    .filter(|r| match r.value().expires_at {
                        Some(at) if now >= at => true,
                        Some(at) => {
                            next = Some(next.map_or(at, |n| n.min(at)));
                            false
                        }
                        None => false,
                    })
                    .map(|r| r.topic())
                    .collect()
            };
            if expired.is_empty() {
                continue;
            }
            let mut store = shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for topic in expired {
                let Ok(name) = TopicName::new(&topic) else {
                    continue;
                };
                if store
                    .get(name)
                    .is_some_and(|r| r.expires_at.is_some_and(|at| now >= at))
                {
                    if let Some(old) = store.remove(name) {
                        self.retained_bytes.fetch_sub(old.cost, Ordering::Relaxed);
                    }
                    self.retained_count.fetch_sub(1, Ordering::Relaxed);
                    self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
                    if self.durable {
                        if let Err(e) = self.store.retain(&topic, None) {
                            self.store_failed("an expired retained message", &e);
                        }
                    }
                }
            }
        }
        next
    }

    /// The retained-store shards a filter can match, in order: the one of its first
    /// level when that is literal, every shard when it is a wildcard.
    pub(crate) fn retained_shards(&self, filter: &str) -> std::ops::Range<usize> {
        if filter.starts_with('+') || filter.starts_with('#') {
            0..self.retained.len()
        } else {
            let i = retained_shard(filter);
            i..i + 1
        }
    }

    /// One retained-store shard, read-locked.
    pub(crate) fn retained_shard_read(
        &self,
        shard: usize,
    ) -> Option<std::sync::RwLockReadGuard<'_, RetainedStore<RetainedMessage>>> {
        self.retained
            .get(shard)
            .map(|s| s.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.retained_count.load(Ordering::Relaxed)
    }

    /// What the retained messages are charged against `retain.max_bytes`.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained_bytes.load(Ordering::Relaxed)
    }

    /// A retained message over `retain.max_messages` or `retain.max_bytes`: counted,
    /// and logged at most once every 10 s.
    fn retained_over_quota(&self, topic: &str) {
        let n = self.stats.retained_refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now().as_millis();
        let last = self.retained_refused_logged.load(Ordering::Relaxed);
        if (n == 1 || now.saturating_sub(last) >= 10_000)
            && self
                .retained_refused_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %topic,
                refused = n,
                max_messages = self.live.retain_max_messages(),
                max_bytes = self.live.retain_max_bytes(),
                "retained store full: a message was routed but not retained"
            );
        }
    }
}

/// A subscription's retained messages still to send: streamed in batches that fit the
/// session's queue, resuming the store's iteration where the last batch stopped.
#[derive(Debug)]
pub(crate) struct RetainedBacklog {
    pub(crate) filter: mqtt_codec::ByteStr,
    pub(crate) qos: QoS,
    pub(crate) identifier: Option<mqtt_codec::SubscriptionId>,
    /// Which of the filter's retained-store shards is being streamed (an index into
    /// `Shared::retained_shards`).
    pub(crate) shard: usize,
    pub(crate) cursor: Option<mqtt_topics::Cursor>,
    /// Sent so far from this shard, to skip when the iteration must start over.
    pub(crate) delivered: usize,
    pub(crate) restarts: u32,
}

/// Restarts from scratch (re-sending, never missing) before falling back to skipping by
/// count under constant churn of the retained store.
pub(crate) const MAX_RETAINED_RESTARTS: u32 = 8;

/// Sends the next batch of retained messages that fits in the session's queue. Returns
/// true if it sent any (call again after writing them).
pub(crate) fn pump_retained(
    shared: &Shared,
    handle: &std::sync::Arc<SessionHandle>,
    backlog: &mut VecDeque<RetainedBacklog>,
) -> bool {
    let Some(entry) = backlog.front_mut() else {
        return false;
    };
    let mut cell = handle.lock();
    let room = cell.session.queue_room().min(256);
    if room == 0 {
        return false;
    }
    let Ok(filter) = TopicFilter::new(&entry.filter) else {
        backlog.pop_front();
        return true;
    };
    let now = shared.now();
    let shards = shared.retained_shards(&entry.filter);
    let Some(store) = shards
        .clone()
        .nth(entry.shard)
        .and_then(|i| shared.retained_shard_read(i))
    else {
        backlog.pop_front();
        return true;
    };
    let mut iter = match entry.cursor.and_then(|c| store.resume(filter, c)) {
        Some(it) => it,
        None => {
            let mut it = store.matching(filter);
            if entry.cursor.is_some() {
                // The store changed shape since the last batch: start again, re-sending
                // what was sent (a retained message twice is harmless; one missed is not)
                // unless it keeps changing.
                entry.restarts += 1;
                if entry.restarts > MAX_RETAINED_RESTARTS {
                    it.by_ref().take(entry.delivered).for_each(drop);
                } else {
                    entry.delivered = 0;
                }
            }
            it
        }
    };
    let mut sent = 0;
    let mut finished = true;
    for found in iter.by_ref() {
        let stored = found.value();
        let readable = shared.may_receive(
            &handle.client_id,
            cell.principal.as_deref(),
            &stored.message.topic,
        );
        if let Some(mut m) = shared.retained_copy(stored, now).filter(|_| readable) {
            m.qos = m.qos.min(entry.qos);
            m.retain = true;
            m.properties
                .set_subscription_identifiers(entry.identifier.into_iter().collect());
            // Behind what the session holds on disk, if it does (it keeps their order).
            let taken = if Shared::is_paging(&cell) && shared.may_page_out(&cell, &m) {
                shared.page_out(handle, &mut cell, m).is_ok()
            } else {
                cell.session.deliver(now, m).is_ok()
            };
            if !taken {
                shared.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent += 1;
        entry.delivered += 1;
        if sent == room {
            finished = false;
            break;
        }
    }
    // The batch counts in the global budget at once, not at the next flush.
    shared.account(&mut cell);
    entry.cursor = Some(iter.cursor());
    if finished || iter.cursor().is_done() {
        // This shard is done: on to the filter's next one, or to the next subscription.
        entry.shard += 1;
        entry.cursor = None;
        entry.delivered = 0;
        entry.restarts = 0;
        if entry.shard >= shards.len() {
            backlog.pop_front();
        }
    }
    true
}
