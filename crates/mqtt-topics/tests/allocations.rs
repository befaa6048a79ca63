//! Lookups allocate nothing once the caller's buffer has grown, and the index stays
//! within 200 bytes per subscription beyond the filter text.
//!
//! A counting global allocator makes both facts checked on every test run (the
//! benchmark in `benches/benches/topics.rs` measures the same at a million).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    hint::black_box,
};

use mqtt_codec::ProtocolVersion;
use mqtt_topics::{
    Filter, Matches, RetainedStore, ShardedIndex, TopicFilter, TopicIndex, TopicName,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize, allocation: bool) {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + usize::from(allocation)));
    let _ = LIVE_BYTES.try_with(|n| n.set(n.get() + bytes));
}

// SAFETY: defers to the system allocator; only counts calls on the current thread.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, true);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), false);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize, true);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

/// The realistic mix of the benchmark, scaled: per device, `tenant/+/device/{id}/#`
/// and one exact device topic; per tenant, `tenant/{t}/#`; a few `#`, `+/+/status`
/// and shared subscriptions.
fn workload(devices: usize) -> Vec<(String, u64)> {
    let tenants = (devices / 500).max(1);
    let leaves = ["cmd", "config", "status", "telemetry"];
    let mut subs = Vec::with_capacity(2 * devices + tenants + 110);
    for i in 0..devices {
        let t = i % tenants;
        subs.push((format!("tenant/+/device/d{i:07}/#"), i as u64));
        subs.push((
            format!("tenant/t{t}/device/d{i:07}/{}", leaves[i % 4]),
            i as u64,
        ));
    }
    for t in 0..tenants {
        subs.push((format!("tenant/t{t}/#"), 10_000_000 + t as u64));
    }
    for k in 0..2 {
        subs.push(("#".to_owned(), 20_000_000 + k));
    }
    for k in 0..100 {
        subs.push(("+/+/status".to_owned(), 30_000_000 + k));
    }
    for k in 0..8 {
        subs.push((
            "$share/workers/tenant/+/device/+/telemetry".to_owned(),
            40_000_000 + k,
        ));
    }
    subs
}

fn filter(s: &str) -> Filter<'_> {
    Filter::parse(s, ProtocolVersion::V5).unwrap()
}

#[test]
fn lookups_allocate_nothing() {
    let mut index = TopicIndex::new();
    let sharded = ShardedIndex::new();
    let mut retained = RetainedStore::new();
    for (f, k) in workload(2_000) {
        index.subscribe(filter(&f), k, (1u8, k as u32));
        sharded.subscribe(filter(&f), k, (1u8, k as u32));
    }
    let topics: Vec<String> = (0..2_000)
        .map(|i| format!("tenant/t{}/device/d{i:07}/telemetry", i % 4))
        .collect();
    for t in &topics {
        retained.insert(TopicName::new(t).unwrap(), ());
    }
    let mut m = Matches::new();
    // Grow the buffer to the largest result once.
    for t in &topics {
        index.matches(TopicName::new(t).unwrap(), &mut m);
    }
    let (n, found) = allocations_during(|| {
        let mut found = 0;
        for t in &topics {
            let t = TopicName::new(t).unwrap();
            index.matches(t, &mut m);
            found += m.subscription_count();
            sharded.matches(t, &mut m);
            found += m.subscription_count();
            index.for_each_match(t, |x| {
                black_box(x);
            });
        }
        found
    });
    assert!(found > 2 * topics.len());
    assert_eq!(n, 0, "allocations during {} lookups", topics.len());

    let (n, count) = allocations_during(|| {
        retained
            .matching(TopicFilter::new("tenant/+/device/+/telemetry").unwrap())
            .count()
    });
    assert_eq!((n, count), (0, 2_000));
}

#[test]
fn bytes_per_subscription() {
    let subs = workload(100_000);
    let text: usize = subs.iter().map(|(f, _)| f.len()).sum();
    let before = LIVE_BYTES.with(Cell::get);
    let mut index = TopicIndex::new();
    for (f, k) in &subs {
        index.subscribe(filter(f), *k, (1u8, *k as u32));
    }
    let bytes = (LIVE_BYTES.with(Cell::get) - before) as usize;
    let per_sub = bytes.saturating_sub(text) as f64 / subs.len() as f64;
    assert_eq!(index.len(), subs.len());
    eprintln!(
        "{} subscriptions: {bytes} bytes allocated, {text} bytes of filter text, \
         {per_sub:.1} bytes per subscription beyond the text",
        subs.len()
    );
    assert!(
        per_sub <= 200.0,
        "{per_sub:.1} bytes per subscription beyond the filter text"
    );
    // Removing everything gives the memory back, except the arena's chunks and the
    // hash table (kept for reuse).
    for (f, k) in &subs {
        index.unsubscribe(filter(f), k);
    }
    assert!(index.is_empty());
}
