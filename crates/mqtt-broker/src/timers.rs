//! The broker's timers: every deadline that belongs to no active connection, in one
//! ordered map served by one task ([`run`]).
//!
//! A deadline is one of three kinds ([`Kind`]):
//! - the keep-alive of a hibernating or parked connection (or the end of a new
//!   connection's grace): [`run`] wakes the session's connection through
//!   [`Shared::wake`], the same signal a publisher or shutdown sends, so a hibernating
//!   connection listens for its socket and that one signal only, and a parked one is
//!   revived;
//! - the timers of a session left without a connection (the will delay and the session
//!   expiry): [`run`] publishes the will and forgets the expired session ([`offline`]),
//!   and a new connection for the Client Identifier cancels them;
//! - the next expiry of a retained message: the store is purged, in a task of its own
//!   (it scans the store), at the earliest expiry but at most once per
//!   [`PURGE_INTERVAL`], and never while no retained message has an expiry.
//!
//! A tokio timer costs its task 112 bytes, and the task allocation comes in steps of
//! 128 bytes; a session without a connection would cost a task of its own (some 500
//! bytes) just to sleep until its expiry. An entry here costs about 40 bytes (a
//! 24-byte B-tree slot, in nodes partly full), and only while its deadline is pending:
//! a broker with a million offline sessions has a million entries, not a million
//! tasks (measured in `tests/memory.rs`: 847 bytes per such session with a task, 380
//! with an entry).
//!
//! The map's lock is the innermost: it is taken under a session's lock (a connection
//! parking, a session released), never the other way round, and what a deadline is for
//! is done after it is released.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use mqtt_codec::Will;
use mqtt_session::{Duration, Event, Instant};
use tokio::sync::Notify;

use crate::{
    connection::will_message,
    sessions::{SessionCell, SessionHandle},
    shared::Shared,
};

/// The retained store is purged at most this often: each purge scans it, and expiries
/// spread over time would otherwise cost a scan each. (Delivery skips an expired
/// message anyway; the purge only bounds memory.)
pub(crate) const PURGE_INTERVAL: Duration = Duration::from_secs(5);

/// How many deadlines the task takes out of the map at once before it lets others in:
/// many sessions may expire at the same millisecond.
const BATCH: usize = 1024;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Wake a hibernating or parked connection of the session. Numbered, not keyed by
    /// session: during a takeover two connections of one session may hibernate at once,
    /// and one must not cancel the other's alarm.
    Alarm,
    /// Run the timers of the session without a connection, keyed by the session's key:
    /// a session has one such deadline at a time.
    Offline,
    /// Purge the retained messages that have expired.
    Retained,
}

/// What a deadline is for and which one it is, beside its time in the map's key: the
/// [`Kind`] in the top two bits, an alarm number or a session key (counters that never
/// get there) in the others. Packed, an entry (time, this, session) is 24 bytes: every
/// parked connection has one, and so does every session without a connection that
/// will expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer(u64);

impl Timer {
    const SHIFT: u32 = 62;
    const NUMBER: u64 = (1 << Self::SHIFT) - 1;
    const RETAINED: Self = Self(2 << Self::SHIFT);

    fn alarm(id: u64) -> Self {
        Self(id & Self::NUMBER)
    }

    fn offline(session: u64) -> Self {
        Self((1 << Self::SHIFT) | (session & Self::NUMBER))
    }

    fn kind(self) -> Kind {
        match self.0 >> Self::SHIFT {
            0 => Kind::Alarm,
            1 => Kind::Offline,
            _ => Kind::Retained,
        }
    }
}

/// The deadlines, by time and what they are for, each with its session (none for the
/// retained purge).
#[derive(Debug, Default)]
struct Due {
    map: BTreeMap<(Instant, Timer), Weak<SessionHandle>>,
    /// When the retained purge is set for, if it is.
    purge_at: Option<Instant>,
    /// Not before: [`PURGE_INTERVAL`] after the last purge began.
    purge_floor: Instant,
}

