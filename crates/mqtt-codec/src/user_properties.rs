//! User Properties (0x26), kept in their wire form.
//!
//! A User Property is two UTF-8 Encoded Strings, as little as 5 bytes on the wire with
//! its identifier. Held as a list of string handles it costs two 32-byte headers per
//! pair, 13 times its wire size; held as the bytes it arrived in, it costs what it
//! weighs. Decoding checks every string as it goes and keeps the pairs as a slice of
//! the packet when they come back to back, as they nearly always do.

use alloc::vec::Vec;
use core::{fmt, iter::FusedIterator};

use bytes::{BufMut, Bytes};

use crate::{
    ByteStr, PropertyId,
    error::{DecodeError, ErrorKind},
    primitives::{StringError, validate},
};

/// The identifier byte of a User Property: 0x26 is below 0x80, so its Variable Byte
/// Integer is this one byte.
const ID: u8 = PropertyId::UserProperty as u8;

/// User Properties (0x26): name/value pairs (UTF-8 String Pairs, section 1.5.7),
/// repeatable, in the order received ([MQTT-3.3.2-18]: kept in order when forwarded).
///
/// The pairs are kept in one [`Bytes`] in their wire form, less the first identifier
/// byte: each pair is its name and its value as UTF-8 Encoded Strings (two length
/// bytes, then the string), and each pair after the first is preceded by the
/// identifier 0x26. A set decoded from a packet is a slice of that packet when its
/// pairs were contiguous there (nothing copied, nothing allocated); encoding writes the
/// identifier and copies the buffer.
///
/// Every way to build a set checks each string as a [`ByteStr`] does (well-formed
/// UTF-8, no U+0000, at most 65,535 bytes), so a set can always be encoded.
///
/// Cloning shares the buffer. Two sets are equal when they hold the same pairs in the
/// same order (the form is canonical, so this compares bytes).
///
/// A set is immutable once shared: [`push`](Self::push) and [`extend`](Extend::extend)
/// copy the pairs into a buffer of exactly their size, so that the memory a set reports
/// is the memory it holds. To add many pairs, add them in one `extend` or `collect`.
///
/// ```
/// use mqtt_codec::{ByteStr, UserProperties};
///
/// let mut props = UserProperties::new();
/// props.push("region", "eu-west").unwrap();
/// props.push("region", "eu-north").unwrap();
/// assert!(props.push("nul", "\0").is_err());
/// assert_eq!(props.len(), 2);
/// assert_eq!(
///     props.iter().collect::<Vec<_>>(),
///     [("region", "eu-west"), ("region", "eu-north")]
/// );
/// // Each pair is held in its wire size: 2 + 6 + 2 + 7, then 0x26 and 2 + 6 + 2 + 8.
/// assert_eq!(props.memory_size(), 17 + 19);
///
/// let same: UserProperties = [("region", "eu-west"), ("region", "eu-north")]
///     .into_iter()
///     .map(|(k, v)| (ByteStr::from_static(k), ByteStr::from_static(v)))
///     .collect();
/// assert_eq!(props, same);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct UserProperties {
    /// The pairs, as described above; empty for no pair.
    wire: Bytes,
}

impl UserProperties {
    /// A set with no pair; allocates nothing.
    pub const fn new() -> Self {
        Self { wire: Bytes::new() }
    }

