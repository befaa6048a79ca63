//! [`ShardedIndex`]: a [`TopicIndex`] that many threads can look up and change at once.

use std::{
    boxed::Box,
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    vec::Vec,
};

use crate::{Filter, Match, Matches, TopicIndex, TopicName, hash::short_hash, index::find_slash};

/// At most this many levels form a shard key.
const MAX_KEY_LEVELS: usize = 6;

struct Shard<K, V> {
    /// Subscriptions in the shard, so that lookups skip empty shards without locking.
    len: AtomicUsize,
    index: RwLock<TopicIndex<K, V>>,
}

/// A subscription index for concurrent use (feature `std`): the filters are split
/// over shards, each a [`TopicIndex`] behind its own [`RwLock`].
///
/// # Scheme
/// A filter's *key* is its literal prefix: its first `key_levels` levels, cut short at
/// the first wildcard. Filters whose first level is a wildcard (`#`, `+/...`) go to a
/// shard of their own; the others to a shard chosen by a hash of their key. A topic
/// can only match filters whose key is one of its own first `0..=key_levels` levels,
/// so a lookup reads at most `key_levels + 1` shards, each under a read lock, and
/// every other shard stays free for writers.
///
/// - Lookups never wait for each other: read locks are shared. They wait only for a
///   writer of one of their shards, whose critical section is one insert or remove (a
///   few hash probes, no allocation in the steady state).
/// - A subscribe or unsubscribe write-locks exactly one shard.
/// - Empty shards are skipped without touching their lock.
///
/// The default, 16 shards keyed by up to 2 levels, spreads `tenant/{id}/...` or
/// `devices/{id}/...` hierarchies whose first level is the same everywhere.
///
/// Why not copy-on-write or RCU: the index holds millions of subscriptions, and
/// copying a shard per change (or keeping two copies, as left-right does) multiplies
/// the memory or the write cost, while a read lock costs a few atomic operations per
/// lookup, which is small next to the walk itself. A lock-free trie would need
/// `unsafe` memory reclamation, which this crate does not use.
pub struct ShardedIndex<K, V> {
    /// `shards[0]`: filters starting with a wildcard.
    shards: Box<[Shard<K, V>]>,
    key_levels: usize,
    seed: u64,
    /// Counts the subscribes and unsubscribes: see [`ShardedIndex::generation`].
    generation: AtomicU64,
}

impl<K, V> std::fmt::Debug for ShardedIndex<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedIndex")
            .field("shards", &self.shards.len())
            .field("key_levels", &self.key_levels)
            .field(
                "len",
                &self
                    .shards
                    .iter()
                    .map(|s| s.len.load(Ordering::Relaxed))
                    .sum::<usize>(),
            )
            .finish()
    }
}

impl<K: Ord, V> Default for ShardedIndex<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The length of the first `levels` levels of `s` (all of `s` if it has fewer), and
/// whether that prefix is literal (no `+` or `#`): the prefix ends early at a wildcard.
fn key_len(s: &str, levels: usize) -> usize {
    let mut len = 0;
    for (i, level) in s.split('/').take(levels).enumerate() {
        if level == "+" || level == "#" {
            // A wildcard ends the key before this level and its `/`.
            return len;
        }
        len += level.len() + usize::from(i > 0);
    }
    len
}

impl<K: Ord, V> ShardedIndex<K, V> {
    /// An index with 16 shards keyed by up to 2 levels, plus the wildcard shard.
    pub fn new() -> Self {
        Self::with_shards(16, 2)
    }

    /// An index with `shards` hashed shards (at least 1) keyed by up to `key_levels`
    /// levels (1 to 6), plus the shard of filters starting with a wildcard.
    pub fn with_shards(shards: usize, key_levels: usize) -> Self {
        let seed = crate::hash::default_seed();
        let shards = (0..=shards.max(1))
            .map(|i| Shard {
                len: AtomicUsize::new(0),
                index: RwLock::new(TopicIndex::with_seed_and_groups(seed, (i as u64) << 48)),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            shards,
            key_levels: key_levels.clamp(1, MAX_KEY_LEVELS),
            seed,
            generation: AtomicU64::new(0),
        }
    }

    /// The number of subscriptions (at some moment during the call).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.len.load(Ordering::Relaxed))
            .sum()
    }