/// The timer service's state: see the module's documentation.
#[derive(Debug)]
pub(crate) struct Timers {
    due: Mutex<Due>,
    /// The number of the next alarm.
    next: AtomicU64,
    /// `Due::purge_at` in milliseconds (`u64::MAX` for none), read without the lock by
    /// [`Timers::purge_retained_by`]: a retained message that expires after the purge
    /// already set takes no lock.
    purge_at: AtomicU64,
    /// A deadline earlier than all others was set: the task sleeps too long.
    earlier: Notify,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            due: Mutex::default(),
            next: AtomicU64::new(0),
            purge_at: AtomicU64::new(u64::MAX),
            earlier: Notify::new(),
        }
    }
}

impl Timers {
    fn due(&self) -> MutexGuard<'_, Due> {
        // A panic while holding the lock is a bug; the map is still usable.
        self.due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a deadline, and tells the task if it is now the first.
    fn set(&self, due: &mut Due, at: Instant, timer: Timer, handle: Weak<SessionHandle>) {
        due.map.insert((at, timer), handle);
        if due
            .map
            .first_key_value()
            .is_some_and(|(&(t, _), _)| t == at)
        {
            self.earlier.notify_one();
        }
    }

    /// Wakes `handle`'s connection at `at` (session time), unless cancelled first with
    /// the number returned ([`Timers::cancel_alarm`]).
    pub(crate) fn alarm(&self, at: Instant, handle: &Arc<SessionHandle>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) & Timer::NUMBER;
        self.set(
            &mut self.due(),
            at,
            Timer::alarm(id),
            Arc::downgrade(handle),
        );
        id
    }

    /// Forgets alarm `id`, set for `at`, if it has not gone off.
    pub(crate) fn cancel_alarm(&self, at: Instant, id: u64) {
        self.due().map.remove(&(at, Timer::alarm(id)));
    }

    /// Runs the timers of `handle`'s session, which has no connection, at `at` (see
    /// [`offline`]). Called under the session's lock.
    fn offline_at(&self, at: Instant, handle: &Arc<SessionHandle>) {
        let timer = Timer::offline(handle.key);
        self.set(&mut self.due(), at, timer, Arc::downgrade(handle));
    }

    /// A new connection takes `cell`'s session, which has none: its timers (will delay,
    /// expiry) stop, a delayed will with them (5.0 [MQTT-3.1.2-8]). Call it under the
    /// session's lock, before the session learns of the new connection: the deadline
    /// set is the one the session still reports. (One missed, which a firing may have
    /// taken out of the map already, does nothing when it goes off: the session has a
    /// connection by then, or, if that one has ended too, timers of its own that are
    /// not due.)
    pub(crate) fn cancel_offline(&self, cell: &SessionCell, session: u64) {
        if cell.session.is_connected() {
            return;
        }
        if let Some(at) = cell.session.poll_timeout() {
            self.due().map.remove(&(at, Timer::offline(session)));
        }
    }

    /// A retained message expires at `at`: the store is purged then, or at the purge
    /// already set if that is earlier, and not within [`PURGE_INTERVAL`] of the last
    /// purge.
    pub(crate) fn purge_retained_by(&self, at: Instant) {
        if self.purge_at.load(Ordering::Acquire) <= at.as_millis() {
            return;
        }
        let mut due = self.due();
        let at = at.max(due.purge_floor);
        match due.purge_at {
            Some(set) if set <= at => return,
            Some(set) => {
                due.map.remove(&(set, Timer::RETAINED));
            }
            None => {}
        }
        due.purge_at = Some(at);
        self.purge_at.store(at.as_millis(), Ordering::Release);
        self.set(&mut due, at, Timer::RETAINED, Weak::new());
    }

    /// Takes at most `limit` deadlines due at `now`, in order; also returns when the
    /// next one is due.
    fn take_due(
        &self,
        now: Instant,
        limit: usize,
    ) -> (Vec<(Timer, Weak<SessionHandle>)>, Option<Instant>) {
        let mut taken = Vec::new();
        let mut due = self.due();
        while taken.len() < limit {
            let Some(entry) = due.map.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let ((_, timer), handle) = entry.remove_entry();
            if timer == Timer::RETAINED {
                due.purge_at = None;
                due.purge_floor = now + PURGE_INTERVAL;
                self.purge_at.store(u64::MAX, Ordering::Release);
            }
            taken.push((timer, handle));
        }
        let next = due.map.first_key_value().map(|(&(t, _), _)| t);
        (taken, next)
    }

    /// How many deadlines are set (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due().map.len()
    }
}