    /// The number of pairs. Counts them: O(n) in the number of pairs.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the set holds no pair.
    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    /// The pairs, in order, as `(name, value)` borrowed from the set's buffer.
    pub fn iter(&self) -> UserPropertiesIter<'_> {
        UserPropertiesIter { rest: &self.wire }
    }

    /// Appends a pair, copying the set into a buffer one pair larger (see the type's
    /// documentation). Fails, leaving the set unchanged, if either string is not a
    /// valid UTF-8 Encoded String: longer than 65,535 bytes or containing U+0000.
    pub fn push(&mut self, name: &str, value: &str) -> Result<(), StringError> {
        validate(name.as_bytes())?;
        validate(value.as_bytes())?;
        self.append(name.as_bytes(), value.as_bytes());
        Ok(())
    }

    /// Removes every pair.
    pub fn clear(&mut self) {
        self.wire = Bytes::new();
    }

    /// The heap memory the set holds: the length of its buffer, which is the pairs'
    /// wire size less one byte. A set decoded from a packet is a slice of that packet's
    /// buffer and is counted at its own length, as strings are; [`detach`](Self::detach)
    /// gives it memory of its own.
    pub fn memory_size(&self) -> usize {
        self.wire.len()
    }

    /// Copies the pairs into memory of their own (one copy of exactly their size), so
    /// that the set no longer keeps alive the buffer it was decoded from.
    pub fn detach(&mut self) {
        if !self.wire.is_empty() {
            self.wire = Bytes::copy_from_slice(&self.wire);
        }
    }

    /// The size on the wire, identifiers included.
    pub(crate) fn encoded_len(&self) -> usize {
        if self.wire.is_empty() {
            0
        } else {
            1 + self.wire.len()
        }
    }

    /// Writes the pairs, each with its identifier.
    pub(crate) fn write(&self, dst: &mut impl BufMut) {
        if !self.wire.is_empty() {
            dst.put_u8(ID);
            dst.put_slice(&self.wire);
        }
    }

    /// Appends one pair already checked.
    fn append(&mut self, name: &[u8], value: &[u8]) {
        let mut buf = self.take_buf();
        buf.reserve_exact(usize::from(!buf.is_empty()) + 4 + name.len() + value.len());
        put_pair(&mut buf, name, value);
        self.set_buf(buf);
    }

    /// The buffer, to append to; reuses the allocation when the set is its sole owner.
    fn take_buf(&mut self) -> Vec<u8> {
        Vec::from(core::mem::take(&mut self.wire))
    }

    /// Stores `buf`, in an allocation of exactly its size.
    fn set_buf(&mut self, buf: Vec<u8>) {
        self.wire = Bytes::from(buf.into_boxed_slice());
    }
}

/// Appends a pair to a buffer of pairs: the identifier unless it is the first, then
/// the two strings, each known to be at most 65,535 bytes long.
fn put_pair(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if !buf.is_empty() {
        buf.push(ID);
    }
    for s in [name, value] {
        buf.put_u16(s.len() as u16);
        buf.put_slice(s);
    }
}

impl fmt::Debug for UserProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a UserProperties {
    type Item = (&'a str, &'a str);
    type IntoIter = UserPropertiesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Extend<(ByteStr, ByteStr)> for UserProperties {
    /// Appends the pairs, copying the set once; the result is in a buffer of exactly
    /// its size.
    fn extend<I: IntoIterator<Item = (ByteStr, ByteStr)>>(&mut self, pairs: I) {
        let mut pairs = pairs.into_iter().peekable();
        if pairs.peek().is_none() {
            return;
        }
        let mut buf = self.take_buf();
        for (name, value) in pairs {
            put_pair(&mut buf, name.as_bytes(), value.as_bytes());
        }
        self.set_buf(buf);
    }
}

impl FromIterator<(ByteStr, ByteStr)> for UserProperties {
    fn from_iter<I: IntoIterator<Item = (ByteStr, ByteStr)>>(pairs: I) -> Self {
        let mut set = Self::new();
        set.extend(pairs);
        set
    }
}

/// The pairs of a [`UserProperties`], in order, as `(name, value)`.
#[derive(Clone, Debug)]
pub struct UserPropertiesIter<'a> {
    /// The pairs not yet returned, each but the first behind its identifier.
    rest: &'a [u8],
}

impl<'a> Iterator for UserPropertiesIter<'a> {
    type Item = (&'a str, &'a str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (name, rest) = split_str(self.rest)?;
        let (value, rest) = split_str(rest)?;
        // The identifier before the next pair, if there is one.
        self.rest = rest.get(1..).unwrap_or_default();
        Some((name, value))
    }
}

impl FusedIterator for UserPropertiesIter<'_> {}

/// The string at the front of `bytes` and the bytes after it; `None` at the end.
#[inline]
fn split_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let (s, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    // SAFETY: a set's buffer holds only strings checked as UTF-8 when they were added
    // (`push`, `extend`, decoding), and a `Bytes` never changes.
    #[allow(unsafe_code)]
    let s = unsafe { core::str::from_utf8_unchecked(s) };
    Some((s, rest))
}

// ---- decoding -------------------------------------------------------------------------

/// The User Property cap of the packet being decoded: at most `max` in all, of which
/// `max - left` were read before the current property set (a CONNECT's, before its
/// will's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserPropertyCap {
    max: usize,
    left: usize,
}

impl UserPropertyCap {
    /// No cap.
    pub(crate) const NONE: Self = Self::new(usize::MAX);

