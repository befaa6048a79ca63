//! Write coalescing (`limits.coalesce_writes`): a subscriber fed a sustained stream of
//! small batches of QoS 0 messages writes at most about once per timer tick, instead of
//! once per batch.
//!
//! A connection writes what its session has as soon as it is signalled. When messages
//! come faster than the client reads them back, that is a small write (and a small
//! read at the client) every few dozen microseconds. Fan-out 1 -> 100 showed where
//! that leads: a client reading 100 sockets spends its time on read calls, publishes
//! in small bursts, and the broker, waking for each burst, writes small batches again;
//! a broker that routed more slowly wrote larger batches and cost less per delivery
//! (0.09 CPU s per million deliveries against 0.12-0.28). Waiting for the timer's next
//! tick once such a stream is seen makes the writes large whatever the speed, at up
//! to about 1.5 ms of added latency for that subscriber only.
//!
//! Written at once: a stream slower than one batch per [`STREAM_GAP`], messages one at
//! a time, batches already large, and sessions with QoS 1 or 2 messages outstanding,
//! which their client's acknowledgements pace (a client that waits for its messages'
//! delivery before sending more, as a benchmark's window does, would otherwise be held
//! to one window a millisecond). A wait ends early when the session's queue takes a
//! message or half of what may wait encoded has come (see `router::deliver_encoded`).

use std::time::Duration;

/// A signal less than this after the last write continues a stream.
const STREAM_GAP: Duration = Duration::from_micros(200);
/// Once writes wait, a signal less than this after the last write still continues the
/// stream: the client, reading larger writes, answers in larger and fewer bursts.
const ENGAGED_GAP: Duration = Duration::from_millis(2);
/// Small writes in a row, each followed within [`STREAM_GAP`] by the next signal,
/// before writes wait: a burst (a 1 ms tick's messages, a client's backlog) is not a
/// stream.
const STREAK: u8 = 8;
/// A write of fewer packets is small.
const SMALL: u64 = 32;
/// A write of this many packets, or [`LARGE_BYTES`], ends coalescing: its batches are
/// large on their own.
const LARGE: u64 = 256;
/// See [`LARGE`]: a write of fewer packets but this many bytes is not small either.
const LARGE_BYTES: usize = 16 * 1024;
/// How long a coalesced write waits; tokio's timer rounds it up to its next 1 ms tick.
pub(super) const WAIT: Duration = Duration::from_micros(500);

/// Whether a connection's next write waits for more: sans-IO, times as durations since
/// any fixed origin.
#[derive(Debug, Default)]
pub(super) struct Coalescing {
    /// When the last write was taken, and what it was.
    last_write: Option<(Duration, Size)>,
    /// Small writes in a row, each followed within [`STREAM_GAP`] by a signal.
    streak: u8,
    /// Writes wait (until a gap of [`ENGAGED_GAP`] in the stream, a large write, or
    /// one written at once).
    engaged: bool,
}

/// What a write was, for [`Coalescing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    /// One packet (a message wanted at once), or a session with QoS 1 or 2 messages
    /// outstanding: its client's acknowledgements pace it.
    AtOnce,
    /// Fewer than [`SMALL`] packets.
    Small,
    /// Between small and large.
    Medium,
    /// [`LARGE`] packets, or [`LARGE_BYTES`].
    Large,
}

impl Coalescing {
    /// Records a write of `packets` packets, `bytes` long, taken at `at`; `qos0_only`:
    /// the write and the session after it hold no QoS 1 or 2 message.
    pub(super) fn wrote(&mut self, at: Duration, packets: u64, bytes: usize, qos0_only: bool) {
        let size = if packets <= 1 || !qos0_only {
            Size::AtOnce
        } else if packets >= LARGE || bytes >= LARGE_BYTES {
            Size::Large
        } else if packets < SMALL {
            Size::Small
        } else {
            Size::Medium
        };
        self.last_write = Some((at, size));
    }

