//! The shared core of [`TopicIndex`](crate::TopicIndex) and
//! [`RetainedStore`](crate::RetainedStore): a trie of topic levels in an arena.
//!
//! - Nodes live in fixed-size chunks of a `Vec`, addressed by `u32`, so the arena grows
//!   without moving nodes or over-allocating by more than one chunk. Freed nodes are
//!   reused through a free list.
//! - A node stores its own level (its label) inline when it is at most 22 bytes long,
//!   which covers most levels, so comparing it costs no extra memory access.
//! - Children are found through one open-addressing hash table for the whole trie,
//!   keyed by the hash of the child's path from the root: a node with a million
//!   children costs the same to search as one with two, and a node with none pays
//!   nothing. The `+` child of a filter node has its own field, since every lookup asks
//!   for it.
//! - Keys hash the path, not the parent's id, so that a lookup can compute where a
//!   deep level's edge is from the topic alone and fetch it from memory early, while
//!   it is still walking the levels above (see [`Trie::prefetch`]). Each node keeps the
//!   hash of its own path, which its children's keys continue.
//! - Optionally (the subscription index), a chain of literal levels with nothing in
//!   between is one node labelled with the levels joined by `/` and keyed by its first
//!   level (path compression); it is split when something must sit inside it and
//!   merged back when that goes.
//! - Every node also links to its parent and its siblings, so the trie can be walked in
//!   any direction without a stack: matching allocates nothing and cannot overflow the
//!   call stack, however deep the topic.

use alloc::{boxed::Box, vec::Vec};

use crate::hash::{edge_of, level_hash};

/// "No node": the end of a list, a missing child.
pub(crate) const NONE: u32 = u32::MAX;
/// The root: the node before the first level.
pub(crate) const ROOT: u32 = 0;
/// The path hash of the root, from which every edge key continues.
pub(crate) const ROOT_PATH: u32 = 0;

const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
const INLINE: usize = 22;
/// The number of edge slots (8 bytes each) from which lookups prefetch: the edges and
/// their nodes then take more than a core's 1 or 2 MiB of L2.
const PREFETCH_ABOVE: usize = 1 << 14;

/// What a node holds; the trie frees a node whose payload is empty and that has no
/// children.
pub(crate) trait Payload: Default {
    fn is_empty(&self) -> bool;
}

/// A level's text, inline when short.
enum Label {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Label {
    fn new(text: &[u8]) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            for (d, s) in bytes.iter_mut().zip(text) {
                *d = *s;
            }
            Self::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(text.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Heap(b) => b,
        }
    }
}

pub(crate) struct Node<T> {
    label: Label,
    /// The hash of the path from the root to the end of this node's label: the state
    /// from which its children's edge keys continue (see [`Trie::key`]).
    pub(crate) path: u32,
    pub(crate) parent: u32,
    /// The child labelled `+` (filters only), which is not in the sibling list.
    pub(crate) plus: u32,
    /// The first literal child; the others follow through `next_sibling`.
    pub(crate) first_child: u32,
    pub(crate) next_sibling: u32,
    prev_sibling: u32,
    pub(crate) payload: T,
}

impl<T> Node<T> {
    #[inline]
    pub(crate) fn label(&self) -> &[u8] {
        self.label.as_bytes()
    }
}

#[derive(Clone, Copy)]
struct Slot {
    hash: u32,
    node: u32,
}

const EMPTY: Slot = Slot {
    hash: 0,
    node: NONE,
};

/// Open addressing with linear probing and backward-shift deletion (no tombstones), at
/// most 3/4 full. A slot is 8 bytes: the full 32-bit hash, compared before the node.
#[derive(Default)]
struct Edges {
    slots: Vec<Slot>,
    len: usize,
}

