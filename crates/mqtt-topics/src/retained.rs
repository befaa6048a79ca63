//! Retained messages: topic names in, filters looked up — the index the other way round.

use alloc::string::String;
use core::fmt;

use crate::{
    TopicFilter, TopicName,
    hash::default_seed,
    index::{level_start, split_level},
    trie::{NONE, Payload, ROOT, Trie},
};

impl<V> Payload for Option<V> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

/// A map from topic names to values (the retained messages) that streams the entries
/// matching a filter, on the same trie as [`TopicIndex`](crate::TopicIndex).
///
/// [`matching`](Self::matching) returns an iterator that walks the trie as it goes:
/// a wildcard subscription over a million retained topics yields them one at a time,
/// with no allocation and no copy of the set, and can stop at any point.
///
/// # Example
/// ```
/// use mqtt_topics::{RetainedStore, TopicFilter, TopicName};
///
/// let mut retained = RetainedStore::new();
/// for (topic, payload) in [("home/kitchen/temp", "21"), ("home/hall/temp", "19"), ("$SYS/uptime", "7")] {
///     retained.insert(TopicName::new(topic)?, payload);
/// }
/// let mut found: Vec<_> = retained
///     .matching(TopicFilter::new("+/+/temp")?)
///     .map(|m| (m.topic(), *m.value()))
///     .collect();
/// found.sort();
/// assert_eq!(found, [("home/hall/temp".to_string(), "19"), ("home/kitchen/temp".to_string(), "21")]);
/// // A filter starting with a wildcard does not see `$` topics.
/// assert_eq!(retained.matching(TopicFilter::new("#")?).count(), 2);
/// assert_eq!(retained.matching(TopicFilter::new("$SYS/#")?).count(), 1);
/// # Ok::<(), mqtt_topics::TopicError>(())
/// ```
pub struct RetainedStore<V> {
    trie: Trie<Option<V>>,
    len: usize,
    /// Bumped whenever the trie's shape changes (a topic added or removed), which is when
    /// a saved [`Cursor`] may no longer point where it did.
    shape: u64,
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V> RetainedStore<V> {
    /// An empty store (hash seed as for [`TopicIndex::new`](crate::TopicIndex::new)).
    pub fn new() -> Self {
        Self::with_seed(default_seed())
    }

    /// An empty store whose edge hash uses `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            trie: Trie::new(seed, false),
            len: 0,
            shape: 0,
        }
    }

    /// The number of topics stored.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when no topic is stored.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: TopicName<'_>, value: V) -> Option<V> {
        let id = self.trie.find_or_insert(topic.levels());
        let old = self.trie.payload_mut(id)?.replace(value);
        if old.is_none() {
            self.len += 1;
            self.shape = self.shape.wrapping_add(1);
        }
        old
    }

    /// Removes the value stored under `topic`.
    pub fn remove(&mut self, topic: TopicName<'_>) -> Option<V> {
        let id = self.trie.find(topic.levels());
        let old = self.trie.payload_mut(id)?.take();
        if old.is_some() {
            self.len -= 1;
            self.trie.prune(id);
            self.shape = self.shape.wrapping_add(1);
        }
        old
    }

    /// The value stored under `topic`.
    pub fn get(&self, topic: TopicName<'_>) -> Option<&V> {
        let id = self.trie.find(topic.levels());
        self.trie.node(id)?.payload.as_ref()
    }

    /// The entries whose topic matches `filter`, as a lazy iterator in no particular
    /// order. Filters starting with `+` or `#` skip topics starting with `$`
    /// ([MQTT-4.7.2-1]).
    pub fn matching<'a, 'f>(&'a self, filter: TopicFilter<'f>) -> Matching<'a, 'f, V> {
        Matching {
            store: self,
            filter: filter.as_str().as_bytes(),
            hide_dollar: filter.starts_with_wildcard(),
            node: ROOT,
            pos: 0,
            state: State::Enter,
        }
    }

    /// Every entry, topics starting with `$` included, as a lazy iterator in no
    /// particular order: for housekeeping (purging expired entries), never for
    /// delivery, where `#` must not match them.
    pub fn iter(&self) -> Matching<'_, 'static, V> {
        Matching {
            store: self,
            filter: b"#",
            hide_dollar: false,
            node: ROOT,
            pos: 0,
            state: State::Enter,
        }
    }

    /// Continues a [`matching`](Self::matching) iteration from where `cursor` was
    /// taken, with the same `filter`. `None` when the store gained or lost a topic since
    /// (a value replaced in place does not count) or the filter differs: the position
    /// may no longer mean the same thing, so start again with `matching`.
    ///
    /// This lets a broker stream a wildcard subscription's retained messages in batches
    /// sized to the subscriber's flow-control window, without holding a lock or a copy
    /// of the set in between.
    pub fn resume<'a, 'f>(
        &'a self,
        filter: TopicFilter<'f>,
        cursor: Cursor,
    ) -> Option<Matching<'a, 'f, V>> {
        if cursor.shape != self.shape || cursor.filter != fingerprint(filter.as_str().as_bytes()) {
            return None;
        }
        let mut m = self.matching(filter);
        m.node = cursor.node;
        m.pos = cursor.pos;
        m.state = cursor.state;
        Some(m)
    }
}

