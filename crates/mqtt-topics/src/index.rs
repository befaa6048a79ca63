//! The subscription index: filters in, topic names looked up.

use alloc::{boxed::Box, string::String, vec::Vec};
use core::{fmt, ops::Range};

use crate::{
    Filter, TopicFilter, TopicName,
    hash::{default_seed, edge_of, level_hash},
    trie::{NONE, Payload, ROOT, ROOT_PATH, Trie},
};

/// Whether a subscription's filter ends at its node or continues with `/#`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Exact,
    /// The filter is the node's path followed by `/#` (or is `#` at the root): it also
    /// matches every topic below the node, and the node's own topic.
    Multi,
}

struct Entry<K, V> {
    key: K,
    value: V,
    kind: Kind,
}

/// The identity of a shared subscription group (share name + filter) in one index.
///
/// Stable while the group has members; a group that empties and is created again gets
/// a new id. Use it to keep per-group state such as a round-robin cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

struct Group<K, V> {
    id: GroupId,
    name: Box<str>,
    kind: Kind,
    /// Sorted by key.
    members: Vec<(K, V)>,
}

struct Many<K, V> {
    /// Sorted by (kind, key).
    entries: Vec<Entry<K, V>>,
    groups: Vec<Group<K, V>>,
}

/// The subscriptions whose filter ends at one node. Most nodes hold one subscription
/// or none, so that case is inline; the rest is boxed to keep nodes small.
#[derive(Default)]
enum Subs<K, V> {
    #[default]
    Empty,
    One(Entry<K, V>),
    Many(Box<Many<K, V>>),
}

impl<K, V> Payload for Subs<K, V> {
    fn is_empty(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::One(_) => false,
            Self::Many(m) => m.entries.is_empty() && m.groups.is_empty(),
        }
    }
}

/// One matching subscription, as [`TopicIndex::for_each_match`] reports it.
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// An ordinary subscription of subscriber `K`. A subscriber with several matching
    /// subscriptions is reported once for each.
    Subscription(&'a K, &'a V),
    /// A shared subscription group; the broker delivers to one of its members.
    Shared(SharedGroup<'a, K, V>),
}

/// A shared subscription group whose filter matches: its id, share name and members.
pub struct SharedGroup<'a, K, V> {
    id: GroupId,
    name: &'a str,
    members: &'a [(K, V)],
}

impl<'a, K, V> SharedGroup<'a, K, V> {
    /// The group's identity in this index.
    pub const fn id(&self) -> GroupId {
        self.id
    }

    /// The share name.
    pub const fn name(&self) -> &'a str {
        self.name
    }

    /// The members and their subscriptions' values, sorted by key; never empty.
    pub const fn members(&self) -> &'a [(K, V)] {
        self.members
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedGroup<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("members", &self.members)
            .finish()
    }
}

/// An index of subscriptions, `(filter, subscriber K) → V`, that finds every
/// subscription matching a topic name. `no_std` + `alloc`; for concurrent use see
/// [`ShardedIndex`](crate::ShardedIndex) (feature `std`).
///
/// `K` identifies a subscriber (a session); `V` is what the broker keeps per
/// subscription (QoS, options, subscription identifier). A subscriber has at most one
/// subscription per filter: subscribing again replaces its value ([MQTT-3.8.4-3]).
///
/// # Costs
/// A lookup walks the trie along the topic's levels, following at each level the
/// exact child (one hash probe; a chain of literal levels with nothing in between is
/// one node, so one probe) and the `+` child (a field), and reading the subscriptions
/// of every node reached. It allocates nothing and uses no recursion. Insert and
/// remove cost one probe per level, plus a sorted insert into the node's list when
/// several subscribers share a filter.
///
/// # Example
/// ```
/// use mqtt_topics::{Filter, TopicFilter, TopicIndex, TopicName, Matches};
///
/// let mut index = TopicIndex::new();
/// index.subscribe(TopicFilter::new("home/+/temp")?.into(), "alice", 1u8);
/// index.subscribe(TopicFilter::new("home/#")?.into(), "alice", 2);
/// index.subscribe(TopicFilter::new("home/kitchen/temp")?.into(), "bob", 0);
///
/// let mut m = Matches::new();
/// index.matches(TopicName::new("home/kitchen/temp")?, &mut m);
/// let got: Vec<_> = m.subscribers().map(|s| (*s.key(), s.values().copied().max())).collect();
/// assert_eq!(got, [("alice", Some(2)), ("bob", Some(0))]);
/// # Ok::<(), mqtt_topics::TopicError>(())
/// ```
pub struct TopicIndex<K, V> {
    trie: Trie<Subs<K, V>>,
    len: usize,
    next_group: u64,
}

