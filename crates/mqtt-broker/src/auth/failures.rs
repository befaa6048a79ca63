//! Repeated authentication failures from one address are answered more and more
//! slowly: the n-th failure in a row waits [`delay`] before its CONNACK (none for the
//! first, then 100 ms, doubling, at most 5 s), so guessing passwords over one address
//! gets slow while a mistyped password costs nothing.
//!
//! The table is bounded: at most [`CAPACITY`] addresses (IPv6 ones by their /64, what
//! one host is usually given), each forgotten [`FORGET_AFTER`] after its last failure;
//! when it is full, the eighth of it that failed longest ago is forgotten at once (about
//! 64 bytes an address: well under a megabyte). A success does not clear an address:
//! behind one NAT, a user who knows one password must not reset the count of someone
//! guessing another.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// Addresses the table keeps at most.
pub(crate) const CAPACITY: usize = 10_000;
/// How long an address is remembered after its last failure.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(300);
/// The wait of the second failure in a row; each one after doubles it.
const BASE: Duration = Duration::from_millis(100);
/// The longest wait.
const MAX: Duration = Duration::from_secs(5);

/// How long the `n`-th failure in a row (from 1) waits before its CONNACK.
pub(crate) fn delay(n: u32) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        // 2^(n-2) steps of BASE; past 2^6 the cap applies anyway.
        n => BASE.saturating_mul(1 << (n - 2).min(16)).min(MAX),
    }
}

/// One host: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Host {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Failures in a row, none of them more than `FORGET_AFTER` after the one before.
    count: u32,
    last: Instant,
}

/// Recent authentication failures by address (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct Failures {
    table: Mutex<HashMap<Host, Entry>>,
}

impl Failures {
    /// Counts a failure from `ip` at `now`, and says how long to wait before answering.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let host = Host::from(ip);
        if table.len() >= CAPACITY && !table.contains_key(&host) {
            make_room(&mut table, now);
        }
        let entry = table.entry(host).or_insert(Entry {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(entry.last) > FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        delay(entry.count)
    }

    /// How many addresses the table holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Forgets what is stale, and if that is not enough, the eighth of the table that
/// failed longest ago: the next CAPACITY / 8 new addresses then find room at once.
fn make_room(table: &mut HashMap<Host, Entry>, now: Instant) {
    table.retain(|_, e| now.saturating_duration_since(e.last) <= FORGET_AFTER);
    if table.len() < CAPACITY {
        return;
    }
    let mut lasts: Vec<Instant> = table.values().map(|e| e.last).collect();
    let (_, cutoff, _) = lasts.select_nth_unstable(CAPACITY / 8);
    let cutoff = *cutoff;
    table.retain(|_, e| e.last > cutoff);
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn delays_double_from_the_second_failure_up_to_the_cap() {
        let ms = |n| delay(n).as_millis();
        assert_eq!(
            (1..=9).map(ms).collect::<Vec<_>>(),
            [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn counts_per_host_and_forgets() {
        let f = Failures::default();
        let t0 = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(f.failed(a, t0), Duration::ZERO);
        assert_eq!(f.failed(a, t0), Duration::from_millis(100));
        assert_eq!(f.failed(b, t0), Duration::ZERO);
        assert_eq!(f.failed(a, t0), Duration::from_millis(200));
        // Long after: a fresh start.
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(f.failed(a, later), Duration::ZERO);
        // One IPv6 /64 is one host; IPv4-mapped addresses are their IPv4 one.
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        assert_eq!(f.failed(v6(1), t0), Duration::ZERO);
        assert_eq!(f.failed(v6(2), t0), Duration::from_millis(100));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 2).to_ipv6_mapped());
        assert_eq!(f.failed(mapped, t0), Duration::from_millis(100));
    }

    #[test]
    fn the_table_stays_bounded() {
        let f = Failures::default();
        let t0 = Instant::now();
        let many = CAPACITY as u32 * 3;
        for i in 0..many {
            let at = t0 + Duration::from_millis(u64::from(i));
            f.failed(IpAddr::V4(Ipv4Addr::from(i)), at);
            assert!(f.len() <= CAPACITY);
        }
        // The newest are kept: the last address fails a second time as such.
        let last = IpAddr::V4(Ipv4Addr::from(many - 1));
        let at = t0 + Duration::from_millis(u64::from(many));
        assert_eq!(f.failed(last, at), Duration::from_millis(100));
    }
}