impl Edges {
    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[inline]
    fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> u32 {
        let mask = self.mask();
        if self.slots.is_empty() {
            return NONE;
        }
        let mut i = hash as usize & mask;
        loop {
            let Some(slot) = self.slots.get(i) else {
                return NONE;
            };
            if slot.node == NONE {
                return NONE;
            }
            if slot.hash == hash && is(slot.node) {
                return slot.node;
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts fetching the slot where a search for `hash` begins, without waiting.
    #[inline(always)]
    fn prefetch(&self, hash: u32) {
        if let Some(slot) = self.slots.get(hash as usize & self.mask()) {
            crate::prefetch::read(slot);
        }
    }

    fn insert(&mut self, hash: u32, node: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.place(Slot { hash, node });
        self.len += 1;
    }

    fn place(&mut self, new: Slot) {
        let mask = self.mask();
        let mut i = new.hash as usize & mask;
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.node == NONE {
                *slot = new;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(16);
        let old = core::mem::replace(&mut self.slots, alloc::vec![EMPTY; cap]);
        for slot in old {
            if slot.node != NONE {
                self.place(slot);
            }
        }
    }

    /// Points the entry (`hash`, `old`) at `new` instead.
    fn replace(&mut self, hash: u32, old: u32, new: u32) {
        let mask = self.mask();
        if self.slots.is_empty() {
            return;
        }
        let mut i = hash as usize & mask;
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.node == old {
                slot.node = new;
                return;
            }
            if slot.node == NONE {
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn remove(&mut self, hash: u32, node: u32) {
        let mask = self.mask();
        if self.slots.is_empty() {
            return;
        }
        let mut i = hash as usize & mask;
        loop {
            match self.slots.get(i) {
                Some(s) if s.node == node => break,
                Some(s) if s.node != NONE => i = (i + 1) & mask,
                _ => return,
            }
        }
        // Backward shift: pull later entries of the same run into the hole.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while let Some(&slot) = self.slots.get(j) {
            if slot.node == NONE {
                break;
            }
            let home = slot.hash as usize & mask;
            // Can `slot` move to `hole`? Only if its home is not in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = slot;
                }
                hole = j;
            }
            j = (j + 1) & mask;
        }
        if let Some(h) = self.slots.get_mut(hole) {
            *h = EMPTY;
        }
        self.len -= 1;
    }
}

pub(crate) struct Trie<T> {
    chunks: Vec<Vec<Node<T>>>,
    free: u32,
    edges: Edges,
    seed: u64,
    /// Whether chains of literal levels are merged into one node (path compression).
    compress: bool,
}

/// The first level of a label (all of it unless the node is compressed).
#[inline]
pub(crate) fn first_level(label: &[u8]) -> &[u8] {
    match label.iter().position(|&b| b == b'/') {
        Some(i) => label.get(..i).unwrap_or_default(),
        None => label,
    }
}

/// Byte equality, inline: labels are short, and a call to `memcmp` costs more than
/// comparing them a word at a time.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w64 = |s: &[u8], i: usize| {
        s.get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let w32 = |s: &[u8], i: usize| {
        s.get(i..i + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, u32::from_ne_bytes)
    };
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if w64(a, i) != w64(b, i) {
                return false;
            }
            i += 8;
        }
        // The last word, overlapping the previous one.
        w64(a, n - 8) == w64(b, n - 8)
    } else if n >= 4 {
        w32(a, 0) == w32(b, 0) && w32(a, n - 4) == w32(b, n - 4)
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// Whether `label`'s first level is `level`.
#[inline]
fn starts_with_level(label: &[u8], level: &[u8]) -> bool {
    label.starts_with(level) && label.get(level.len()).is_none_or(|&b| b == b'/')
}

impl<T: Payload> Trie<T> {
    /// An empty trie. With `compress`, a chain of literal levels that lead to nothing
    /// else (no subscription, no `+` child, one child) is one node whose label holds
    /// the levels joined by `/`; its edge is keyed by its first level.
    pub(crate) fn new(seed: u64, compress: bool) -> Self {
        let mut trie = Self {
            chunks: Vec::new(),
            free: NONE,
            edges: Edges::default(),
            seed,
            compress,
        };
        trie.alloc(b"", NONE, ROOT_PATH);
        trie
    }

    /// The key of the edge to a child labelled `label` from a node whose
    /// [`path`](Node::path) is `path`: the path hash continued by the label's first level.
    #[inline]
    fn key(&self, path: u32, label: &[u8]) -> u32 {
        edge_of(level_hash(self.seed, first_level(label)), path)
    }

    /// The path hash continued from `path` through `label`: after its first level (the
    /// key of its edge, as [`key`](Self::key) computes it) and after all of them (the
    /// path of a node so labelled).
    fn path_through(&self, path: u32, label: &[u8]) -> (u32, u32) {
        let mut levels = label.split(|&b| b == b'/');
        let first = levels.next().unwrap_or_default();
        let key = edge_of(level_hash(self.seed, first), path);
        let end = levels.fold(key, |state, level| {
            edge_of(level_hash(self.seed, level), state)
        });
        (key, end)
    }

    /// Starts fetching the edge slot for `key` (a path hash, as [`key`](Self::key)
    /// computes it), so that a probe for it shortly after finds it in the cache.
    #[inline(always)]
    pub(crate) fn prefetch(&self, key: u32) {
        self.edges.prefetch(key);
    }

    /// Starts fetching node `id`, if there is one.
    #[inline(always)]
    pub(crate) fn prefetch_node(&self, id: u32) {
        if let Some(n) = self.node(id) {
            crate::prefetch::read(n);
        }
    }

    /// Whether the edge table is too large to stay in a core's caches, so that a
    /// lookup gains by prefetching it (below that, prefetches only add instructions).
    #[inline]
    pub(crate) fn is_large(&self) -> bool {
        self.edges.slots.len() >= PREFETCH_ABOVE
    }

    /// The path hash of `id`, or 0 if there is no such node.
    #[inline]
    fn path_of(&self, id: u32) -> u32 {
        self.node(id).map_or(0, |n| n.path)
    }

    /// The seed of the edge hash.
    pub(crate) const fn seed(&self) -> u64 {
        self.seed
    }

    #[inline]
    pub(crate) fn node(&self, id: u32) -> Option<&Node<T>> {
        self.chunks
            .get((id >> CHUNK_BITS) as usize)?
            .get(id as usize & (CHUNK - 1))
    }

    #[inline]
    pub(crate) fn node_mut(&mut self, id: u32) -> Option<&mut Node<T>> {
        self.chunks
            .get_mut((id >> CHUNK_BITS) as usize)?
            .get_mut(id as usize & (CHUNK - 1))
    }

    /// The payload of node `id`.
    #[inline]
    pub(crate) fn payload_mut(&mut self, id: u32) -> Option<&mut T> {
        self.node_mut(id).map(|n| &mut n.payload)
    }

    /// The child of `parent` labelled `label` (`+` included), or [`NONE`].
    #[inline]
    pub(crate) fn child(&self, parent: u32, label: &[u8]) -> u32 {
        if label == b"+" {
            return self.node(parent).map_or(NONE, |n| n.plus);
        }
        self.literal_child(parent, label)
    }

    /// The child of `parent` whose (first) level is `level`, which is not `+`, or
    /// [`NONE`].
    #[inline]
    pub(crate) fn literal_child(&self, parent: u32, level: &[u8]) -> u32 {
        let hash = self.key(self.path_of(parent), level);
        self.edges.find(hash, |id| {
            self.node(id)
                .is_some_and(|n| n.parent == parent && starts_with_level(n.label(), level))
        })
    }

    /// Follows the literal edge of `parent`, whose path hash is `path`, for the level
    /// of `t` (a topic) starting at `pos`, whose [`level_hash`] is `level`: the child
    /// and the position after all of its levels, or [`NONE`] if there is no such child
    /// or the rest of its label does not match.
    #[inline(always)]
    pub(crate) fn literal_step(
        &self,
        parent: u32,
        path: u32,
        level: u64,
        t: &[u8],
        pos: usize,
    ) -> (u32, usize) {
        let hash = edge_of(level, path);
        let rest = t.get(pos..).unwrap_or_default();
        let mut len = 0;
        // A label that matches `rest` up to a level boundary starts with `level`, so it
        // is the edge; an edge whose other levels differ is not, and the probe ends at
        // an empty slot without finding anything.
        let id = self.edges.find(hash, |id| {
            self.node(id).is_some_and(|n| {
                let label = n.label();
                len = label.len();
                n.parent == parent
                    && rest.get(len).is_none_or(|&b| b == b'/')
                    && same(rest.get(..len).unwrap_or_default(), label)
            })
        });
        (id, pos + len + 1)
    }

    /// The node reached from the root through `levels`, if it exists.
    pub(crate) fn find<'l>(&self, levels: impl IntoIterator<Item = &'l str>) -> u32 {
        let mut levels = levels.into_iter();
        let mut id = ROOT;
        while let Some(level) = levels.next() {
            id = self.child(id, level.as_bytes());
            let Some(n) = self.node(id) else {
                return NONE;
            };
            // The other levels of a compressed node.
            for part in n.label().split(|&b| b == b'/').skip(1) {
                if levels.next().map(str::as_bytes) != Some(part) {
                    return NONE;
                }
            }
        }
        id
    }

    /// The node reached from the root through `levels`, created as needed.
    pub(crate) fn find_or_insert<'l>(&mut self, levels: impl IntoIterator<Item = &'l str>) -> u32 {
        let mut levels = levels.into_iter().peekable();
        let mut id = ROOT;
        while let Some(level) = levels.next() {
            let label = level.as_bytes();
            if label == b"+" {
                let plus = self.node(id).map_or(NONE, |n| n.plus);
                id = if plus == NONE {
                    self.insert_child(id, label)
                } else {
                    plus
                };
                continue;
            }
            let child = self.literal_child(id, label);
            if child == NONE {
                // A new node takes the literal levels that follow, if compressing.
                let mut text = Vec::from(label);
                while let Some(next) = levels.next_if(|l| self.compress && *l != "+") {
                    text.push(b'/');
                    text.extend_from_slice(next.as_bytes());
                }
                id = self.insert_child(id, &text);
                continue;
            }
            // Follow the child's other levels as far as `levels` agree.
            let Some(c) = self.node(child) else {
                return NONE;
            };
            let full = c.label();
            let mut matched = label.len();
            while matched < full.len() {
                let rest = full.get(matched + 1..).unwrap_or_default();
                let part = first_level(rest);
                if levels.next_if(|l| l.as_bytes() == part).is_none() {
                    break;
                }
                matched += 1 + part.len();
            }
            id = if matched < full.len() {
                self.split(child, matched)
            } else {
                child
            };
        }
        id
    }