impl<K: Ord, V> Default for TopicIndex<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for TopicIndex<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Splits the level starting at `pos`: the level and the position after it (`end`
/// when it was the last).
#[inline]
pub(crate) fn split_level(t: &[u8], pos: usize, end: usize) -> (&[u8], usize) {
    let rest = t.get(pos..).unwrap_or_default();
    match find_slash(rest) {
        Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
        None => (rest, end),
    }
}

/// The position of the first `/` in `s`, eight bytes at a time: a lookup splits the
/// topic level by level, once per branch.
#[inline]
pub(crate) fn find_slash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const SLASHES: u64 = ONES * b'/' as u64;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let w = <[u8; 8]>::try_from(word).map_or(0, u64::from_le_bytes) ^ SLASHES;
        // The lowest zero byte of `w` sets the lowest bit here (a borrow can only mark
        // bytes above a zero one).
        let zero = w.wrapping_sub(ONES) & !w & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'/')
        .map(|i| at + i)
}

/// How many of a topic's first levels a lookup hashes up front, and so can prefetch.
const KNOWN_LEVELS: usize = 8;

/// How many literal levels below a `+` child a lookup prefetches. Two reach the level
/// that fans out in the usual shapes (`tenant/+/device/{id}`); deeper guesses mostly
/// name edges that do not exist, and each costs a memory access.
const PLUS_AHEAD: usize = 2;

/// The level hashes of one topic during a lookup: the first [`KNOWN_LEVELS`] hashed up
/// front, the others as branches reach them, remembering the last (the branches of a
/// lookup that probe the same level come one after the other).
struct Levels<'t> {
    seed: u64,
    topic: &'t [u8],
    /// The start and hash of each of the first `count` levels.
    known: [(usize, u64); KNOWN_LEVELS],
    count: usize,
    pos: usize,
    hash: u64,
}

impl<'t> Levels<'t> {
    /// Hashes the first levels of `topic`. With `prefetch`, also starts fetching the
    /// edge of each level for a literal descent from the root (`trie`'s), as soon as
    /// its hash is known.
    #[inline]
    fn new<T: Payload>(trie: &Trie<T>, topic: &'t [u8], prefetch: bool) -> Self {
        let seed = trie.seed();
        let mut known = [(usize::MAX, 0); KNOWN_LEVELS];
        let end = topic.len() + 1;
        let mut pos = 0;
        let mut count = 0;
        let mut path = ROOT_PATH;
        for slot in &mut known {
            if pos == end {
                break;
            }
            let (level, next) = split_level(topic, pos, end);
            let hash = level_hash(seed, level);
            *slot = (pos, hash);
            if prefetch {
                path = edge_of(hash, path);
                trie.prefetch(path);
            }
            count += 1;
            pos = next;
        }
        Self {
            seed,
            topic,
            known,
            count,
            pos: usize::MAX,
            hash: 0,
        }
    }

    /// The index among the known levels of the level starting at `pos`.
    #[inline]
    fn index_of(&self, pos: usize) -> Option<usize> {
        self.known
            .get(..self.count)?
            .iter()
            .position(|&(start, _)| start == pos)
    }

    /// The hash of the level from `pos` to `next` (as [`split_level`] returns it).
    #[inline]
    fn at(&mut self, pos: usize, next: usize) -> u64 {
        if let Some(&(_, hash)) = self.index_of(pos).and_then(|i| self.known.get(i)) {
            return hash;
        }
        if pos != self.pos {
            let level = self
                .topic
                .get(pos..next.saturating_sub(1).max(pos))
                .unwrap_or_default();
            self.hash = level_hash(self.seed, level);
            self.pos = pos;
        }
        self.hash
    }

