//! The hashes of the trie: a level's bytes → 64 bits, and a path (the hash of the path
//! before a level, and that level's hash) → 32 bits, which keys the edge to the level.
//!
//! Folded multiplication (the construction of foldhash and wyhash): each 8-byte word is
//! mixed with the state and multiplied by a constant into 128 bits whose halves are
//! XORed. It is fast on short strings, which topic levels are, and keyed by a seed: with
//! `std` the seed is random per index, so a client that picks topic names cannot aim
//! them at one bucket without knowing it.

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;
const K2: u64 = 0xa409_3822_299f_31d0;
const K3: u64 = 0x082e_fa98_ec4e_6c89;

#[inline]
const fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u64::from(u32::from_le_bytes(b)))
}

/// Reads fewer than 8 bytes as a word, with overlapping reads rather than a copy (the
/// length is hashed separately, so the overlap loses nothing).
#[inline]
fn tail(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if n >= 4 {
        read_u32(bytes, 0) | (read_u32(bytes, n - 4) << 32)
    } else {
        let byte = |i: usize| u64::from(bytes.get(i).copied().unwrap_or(0));
        byte(0) | (byte(n / 2) << 8) | (byte(n.wrapping_sub(1)) << 16)
    }
}

/// A 32-bit seeded hash of `bytes` (for picking a shard).
#[cfg(feature = "std")]
#[inline]
pub(crate) fn short_hash(seed: u64, bytes: &[u8]) -> u32 {
    edge_of(level_hash(seed, bytes), 0)
}

/// The seeded hash of a level's bytes, before the path to it is mixed in: a lookup
/// reaches the same level of a topic through several branches and hashes it once.
#[inline]
pub(crate) fn level_hash(seed: u64, label: &[u8]) -> u64 {
    let mut h = fold_mul(seed ^ K0, K1 ^ label.len() as u64);
    let mut chunks = label.chunks_exact(8);
    for chunk in &mut chunks {
        let w = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
        h = fold_mul(h ^ w, K2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        h = fold_mul(h ^ tail(rest), K3);
    }
    h
}

/// The hash of a path continued by one level: `path` is the hash of the path before
/// the level (0 for the root), `level` the level's [`level_hash`]. It keys the edge to
/// that level, and the next level continues from it.
#[inline(always)]
pub(crate) fn edge_of(level: u64, path: u32) -> u32 {
    (fold_mul(level ^ u64::from(path), K0) >> 32) as u32
}

/// A seed for a new index: random with `std`, fixed without (pass your own entropy to
/// `with_seed` then).
pub(crate) fn default_seed() -> u64 {
    #[cfg(feature = "std")]
    {
        use core::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(K3);
        h.finish()
    }
    #[cfg(not(feature = "std"))]
    {
        K2
    }
}