    /// Splits compressed node `id` after its first `at` bytes (a level boundary): a new
    /// node takes the first part and `id`'s place, and `id` keeps the rest as its only
    /// child, so that the ids of `id`'s children stay valid. Returns the new node.
    fn split(&mut self, id: u32, at: usize) -> u32 {
        let Some(n) = self.node(id) else { return NONE };
        let label = n.label();
        let head = Vec::from(label.get(..at).unwrap_or_default());
        let tail = Vec::from(label.get(at + 1..).unwrap_or_default());
        let (parent, prev, next) = (n.parent, n.prev_sibling, n.next_sibling);
        let parent_path = self.path_of(parent);
        let (head_key, head_path) = self.path_through(parent_path, &head);
        let head_id = self.alloc(&head, parent, head_path);
        // `head` takes `id`'s edge (same key: same path to the first level) and list
        // place; `id`'s own path, and so its children's keys, do not change.
        self.edges.replace(head_key, id, head_id);
        self.relink(parent, id, head_id, prev, next);
        if let Some(h) = self.node_mut(head_id) {
            h.first_child = id;
        }
        if let Some(n) = self.node_mut(id) {
            n.label = Label::new(&tail);
            n.parent = head_id;
            n.prev_sibling = NONE;
            n.next_sibling = NONE;
        }
        self.edges.insert(self.key(head_path, &tail), id);
        head_id
    }