    /// Prefetches the edges of the literal levels that would follow a node whose path
    /// hash is `path`, starting with the level at `pos`, as far as the known levels go.
    #[inline]
    fn prefetch<T: Payload>(&self, trie: &Trie<T>, mut path: u32, pos: usize, ahead: usize) {
        let Some(first) = self.index_of(pos) else {
            return;
        };
        let known = self.known.get(..self.count).unwrap_or_default();
        for &(_, hash) in known.iter().skip(first).take(ahead) {
            path = edge_of(hash, path);
            trie.prefetch(path);
        }
    }
}

/// The start of the level that ends just before `next` (`next` as returned by
/// [`split_level`]).
#[inline]
pub(crate) fn level_start(t: &[u8], next: usize) -> usize {
    t.get(..next.saturating_sub(1))
        .and_then(|s| s.iter().rposition(|&b| b == b'/'))
        .map_or(0, |i| i + 1)
}

impl<K: Ord, V> TopicIndex<K, V> {
    /// An empty index. With `std`, its hash seed is random; without, it is fixed (see
    /// [`with_seed`](Self::with_seed)).
    pub fn new() -> Self {
        Self::with_seed(default_seed())
    }

    /// An empty index whose edge hash uses `seed`. Topic levels come from clients, so a
    /// broker built without `std` should pass a random seed.
    pub fn with_seed(seed: u64) -> Self {
        Self::with_seed_and_groups(seed, 0)
    }

    pub(crate) fn with_seed_and_groups(seed: u64, first_group: u64) -> Self {
        Self {
            trie: Trie::new(seed, true),
            len: 0,
            next_group: first_group,
        }
    }

    /// The number of subscriptions (each shared group member counts once).
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when there is no subscription.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The levels leading to `filter`'s node, and whether it ends with `#`.
    fn path_of(filter: TopicFilter<'_>) -> (impl Iterator<Item = &str>, Kind) {
        let s = filter.as_str();
        // The filter is valid: `#` can only be the whole filter or end it as `/#`.
        let (path, kind) = match s.strip_suffix("/#") {
            _ if s == "#" => (None, Kind::Multi),
            Some(p) => (Some(p), Kind::Multi),
            None => (Some(s), Kind::Exact),
        };
        (path.into_iter().flat_map(|p| p.split('/')), kind)
    }

