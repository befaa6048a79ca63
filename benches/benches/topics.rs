//! mqtt-topics: a subscription index of one million subscriptions of realistic shapes.
//!
//! The workload, per device (500,000 of them, in 1,000 tenants): `tenant/+/device/{id}/#`
//! (a per-device backend) and one exact device topic `tenant/{t}/device/{id}/{leaf}`;
//! per tenant, `tenant/{t}/#`; and 2 × `#`, 100 × `+/+/status`, 8 shared
//! `$share/workers/tenant/+/device/+/telemetry`. A lookup of a device topic matches
//! about 5 subscriptions (4 to 6, plus the shared group for telemetry).
//!
//! Benchmarks:
//! - `match`: [`TopicIndex::matches`] (grouped by subscriber, cloned into a reused
//!   buffer) and [`TopicIndex::for_each_match`] (visitor), one thread.
//! - `update`: one subscribe and one unsubscribe against the full index.
//! - `sharded/lookups-under-updates/{1,2}`: [`ShardedIndex::matches`] on 1, then 2
//!   threads while a third thread applies subscribe/unsubscribe pairs.
//! - `retained`: streaming `tenant/{t}/#` from a million retained topics.
//!
//! It also prints, outside criterion, the build time and rate and the bytes per
//! subscription (a counting global allocator: live bytes after building, minus the
//! filter text, divided by the number of subscriptions).
#![allow(missing_docs)]
#![allow(clippy::print_stdout)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput};
use mqtt_codec::ProtocolVersion;
use mqtt_topics::{
    Filter, Matches, RetainedStore, ShardedIndex, TopicFilter, TopicIndex, TopicName,
};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DEVICES: usize = 500_000;
const TENANTS: usize = 1_000;
const LEAVES: [&str; 4] = ["cmd", "config", "status", "telemetry"];

/// What the broker would store per subscription: granted QoS, flags, subscription id.
#[derive(Clone, Copy, Debug)]
struct Sub {
    qos: u8,
    id: u32,
}

fn sub(k: u64) -> Sub {
    Sub {
        qos: (k % 3) as u8,
        id: k as u32,
    }
}