    /// Puts `new` in `old`'s place in the sibling list of `parent`.
    fn relink(&mut self, parent: u32, old: u32, new: u32, prev: u32, next: u32) {
        if let Some(n) = self.node_mut(new) {
            n.prev_sibling = prev;
            n.next_sibling = next;
        }
        if let Some(p) = self.node_mut(prev) {
            p.next_sibling = new;
        }
        if let Some(nx) = self.node_mut(next) {
            nx.prev_sibling = new;
        }
        if let Some(p) = self.node_mut(parent) {
            if p.first_child == old {
                p.first_child = new;
            }
        }
    }

    /// Merges `id` into its only child if nothing else needs `id` (the inverse of
    /// [`split`](Self::split)), when compressing.
    fn merge(&mut self, id: u32) {
        if !self.compress || id == ROOT {
            return;
        }
        let Some(n) = self.node(id) else { return };
        let child = n.first_child;
        if n.plus != NONE || !n.payload.is_empty() || n.label() == b"+" || child == NONE {
            return;
        }
        let Some(c) = self.node(child) else { return };
        if c.next_sibling != NONE {
            return;
        }
        let mut text = Vec::from(n.label());
        text.push(b'/');
        text.extend_from_slice(c.label());
        let (parent, prev, next) = (n.parent, n.prev_sibling, n.next_sibling);
        let own_hash = self.key(self.path_of(parent), n.label());
        let child_hash = self.key(n.path, c.label());
        self.edges.remove(child_hash, child);
        self.edges.replace(own_hash, id, child);
        self.relink(parent, id, child, prev, next);
        if let Some(c) = self.node_mut(child) {
            c.label = Label::new(&text);
            c.parent = parent;
        }
        if let Some(n) = self.node_mut(id) {
            n.first_child = NONE;
        }
        self.release(id);
    }