/// Does what the deadlines due at `now` are for (at most [`BATCH`] of them); returns
/// when the next one is due.
fn fire(shared: &Arc<Shared>, now: Instant) -> Option<Instant> {
    let (taken, next) = shared.timers.take_due(now, BATCH);
    for (timer, handle) in taken {
        match timer.kind() {
            Kind::Alarm => {
                if let Some(handle) = handle.upgrade() {
                    // A permit, if the task is between two waits: it finds the deadline
                    // passed when it looks next. A parked connection is revived.
                    shared.wake(&handle);
                }
            }
            Kind::Offline => {
                if let Some(handle) = handle.upgrade() {
                    offline(shared, &handle, None);
                }
            }
            Kind::Retained => {
                // A scan of the whole store: not on this task, which the other
                // deadlines wait on.
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    if let Some(at) = shared.purge_expired_retained() {
                        shared.timers.purge_retained_by(at);
                    }
                });
            }
        }
    }
    next
}

/// Serves `shared.timers` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    loop {
        if *shared.shutdown.borrow() {
            return;
        }
        let now = shared.now();
        let wake = match fire(&shared, now) {
            // More were due than one batch takes.
            Some(at) if at <= now => {
                tokio::task::yield_now().await;
                continue;
            }
            Some(at) => shared.deadline(at),
            None => tokio::time::Instant::now() + std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = shared.timers.earlier.notified() => {}
            () = &mut shutdown => return,
        }
    }
}

/// Runs the timers of `handle`'s session, left without a connection (by connection
/// `released`, if given): the will is published once its delay has passed, the session
/// is forgotten once it expires, and the next of these deadlines goes into the map.
/// Nothing if a new connection has taken the session meanwhile (its generation is not
/// `released`; it has a connection), or it is gone. Called when the connection is
/// released (for what is due at once: a will without a delay) and then by [`run`].
///
/// A deadline that a new connection could not take out of the map (it was being
/// fired) may find the session without a connection again, left by a later one: it
/// runs the timers of that one, which does nothing before they are due.
pub(crate) fn offline(shared: &Shared, handle: &Arc<SessionHandle>, released: Option<u64>) {
    let (work, generation) = {
        let mut cell = handle.lock();
        let generation = cell.generation;
        if cell.gone || cell.session.is_connected() || released.is_some_and(|g| g != generation) {
            return;
        }
        let now = shared.now();
        if cell.session.poll_timeout().is_some_and(|at| now >= at) {
            cell.session.handle_timeout(now);
        }
        let work = drain(&mut cell);
        if let Some(at) = cell.session.poll_timeout() {
            shared.timers.offline_at(at, handle);
        }
        (work, generation)
    };
    work.act(shared, handle, generation);
}

/// What a session without a connection has left to do once its lock is released.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Offline {
    /// Wills due, to publish.
    wills: Vec<Will>,
    /// The session expired: it is forgotten.
    expired: bool,
}

/// Takes the events of a session without a connection, under its lock: the
/// shared-subscription messages it dropped are settled there; its will and its expiry
/// are left to [`Offline::act`]. Called when its deadline passes ([`offline`]) and when
/// it is woken ([`Shared::wake`]: a delivery may have dropped a queued QoS 0 message to
/// make room, and its event would wait there otherwise). Only [`offline`] makes a will
/// or an expiry due, and takes them at once; a wake-up finds them only if a stray
/// timeout of a connection that was taken over made one due, and acts on it the same.
pub(crate) fn drain(cell: &mut SessionCell) -> Offline {
    let mut work = Offline::default();
    while let Some(event) = cell.session.poll_event() {
        match event {
            Event::Will(will) => work.wills.push(*will),
            Event::SessionExpired => work.expired = true,
            Event::Dropped { id, .. } => cell.settle_shared(&[id]),
            _ => {}
        }
    }
    work
}

