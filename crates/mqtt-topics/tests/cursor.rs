//! Resuming a retained-store iteration from a saved cursor yields exactly the entries
//! the uninterrupted iteration yields, whatever the batch size; a cursor taken before
//! the store changed shape is refused.

use mqtt_topics::{RetainedStore, TopicFilter, TopicName};
use proptest::prelude::*;

fn store(topics: &[String]) -> RetainedStore<usize> {
    let mut s = RetainedStore::new();
    for (i, t) in topics.iter().enumerate() {
        s.insert(TopicName::new(t).unwrap(), i);
    }
    s
}

fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("c")]
}

fn topic() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(prop_oneof![level(), Just("+")], 0..4),
        any::<bool>(),
    )
        .prop_map(|(l, hash)| {
            let mut f = l.join("/");
            if hash || f.is_empty() {
                f.push_str(if f.is_empty() { "#" } else { "/#" });
            }
            f
        })
}

proptest! {
    #[test]
    fn batches_yield_what_one_pass_yields(
        topics in proptest::collection::vec(topic(), 0..40),
        f in filter(),
        batch in 1usize..5,
    ) {
        let s = store(&topics);
        let filter = TopicFilter::new(&f).unwrap();
        let mut whole: Vec<usize> = s.matching(filter).map(|r| *r.value()).collect();
        let mut batched = Vec::new();
        let mut it = s.matching(filter);
        loop {
            let taken: Vec<usize> = it.by_ref().take(batch).map(|r| *r.value()).collect();
            batched.extend(&taken);
            let cursor = it.cursor();
            if taken.len() < batch {
                break;
            }
            it = s.resume(filter, cursor).expect("the store did not change");
        }
        whole.sort();
        batched.sort();
        prop_assert_eq!(whole, batched);
    }
}

#[test]
fn a_cursor_is_refused_after_a_topic_is_added_or_removed() {
    let topics: Vec<String> = ["a/1", "a/2", "a/3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut s = store(&topics);
    let filter = TopicFilter::new("a/#").unwrap();
    let mut it = s.matching(filter);
    it.next();
    let cursor = it.cursor();
    // Replacing a value keeps the shape: the cursor stays good.
    s.insert(TopicName::new("a/1").unwrap(), 9);
    assert!(s.resume(filter, cursor).is_some());
    // Another filter is refused.
    assert!(s.resume(TopicFilter::new("a/+").unwrap(), cursor).is_none());
    s.insert(TopicName::new("a/4").unwrap(), 4);
    assert!(s.resume(filter, cursor).is_none(), "added");
    let mut it = s.matching(filter);
    it.next();
    let cursor = it.cursor();
    s.remove(TopicName::new("a/2").unwrap());
    assert!(s.resume(filter, cursor).is_none(), "removed");
}

/// `iter` visits every entry, `$`-prefixed topics included, where `#` hides them.
#[test]
fn iter_visits_every_topic_dollar_ones_too() {
    let topics: Vec<String> = ["a", "a/b", "$SYS/x", "$app/y/z", "$", "b/$c"]
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let s = store(&topics);
    let mut all: Vec<String> = s.iter().map(|r| r.topic()).collect();
    all.sort();
    let mut expected = topics.clone();
    expected.sort();
    assert_eq!(all, expected);
    let hash = TopicFilter::new("#").unwrap();
    let mut visible: Vec<String> = s.matching(hash).map(|r| r.topic()).collect();
    visible.sort();
    assert_eq!(visible, ["a", "a/b", "b/$c"]);
}