    /// Adds the subscription of `key` to `filter` with `value`, or replaces its value
    /// if `key` already has that subscription, returning the old value.
    pub fn subscribe(&mut self, filter: Filter<'_>, key: K, value: V) -> Option<V> {
        let (levels, kind) = Self::path_of(filter.topic_filter());
        let id = self.trie.find_or_insert(levels);
        let subs = self.trie.payload_mut(id)?;
        let old = match filter {
            Filter::Plain(_) => insert_plain(subs, Entry { key, value, kind }),
            Filter::Shared(s) => {
                let next_group = &mut self.next_group;
                insert_shared(subs, s.group, kind, key, value, next_group)
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the subscription of `key` to `filter`, returning its value.
    pub fn unsubscribe(&mut self, filter: Filter<'_>, key: &K) -> Option<V> {
        let (levels, kind) = Self::path_of(filter.topic_filter());
        let id = self.trie.find(levels);
        let subs = self.trie.payload_mut(id)?;
        let old = match filter {
            Filter::Plain(_) => remove_plain(subs, kind, key),
            Filter::Shared(s) => remove_shared(subs, s.group, kind, key),
        };
        if old.is_some() {
            self.len -= 1;
            self.trie.prune(id);
        }
        old
    }

    /// The value of `key`'s subscription to `filter`.
    pub fn get(&self, filter: Filter<'_>, key: &K) -> Option<&V> {
        let (levels, kind) = Self::path_of(filter.topic_filter());
        let id = self.trie.find(levels);
        let subs = &self.trie.node(id)?.payload;
        match (filter, subs) {
            (Filter::Plain(_), Subs::One(e)) => {
                (e.kind == kind && e.key == *key).then_some(&e.value)
            }
            (Filter::Plain(_), Subs::Many(m)) => m
                .entries
                .binary_search_by(|e| (e.kind, &e.key).cmp(&(kind, key)))
                .ok()
                .and_then(|i| m.entries.get(i))
                .map(|e| &e.value),
            (Filter::Shared(s), Subs::Many(m)) => {
                let g = m
                    .groups
                    .iter()
                    .find(|g| g.kind == kind && *g.name == *s.group)?;
                let i = g.members.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
                g.members.get(i).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Calls `f` with every subscription matching `topic`: each ordinary subscription
    /// once (a subscriber may thus appear several times) and each shared group whose
    /// filter matches once. Allocates nothing.
    ///
    /// Filters starting with `+` or `#` do not match topics starting with `$`
    /// ([MQTT-4.7.2-1]); `a/#` matches `a`; `+` matches an empty level.
    pub fn for_each_match<'a>(&'a self, topic: TopicName<'_>, mut f: impl FnMut(Match<'a, K, V>)) {
        let t = topic.as_str().as_bytes();
        let dollar = topic.is_dollar();
        let end = t.len() + 1;
        // Breadth-first through a small queue of (node, position) on the stack, so that
        // the probes of independent branches (the literal child and the `+` child of a
        // level) follow each other closely and their cache misses can overlap, where a
        // depth-first walk would start the second only once the first has come back. A
        // branch that finds the queue full is walked depth-first on the spot.
        let mut queue = Queue::new(ROOT, 0);
        // In an index too large for the caches, the edges that a literal descent from
        // the root would probe: most of a lookup's cache misses, started now rather
        // than level by level.
        let prefetch = self.trie.is_large();
        let levels = &mut Levels::new(&self.trie, t, prefetch);
        while let Some((node, pos)) = queue.pop() {
            let Some(n) = self.trie.node(node) else {
                continue;
            };
            let hidden = node == ROOT && dollar;
            if !hidden && !matches!(n.payload, Subs::Empty) {
                visit(&n.payload, pos == end, &mut f);
            }
            if pos == end {
                continue;
            }
            let (_, next) = split_level(t, pos, end);
            // Topic levels never are `+`. Probe only if there are literal children.
            // A compressed child consumes several levels.
            if n.first_child != NONE {
                let level = levels.at(pos, next);
                let (child, after) = self.trie.literal_step(node, n.path, level, t, pos);
                if child != NONE && !queue.push(child, after) {
                    self.walk(child, after, t, dollar, levels, &mut f);
                }
            }
            if n.plus != NONE && !hidden {
                // The same for the literal levels just below the `+` child, if it has
                // any.
                if prefetch {
                    if let Some(plus) = self.trie.node(n.plus).filter(|p| p.first_child != NONE) {
                        levels.prefetch(&self.trie, plus.path, next, PLUS_AHEAD);
                    }
                }
                if !queue.push(n.plus, next) {
                    self.walk(n.plus, next, t, dollar, levels, &mut f);
                }
            }
        }
    }

    /// Reports the matches of `t` in the subtree of `start`, reached with `t` consumed
    /// up to `start_pos`: a depth-first walk without a stack. `levels` are `t`'s.
    fn walk<'a>(
        &'a self,
        start: u32,
        start_pos: usize,
        t: &[u8],
        dollar: bool,
        levels: &mut Levels<'_>,
        f: &mut impl FnMut(Match<'a, K, V>),
    ) {
        let end = t.len() + 1;
        let mut node = start;
        let mut pos = start_pos;
        // A depth-first walk without a stack: going down consumes a level, going up
        // (through `parent`) gives it back, and whether we come up from the exact child
        // or from the `+` child tells what is left to try at the parent.
        'enter: loop {
            let Some(n) = self.trie.node(node) else {
                return;
            };
            let root_hidden = node == ROOT && dollar;
            if !root_hidden {
                visit(&n.payload, pos == end, f);
            }
            if pos != end {
                let (_, next) = split_level(t, pos, end);
                // Topic levels never are `+`. Probe only if there are literal children.
                // A compressed child consumes several levels.
                let (child, after) = if n.first_child == NONE {
                    (NONE, next)
                } else {
                    self.trie
                        .literal_step(node, n.path, levels.at(pos, next), t, pos)
                };
                if child != NONE {
                    node = child;
                    pos = after;
                    continue 'enter;
                }
                if n.plus != NONE && !root_hidden {
                    node = n.plus;
                    pos = next;
                    continue 'enter;
                }
            }
            // Go up until a parent still has its `+` child to try.
            loop {
                if node == start {
                    return;
                }
                let Some(n) = self.trie.node(node) else {
                    return;
                };
                let (child, child_pos) = (node, pos);
                node = n.parent;
                let Some(p) = self.trie.node(node) else {
                    return;
                };
                // A `+` child consumed one level; a literal child, its label.
                pos = if p.plus == child {
                    level_start(t, child_pos)
                } else {
                    child_pos.saturating_sub(n.label().len() + 1)
                };
                if p.plus != NONE && p.plus != child && !(node == ROOT && dollar) {
                    node = p.plus;
                    pos = split_level(t, pos, end).1;
                    continue 'enter;
                }
            }
        }
    }

    /// Collects the subscriptions matching `topic` into `out` (cleared first), grouped
    /// by subscriber: what a broker needs to deliver one copy per subscriber at the
    /// highest QoS, with every subscription identifier (5.0 [MQTT-3.3.4-2],
    /// [MQTT-3.3.4-3]). Once `out` has grown to the largest result, this allocates
    /// nothing.
    pub fn matches(&self, topic: TopicName<'_>, out: &mut Matches<K, V>)
    where
        K: Clone,
        V: Clone,
    {
        out.clear();
        self.collect_matches(topic, out);
        out.finish();
    }

    pub(crate) fn collect_matches(&self, topic: TopicName<'_>, out: &mut Matches<K, V>)
    where
        K: Clone,
        V: Clone,
    {
        self.for_each_match(topic, |m| out.push(m));
    }
}

/// The pending branches of a lookup: a ring buffer of (node, position).
struct Queue {
    items: [(u32, usize); QUEUE],
    head: usize,
    len: usize,
}

const QUEUE: usize = 16;

impl Queue {
    fn new(node: u32, pos: usize) -> Self {
        let mut items = [(NONE, 0); QUEUE];
        if let Some(first) = items.first_mut() {
            *first = (node, pos);
        }
        Self {
            items,
            head: 0,
            len: 1,
        }
    }

    /// Adds a branch, or returns false if the queue is full.
    #[inline]
    fn push(&mut self, node: u32, pos: usize) -> bool {
        if self.len == QUEUE {
            return false;
        }
        if let Some(slot) = self.items.get_mut((self.head + self.len) % QUEUE) {
            *slot = (node, pos);
        }
        self.len += 1;
        true
    }

    #[inline]
    fn pop(&mut self) -> Option<(u32, usize)> {
        if self.len == 0 {
            return None;
        }
        let item = self.items.get(self.head).copied();
        self.head = (self.head + 1) % QUEUE;
        self.len -= 1;
        item
    }
}

#[inline(always)]
fn visit<'a, K, V>(subs: &'a Subs<K, V>, at_end: bool, f: &mut impl FnMut(Match<'a, K, V>)) {
    match subs {
        Subs::Empty => {}
        Subs::One(e) => {
            if at_end || e.kind == Kind::Multi {
                f(Match::Subscription(&e.key, &e.value));
            }
        }
        Subs::Many(m) => {
            for e in &m.entries {
                if at_end || e.kind == Kind::Multi {
                    f(Match::Subscription(&e.key, &e.value));
                }
            }
            for g in &m.groups {
                if at_end || g.kind == Kind::Multi {
                    f(Match::Shared(SharedGroup {
                        id: g.id,
                        name: &g.name,
                        members: &g.members,
                    }));
                }
            }
        }
    }
}

impl<K, V> Many<K, V> {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// Runs `f` on `subs` in its boxed form, converting it first if needed.
fn with_many<K, V, R>(subs: &mut Subs<K, V>, f: impl FnOnce(&mut Many<K, V>) -> R) -> R {
    let mut many = match core::mem::take(subs) {
        Subs::Many(m) => m,
        Subs::One(e) => {
            let mut m = Box::new(Many::new());
            m.entries.push(e);
            m
        }
        Subs::Empty => Box::new(Many::new()),
    };
    let out = f(&mut many);
    *subs = Subs::Many(many);
    out
}

fn insert_plain<K: Ord, V>(subs: &mut Subs<K, V>, new: Entry<K, V>) -> Option<V> {
    match subs {
        Subs::Empty => {
            *subs = Subs::One(new);
            return None;
        }
        Subs::One(e) if e.kind == new.kind && e.key == new.key => {
            return Some(core::mem::replace(&mut e.value, new.value));
        }
        _ => {}
    }
    with_many(subs, |many| {
        match many
            .entries
            .binary_search_by(|e| (e.kind, &e.key).cmp(&(new.kind, &new.key)))
        {
            Ok(i) => many
                .entries
                .get_mut(i)
                .map(|e| core::mem::replace(&mut e.value, new.value)),
            Err(i) => {
                many.entries.insert(i, new);
                None
            }
        }
    })
}

fn remove_plain<K: Ord, V>(subs: &mut Subs<K, V>, kind: Kind, key: &K) -> Option<V> {
    match subs {
        Subs::One(e) if e.kind == kind && e.key == *key => match core::mem::take(subs) {
            Subs::One(e) => Some(e.value),
            _ => None,
        },
        Subs::Many(m) => {
            let i = m
                .entries
                .binary_search_by(|e| (e.kind, &e.key).cmp(&(kind, key)))
                .ok()?;
            let e = m.entries.remove(i);
            shrink(subs);
            Some(e.value)
        }
        _ => None,
    }
}

/// Returns a `Many` that holds one ordinary subscription, or nothing, to the inline form.
fn shrink<K, V>(subs: &mut Subs<K, V>) {
    let Subs::Many(m) = subs else { return };
    if !m.groups.is_empty() || m.entries.len() > 1 {
        if m.entries.capacity() > 2 * m.entries.len() + 4 {
            m.entries.shrink_to_fit();
        }
        return;
    }
    let e = m.entries.pop();
    *subs = e.map_or(Subs::Empty, Subs::One);
}

fn insert_shared<K: Ord, V>(
    subs: &mut Subs<K, V>,
    name: &str,
    kind: Kind,
    key: K,
    value: V,
    next_group: &mut u64,
) -> Option<V> {
    with_many(subs, |many| {
        insert_member(many, name, kind, key, value, next_group)
    })
}

fn insert_member<K: Ord, V>(
    many: &mut Many<K, V>,
    name: &str,
    kind: Kind,
    key: K,
    value: V,
    next_group: &mut u64,
) -> Option<V> {
    let g = match many
        .groups
        .iter()
        .position(|g| g.kind == kind && *g.name == *name)
    {
        Some(i) => many.groups.get_mut(i),
        None => {
            let id = GroupId(*next_group);
            *next_group += 1;
            many.groups.push(Group {
                id,
                name: name.into(),
                kind,
                members: Vec::new(),
            });
            many.groups.last_mut()
        }
    }?;
    match g.members.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => g
            .members
            .get_mut(i)
            .map(|(_, v)| core::mem::replace(v, value)),
        Err(i) => {
            g.members.insert(i, (key, value));
            None
        }
    }
}

fn remove_shared<K: Ord, V>(subs: &mut Subs<K, V>, name: &str, kind: Kind, key: &K) -> Option<V> {
    let Subs::Many(m) = subs else { return None };
    let gi = m
        .groups
        .iter()
        .position(|g| g.kind == kind && *g.name == *name)?;
    let g = m.groups.get_mut(gi)?;
    let i = g.members.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
    let (_, v) = g.members.remove(i);
    if g.members.is_empty() {
        m.groups.swap_remove(gi);
    }
    shrink(subs);
    Some(v)
}

/// Up to this many subscriptions, [`Matches::finish`] sorts by insertion.
const SMALL: usize = 16;

/// Where one shared group's data sits in a [`Matches`].
#[derive(Clone, Debug)]
struct GroupSpan {
    id: GroupId,
    name: Range<usize>,
    members: Range<usize>,
}

/// A reusable buffer of lookup results, grouped by subscriber.
///
/// Keep one per task and pass it to every lookup: once it has grown to the largest
/// result, lookups allocate nothing.
pub struct Matches<K, V> {
    /// Sorted by key after `finish`.
    subs: Vec<(K, V)>,
    groups: Vec<GroupSpan>,
    members: Vec<(K, V)>,
    names: String,
}

impl<K, V> Default for Matches<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Matches<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matches")
            .field("subscriptions", &self.subs)
            .field("shared", &self.groups)
            .finish()
    }
}

impl<K, V> Matches<K, V> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            subs: Vec::new(),
            groups: Vec::new(),
            members: Vec::new(),
            names: String::new(),
        }
    }

