//! A latency histogram for the throughput scenarios: every delivery's delay counted in
//! log-linear buckets (64 per power of two, so a percentile is within 1.6 % of the
//! delay it stands for), in constant memory however long the run.
//!
//! The latency scenario keeps every delay and sorts them; a throughput run may deliver
//! millions a second for as long as `--duration` says, so it counts them instead.

/// Sub-buckets per power of two: the top `BITS` bits of a delay pick its bucket.
const BITS: u32 = 6;
const SUB: u64 = 1 << BITS;

/// Delays in nanoseconds, counted.
#[derive(Debug, Default, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// The bucket of `v`: exact below 2 × `SUB`, then `SUB` buckets per power of two.
fn bucket(v: u64) -> usize {
    let len = u64::BITS - v.leading_zeros();
    if len <= BITS + 1 {
        return v as usize;
    }
    let shift = len - BITS - 1;
    // v >> shift is in [SUB, 2 SUB): its top bit is implied by the shift.
    ((u64::from(shift) + 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// The middle of bucket `i`'s range of delays.
fn middle(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    low + (1u64 << shift) / 2
}

impl Histogram {
    /// Counts one delay of `ns` nanoseconds.
    pub(crate) fn record(&mut self, ns: u64) {
        let i = bucket(ns);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// Adds another histogram's counts to this one.
    pub(crate) fn merge(&mut self, other: &Self) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Delays counted.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The longest delay, in nanoseconds (exact, not bucketed).
    pub(crate) fn max_ns(&self) -> u64 {
        self.max
    }

    /// The delay that a fraction `q` (0 to 1) of the deliveries did not exceed, in
    /// nanoseconds; `None` when nothing was counted.
    pub(crate) fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // The rank of the delay sought, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(middle(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_within_two_percent() {
        let mut last = 0;
        for v in (0..20_000u64).chain((15..40).map(|s| (1u64 << s) + 12345)) {
            let i = bucket(v);
            assert!(i >= last, "bucket of {v} went back");
            last = i;
            let m = middle(i) as f64;
            assert!(
                (m - v as f64).abs() <= (v as f64 * 0.016).max(0.5),
                "{v} reads back as {m}"
            );
        }
        // The largest delay has a bucket too.
        assert!(bucket(u64::MAX) > bucket(u64::MAX / 2));
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ns(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let mut other = Histogram::default();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.len(), 1001);
        assert_eq!(h.max_ns(), 5_000_000);
        let p50 = h.quantile_ns(0.5).unwrap_or(0) as f64;
        let p99 = h.quantile_ns(0.99).unwrap_or(0) as f64;
        assert!((p50 - 501_000.0).abs() < 501_000.0 * 0.02, "p50 {p50}");
        assert!((p99 - 991_000.0).abs() < 991_000.0 * 0.02, "p99 {p99}");
        assert_eq!(h.quantile_ns(1.0), Some(5_000_000));
    }
}