    /// True when there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of_key(&self, key: &[u8]) -> usize {
        if key.is_empty() {
            return 0;
        }
        let hashed = self.shards.len() - 1;
        1 + short_hash(self.seed, key) as usize % hashed
    }

    fn shard(&self, filter: Filter<'_>) -> Option<&Shard<K, V>> {
        let f = filter.topic_filter().as_str();
        let key = f.as_bytes().get(..key_len(f, self.key_levels))?;
        self.shards.get(self.shard_of_key(key))
    }

    /// Adds or replaces a subscription, as [`TopicIndex::subscribe`]; locks one shard.
    pub fn subscribe(&self, filter: Filter<'_>, key: K, value: V) -> Option<V> {
        let shard = self.shard(filter)?;
        let mut index = shard.index.write().unwrap_or_else(PoisonError::into_inner);
        let old = index.subscribe(filter, key, value);
        shard.len.store(index.len(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// Removes a subscription, as [`TopicIndex::unsubscribe`]; locks one shard.
    pub fn unsubscribe(&self, filter: Filter<'_>, key: &K) -> Option<V> {
        let shard = self.shard(filter)?;
        let mut index = shard.index.write().unwrap_or_else(PoisonError::into_inner);
        let old = index.unsubscribe(filter, key);
        shard.len.store(index.len(), Ordering::Release);
        if old.is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        old
    }

    /// A number that changes with every subscribe and every unsubscribe that removed
    /// something, each counted before its shard is unlocked. Read before a lookup, it
    /// says whether a later lookup could answer differently: if it is the same then,
    /// every change since came before the first lookup read its shard, so the first
    /// answer still holds (a cache of matches per topic relies on this).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A clone of the value of `key`'s subscription to `filter`.
    pub fn get(&self, filter: Filter<'_>, key: &K) -> Option<V>
    where
        V: Clone,
    {
        let shard = self.shard(filter)?;
        let index = shard.index.read().unwrap_or_else(PoisonError::into_inner);
        index.get(filter, key).cloned()
    }

    /// The shards `topic` must be looked up in, each once, in `buf`; returns how many.
    fn shards_for(&self, topic: TopicName<'_>, buf: &mut [usize; MAX_KEY_LEVELS + 1]) -> usize {
        let t = topic.as_str();
        let mut n = 0;
        let mut push = |i: usize| {
            if !buf.iter().take(n).any(|&j| j == i) {
                if let Some(slot) = buf.get_mut(n) {
                    *slot = i;
                    n += 1;
                }
            }
        };
        push(0);
        // The keys are the topic's first `key_levels` levels, one more each time: found
        // a word at a time (`str::split` costed a PUBLISH 3 % of its routing).
        let bytes = t.as_bytes();
        let mut start = 0;
        for _ in 0..self.key_levels {
            let rest = bytes.get(start..).unwrap_or_default();
            let end = find_slash(rest).map_or(bytes.len(), |i| start + i);
            if let Some(key) = bytes.get(..end) {
                push(self.shard_of_key(key));
            }
            if end >= bytes.len() {
                break;
            }
            start = end + 1;
        }
        n
    }

    /// Calls `f` with every subscription matching `topic`, as
    /// [`TopicIndex::for_each_match`], while holding read locks on the shards involved:
    /// keep `f` short and never subscribe or unsubscribe from it (that deadlocks).
    pub fn for_each_match(&self, topic: TopicName<'_>, mut f: impl FnMut(Match<'_, K, V>)) {
        let mut buf = [0; MAX_KEY_LEVELS + 1];
        let n = self.shards_for(topic, &mut buf);
        for &i in buf.iter().take(n) {
            let Some(shard) = self.shards.get(i) else {
                continue;
            };
            if shard.len.load(Ordering::Acquire) == 0 {
                continue;
            }
            let index = shard.index.read().unwrap_or_else(PoisonError::into_inner);
            index.for_each_match(topic, &mut f);
        }
    }

    /// Collects the subscriptions matching `topic` into `out`, grouped by subscriber, as
    /// [`TopicIndex::matches`]. Allocates nothing once `out` has grown.
    pub fn matches(&self, topic: TopicName<'_>, out: &mut Matches<K, V>)
    where
        K: Clone,
        V: Clone,
    {
        out.clear();
        let mut buf = [0; MAX_KEY_LEVELS + 1];
        let n = self.shards_for(topic, &mut buf);
        for &i in buf.iter().take(n) {
            let Some(shard) = self.shards.get(i) else {
                continue;
            };
            if shard.len.load(Ordering::Acquire) == 0 {
                continue;
            }
            let index = shard.index.read().unwrap_or_else(PoisonError::into_inner);
            index.collect_matches(topic, out);
        }
        out.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::{ShardedIndex, key_len};
    use crate::{Filter, Matches, TopicName};

    // What a cache of matches relies on: every change moves the generation, a lookup
    // after it sees the change, and an unsubscribe of nothing moves nothing.
    #[test]
    fn every_change_moves_the_generation() {
        let index = ShardedIndex::<u32, u8>::new();
        let topic = TopicName::new("a/b").unwrap();
        let filter = |f| Filter::parse(f, mqtt_codec::ProtocolVersion::V5).unwrap();
        let g0 = index.generation();
        index.subscribe(filter("a/+"), 1, 0);
        let g1 = index.generation();
        assert_ne!(g0, g1);
        let mut m = Matches::default();
        index.matches(topic, &mut m);
        assert_eq!(m.subscribers().count(), 1);
        index.subscribe(filter("a/+"), 1, 1);
        let g2 = index.generation();
        assert_ne!(g1, g2, "a replaced subscription changes what matches carry");
        index.unsubscribe(filter("x/#"), &1);
        assert_eq!(index.generation(), g2);
        index.unsubscribe(filter("a/+"), &1);
        assert_ne!(index.generation(), g2);
        index.matches(topic, &mut m);
        assert_eq!(m.subscribers().count(), 0);
    }

    #[test]
    fn keys() {
        assert_eq!(key_len("a/b/c", 2), 3);
        assert_eq!(key_len("a/b", 2), 3);
        assert_eq!(key_len("a", 2), 1);
        assert_eq!(key_len("a/+/c", 2), 1);
        assert_eq!(key_len("a/#", 2), 1);
        assert_eq!(key_len("+/b", 2), 0);
        assert_eq!(key_len("#", 2), 0);
        assert_eq!(key_len("a/", 2), 2);
        assert_eq!(key_len("/a/b", 2), 2);
        assert_eq!(key_len("//", 2), 1);
        assert_eq!(key_len("/+", 2), 0);
    }
}