    fn alloc(&mut self, label: &[u8], parent: u32, path: u32) -> u32 {
        let node = Node {
            label: Label::new(label),
            path,
            parent,
            plus: NONE,
            first_child: NONE,
            next_sibling: NONE,
            prev_sibling: NONE,
            payload: T::default(),
        };
        if self.free != NONE {
            let id = self.free;
            if let Some(slot) = self.node_mut(id) {
                let next_free = slot.next_sibling;
                *slot = node;
                self.free = next_free;
                return id;
            }
        }
        let needs_chunk = self.chunks.last().is_none_or(|c| c.len() == CHUNK);
        if needs_chunk {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self.chunks.len() - 1;
        let Some(last) = self.chunks.last_mut() else {
            return NONE;
        };
        let id = ((chunk << CHUNK_BITS) | last.len()) as u32;
        last.push(node);
        id
    }

    fn insert_child(&mut self, parent: u32, label: &[u8]) -> u32 {
        let (key, path) = self.path_through(self.path_of(parent), label);
        let id = self.alloc(label, parent, path);
        if label == b"+" {
            // The `+` child is reached through its own field only, so that
            // `first_child` tells whether a node has literal children to probe for.
            if let Some(p) = self.node_mut(parent) {
                p.plus = id;
            }
            return id;
        }
        let Some(p) = self.node_mut(parent) else {
            return id;
        };
        let old_first = p.first_child;
        p.first_child = id;
        if let Some(n) = self.node_mut(old_first) {
            n.prev_sibling = id;
        }
        if let Some(n) = self.node_mut(id) {
            n.next_sibling = old_first;
        }
        self.edges.insert(key, id);
        id
    }

    /// Frees `id` and then its ancestors, as long as they are empty and childless;
    /// then, when compressing, merges the node where that stops into its child if it
    /// has become a plain link.
    pub(crate) fn prune(&mut self, mut id: u32) {
        while id != ROOT {
            let Some(n) = self.node(id) else { return };
            if n.first_child != NONE || n.plus != NONE || !n.payload.is_empty() {
                break;
            }
            let (parent, prev, next) = (n.parent, n.prev_sibling, n.next_sibling);
            if n.label() == b"+" {
                if let Some(p) = self.node_mut(parent) {
                    p.plus = NONE;
                }
            } else {
                let hash = self.key(self.path_of(parent), n.label());
                self.edges.remove(hash, id);
                if let Some(p) = self.node_mut(prev) {
                    p.next_sibling = next;
                }
                if let Some(nx) = self.node_mut(next) {
                    nx.prev_sibling = prev;
                }
                if let Some(p) = self.node_mut(parent) {
                    if p.first_child == id {
                        p.first_child = next;
                    }
                }
            }
            self.release(id);
            id = parent;
        }
        self.merge(id);
    }

    /// Puts node `id`, already unlinked, on the free list.
    fn release(&mut self, id: u32) {
        let free = self.free;
        if let Some(n) = self.node_mut(id) {
            n.label = Label::new(b"");
            n.path = 0;
            n.parent = NONE;
            n.plus = NONE;
            n.first_child = NONE;
            n.prev_sibling = NONE;
            n.next_sibling = free;
            n.payload = T::default();
        }
        self.free = id;
    }

    /// Writes the path from the root to `id` (its topic), levels joined by `/`.
    pub(crate) fn write_path(&self, id: u32, out: &mut alloc::string::String) {
        // Collect the labels backwards, reversed, then reverse the whole.
        let mut bytes = core::mem::take(out).into_bytes();
        bytes.clear();
        let mut cur = id;
        while cur != ROOT {
            let Some(n) = self.node(cur) else { break };
            if cur != id {
                bytes.push(b'/');
            }
            bytes.extend(n.label().iter().rev());
            cur = n.parent;
        }
        bytes.reverse();
        *out = match alloc::string::String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => alloc::string::String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
    }
}

#[cfg(test)]
mod tests {
    use alloc::{string::String, vec::Vec};

