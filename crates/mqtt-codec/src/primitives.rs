//! The data representations of section 1.5: integers, Variable Byte Integers, UTF-8
//! Encoded Strings and Binary Data, read from a `Bytes` without copying.
//!
//! Every reader checks the length it needs first and fails with
//! [`ErrorKind::UnexpectedEnd`] instead of reading past the end of the packet.

use alloc::string::String;
use core::{borrow::Borrow, fmt, ops::Deref};

use bytes::{Buf, BufMut, Bytes};

use crate::{
    error::{DecodeError, EncodeError, ErrorKind},
    fixed_header::{parse_var_int, var_int_len},
};

/// The longest UTF-8 Encoded String or Binary Data field: a two-byte length prefix.
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// A UTF-8 Encoded String: well-formed UTF-8, no U+0000, at most 65,535 bytes,
/// held in a [`Bytes`] so that decoding shares the input buffer instead of copying.
///
/// Every constructor checks those rules, so a `ByteStr` can always be encoded.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteStr(Bytes);

/// Why a string is not a valid UTF-8 Encoded String.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StringError {
    /// Not well-formed UTF-8.
    #[error("not well-formed UTF-8")]
    InvalidUtf8,
    /// Contains U+0000.
    #[error("contains the null character U+0000")]
    NullCharacter,
    /// Longer than 65,535 bytes.
    #[error("longer than 65535 bytes")]
    TooLong,
}

impl From<StringError> for ErrorKind {
    fn from(err: StringError) -> Self {
        match err {
            StringError::InvalidUtf8 => Self::InvalidUtf8,
            StringError::NullCharacter => Self::NullCharacter,
            // A decoded string's length came from a u16, so it cannot be too long.
            StringError::TooLong => Self::UnexpectedEnd,
        }
    }
}

impl ByteStr {
    /// An empty string.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// A string from a `'static` literal, without copying.
    ///
    /// # Panics
    /// If `s` contains U+0000 or is longer than 65,535 bytes; in a `const` context
    /// that is a compile-time error. Use `TryFrom` for strings not written in the source.
    #[allow(clippy::panic, clippy::indexing_slicing)] // a literal, not peer input; `i` is in bounds
    pub const fn from_static(s: &'static str) -> Self {
        let bytes = s.as_bytes();
        assert!(
            bytes.len() <= MAX_STRING_LEN,
            "MQTT string longer than 65535 bytes"
        );
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i] != 0, "MQTT string contains U+0000");
            i += 1;
        }
        Self(Bytes::from_static(bytes))
    }

    /// Checks `bytes` against the rules of a UTF-8 Encoded String and wraps it.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        validate(&bytes)?;
        Ok(Self(bytes))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validated the bytes as UTF-8, and they are immutable.
        #[allow(unsafe_code)]
        unsafe {
            core::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The underlying bytes, by value.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The size on the wire: two length bytes plus the string.
    pub fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
}

/// Checks `bytes` against the rules of a UTF-8 Encoded String.
pub(crate) fn validate(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong);
    }
    // Most strings are plain ASCII: one pass, eight bytes at a time.
    if is_plain_ascii(bytes, false) {
        return Ok(());
    }
    // `from_utf8` rejects ill-formed sequences, overlong forms and encoded surrogates
    // (U+D800..U+DFFF), as [MQTT-1.5.4-1] requires.
    core::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

/// True if every byte is ASCII and none is U+0000 (nor, with `no_wildcards`, `+` or
/// `#`): a valid UTF-8 Encoded String (and topic name) without further checks. Checks
/// eight bytes at a time, without branching per word; `false` only means "take the slow
/// path".
#[inline]
pub(crate) fn is_plain_ascii(bytes: &[u8], no_wildcards: bool) -> bool {
    const HI: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // The bits set in `HI` are the non-ASCII bytes of `x`, the zero bytes and, with
    // `no_wildcards`, the `+` and `#`. Adding 0x7F to a byte below 0x80 sets its high
    // bit exactly when the byte is not 0, and never carries into the next byte. `#`
    // (0x23) and `+` (0x2B) differ only in bit 3: setting it and xoring with 0x2B turns
    // both, and only them among ASCII bytes, into 0.
    let bad = |x: u64| {
        let mut ok = (x & LOW7).wrapping_add(LOW7);
        if no_wildcards {
            let y = (x | 0x0808_0808_0808_0808) ^ 0x2B2B_2B2B_2B2B_2B2B;
            ok &= (y & LOW7).wrapping_add(LOW7);
        }
        (x | !ok) & HI
    };
    let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map(u64::from_le_bytes);
    let mut chunks = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in &mut chunks {
        match word(chunk) {
            Ok(x) => found |= bad(x),
            Err(_) => return false,
        }
    }
    if chunks.remainder().is_empty() {
        return found == 0;
    }
    // The last bytes: as the (overlapping) last word when there is one.
    match bytes
        .len()
        .checked_sub(8)
        .and_then(|start| bytes.get(start..))
    {
        Some(last) => match word(last) {
            Ok(x) => found |= bad(x),
            Err(_) => return false,
        },
        None => {
            return bytes
                .iter()
                .all(|&b| b != 0 && b < 0x80 && !(no_wildcards && (b == b'+' || b == b'#')));
        }
    }
    found == 0
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl TryFrom<&str> for ByteStr {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        validate(s.as_bytes())?;
        Ok(Self(Bytes::copy_from_slice(s.as_bytes())))
    }
}

