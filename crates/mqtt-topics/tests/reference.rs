//! Property tests against a naive reference matcher: random filters and topics over a
//! small alphabet with empty levels, `+`, `#` and `$`, so that collisions, shared
//! prefixes and every corner of the rules come up often.
//!
//! 3.1.1 MQTT-4.7.2-1, 5.0 MQTT-4.7.2-1: the reference hides `$` topics from filters
//! starting with a wildcard, and every structure must agree with it.

use std::collections::{BTreeMap, BTreeSet};

use mqtt_topics::{
    Filter, Matches, RetainedStore, ShardedIndex, SharedFilter, TopicFilter, TopicIndex, TopicName,
};
use proptest::{collection::vec, prelude::*, sample::select};

/// Does `filter` match `topic`? Written from the spec's words, without cleverness.
fn reference(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.split_first(), t.split_first()) {
            (None, None) => true,
            (Some((&"#", _)), _) => true,
            (Some((&"+", fr)), Some((_, tr))) => go(fr, tr),
            (Some((fl, fr)), Some((tl, tr))) => fl == tl && go(fr, tr),
            _ => false,
        }
    }
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    go(&f, &t)
}

const NAME_LEVELS: [&str; 5] = ["", "a", "b", "$", "$a"];

fn topic() -> impl Strategy<Value = String> {
    vec(select(&NAME_LEVELS[..]), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        vec(select(&["", "a", "b", "$", "$a", "+", "+"][..]), 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("a filter is not empty", |f| !f.is_empty())
}

/// A subscription: filter, subscriber (0..4), shared group (none, "g" or "h").
fn subscription() -> impl Strategy<Value = (String, u8, Option<&'static str>)> {
    (
        filter(),
        0u8..4,
        prop_oneof![4 => Just(None), 1 => Just(Some("g")), 1 => Just(Some("h"))],
    )
}

fn as_filter<'a>(f: &'a str, group: Option<&'a str>) -> Filter<'a> {
    let filter = TopicFilter::new(f).unwrap();
    match group {
        None => Filter::Plain(filter),
        Some(group) => Filter::Shared(SharedFilter { group, filter }),
    }
}

/// What a lookup should find, from the subscriptions alive: per subscriber, the set of
/// values; per (group, filter), the members.
type Expected = (
    BTreeMap<u8, BTreeSet<usize>>,
    BTreeSet<(String, Vec<(u8, usize)>)>,
);

fn expected(subs: &BTreeMap<(String, u8, Option<&str>), usize>, t: &str) -> Expected {
    let mut plain: BTreeMap<u8, BTreeSet<usize>> = BTreeMap::new();
    let mut groups: BTreeMap<(&str, &str), Vec<(u8, usize)>> = BTreeMap::new();
    for ((f, k, g), v) in subs {
        if !reference(f, t) {
            continue;
        }
        match g {
            None => {
                plain.entry(*k).or_default().insert(*v);
            }
            Some(g) => groups.entry((g, f)).or_default().push((*k, *v)),
        }
    }
    let groups = groups
        .into_iter()
        .map(|((g, _), mut m)| {
            m.sort();
            (g.to_owned(), m)
        })
        .collect();
    (plain, groups)
}

fn found(m: &Matches<u8, usize>) -> Expected {
    let mut plain = BTreeMap::new();
    for s in m.subscribers() {
        let values: BTreeSet<usize> = s.values().copied().collect();
        assert_eq!(
            values.len(),
            s.values().len(),
            "a subscription reported twice"
        );
        assert!(
            plain.insert(*s.key(), values).is_none(),
            "a subscriber twice"
        );
    }
    let groups = m
        .shared()
        .map(|g| (g.name().to_owned(), g.members().to_vec()))
        .collect::<BTreeSet<_>>();
    assert_eq!(groups.len(), m.shared().len(), "a group reported twice");
    (plain, groups)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn direct_match_agrees(f in filter(), t in topic()) {
        let got = TopicFilter::new(&f).unwrap().matches(TopicName::new(&t).unwrap());
        prop_assert_eq!(got, reference(&f, &t));
    }

    /// Subscribe everything, look up every topic; remove some (with repeats and
    /// misses), look up again. The index, a sharded index and the reference agree.
    #[test]
    fn index_agrees(
        subs in vec((subscription(), any::<bool>()), 1..40),
        topics in vec(topic(), 1..12),
    ) {
        let mut index = TopicIndex::new();
        let sharded = ShardedIndex::with_shards(3, 2);
        let mut alive = BTreeMap::new();
        for (v, ((f, k, g), _)) in subs.iter().enumerate() {
            let old = alive.insert((f.clone(), *k, *g), v);
            prop_assert_eq!(index.subscribe(as_filter(f, *g), *k, v), old);
            prop_assert_eq!(sharded.subscribe(as_filter(f, *g), *k, v), old);
        }
        let mut m = Matches::new();
        let check = |index: &TopicIndex<u8, usize>, alive: &BTreeMap<_, _>, m: &mut Matches<u8, usize>| {
            prop_assert_eq!(index.len(), alive.len());
            prop_assert_eq!(sharded.len(), alive.len());
            for t in &topics {
                let want = expected(alive, t);
                index.matches(TopicName::new(t).unwrap(), m);
                prop_assert_eq!(&found(m), &want, "index, topic {}", t);
                sharded.matches(TopicName::new(t).unwrap(), m);
                prop_assert_eq!(&found(m), &want, "sharded, topic {}", t);
            }
            Ok(())
        };
        check(&index, &alive, &mut m)?;
        for ((f, k, g), remove) in &subs {
            if *remove {
                let old = alive.remove(&(f.clone(), *k, *g));
                prop_assert_eq!(index.unsubscribe(as_filter(f, *g), k), old);
                prop_assert_eq!(sharded.unsubscribe(as_filter(f, *g), k), old);
            }
        }
        check(&index, &alive, &mut m)?;
        for ((f, k, g), _) in &subs {
            index.unsubscribe(as_filter(f, *g), k);
        }
        prop_assert!(index.is_empty());
    }

    /// Store topics, look up filters; remove some, look up again.
    #[test]
    fn retained_agrees(
        topics in vec((topic(), any::<bool>()), 1..30),
        filters in vec(filter(), 1..12),
    ) {
        let mut store = RetainedStore::new();
        let mut alive = BTreeMap::new();
        for (v, (t, _)) in topics.iter().enumerate() {
            prop_assert_eq!(store.insert(TopicName::new(t).unwrap(), v), alive.insert(t.clone(), v));
        }
        let check = |store: &RetainedStore<usize>, alive: &BTreeMap<String, usize>| {
            prop_assert_eq!(store.len(), alive.len());
            for f in &filters {
                let mut got: Vec<_> = store
                    .matching(TopicFilter::new(f).unwrap())
                    .map(|r| (r.topic(), *r.value()))
                    .collect();
                got.sort();
                let want: Vec<_> = alive
                    .iter()
                    .filter(|(t, _)| reference(f, t))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(got, want, "filter {}", f);
            }
            Ok(())
        };
        check(&store, &alive)?;
        for (t, remove) in &topics {
            if *remove {
                prop_assert_eq!(store.remove(TopicName::new(t).unwrap()), alive.remove(t));
            }
        }
        check(&store, &alive)?;
    }

    /// Long filters over two letters, subscribed and unsubscribed in random order with
    /// lookups in between: chains of literal levels are merged into one node and split
    /// again (path compression), which must never change what matches or what `get`
    /// finds.
    #[test]
    fn deep_index_agrees(
        ops in vec((deep_filter(), 0u8..2, any::<bool>()), 1..60),
        topics in vec(deep_topic(), 1..10),
    ) {
        let mut index = TopicIndex::new();
        let mut alive = BTreeMap::new();
        let mut m = Matches::new();
        for (v, (f, k, add)) in ops.iter().enumerate() {
            let filter = as_filter(f, None);
            if *add {
                prop_assert_eq!(index.subscribe(filter, *k, v), alive.insert((f.clone(), *k, None), v));
            } else {
                prop_assert_eq!(index.unsubscribe(filter, k), alive.remove(&(f.clone(), *k, None)));
            }
            prop_assert_eq!(index.len(), alive.len());
            for ((f, k, _), v) in &alive {
                prop_assert_eq!(index.get(as_filter(f, None), k), Some(v));
            }
            for t in &topics {
                index.matches(TopicName::new(t).unwrap(), &mut m);
                prop_assert_eq!(&found(&m), &expected(&alive, t), "topic {}", t);
            }
        }
    }
}

fn deep_topic() -> impl Strategy<Value = String> {
    vec(select(&["a", "b", ""][..]), 1..8)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn deep_filter() -> impl Strategy<Value = String> {
    (
        vec(select(&["a", "a", "b", "", "+"][..]), 1..7),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels == [""] {
                levels.push("#");
            }
            levels.join("/")
        })
}