    use super::*;

    #[derive(Default)]
    struct Mark(bool);

    impl Payload for Mark {
        fn is_empty(&self) -> bool {
            !self.0
        }
    }

    /// Paths over a small alphabet, so that chains split, merge and share prefixes.
    fn paths(mut x: u64, n: usize) -> Vec<String> {
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|_| {
                let depth = 1 + next() % 5;
                let levels: Vec<&str> = (0..depth)
                    .map(|_| ["a", "b", "+", "", "long-level-name"][(next() % 5) as usize])
                    .collect();
                levels.join("/")
            })
            .collect()
    }

    /// Edge keys are path hashes that splits and merges must keep right: after every
    /// insertion and removal, each present path is found again (by the probe a lookup
    /// makes), and removing them all leaves no edge and no node but the root.
    #[test]
    fn edges_follow_splits_and_merges() {
        for (seed, compress) in [(1, true), (2, true), (3, false), (4, true)] {
            let mut trie: Trie<Mark> = Trie::new(seed, compress);
            let all = paths(seed * 7919 + 1, 60);
            let mut present: Vec<&String> = Vec::new();
            let check = |trie: &Trie<Mark>, present: &[&String]| {
                for p in present {
                    let id = trie.find(p.split('/'));
                    assert!(trie.node(id).is_some_and(|n| n.payload.0), "{p} is lost");
                }
            };
            for p in &all {
                let id = trie.find_or_insert(p.split('/'));
                if let Some(m) = trie.payload_mut(id) {
                    m.0 = true;
                }
                if !present.contains(&p) {
                    present.push(p);
                }
                check(&trie, &present);
            }
            // Remove in an order unlike the insertion's.
            present.sort_by_key(|p| p.len());
            while let Some(p) = present.pop() {
                let id = trie.find(p.split('/'));
                if let Some(m) = trie.payload_mut(id) {
                    m.0 = false;
                }
                trie.prune(id);
                check(&trie, &present);
            }
            assert_eq!(trie.edges.len, 0, "seed {seed}: edges left behind");
            let root = trie.node(ROOT);
            assert!(root.is_some_and(|r| r.first_child == NONE && r.plus == NONE));
        }
    }
}