    /// The session signalled something to write at `at`: whether to wait [`WAIT`]
    /// before taking it.
    pub(super) fn should_wait(&mut self, at: Duration) -> bool {
        let Some((last, size)) = self.last_write else {
            return false;
        };
        let gap = if self.engaged {
            ENGAGED_GAP
        } else {
            STREAM_GAP
        };
        if matches!(size, Size::AtOnce | Size::Large) || at.saturating_sub(last) >= gap {
            self.streak = 0;
            self.engaged = false;
            return false;
        }
        if size == Size::Small {
            self.streak = self.streak.saturating_add(1);
        } else if !self.engaged {
            self.streak = 0;
        }
        self.engaged |= self.streak >= STREAK;
        self.engaged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Runs signals every `gap` µs, each followed by a write of `packets` of 30 bytes
    /// (QoS 0 only); returns the number of the first signal that waited, if any.
    fn first_wait(c: &mut Coalescing, from: u64, gap: u64, packets: u64, n: u64) -> Option<u64> {
        let mut at = from;
        let mut first = None;
        for i in 0..n {
            at += gap;
            if c.should_wait(us(at)) {
                first = first.or(Some(i));
                at += 1_000;
            }
            c.wrote(us(at), packets, 30 * packets as usize, true);
        }
        first
    }

    /// A coalescing one: eight small writes in a row, 50 µs apart.
    fn engaged() -> Coalescing {
        let mut c = Coalescing::default();
        c.wrote(us(0), 10, 300, true);
        assert_eq!(
            first_wait(&mut c, 0, 50, 10, 8),
            Some(u64::from(STREAK) - 1)
        );
        assert!(c.engaged);
        c
    }

    #[test]
    fn a_stream_of_small_writes_waits_after_a_streak() {
        let mut c = engaged();
        // Engaged, a signal 1.5 ms after the last write still continues the stream; a
        // longer gap ends it.
        let (last, _) = c.last_write.unwrap();
        assert!(c.should_wait(last + us(1_500)));
        assert!(!c.should_wait(last + us(2_500)));
        assert!(!c.engaged);
    }

    #[test]
    fn coalesced_writes_of_medium_size_keep_it_engaged() {
        let mut c = engaged();
        let mut at = 10_000;
        for _ in 0..10 {
            c.wrote(us(at), 80, 2_400, true);
            at += 50;
            assert!(c.should_wait(us(at)));
        }
    }

    #[test]
    fn a_large_write_ends_it() {
        // By count...
        let mut c = engaged();
        c.wrote(us(10_000), LARGE, 7_680, true);
        assert!(!c.should_wait(us(10_050)));
        // ... or by size.
        let mut c = engaged();
        c.wrote(us(10_000), 4, LARGE_BYTES, true);
        assert!(!c.should_wait(us(10_050)));
    }

    #[test]
    fn bursts_and_slow_streams_never_wait() {
        // A 1 ms tick's five messages, written one by one, then a pause: never a streak.
        let mut c = Coalescing::default();
        let mut at = 0;
        for _ in 0..100 {
            for _ in 0..5 {
                at += 20;
                assert!(!c.should_wait(us(at)));
                c.wrote(us(at), 1, 30, true);
            }
            at += 1_000;
        }
        // A write every 300 µs, small: not a stream.
        let mut c = Coalescing::default();
        c.wrote(us(0), 2, 60, true);
        assert_eq!(first_wait(&mut c, 0, 300, 2, 100), None);
        // Messages one at a time, however often: each is wanted at once.
        let mut c = Coalescing::default();
        c.wrote(us(0), 1, 30, true);
        assert_eq!(first_wait(&mut c, 0, 50, 1, 100), None);
        // Medium writes in quick succession (fan-in's): never engaged.
        let mut c = Coalescing::default();
        c.wrote(us(0), 100, 3_000, true);
        assert_eq!(first_wait(&mut c, 0, 50, 100, 100), None);
    }

    #[test]
    fn a_session_with_acknowledgements_outstanding_never_waits() {
        let mut c = Coalescing::default();
        let mut at = 0;
        for _ in 0..100 {
            at += 50;
            assert!(!c.should_wait(us(at)));
            c.wrote(us(at), 10, 300, false);
        }
        // Nor one that was coalescing.
        let mut c = engaged();
        c.wrote(us(10_000), 10, 300, false);
        assert!(!c.should_wait(us(10_050)));
    }

    #[test]
    fn the_first_signal_never_waits() {
        assert!(!Coalescing::default().should_wait(us(5)));
    }
}