/// Where a [`Matching`] iteration stands, detached from the store: save it with
/// [`Matching::cursor`], continue with [`RetainedStore::resume`]. A few words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    node: u32,
    pos: usize,
    state: State,
    shape: u64,
    filter: u64,
}

impl Cursor {
    /// True when the iteration it was taken from had finished.
    pub const fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

/// FNV-1a of the filter, to refuse resuming with another one.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One retained entry found by [`RetainedStore::matching`].
pub struct Retained<'a, V> {
    store: &'a RetainedStore<V>,
    node: u32,
    value: &'a V,
}

impl<'a, V> Retained<'a, V> {
    /// The stored value.
    pub const fn value(&self) -> &'a V {
        self.value
    }

    /// Writes the entry's topic name into `buf` (replacing its contents), reusing its
    /// allocation.
    pub fn write_topic(&self, buf: &mut String) {
        self.store.trie.write_path(self.node, buf);
    }

    /// The entry's topic name.
    pub fn topic(&self) -> String {
        let mut s = String::new();
        self.write_topic(&mut s);
        s
    }
}

impl<V: fmt::Debug> fmt::Debug for Retained<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retained")
            .field("topic", &self.topic())
            .field("value", self.value)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At `node` with the filter consumed up to `pos`: decide what to do there.
    Enter,
    /// `node` and everything below it is done; go back to its parent.
    Ascend,
    /// Walking the subtree under `root` (a `#` level), at `node`.
    Subtree {
        root: u32,
        root_pos: usize,
    },
    Done,
}

/// The iterator of [`RetainedStore::matching`]. Its state is a position in the trie
/// (a few words): it holds no stack and allocates nothing.
pub struct Matching<'a, 'f, V> {
    store: &'a RetainedStore<V>,
    filter: &'f [u8],
    hide_dollar: bool,
    node: u32,
    pos: usize,
    state: State,
}

