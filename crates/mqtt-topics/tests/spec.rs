//! Known answers: the examples of sections 4.7 and 4.8 of the specs, the validation
//! rules, and the index's contract (one entry per subscriber, replacement, shared
//! groups, removal).

use mqtt_codec::{ErrorKind, ProtocolVersion};
use mqtt_topics::{
    Filter, Matches, RetainedStore, ShardedIndex, SharedFilter, TopicError, TopicFilter,
    TopicIndex, TopicName,
};

fn name(s: &str) -> TopicName<'_> {
    TopicName::new(s).unwrap()
}

fn filter(s: &str) -> TopicFilter<'_> {
    TopicFilter::new(s).unwrap()
}

/// Every way this crate can answer "does `f` match `t`": the direct check, the index,
/// the sharded index and the retained store; asserts that they agree.
fn matches(f: &str, t: &str) -> bool {
    let direct = filter(f).matches(name(t));

    let mut index = TopicIndex::new();
    index.subscribe(filter(f).into(), 1u8, ());
    let mut m = Matches::new();
    index.matches(name(t), &mut m);
    assert_eq!(m.subscription_count() == 1, direct, "index: {f} vs {t}");

    let sharded = ShardedIndex::with_shards(3, 2);
    sharded.subscribe(filter(f).into(), 1u8, ());
    sharded.matches(name(t), &mut m);
    assert_eq!(m.subscription_count() == 1, direct, "sharded: {f} vs {t}");

    let mut retained = RetainedStore::new();
    retained.insert(name(t), ());
    assert_eq!(
        retained.matching(filter(f)).count() == 1,
        direct,
        "retained: {f} vs {t}"
    );
    direct
}

// 3.1.1 MQTT-4.7.1-2, 5.0 MQTT-4.7.1-1: the 4.7.1.2 examples of `#`, which also matches
// the parent level.
#[test]
fn multi_level_wildcard_examples() {
    for t in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert!(matches("sport/tennis/player1/#", t), "{t}");
    }
    assert!(matches("sport/#", "sport"));
    assert!(matches("#", "sport/tennis"));
    assert!(matches("#", "/"));
    assert!(!matches("sport/tennis/player1/#", "sport/tennis/player2"));
    assert!(!matches("sport/#", "sports"));
}

// 3.1.1 MQTT-4.7.1-3, 5.0 MQTT-4.7.1-2: the 4.7.1.3 examples of `+`, which matches
// exactly one level, possibly empty.
#[test]
fn single_level_wildcard_examples() {
    assert!(matches("sport/tennis/+", "sport/tennis/player1"));
    assert!(matches("sport/tennis/+", "sport/tennis/player2"));
    assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
    assert!(!matches("sport/+", "sport"));
    assert!(matches("sport/+", "sport/"));
    assert!(matches("+/+", "/finance"));
    assert!(matches("/+", "/finance"));
    assert!(!matches("+", "/finance"));
    assert!(matches("+", "finance"));
    assert!(matches("+/tennis/#", "sport/tennis/player1"));
    assert!(matches("+/+/+", "//"));
    assert!(!matches("+/+/+", "/"));
}

// 3.1.1 MQTT-4.7.2-1, 5.0 MQTT-4.7.2-1: filters starting with a wildcard do not match
// topic names starting with `$`; filters starting with `$` do.
#[test]
fn dollar_topics() {
    assert!(!matches("#", "$SYS/monitor/Clients"));
    assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(!matches("+", "$SYS"));
    assert!(!matches("+/#", "$SYS/x"));
    assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/#", "$SYS"));
    assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/+/Clients", "$SYS/monitor/Clients"));
    // Only the first character of the topic counts.
    assert!(matches("#", "a/$SYS"));
    assert!(matches("+/$x", "a/$x"));
}