impl TryFrom<String> for ByteStr {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        validate(s.as_bytes())?;
        Ok(Self(Bytes::from(s)))
    }
}

impl TryFrom<Bytes> for ByteStr {
    type Error = StringError;
    fn try_from(bytes: Bytes) -> Result<Self, StringError> {
        Self::from_bytes(bytes)
    }
}

impl From<ByteStr> for Bytes {
    fn from(s: ByteStr) -> Self {
        s.0
    }
}

// ---- readers ---------------------------------------------------------------------------

fn need(src: &Bytes, n: usize) -> Result<(), DecodeError> {
    if src.len() < n {
        Err(ErrorKind::UnexpectedEnd.into())
    } else {
        Ok(())
    }
}

pub(crate) fn read_u8(src: &mut Bytes) -> Result<u8, DecodeError> {
    need(src, 1)?;
    Ok(src.get_u8())
}

pub(crate) fn read_u16(src: &mut Bytes) -> Result<u16, DecodeError> {
    need(src, 2)?;
    Ok(src.get_u16())
}

pub(crate) fn read_u32(src: &mut Bytes) -> Result<u32, DecodeError> {
    need(src, 4)?;
    Ok(src.get_u32())
}

/// Reads a Variable Byte Integer that must be complete and in its shortest form.
pub(crate) fn read_var_int(src: &mut Bytes) -> Result<u32, DecodeError> {
    let Some((value, used)) = parse_var_int(src)? else {
        return Err(ErrorKind::UnexpectedEnd.into());
    };
    if usize::from(used) != var_int_len(value) {
        return Err(ErrorKind::NonMinimalVarInt.into());
    }
    src.advance(usize::from(used));
    Ok(value)
}

/// Takes the next `n` bytes, sharing the buffer.
pub(crate) fn read_slice(src: &mut Bytes, n: usize) -> Result<Bytes, DecodeError> {
    need(src, n)?;
    Ok(src.split_to(n))
}

/// Reads Binary Data: a two-byte length and that many bytes.
pub(crate) fn read_binary(src: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(src)?;
    read_slice(src, usize::from(len))
}

/// Reads a topic name: a UTF-8 Encoded String without `+` or `#` ([MQTT-3.3.2-2]).
/// It may be empty; the caller decides whether that is allowed.
#[inline]
pub(crate) fn read_topic_name(src: &mut Bytes) -> Result<ByteStr, DecodeError> {
    let bytes = read_binary(src)?;
    if is_plain_ascii(&bytes, true) {
        return Ok(ByteStr(bytes));
    }
    let topic = ByteStr::from_bytes(bytes).map_err(ErrorKind::from)?;
    if !topic.is_empty() {
        crate::topic::validate_topic_name(&topic)?;
    }
    Ok(topic)
}

/// Reads a UTF-8 Encoded String.
#[inline]
pub(crate) fn read_str(src: &mut Bytes) -> Result<ByteStr, DecodeError> {
    let bytes = read_binary(src)?;
    ByteStr::from_bytes(bytes).map_err(|e| ErrorKind::from(e).into())
}

/// Fails unless `src` has been read to its end.
pub(crate) fn expect_end(src: &Bytes) -> Result<(), DecodeError> {
    if src.is_empty() {
        Ok(())
    } else {
        Err(ErrorKind::TrailingBytes(src.len()).into())
    }
}

// ---- writers ---------------------------------------------------------------------------

pub(crate) fn write_var_int(dst: &mut impl BufMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

#[inline]
pub(crate) fn write_str(dst: &mut impl BufMut, s: &ByteStr) {
    // A ByteStr is at most 65,535 bytes long by construction.
    dst.put_u16(s.0.len() as u16);
    dst.put_slice(&s.0);
}

/// Writes Binary Data; the caller has checked the length with [`check_binary`].
pub(crate) fn write_binary(dst: &mut impl BufMut, b: &[u8]) {
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

pub(crate) fn check_binary(b: &[u8]) -> Result<(), EncodeError> {
    if b.len() > MAX_STRING_LEN {
        Err(EncodeError::BinaryTooLong(b.len()))
    } else {
        Ok(())
    }
}

pub(crate) fn binary_len(b: &[u8]) -> usize {
    2 + b.len()
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::is_plain_ascii;

    fn reference(bytes: &[u8], no_wildcards: bool) -> bool {
        bytes
            .iter()
            .all(|&b| b != 0 && b < 0x80 && !(no_wildcards && (b == b'+' || b == b'#')))
    }

    /// The word-at-a-time check agrees with the byte-at-a-time one for every byte value
    /// at every position of strings of every length up to three words.
    #[test]
    fn plain_ascii_matches_reference() {
        for len in 0..=24 {
            for pos in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = byte;
                    for no_wildcards in [false, true] {
                        assert_eq!(
                            is_plain_ascii(&bytes, no_wildcards),
                            reference(&bytes, no_wildcards),
                            "{bytes:?} {no_wildcards}"
                        );
                    }
                }
            }
        }
    }
}