impl<V> fmt::Debug for Matching<'_, '_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matching")
            .field("filter", &self.filter)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a, V> Matching<'a, '_, V> {
    /// The iteration's position, to [`resume`](RetainedStore::resume) it later.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            node: self.node,
            pos: self.pos,
            state: self.state,
            shape: self.store.shape,
            filter: fingerprint(self.filter),
        }
    }

    fn trie(&self) -> &'a Trie<Option<V>> {
        &self.store.trie
    }

    /// `id` if it may be visited, else its next sibling that may: children of the root
    /// starting with `$` are hidden from filters starting with a wildcard.
    fn visible(&self, mut id: u32) -> u32 {
        while let Some(n) = self.trie().node(id) {
            if !(self.hide_dollar && n.parent == ROOT && n.label().first() == Some(&b'$')) {
                return id;
            }
            id = n.next_sibling;
        }
        NONE
    }

    /// Whether the current node was reached through a `+` level of the filter.
    fn below_plus(&self) -> bool {
        self.pos > 0 && {
            let start = level_start(self.filter, self.pos);
            split_level(self.filter, start, self.filter.len() + 1).0 == b"+"
        }
    }

    fn found(&self, id: u32) -> Option<Retained<'a, V>> {
        if id == ROOT {
            return None;
        }
        let value = self.trie().node(id)?.payload.as_ref()?;
        Some(Retained {
            store: self.store,
            node: id,
            value,
        })
    }

    /// The node after `id` in a pre-order walk of the subtree under `root`.
    fn subtree_next(&self, id: u32, root: u32) -> u32 {
        let trie = self.trie();
        let Some(n) = trie.node(id) else { return NONE };
        let first = self.visible(n.first_child);
        if first != NONE {
            return first;
        }
        let mut cur = id;
        while cur != root {
            let Some(n) = trie.node(cur) else { return NONE };
            let next = self.visible(n.next_sibling);
            if next != NONE {
                return next;
            }
            cur = n.parent;
        }
        NONE
    }
}

impl<'a, V> Iterator for Matching<'a, '_, V> {
    type Item = Retained<'a, V>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.filter.len() + 1;
        loop {
            match self.state {
                State::Done => return None,
                State::Enter => {
                    if self.pos == end {
                        self.state = State::Ascend;
                        if let Some(found) = self.found(self.node) {
                            return Some(found);
                        }
                        continue;
                    }
                    let (level, next) = split_level(self.filter, self.pos, end);
                    match level {
                        b"#" => {
                            // `a/#` matches `a` itself, then everything below.
                            self.state = State::Subtree {
                                root: self.node,
                                root_pos: self.pos,
                            };
                            if let Some(found) = self.found(self.node) {
                                return Some(found);
                            }
                        }
                        b"+" => {
                            let first = self
                                .trie()
                                .node(self.node)
                                .map_or(NONE, |n| self.visible(n.first_child));
                            if first == NONE {
                                self.state = State::Ascend;
                            } else {
                                self.node = first;
                                self.pos = next;
                            }
                        }
                        _ => {
                            let trie = self.trie();
                            // The probe needs this node's path hash, which is in the
                            // node. Below a `+` level, its next sibling is the next
                            // node probed from: in a store too large for the caches,
                            // start fetching that one now.
                            if trie.is_large() && self.below_plus() {
                                if let Some(n) = trie.node(self.node) {
                                    trie.prefetch_node(n.next_sibling);
                                }
                            }
                            let child = trie.child(self.node, level);
                            if child == NONE {
                                self.state = State::Ascend;
                            } else {
                                self.node = child;
                                self.pos = next;
                            }
                        }
                    }
                }
                State::Subtree { root, root_pos } => {
                    let next = self.subtree_next(self.node, root);
                    if next == NONE {
                        self.node = root;
                        self.pos = root_pos;
                        self.state = State::Ascend;
                    } else {
                        self.node = next;
                        if let Some(found) = self.found(next) {
                            return Some(found);
                        }
                    }
                }
                State::Ascend => {
                    if self.node == ROOT {
                        self.state = State::Done;
                        return None;
                    }
                    let Some(n) = self.trie().node(self.node) else {
                        self.state = State::Done;
                        return None;
                    };
                    let (child_pos, sibling) = (self.pos, n.next_sibling);
                    self.node = n.parent;
                    self.pos = level_start(self.filter, child_pos);
                    let (level, _) = split_level(self.filter, self.pos, end);
                    if level == b"+" {
                        let next = self.visible(sibling);
                        if next != NONE {
                            self.node = next;
                            self.pos = child_pos;
                            self.state = State::Enter;
                        }
                    }
                }
            }
        }
    }
}