// 3.1.1 MQTT-4.7.3-4, 5.0 MQTT-4.7.3-4: no normalisation: case, empty levels and
// characters all count.
#[test]
fn no_normalisation() {
    assert!(!matches("ACCOUNTS", "Accounts"));
    assert!(!matches("/finance", "finance"));
    assert!(!matches("a/b", "a//b"));
    assert!(!matches("a/b", "a/b/"));
    assert!(matches("a//b", "a//b"));
    assert!(matches("caf\u{e9}", "caf\u{e9}"));
    assert!(!matches("caf\u{e9}", "cafe\u{301}"));
}

// 3.1.1 MQTT-4.7.3-1, 5.0 MQTT-4.7.3-1 (at least one character); 3.1.1 MQTT-4.7.3-2,
// 5.0 MQTT-4.7.3-2 (no U+0000); 3.1.1 MQTT-4.7.3-3, 5.0 MQTT-4.7.3-3 (at most 65,535
// bytes); 3.1.1 MQTT-4.7.1-1, 5.0 MQTT-4.7.0-1 (no wildcard in a topic name).
#[test]
fn validation() {
    assert_eq!(TopicName::new(""), Err(ErrorKind::EmptyTopicName.into()));
    assert_eq!(
        TopicFilter::new(""),
        Err(ErrorKind::EmptyTopicFilter.into())
    );
    assert_eq!(
        TopicName::new("a\0b"),
        Err(TopicError::Invalid(ErrorKind::NullCharacter))
    );
    assert_eq!(
        TopicFilter::new("a/\0"),
        Err(TopicError::Invalid(ErrorKind::NullCharacter))
    );
    let long = "a".repeat(65_536);
    assert_eq!(TopicName::new(&long), Err(TopicError::TooLong(65_536)));
    assert_eq!(TopicFilter::new(&long), Err(TopicError::TooLong(65_536)));
    assert!(TopicName::new(&long[1..]).is_ok());
    assert_eq!(
        TopicName::new("a/+"),
        Err(ErrorKind::WildcardInTopicName.into())
    );
    assert_eq!(
        TopicName::new("a#"),
        Err(ErrorKind::WildcardInTopicName.into())
    );
    // U+0000 is reported before a wildcard, wherever each is.
    assert_eq!(
        TopicName::new("a+\0"),
        Err(TopicError::Invalid(ErrorKind::NullCharacter))
    );
    assert!(TopicName::new("/").is_ok());
    assert!(TopicName::new(" ").is_ok());
}

// 3.1.1 MQTT-4.7.1-2, 5.0 MQTT-4.7.1-1 (`#` alone and last); 3.1.1 MQTT-4.7.1-3,
// 5.0 MQTT-4.7.1-2 (`+` a whole level).
#[test]
fn filter_validation() {
    for ok in ["#", "a/#", "+", "+/+", "/+", "a//b", "+/#", "$SYS/#"] {
        assert!(TopicFilter::new(ok).is_ok(), "{ok}");
    }
    assert_eq!(
        TopicFilter::new("sport/tennis#"),
        Err(ErrorKind::MultiLevelWildcardMisplaced.into())
    );
    assert_eq!(
        TopicFilter::new("sport/#/ranking"),
        Err(ErrorKind::MultiLevelWildcardMisplaced.into())
    );
    assert_eq!(
        TopicFilter::new("sport+"),
        Err(ErrorKind::SingleLevelWildcardMisplaced.into())
    );
}

