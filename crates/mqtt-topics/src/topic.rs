//! Validated topic names and filters (section 4.7) and shared subscription filters
//! (5.0 section 4.8.2).
//!
//! The syntax rules live in [`mqtt_codec::topic`], which the decoder applies to every
//! packet; the types here add the two rules that the codec leaves to its string layer
//! (no U+0000, at most 65,535 bytes), so that a string from anywhere (configuration, an
//! API, a test) can be checked once and then matched without further checks.

use core::fmt;

use mqtt_codec::{ErrorKind, MAX_STRING_LEN, ProtocolVersion, topic};

/// Why a string is not a valid topic name or topic filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// A syntax rule of [`mqtt_codec::topic`] is broken, or the string contains U+0000
    /// ([`ErrorKind::NullCharacter`]). [`ErrorKind::rule`] names the statement.
    Invalid(ErrorKind),
    /// The string is longer than 65,535 bytes ([MQTT-4.7.3-3]); the length is given.
    TooLong(usize),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(kind) => fmt::Display::fmt(kind, f),
            Self::TooLong(len) => write!(f, "topic of {len} bytes exceeds 65535 bytes"),
        }
    }
}

impl core::error::Error for TopicError {}

impl From<ErrorKind> for TopicError {
    fn from(kind: ErrorKind) -> Self {
        Self::Invalid(kind)
    }
}

/// The checks every topic string needs beyond its syntax: [MQTT-4.7.3-2], [MQTT-4.7.3-3].
fn check_string(s: &str) -> Result<(), TopicError> {
    if s.len() > MAX_STRING_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::Invalid(ErrorKind::NullCharacter));
    }
    Ok(())
}

/// A valid topic name: what a PUBLISH is sent to. Non-empty, no `+` or `#`, no U+0000,
/// at most 65,535 bytes. Empty levels are levels: `a//b` has three, `/` has two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName<'a>(&'a str);

impl<'a> TopicName<'a> {
    /// Checks `name` ([MQTT-4.7.3-1], [MQTT-4.7.3-2], [MQTT-4.7.3-3], [MQTT-3.3.2-2]).
    #[inline]
    pub fn new(name: &'a str) -> Result<Self, TopicError> {
        // The broker checks the name of every message it routes, and names are short:
        // one pass over the bytes for all three forbidden ones is cheaper than a
        // `memchr` for U+0000 and a second pass for the wildcards (callgrind, fan-in
        // benchmark: ~130 fewer instructions per routed message). The rules and their
        // errors stay in one place: a name with any forbidden byte takes the full check.
        if !name.is_empty()
            && name.len() <= MAX_STRING_LEN
            && !name.bytes().any(|b| matches!(b, 0 | b'+' | b'#'))
        {
            return Ok(Self(name));
        }
        Self::checked(name)
    }

    #[cold]
    fn checked(name: &'a str) -> Result<Self, TopicError> {
        check_string(name)?;
        topic::validate_topic_name(name)?;
        Ok(Self(name))
    }

    /// The name as a string.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// The levels, split at `/`.
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }

    /// True when the name starts with `$` (`$SYS/...`): filters starting with a
    /// wildcard do not match it ([MQTT-4.7.2-1]).
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for TopicName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A valid topic filter: non-empty, `#` only as the whole last level, `+` only as a
/// whole level, no U+0000, at most 65,535 bytes.
///
/// `$share/g/a` is a valid filter too; whether it means a shared subscription depends
/// on the protocol version, which [`Filter::parse`] takes into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter<'a>(&'a str);

impl<'a> TopicFilter<'a> {
    /// Checks `filter` ([MQTT-4.7.3-1], [MQTT-4.7.3-2], [MQTT-4.7.3-3], [MQTT-4.7.1-1]
    /// and [MQTT-4.7.1-2] as numbered in 5.0).
    pub fn new(filter: &'a str) -> Result<Self, TopicError> {
        check_string(filter)?;
        topic::validate_topic_filter(filter)?;
        Ok(Self(filter))
    }

    /// The filter as a string.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// The levels, split at `/`.
    pub fn levels(&self) -> core::str::Split<'a, char> {
        self.0.split('/')
    }

    /// True when the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// True when the first level is `+` or `#`: such a filter never matches a topic name
    /// starting with `$` ([MQTT-4.7.2-1]).
    pub fn starts_with_wildcard(&self) -> bool {
        matches!(self.0.as_bytes().first(), Some(b'+' | b'#'))
    }

    /// Whether this filter matches `name`. A direct implementation of the rules, for
    /// one-off checks; to match many filters, use a [`TopicIndex`](crate::TopicIndex).
    pub fn matches(&self, name: TopicName<'_>) -> bool {
        if name.is_dollar() && self.starts_with_wildcard() {
            return false;
        }
        let mut names = name.levels();
        for f in self.levels() {
            match f {
                // `#` also matches the parent level: `a/#` matches `a`.
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                _ => {
                    if names.next() != Some(f) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A 5.0 shared subscription, `$share/{group}/{filter}`, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The filter after the share name, which is what topics are matched against.
    pub filter: TopicFilter<'a>,
}

/// A subscription's filter as a broker receives it: plain, or shared (5.0 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter<'a> {
    /// An ordinary filter: every subscriber gets each matching message.
    Plain(TopicFilter<'a>),
    /// A shared subscription: each matching message goes to one member of the group.
    Shared(SharedFilter<'a>),
}

impl<'a> Filter<'a> {
    /// Parses a filter from a SUBSCRIBE or UNSUBSCRIBE of `version`. In 5.0 a filter
    /// starting with `$share/` is a shared subscription and must follow [MQTT-4.8.2-1]
    /// and [MQTT-4.8.2-2]; in 3.1 and 3.1.1 it is an ordinary filter.
    pub fn parse(filter: &'a str, version: ProtocolVersion) -> Result<Self, TopicError> {
        if !version.is_v5() {
            return TopicFilter::new(filter).map(Self::Plain);
        }
        // The share name is checked first: `$share/a+b/c` is a bad share name rather
        // than a misplaced `+`.
        check_string(filter)?;
        match topic::parse_shared(filter)? {
            None => TopicFilter::new(filter).map(Self::Plain),
            Some(shared) => Ok(Self::Shared(SharedFilter {
                group: shared.group,
                filter: TopicFilter::new(shared.filter)?,
            })),
        }
    }

    /// The filter topics are matched against (for a shared subscription, the part
    /// after the share name).
    pub const fn topic_filter(&self) -> TopicFilter<'a> {
        match self {
            Self::Plain(f) => *f,
            Self::Shared(s) => s.filter,
        }
    }

    /// The share name of a shared subscription.
    pub const fn group(&self) -> Option<&'a str> {
        match self {
            Self::Plain(_) => None,
            Self::Shared(s) => Some(s.group),
        }
    }
}

impl<'a> From<TopicFilter<'a>> for Filter<'a> {
    fn from(filter: TopicFilter<'a>) -> Self {
        Self::Plain(filter)
    }
}

impl<'a> From<SharedFilter<'a>> for Filter<'a> {
    fn from(filter: SharedFilter<'a>) -> Self {
        Self::Shared(filter)
    }
}

impl fmt::Display for Filter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(p) => f.write_str(p.as_str()),
            Self::Shared(s) => write!(f, "{}{}/{}", topic::SHARED_PREFIX, s.group, s.filter),
        }
    }
}