impl Offline {
    /// Publishes the wills, then forgets the session if it expired (unless a connection
    /// later than `generation` has it by then).
    pub(crate) fn act(self, shared: &Shared, handle: &Arc<SessionHandle>, generation: u64) {
        if !self.wills.is_empty() {
            let mut routes = crate::router::Routes::default();
            for will in self.wills {
                let now = shared.now();
                shared.route(handle.key, will_message(will), &mut routes, now);
            }
        }
        if self.expired {
            shared.remove_session(handle, generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use mqtt_codec::ByteStr;
    use mqtt_session::Instant;

    use crate::{Config, shared::Shared};

    /// Whether `handle`'s task would be woken (a permit is waiting).
    async fn woken(handle: &crate::sessions::SessionHandle) -> bool {
        tokio::time::timeout(Duration::ZERO, handle.notify.notified())
            .await
            .is_ok()
    }

    #[test]
    fn due_alarms_wake_their_session_and_cancelled_ones_do_not() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared::new(Config::default(), Default::default()));
            let a = shared.session(&ByteStr::from_static("a"));
            let b = shared.session(&ByteStr::from_static("b"));
            let c = shared.session(&ByteStr::from_static("c"));
            let timers = &shared.timers;
            let fire = |ms| super::fire(&shared, Instant::from_millis(ms));
            timers.alarm(Instant::from_millis(100), &a);
            let of_b = timers.alarm(Instant::from_millis(100), &b);
            timers.alarm(Instant::from_millis(300), &c);
            // Two alarms of one session at one time (a takeover) are two alarms.
            let other_of_c = timers.alarm(Instant::from_millis(300), &c);
            timers.cancel_alarm(Instant::from_millis(300), other_of_c);
            timers.cancel_alarm(Instant::from_millis(100), of_b);
            assert_eq!(fire(99), Some(Instant::from_millis(100)));
            assert!(!woken(&a).await);
            assert_eq!(fire(100), Some(Instant::from_millis(300)));
            assert!(woken(&a).await);
            assert!(!woken(&b).await);
            assert!(!woken(&c).await);
            assert_eq!(timers.len(), 1);
            // A session gone before its alarm is simply skipped.
            drop(c);
            shared.remove_session(&shared.session(&ByteStr::from_static("c")), 0);
            assert_eq!(fire(400), None);
            assert_eq!(timers.len(), 0);
        });
    }

    /// The retained purge is set for the earliest expiry, moved earlier by an earlier
    /// one, left alone by later ones, and kept PURGE_INTERVAL after the last purge.
    #[test]
    fn the_retained_purge_is_set_for_the_earliest_expiry() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared::new(Config::default(), Default::default()));
            let timers = &shared.timers;
            let ms = Instant::from_millis;
            timers.purge_retained_by(ms(9_000));
            timers.purge_retained_by(ms(3_000));
            timers.purge_retained_by(ms(4_000));
            assert_eq!(timers.len(), 1);
            assert_eq!(super::fire(&shared, ms(2_999)), Some(ms(3_000)));
            assert_eq!(super::fire(&shared, ms(3_000)), None);
            // Within PURGE_INTERVAL of that purge: not before its end.
            timers.purge_retained_by(ms(4_000));
            assert_eq!(super::fire(&shared, ms(7_999)), Some(ms(8_000)));
            timers.purge_retained_by(ms(20_000));
            assert_eq!(timers.len(), 1);
            assert_eq!(super::fire(&shared, ms(8_000)), None);
        });
    }

    /// A retained message with an expiry leaves the store once expired, by the timer
    /// service's purge; one without stays.
    #[test]
    fn expired_retained_messages_are_purged_by_the_service() {
        use bytes::Bytes;
        use mqtt_codec::QoS;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared::new(Config::default(), Default::default()));
            tokio::spawn(super::run(Arc::clone(&shared)));
            let message = |topic, expiry| {
                let mut m = mqtt_session::Message::new(
                    ByteStr::from_static(topic),
                    Bytes::from_static(b"r"),
                    QoS::AtMostOnce,
                );
                m.retain = true;
                m.properties.message_expiry_interval = expiry;
                m
            };
            shared.retain(&message("stays", None)).unwrap();
            shared.retain(&message("short", Some(1))).unwrap();
            shared.retain(&message("long", Some(60))).unwrap();
            assert_eq!(shared.retained_count(), 3);
            assert_eq!(shared.timers.len(), 1, "one purge, at the earliest expiry");
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            assert_eq!(shared.retained_count(), 2);
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(shared.retained_count(), 1);
            assert_eq!(shared.timers.len(), 0, "nothing left to expire");
        });
    }
}