    /// At most `max` User Properties in the packet.
    pub(crate) const fn new(max: usize) -> Self {
        Self { max, left: max }
    }

    /// The cap left once `count` more have been read.
    pub(crate) const fn after(self, count: usize) -> Self {
        Self {
            max: self.max,
            left: self.left.saturating_sub(count),
        }
    }

    fn exceeded(self) -> DecodeError {
        ErrorKind::TooManyUserProperties {
            count: self.max.saturating_add(1),
            max: self.max,
        }
        .into()
    }
}

/// Collects the User Properties of one property set while it is decoded.
pub(crate) struct UserPropertiesReader {
    /// The pairs read so far when they were one run: a slice of the packet.
    run: Bytes,
    /// The pairs read so far when they came in several runs (between other
    /// properties): copied, in order, in a buffer that grows by doubling, so that a
    /// packet alternating them costs time and memory in proportion to its size.
    copied: Vec<u8>,
    cap: UserPropertyCap,
}

impl UserPropertiesReader {
    #[inline]
    pub(crate) const fn new(cap: UserPropertyCap) -> Self {
        Self {
            run: Bytes::new(),
            copied: Vec::new(),
            cap,
        }
    }

    /// Reads the User Property whose identifier was just read from `src`, and every one
    /// that follows it directly: checks each string as any UTF-8 Encoded String is
    /// checked ([MQTT-1.5.4-1], [MQTT-1.5.4-2]), and stops at the first pair over the
    /// cap, before reading it.
    #[inline]
    pub(crate) fn read(&mut self, src: &mut Bytes) -> Result<(), DecodeError> {
        let all: &[u8] = src;
        let mut left = self.cap.left;
        let mut rest = all;
        loop {
            if left == 0 {
                return Err(self.cap.exceeded());
            }
            left -= 1;
            rest = check_str(check_str(rest)?)?;
            match rest.split_first() {
                Some((&ID, next)) => rest = next,
                _ => break,
            }
        }
        self.cap.left = left;
        let len = all.len() - rest.len();
        if self.run.is_empty() && self.copied.is_empty() {
            self.run = src.split_to(len);
            return Ok(());
        }
        if self.copied.is_empty() {
            self.copied.extend_from_slice(&self.run);
            self.run = Bytes::new();
        }
        self.copied.push(ID);
        self.copied
            .extend_from_slice(all.get(..len).unwrap_or_default());
        bytes::Buf::advance(src, len);
        Ok(())
    }

    /// The pairs read, in a buffer of exactly their size if they were copied.
    #[inline]
    pub(crate) fn finish(self) -> UserProperties {
        if self.copied.is_empty() {
            UserProperties { wire: self.run }
        } else {
            UserProperties {
                wire: Bytes::from(self.copied.into_boxed_slice()),
            }
        }
    }
}

