//! MQTT topic names and filters: validation, a subscription index that scales to
//! millions of filters, and retained-message lookup.
//!
//! This layer knows what a topic means: which filters match which names. It does no
//! I/O and knows nothing of sessions or QoS; the values it stores for each subscription
//! are the caller's. Syntax checks come from [`mqtt_codec::topic`], so the decoder and
//! this crate cannot disagree on what a valid filter is.
//!
//! The core is `#![no_std]` with `alloc`. The `std` feature (on by default) adds
//! [`ShardedIndex`] for concurrent use and a random hash seed per index.
//!
//! # Layers
//! - [`TopicName`], [`TopicFilter`], [`Filter`] (plain or [`SharedFilter`]): validated
//!   strings, checked once at the edge ([`TopicError`] says why not).
//! - [`TopicIndex`]: `(filter, subscriber) → value`, looked up by topic name. It reports
//!   each matching subscription ([`TopicIndex::for_each_match`]) or collects them
//!   grouped by subscriber into a reusable [`Matches`] buffer, so a broker can send
//!   one copy per subscriber at the highest QoS with every subscription identifier,
//!   and one copy per matching shared group to a member of its choice.
//! - [`RetainedStore`]: topic name → value, looked up by filter, the same trie the
//!   other way round; [`RetainedStore::matching`] streams the matches lazily.
//! - [`ShardedIndex`] (`std`): a [`TopicIndex`] split over shards behind read-write
//!   locks, so lookups run in parallel and updates block only one shard.
//!
//! # Data structure
//! One trie per index, with a node per filter (or topic) level, in an arena of
//! fixed-size chunks addressed by `u32`. A level of up to 22 bytes is stored inline in
//! its node. Children are found through one open-addressing hash table for the whole
//! trie, keyed by the hash of the child's path from the root, so a level with a million
//! children (device ids) costs one probe, a node with none costs nothing, and a lookup
//! can prefetch the edges of a topic's deeper levels before it walks to them; the `+`
//! child has its own field. Subscriptions sit in the node where their filter ends, with a flag for a
//! trailing `#`; a node with one subscription keeps it inline. In a [`TopicIndex`], a
//! chain of literal levels with nothing in between is one node (path compression), so
//! an exact topic such as `tenant/t7/device/d42/status` costs one probe below the
//! tenant's `device` node, not two.
//!
//! Lookups walk the trie breadth-first through a small queue on the stack, so that the
//! cache misses of independent branches overlap, and depth-first *without a stack*
//! when the queue is full: each node links to its parent, so going up gives back a
//! level and the walk needs no memory of its own. A lookup therefore allocates nothing
//! and cannot overflow the call stack on a topic of thousands of levels.
//! [`RetainedStore::matching`] walks depth-first the same way, which is why its
//! iterator is a few words of state.
//!
//! # Rules
//! - A filter starting with `+` or `#` never matches a topic starting with `$`
//!   ([MQTT-4.7.2-1]); `$SYS/#` matches `$SYS/x`.
//! - `a/#` matches `a`; `+` matches an empty level (`a/+` matches `a/`); empty levels
//!   are levels (`a//b` has three). Matching compares bytes: nothing is normalised
//!   ([MQTT-4.7.3-4]).
//! - In 5.0, `$share/{group}/{filter}` is a shared subscription ([`Filter::parse`]); in
//!   3.1.1 it is an ordinary filter.
//!
//! # Panics
//! None of this crate's functions panic, whatever the input; lookups allocate nothing
//! once the caller's [`Matches`] buffer has grown (a test counts allocations).
//!
//! # Example
//! ```
//! use mqtt_codec::ProtocolVersion::V5;
//! use mqtt_topics::{Filter, Matches, TopicIndex, TopicName};
//!
//! let mut index = TopicIndex::new();
//! // Subscriber ids and (QoS, subscription identifier) values are the caller's choice.
//! index.subscribe(Filter::parse("tenant/+/device/42/#", V5)?, "dashboard", (1, 7));
//! index.subscribe(Filter::parse("tenant/acme/device/42/status", V5)?, "dashboard", (2, 8));
//! index.subscribe(Filter::parse("$share/workers/tenant/+/device/+/status", V5)?, "w1", (1, 0));
//! index.subscribe(Filter::parse("$share/workers/tenant/+/device/+/status", V5)?, "w2", (1, 0));
//! index.subscribe(Filter::parse("#", V5)?, "logger", (0, 0));
//!
//! let mut m = Matches::new();
//! index.matches(TopicName::new("tenant/acme/device/42/status")?, &mut m);
//! let subscribers: Vec<_> = m.subscribers().map(|s| (*s.key(), s.values().count())).collect();
//! assert_eq!(subscribers, [("dashboard", 2), ("logger", 1)]);
//! let group = m.shared().next().unwrap();
//! assert_eq!((group.name(), group.members().len()), ("workers", 2));
//!
//! // `$` topics are not seen by filters starting with a wildcard.
//! index.matches(TopicName::new("$SYS/uptime")?, &mut m);
//! assert!(m.is_empty());
//! # Ok::<(), mqtt_topics::TopicError>(())
//! ```
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod hash;
mod index;
mod prefetch;
mod retained;
#[cfg(feature = "std")]
mod sharded;
mod topic;
mod trie;

pub use crate::{
    index::{GroupId, Match, Matches, SharedGroup, Subscriber, Subscribers, TopicIndex},
    retained::{Cursor, Matching, Retained, RetainedStore},
    topic::{Filter, SharedFilter, TopicError, TopicFilter, TopicName},
};

#[cfg(feature = "std")]
pub use crate::sharded::ShardedIndex;