// 5.0 MQTT-4.8.2-1, 5.0 MQTT-4.8.2-2: `$share/{ShareName}/{filter}`, in 5.0 only.
#[test]
fn shared_filters() {
    let shared = Filter::parse("$share/g/a/+", ProtocolVersion::V5).unwrap();
    assert_eq!(
        shared,
        Filter::Shared(SharedFilter {
            group: "g",
            filter: filter("a/+")
        })
    );
    assert_eq!(shared.to_string(), "$share/g/a/+");
    assert_eq!(shared.group(), Some("g"));
    for bad in [
        "$share/",
        "$share//a",
        "$share/g",
        "$share/g/",
        "$share/g+/a",
    ] {
        let Err(TopicError::Invalid(kind)) = Filter::parse(bad, ProtocolVersion::V5) else {
            panic!("{bad} accepted");
        };
        assert!(
            matches!(
                kind.rule(ProtocolVersion::V5),
                Some("MQTT-4.8.2-1" | "MQTT-4.8.2-2")
            ),
            "{bad}: {kind:?}"
        );
    }
    // In 3.1.1 it is an ordinary filter, matching topics that start with `$share`.
    let plain = Filter::parse("$share/g/a", ProtocolVersion::V3_1_1).unwrap();
    assert_eq!(plain, Filter::Plain(filter("$share/g/a")));
    assert!(Filter::parse("$share/g", ProtocolVersion::V3_1_1).is_ok());
}

// 5.0 MQTT-3.8.4-3: subscribing again to an identical filter replaces the subscription
// (the index keeps one, with the new value).
#[test]
fn resubscribe_replaces() {
    let mut index = TopicIndex::new();
    assert_eq!(index.subscribe(filter("a/+").into(), "c", 0), None);
    assert_eq!(index.subscribe(filter("a/+").into(), "c", 2), Some(0));
    assert_eq!(index.len(), 1);
    assert_eq!(index.get(filter("a/+").into(), &"c"), Some(&2));
    let mut m = Matches::new();
    index.matches(name("a/b"), &mut m);
    let got: Vec<_> = m
        .subscribers()
        .map(|s| (*s.key(), s.values().copied().collect::<Vec<_>>()))
        .collect();
    assert_eq!(got, [("c", vec![2])]);
}

#[test]
fn each_subscriber_once_with_all_its_subscriptions() {
    let mut index = TopicIndex::new();
    for (f, key, value) in [
        ("a/b/c", "x", 1),
        ("a/+/c", "x", 2),
        ("a/#", "x", 3),
        ("#", "y", 4),
        ("a/b/+", "y", 5),
        ("a/b", "z", 6),
        ("b/#", "z", 7),
    ] {
        index.subscribe(filter(f).into(), key, value);
    }
    let mut m = Matches::new();
    index.matches(name("a/b/c"), &mut m);
    let mut got: Vec<_> = m
        .subscribers()
        .map(|s| {
            let mut v: Vec<_> = s.values().copied().collect();
            v.sort();
            (*s.key(), v)
        })
        .collect();
    got.sort();
    assert_eq!(got, [("x", vec![1, 2, 3]), ("y", vec![4, 5])]);
    assert_eq!(m.subscription_count(), 5);
}

#[test]
fn shared_groups() {
    let v5 = ProtocolVersion::V5;
    let mut index = TopicIndex::new();
    let f = |s| Filter::parse(s, v5).unwrap();
    index.subscribe(f("$share/g/a/+"), 1, 'a');
    index.subscribe(f("$share/g/a/+"), 2, 'b');
    index.subscribe(f("$share/h/a/+"), 1, 'c');
    index.subscribe(f("$share/g/a/#"), 3, 'd');
    index.subscribe(f("a/+"), 1, 'e');
    assert_eq!(index.len(), 5);
    let mut m = Matches::new();
    index.matches(name("a/x"), &mut m);
    let mut groups: Vec<_> = m
        .shared()
        .map(|g| (g.name().to_string(), g.members().to_vec()))
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            ("g".into(), vec![(1, 'a'), (2, 'b')]),
            ("g".into(), vec![(3, 'd')]),
            ("h".into(), vec![(1, 'c')]),
        ]
    );
    let ids: std::collections::BTreeSet<_> = m.shared().map(|g| g.id()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(m.subscribers().count(), 1);

    assert_eq!(index.unsubscribe(f("$share/g/a/+"), &1), Some('a'));
    assert_eq!(index.unsubscribe(f("$share/g/a/+"), &1), None);
    assert_eq!(index.unsubscribe(f("a/+"), &2), None);
    index.matches(name("a/x"), &mut m);
    assert_eq!(m.shared().map(|g| g.members().len()).sum::<usize>(), 3);
}