    /// Empties the buffer, keeping its capacity.
    pub fn clear(&mut self) {
        self.subs.clear();
        self.groups.clear();
        self.members.clear();
        self.names.clear();
    }

    /// True when nothing matched.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.groups.is_empty()
    }

    /// The number of matching ordinary subscriptions (not subscribers).
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Each subscriber with a matching ordinary subscription, once, in key order, with
    /// the values of all its matching subscriptions.
    pub fn subscribers(&self) -> Subscribers<'_, K, V>
    where
        K: PartialEq,
    {
        Subscribers { rest: &self.subs }
    }

    /// Each shared group whose filter matches, once.
    pub fn shared(&self) -> impl ExactSizeIterator<Item = SharedGroup<'_, K, V>> {
        self.groups.iter().map(|g| SharedGroup {
            id: g.id,
            name: self.names.get(g.name.clone()).unwrap_or_default(),
            members: self.members.get(g.members.clone()).unwrap_or_default(),
        })
    }

    #[inline]
    pub(crate) fn push(&mut self, m: Match<'_, K, V>)
    where
        K: Clone,
        V: Clone,
    {
        match m {
            Match::Subscription(k, v) => self.subs.push((k.clone(), v.clone())),
            Match::Shared(g) => {
                let name = self.names.len()..self.names.len() + g.name.len();
                self.names.push_str(g.name);
                let start = self.members.len();
                self.members.extend_from_slice(g.members);
                self.groups.push(GroupSpan {
                    id: g.id,
                    name,
                    members: start..self.members.len(),
                });
            }
        }
    }

    /// Groups the subscriptions by subscriber (a sort, which does not allocate). A
    /// lookup finds a handful of subscriptions, often already in order: those are
    /// sorted in place by insertion, without the general sort's set-up.
    #[inline]
    pub(crate) fn finish(&mut self)
    where
        K: Ord,
    {
        let subs = self.subs.as_mut_slice();
        if subs.len() > SMALL {
            subs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            return;
        }
        for i in 1..subs.len() {
            let mut j = i;
            while j > 0 && subs.get(j - 1).map(|a| &a.0) > subs.get(j).map(|b| &b.0) {
                subs.swap(j - 1, j);
                j -= 1;
            }
        }
    }
}

/// Iterator over the subscribers of a [`Matches`], from [`Matches::subscribers`].
#[derive(Debug)]
pub struct Subscribers<'a, K, V> {
    rest: &'a [(K, V)],
}

impl<'a, K: PartialEq, V> Iterator for Subscribers<'a, K, V> {
    type Item = Subscriber<'a, K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, _) = self.rest.first()?;
        let n = self.rest.iter().take_while(|(k, _)| k == key).count();
        let (run, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(Subscriber { key, run })
    }
}

/// One subscriber and its matching subscriptions, from [`Matches::subscribers`].
#[derive(Debug)]
pub struct Subscriber<'a, K, V> {
    key: &'a K,
    /// Non-empty, all with `key`.
    run: &'a [(K, V)],
}

impl<'a, K, V> Subscriber<'a, K, V> {
    /// The subscriber.
    pub const fn key(&self) -> &'a K {
        self.key
    }

    /// The values of its matching subscriptions (at least one).
    pub fn values(&self) -> impl ExactSizeIterator<Item = &'a V> + use<'a, K, V> {
        self.run.iter().map(|(_, v)| v)
    }
}
