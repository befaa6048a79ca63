//! Topic name and topic filter syntax (section 4.7), and the `$share/` form of 5.0
//! shared subscriptions (section 4.8.2).
//!
//! Only syntax lives here, because decoding must reject a bad topic. Matching filters
//! against names is the job of the `mqtt-topics` crate.
//!
//! Both kinds of string are already UTF-8 Encoded Strings (no U+0000, at most 65,535
//! bytes, [MQTT-4.7.3-2], [MQTT-4.7.3-3]) by the time they reach these checks.

use crate::error::ErrorKind;

/// The prefix of a shared subscription's topic filter (MQTT 5.0).
pub const SHARED_PREFIX: &str = "$share/";

/// Checks a topic name: at least one character ([MQTT-4.7.3-1]) and no `+` or `#`
/// ([MQTT-3.3.2-2], [MQTT-4.7.0-1] in 5.0 / [MQTT-4.7.1-1] in 3.1.1).
pub fn validate_topic_name(name: &str) -> Result<(), ErrorKind> {
    if name.is_empty() {
        return Err(ErrorKind::EmptyTopicName);
    }
    // Every PUBLISH encoded checks its topic: eight bytes at a time for the usual
    // (ASCII) names, a byte at a time for the others.
    if crate::primitives::is_plain_ascii(name.as_bytes(), true) {
        return Ok(());
    }
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(ErrorKind::WildcardInTopicName);
    }
    Ok(())
}

/// Checks a topic filter: at least one character ([MQTT-4.7.3-1]); `#` only as the
/// whole last level ([MQTT-4.7.1-1] in 5.0); `+` only as a whole level ([MQTT-4.7.1-2]).
/// Empty levels are levels: `a//b` and `/` are valid.
///
/// This does not interpret `$share/`; see [`parse_shared`].
pub fn validate_topic_filter(filter: &str) -> Result<(), ErrorKind> {
    if filter.is_empty() {
        return Err(ErrorKind::EmptyTopicFilter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(ErrorKind::MultiLevelWildcardMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(ErrorKind::SingleLevelWildcardMisplaced);
        }
    }
    Ok(())
}

/// A shared subscription filter split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (the group): non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter after the share name, itself a valid filter.
    pub filter: &'a str,
}

/// Splits a `$share/{group}/{filter}` filter. Returns `Ok(None)` for a filter that does
/// not start with `$share/` (an ordinary filter, which this function does not check),
/// and an error when it does but breaks [MQTT-4.8.2-1] or [MQTT-4.8.2-2].
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, ErrorKind> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(ErrorKind::InvalidSharedSubscription);
    };
    if group.is_empty() {
        return Err(ErrorKind::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(ErrorKind::InvalidSharedSubscription);
    }
    if inner.is_empty() {
        return Err(ErrorKind::InvalidSharedSubscription);
    }
    validate_topic_filter(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 3.1.1 MQTT-3.3.2-2, 5.0 MQTT-3.3.2-2 (no wildcards in a topic name);
    // 3.1.1 MQTT-4.7.1-1, 5.0 MQTT-4.7.0-1; 3.1.1 MQTT-4.7.3-1, 5.0 MQTT-4.7.3-1 (not empty).
    #[test]
    fn names() {
        // Long names too, ASCII or not: they are checked a word at a time.
        for ok in [
            "a",
            "/",
            "a/b",
            "a//b",
            "$SYS/x",
            " ",
            "a/b/",
            "bench/fan-in/15",
            "capteur/température",
        ] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_name(""), Err(ErrorKind::EmptyTopicName));
        for bad in [
            "+",
            "#",
            "a/+",
            "a/#",
            "a+b",
            "sport/tennis#",
            "sport/+/player1",
            "température/#",
            "0123456+89abcdef0",
            "0123456789abcdef#",
        ] {
            assert_eq!(
                validate_topic_name(bad),
                Err(ErrorKind::WildcardInTopicName),
                "{bad:?}"
            );
        }
    }

    // 3.1.1 MQTT-4.7.1-2, 5.0 MQTT-4.7.1-1 ('#' placement); 3.1.1 MQTT-4.7.1-3,
    // 5.0 MQTT-4.7.1-2 ('+' placement); 3.1.1 MQTT-4.7.3-1, 5.0 MQTT-4.7.3-1 (not empty).
    #[test]
    fn filters_from_the_spec() {
        // 4.7.1.2 and 4.7.1.3 examples.
        for ok in [
            "#",
            "sport/#",
            "sport/tennis/#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "a//b",
            "/",
            "$SYS/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "a/#b",
            "##",
        ] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(ErrorKind::MultiLevelWildcardMisplaced),
                "{bad:?}"
            );
        }
        for bad in ["sport+", "a/+b", "++", "+a/b"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(ErrorKind::SingleLevelWildcardMisplaced),
                "{bad:?}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(ErrorKind::EmptyTopicFilter));
    }

    // 5.0 MQTT-4.8.2-1, 5.0 MQTT-4.8.2-2: `$share/{ShareName}/{filter}` syntax.
    #[test]
    fn shared() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g//"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
        assert_eq!(parse_shared("$share//a"), Err(ErrorKind::EmptyShareName));
        for bad in [
            "$share/",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/#/a",
        ] {
            assert_eq!(
                parse_shared(bad),
                Err(ErrorKind::InvalidSharedSubscription),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(ErrorKind::MultiLevelWildcardMisplaced)
        );
    }
}