#[test]
fn unsubscribe_prunes() {
    let mut index = TopicIndex::new();
    let filters = [
        "a/b/c/d",
        "a/b/+/d",
        "a/#",
        "#",
        "+",
        "a/b/c/d/#",
        "a//",
        "/",
    ];
    for (i, f) in filters.iter().enumerate() {
        index.subscribe(filter(f).into(), i, i);
        index.subscribe(filter(f).into(), i + 100, i);
    }
    assert_eq!(index.len(), 16);
    for (i, f) in filters.iter().enumerate() {
        assert_eq!(index.unsubscribe(filter(f).into(), &i), Some(i));
        assert_eq!(index.unsubscribe(filter(f).into(), &(i + 100)), Some(i));
        assert_eq!(index.unsubscribe(filter(f).into(), &i), None);
    }
    assert!(index.is_empty());
    let mut m = Matches::new();
    index.matches(name("a/b/c/d"), &mut m);
    assert!(m.is_empty());
    // The trie is reusable after pruning everything.
    index.subscribe(filter("a/b/c/d").into(), 1, 1);
    index.matches(name("a/b/c/d"), &mut m);
    assert_eq!(m.subscription_count(), 1);
}

#[test]
fn retained_store() {
    let mut store = RetainedStore::new();
    let topics = ["a", "a/b", "a/b/c", "a//c", "$SYS/x", "b", "/", "a/"];
    for (i, t) in topics.iter().enumerate() {
        assert_eq!(store.insert(name(t), i), None);
    }
    assert_eq!(store.insert(name("a"), 10), Some(0));
    assert_eq!(store.len(), topics.len());
    assert_eq!(store.get(name("a/b")), Some(&1));
    fn found(store: &RetainedStore<usize>, f: &str) -> Vec<String> {
        let mut v: Vec<_> = store.matching(filter(f)).map(|r| r.topic()).collect();
        v.sort();
        v
    }
    assert_eq!(found(&store, "a/#"), ["a", "a/", "a//c", "a/b", "a/b/c"]);
    assert_eq!(found(&store, "a/+"), ["a/", "a/b"]);
    assert_eq!(found(&store, "+"), ["a", "b"]);
    assert_eq!(found(&store, "#").len(), topics.len() - 1);
    assert_eq!(found(&store, "$SYS/#"), ["$SYS/x"]);
    assert_eq!(found(&store, "+/+/c"), ["a//c", "a/b/c"]);
    assert_eq!(found(&store, "+/"), ["/", "a/"]);
    assert_eq!(store.remove(name("a/b")), Some(1));
    assert_eq!(store.remove(name("a/b")), None);
    assert_eq!(found(&store, "a/#"), ["a", "a/", "a//c", "a/b/c"]);
    for t in topics {
        store.remove(name(t));
    }
    assert!(store.is_empty());
    assert_eq!(found(&store, "#").len(), 0);
}

#[test]
fn deep_topics_do_not_overflow_the_stack() {
    let deep_filter = "a/".repeat(20_000) + "#";
    let deep_topic = "a/".repeat(30_000) + "a";
    let mut index = TopicIndex::new();
    index.subscribe(filter(&deep_filter).into(), 1, ());
    index.subscribe(filter(&("+/".repeat(20_000) + "+")).into(), 2, ());
    let mut m = Matches::new();
    index.matches(name(&deep_topic), &mut m);
    assert_eq!(m.subscription_count(), 1);
    let mut store = RetainedStore::new();
    store.insert(name(&deep_topic), ());
    assert_eq!(store.matching(filter("#")).count(), 1);
    assert_eq!(store.matching(filter(&deep_filter)).count(), 1);
}