/// Checks the UTF-8 Encoded String at the front of `bytes`; returns the bytes after it.
#[inline]
fn check_str(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    let (s, rest) = bytes
        .split_first_chunk::<2>()
        .and_then(|(len, rest)| rest.split_at_checked(usize::from(u16::from_be_bytes(*len))))
        .ok_or(ErrorKind::UnexpectedEnd)?;
    validate(s).map_err(ErrorKind::from)?;
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use alloc::{string::String, vec, vec::Vec};

    use super::*;

    fn pairs(set: &UserProperties) -> Vec<(&str, &str)> {
        set.iter().collect()
    }

    fn set(p: &[(&'static str, &'static str)]) -> UserProperties {
        p.iter()
            .map(|(k, v)| (ByteStr::from_static(k), ByteStr::from_static(v)))
            .collect()
    }

    /// The wire form of `pairs`, each with its identifier.
    fn wire(p: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in p {
            out.push(ID);
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u16).to_be_bytes());
                out.extend_from_slice(s);
            }
        }
        out
    }

    /// Reads a property block made only of User Properties.
    fn read_all(block: &[u8], cap: UserPropertyCap) -> Result<UserProperties, DecodeError> {
        let mut src = Bytes::copy_from_slice(block);
        let mut reader = UserPropertiesReader::new(cap);
        while !src.is_empty() {
            assert_eq!(bytes::Buf::get_u8(&mut src), ID);
            reader.read(&mut src)?;
        }
        Ok(reader.finish())
    }

    #[test]
    fn an_empty_set_is_empty_everywhere() {
        let s = UserProperties::new();
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.iter().next(), None);
        assert_eq!(s.memory_size(), 0);
        assert_eq!(s.encoded_len(), 0);
        assert_eq!(s, UserProperties::default());
        assert_eq!(alloc::format!("{s:?}"), "[]");
        let mut out = Vec::new();
        s.write(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn pushes_keep_order_and_duplicates() {
        let mut s = UserProperties::new();
        for (k, v) in [("b", "1"), ("a", "2"), ("b", "3"), ("c", ""), ("", "")] {
            s.push(k, v).unwrap();
        }
        assert_eq!(
            pairs(&s),
            [("b", "1"), ("a", "2"), ("b", "3"), ("c", ""), ("", "")]
        );
        assert_eq!(s.len(), 5);
        assert_eq!(
            alloc::format!("{s:?}"),
            r#"[("b", "1"), ("a", "2"), ("b", "3"), ("c", ""), ("", "")]"#
        );
        assert_eq!(
            s,
            set(&[("b", "1"), ("a", "2"), ("b", "3"), ("c", ""), ("", "")])
        );
    }

    #[test]
    fn equality_is_by_pairs_in_order() {
        assert_eq!(
            set(&[("a", "1"), ("b", "2")]),
            set(&[("a", "1"), ("b", "2")])
        );
        assert_ne!(
            set(&[("a", "1"), ("b", "2")]),
            set(&[("b", "2"), ("a", "1")])
        );
        assert_ne!(set(&[("ab", "")]), set(&[("a", "b")]));
        assert_ne!(set(&[("a", "")]), set(&[("a", ""), ("a", "")]));
        // Built by decoding, by pushing, by collecting: the same set.
        let decoded = read_all(&wire(&[(b"a", b"1"), (b"b", b"2")]), UserPropertyCap::NONE);
        let mut pushed = UserProperties::new();
        pushed.push("a", "1").unwrap();
        pushed.push("b", "2").unwrap();
        assert_eq!(decoded.unwrap(), pushed);
    }

    #[test]
    fn invalid_strings_are_refused_and_change_nothing() {
        let mut s = set(&[("k", "v")]);
        assert_eq!(s.push("a\0", "v"), Err(StringError::NullCharacter));
        assert_eq!(s.push("k", "\0"), Err(StringError::NullCharacter));
        let long = String::from_utf8(vec![b'x'; 65_536]).unwrap();
        assert_eq!(s.push(&long, ""), Err(StringError::TooLong));
        assert_eq!(s.push("", &long), Err(StringError::TooLong));
        assert_eq!(pairs(&s), [("k", "v")]);
        // The longest allowed string is fine.
        s.push(&long[1..], "").unwrap();
        assert_eq!(s.iter().nth(1).map(|(k, _)| k.len()), Some(65_535));
    }

    #[test]
    fn encoding_writes_each_pair_with_its_identifier() {
        let s = set(&[("k", "v"), ("", "é")]);
        let mut out = Vec::new();
        s.write(&mut out);
        let expected = wire(&[(b"k", b"v"), (b"", "é".as_bytes())]);
        assert_eq!(out, expected);
        assert_eq!(s.encoded_len(), expected.len());
        assert_eq!(s.memory_size(), expected.len() - 1);
    }

    #[test]
    fn decoding_round_trips_and_shares_a_contiguous_run() {
        let pairs_in: Vec<(Vec<u8>, Vec<u8>)> = (0..1000u32)
            .map(|i| {
                (
                    alloc::format!("key{i}").into_bytes(),
                    alloc::format!("v{i}").into_bytes(),
                )
            })
            .collect();
        let refs: Vec<(&[u8], &[u8])> = pairs_in.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let block = Bytes::from(wire(&refs));
        let mut src = block.clone();
        bytes::Buf::advance(&mut src, 1);
        let mut reader = UserPropertiesReader::new(UserPropertyCap::NONE);
        reader.read(&mut src).unwrap();
        assert!(src.is_empty());
        let s = reader.finish();
        assert_eq!(s.len(), 1000);
        // A slice of the block, not a copy.
        assert_eq!(s.wire.as_ptr(), block[1..].as_ptr());
        for (i, (k, v)) in s.iter().enumerate() {
            assert_eq!(k, alloc::format!("key{i}"));
            assert_eq!(v, alloc::format!("v{i}"));
        }
        let mut out = Vec::new();
        s.write(&mut out);
        assert_eq!(out, &block[..]);
    }

    #[test]
    fn runs_apart_are_joined_in_one_buffer_of_their_size() {
        // k1=v1, then another property (a 4-byte Message Expiry Interval), then two more.
        let mut block = wire(&[(b"k1", b"v1")]);
        block.extend_from_slice(&[0x02, 0, 0, 0, 9]);
        block.extend_from_slice(&wire(&[(b"k2", b"v2"), (b"k3", b"")]));
        let mut src = Bytes::from(block);
        let mut reader = UserPropertiesReader::new(UserPropertyCap::new(3));
        bytes::Buf::advance(&mut src, 1);
        reader.read(&mut src).unwrap();
        assert_eq!(src.first(), Some(&0x02));
        bytes::Buf::advance(&mut src, 5 + 1);
        reader.read(&mut src).unwrap();
        assert!(src.is_empty());
        let s = reader.finish();
        assert_eq!(pairs(&s), [("k1", "v1"), ("k2", "v2"), ("k3", "")]);
        assert_eq!(s, set(&[("k1", "v1"), ("k2", "v2"), ("k3", "")]));
        assert_eq!(s.memory_size(), 8 + 1 + 8 + 1 + 6);
    }

    #[test]
    fn the_cap_stops_decoding_at_the_first_pair_over_it() {
        let block = wire(&vec![(&b""[..], &b""[..]); 10]);
        assert_eq!(
            read_all(&block, UserPropertyCap::new(10)).unwrap().len(),
            10
        );
        for max in [0, 1, 9] {
            let e = read_all(&block, UserPropertyCap::new(max)).unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::TooManyUserProperties {
                    count: max + 1,
                    max
                }
            );
        }
        // Counted across runs and sets: 4 read before, 6 allowed.
        let cap = UserPropertyCap::new(10).after(4);
        let e = read_all(&block, cap).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::TooManyUserProperties { count: 11, max: 10 }
        );
        // The pair over the cap is not read: it may be malformed.
        let mut bad = wire(&[(b"", b"")]);
        bad.extend_from_slice(&[ID, 0xFF]);
        let e = read_all(&bad, UserPropertyCap::new(1)).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::TooManyUserProperties { .. }));
    }

    #[test]
    fn malformed_pairs_are_refused() {
        let check = |block: &[u8], kind: ErrorKind| {
            assert_eq!(
                read_all(block, UserPropertyCap::NONE).unwrap_err().kind(),
                kind,
                "{block:?}"
            );
        };
        check(&wire(&[(b"\xC3\x28", b"")]), ErrorKind::InvalidUtf8);
        check(&wire(&[(b"k", b"\xED\xA0\x80")]), ErrorKind::InvalidUtf8);
        check(&wire(&[(b"k", b"a\0")]), ErrorKind::NullCharacter);
        check(
            &wire(&[(b"ok", b"ok"), (b"\xFF", b"")]),
            ErrorKind::InvalidUtf8,
        );
        check(&[ID, 0], ErrorKind::UnexpectedEnd);
        check(&[ID, 0, 0, 0, 2, b'x'], ErrorKind::UnexpectedEnd);
        check(&[ID, 0, 3, b'a'], ErrorKind::UnexpectedEnd);
    }

    #[test]
    fn detach_and_clone_keep_the_pairs() {
        let block = Bytes::from(wire(&[(b"k", b"v")]));
        let mut src = block.slice(1..);
        let mut reader = UserPropertiesReader::new(UserPropertyCap::NONE);
        reader.read(&mut src).unwrap();
        let mut s = reader.finish();
        let shared = s.clone();
        assert_eq!(shared.wire.as_ptr(), s.wire.as_ptr());
        s.detach();
        assert_ne!(s.wire.as_ptr(), block[1..].as_ptr());
        assert_eq!(s, shared);
        assert_eq!(s.memory_size(), 6);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn extend_appends_after_what_is_there() {
        let mut s = set(&[("a", "1")]);
        s.extend([(ByteStr::from_static("b"), ByteStr::from_static("2"))]);
        s.extend(core::iter::empty());
        assert_eq!(pairs(&s), [("a", "1"), ("b", "2")]);
        let refs: Vec<(&str, &str)> = (&s).into_iter().collect();
        assert_eq!(refs, [("a", "1"), ("b", "2")]);
    }
}