fn workload() -> Vec<(String, u64)> {
    let mut subs = Vec::with_capacity(2 * DEVICES + TENANTS + 110);
    for i in 0..DEVICES {
        let t = i % TENANTS;
        subs.push((format!("tenant/+/device/d{i:07}/#"), i as u64));
        subs.push((
            format!("tenant/t{t}/device/d{i:07}/{}", LEAVES[i % 4]),
            i as u64,
        ));
    }
    for t in 0..TENANTS {
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

/// Device topics in a scattered order (a multiplicative hash of the index), so that
/// lookups touch the whole index rather than a cached corner of it.
fn topics(n: usize) -> Vec<String> {
    (0..n)
        .map(|j| {
            let i = (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize % DEVICES;
            format!(
                "tenant/t{}/device/d{i:07}/{}",
                i % TENANTS,
                LEAVES[(i + j) % 4]
            )
        })
        .collect()
}

/// Subscriptions that are not in the workload, to add and remove.
fn churn(n: usize) -> Vec<String> {
    (0..n)
        .map(|j| {
            let i = DEVICES + j;
            if j % 2 == 0 {
                format!("tenant/+/device/d{i:07}/#")
            } else {
                format!("tenant/t{}/device/d{i:07}/status", j % TENANTS)
            }
        })
        .collect()
}

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let subs = workload();
    let text: usize = subs.iter().map(|(f, _)| f.len()).sum();

    let before = live_bytes();
    let start = Instant::now();
    let mut index = TopicIndex::new();
    for (f, k) in &subs {
        index.subscribe(filter(f), *k, sub(*k));
    }
    let took = start.elapsed();
    let bytes = (live_bytes() - before) as usize;
    report("TopicIndex", subs.len(), took, bytes, text);

    let before = live_bytes();
    let start = Instant::now();
    let sharded = ShardedIndex::new();
    for (f, k) in &subs {
        sharded.subscribe(filter(f), *k, sub(*k));
    }
    let took = start.elapsed();
    let bytes = (live_bytes() - before) as usize;
    report("ShardedIndex (16 shards)", subs.len(), took, bytes, text);

    let topics = topics(1 << 16);
    let names: Vec<TopicName<'_>> = topics.iter().map(|t| TopicName::new(t).unwrap()).collect();
    let mut m = Matches::new();
    let total: usize = names
        .iter()
        .map(|&t| {
            index.matches(t, &mut m);
            m.subscription_count() + m.shared().len()
        })
        .sum();
    println!(
        "topics: a lookup finds {:.2} subscriptions and shared groups on average",
        total as f64 / names.len() as f64
    );

    bench_match(&mut c, &index, &names);
    bench_update(&mut c, &mut index);
    drop(index);
    bench_sharded(&mut c, &sharded, &names);
    drop(sharded);
    bench_retained(&mut c);
    c.final_summary();
}

fn report(what: &str, n: usize, took: Duration, bytes: usize, text: usize) {
    println!(
        "topics: {what}: built {n} subscriptions in {:.2} s ({:.2} M/s); {bytes} bytes \
         allocated = {:.1} bytes per subscription, {:.1} beyond the {:.1} bytes of filter text",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64() / 1e6,
        bytes as f64 / n as f64,
        bytes.saturating_sub(text) as f64 / n as f64,
        text as f64 / n as f64,
    );
}

fn bench_match(c: &mut Criterion, index: &TopicIndex<u64, Sub>, names: &[TopicName<'_>]) {
    let mut g = c.benchmark_group("topics/match-1M");
    g.throughput(Throughput::Elements(1));
    let mut m = Matches::new();
    // `scattered`: 65,536 topics spread over all 500,000 devices, so most of what a
    // lookup reads comes from main memory or the last-level cache. `hot`: 1,024
    // topics, whose part of the index stays in the core's caches (a broker's busiest
    // topics).
    for (set, names) in [("scattered", names), ("hot", names.get(..1024).unwrap())] {
        let mut i = 0;
        g.bench_function(format!("matches/{set}"), |b| {
            b.iter(|| {
                let t = names[i & (names.len() - 1)];
                i += 1;
                index.matches(t, &mut m);
                // What a broker does with the result: one delivery per subscriber at
                // the highest QoS, carrying every subscription identifier.
                let mut acc = 0u64;
                for s in m.subscribers() {
                    let qos = s.values().map(|v| v.qos).max().unwrap_or(0);
                    acc += u64::from(qos) + s.values().map(|v| u64::from(v.id)).sum::<u64>();
                }
                black_box(acc)
            });
        });
        g.bench_function(format!("for_each_match/{set}"), |b| {
            b.iter(|| {
                let t = names[i & (names.len() - 1)];
                i += 1;
                let mut n = 0u32;
                index.for_each_match(t, |x| {
                    black_box(x);
                    n += 1;
                });
                n
            });
        });
    }
    g.finish();
}

fn bench_update(c: &mut Criterion, index: &mut TopicIndex<u64, Sub>) {
    let fresh = churn(1 << 16);
    let mut g = c.benchmark_group("topics/update-1M");
    // One subscribe and one unsubscribe per iteration.
    g.throughput(Throughput::Elements(2));
    let mut i = 0;
    g.bench_function("subscribe+unsubscribe", |b| {
        b.iter(|| {
            let f = filter(&fresh[i & (fresh.len() - 1)]);
            i += 1;
            index.subscribe(f, 7, sub(7));
            black_box(index.unsubscribe(f, &7))
        });
    });
    g.finish();
}

/// Lookups on `threads` threads, `iters` in all, while `updater` churns; the time is
/// the wall-clock time of the slowest thread.
fn bench_sharded(c: &mut Criterion, index: &ShardedIndex<u64, Sub>, names: &[TopicName<'_>]) {
    let fresh = churn(1 << 16);
    let stop = AtomicBool::new(false);
    let updates = AtomicU64::new(0);
    let mut g = c.benchmark_group("topics/sharded-1M/lookups-under-updates");
    g.throughput(Throughput::Elements(1));
    thread::scope(|s| {
        // The updater: subscribe + unsubscribe pairs, paced to about 100,000 updates
        // per second (a busy broker's churn), so it takes a fraction of a core.
        s.spawn(|| {
            let mut i = 0;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    let f = filter(&fresh[i & (fresh.len() - 1)]);
                    i += 1;
                    index.subscribe(f, 7, sub(7));
                    index.unsubscribe(f, &7);
                }
                updates.fetch_add(100, Ordering::Relaxed);
                let due = Duration::from_micros(updates.load(Ordering::Relaxed) * 10);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
        });
        let started = Instant::now();
        for threads in [1usize, 2] {
            g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &n| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(n as u64);
                    let start = Instant::now();
                    thread::scope(|s| {
                        for t in 0..n {
                            s.spawn(move || {
                                let mut m = Matches::new();
                                for i in (t * 7919..).take(per_thread as usize) {
                                    index.matches(names[i & (names.len() - 1)], &mut m);
                                    black_box(m.subscription_count());
                                }
                            });
                        }
                    });
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_thread * n as u64) as f64)
                });
            });
        }
        stop.store(true, Ordering::Relaxed);
        println!(
            "topics: the updater applied {:.0} updates/s during the sharded benchmarks",
            updates.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
        );
    });
    g.finish();
}

fn bench_retained(c: &mut Criterion) {
    let mut store = RetainedStore::new();
    let topics: Vec<String> = (0..DEVICES * 2)
        .map(|i| {
            format!(
                "tenant/t{}/device/d{:07}/{}",
                i % TENANTS,
                i / 2,
                LEAVES[i % 4]
            )
        })
        .collect();
    let start = Instant::now();
    for t in &topics {
        store.insert(TopicName::new(t).unwrap(), t.len());
    }
    println!(
        "topics: RetainedStore: stored {} topics in {:.2} s",
        store.len(),
        start.elapsed().as_secs_f64()
    );
    let mut g = c.benchmark_group("topics/retained-1M");
    let tenant = TopicFilter::new("tenant/t7/#").unwrap();
    let n = store.matching(tenant).count();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("stream tenant/t7/# ({n} topics)"), |b| {
        b.iter(|| store.matching(tenant).map(|r| *r.value()).sum::<usize>());
    });
    let all = TopicFilter::new("tenant/+/device/+/status").unwrap();
    let n = store.matching(all).count();
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function(
        format!("stream tenant/+/device/+/status ({n} topics)"),
        |b| {
            b.iter(|| store.matching(all).map(|r| *r.value()).sum::<usize>());
        },
    );
    g.finish();
}
