//! The keep-alive deadlines of hibernating connections, kept in one ordered map and
//! served by one task.
//!
//! A tokio timer in every hibernating connection's task costs that task 112 bytes, and
//! the task allocation comes in steps of 128 bytes; an entry here costs about 40 bytes
//! (a B-tree slot) and only while the connection hibernates with a deadline. When a
//! deadline passes, the task [`run`] wakes the session's connection through
//! [`Shared::wake`]: the same signal a publisher or shutdown sends, so a hibernating
//! connection listens for its socket and that one signal only, and a parked one is
//! revived.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use mqtt_session::Instant;
use tokio::sync::Notify;

use crate::{sessions::SessionHandle, shared::Shared};

/// Deadlines, by time and then a number unique to each alarm, with the session to wake.
/// (The session's key would not do: during a takeover two connections of one session
/// may hibernate at once, and one must not cancel the other's alarm.)
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    due: Mutex<BTreeMap<(Instant, u64), Weak<SessionHandle>>>,
    next: AtomicU64,
    /// A deadline earlier than all others was set: the task sleeps too long.
    earlier: Notify,
}

impl Alarms {
    fn due(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), Weak<SessionHandle>>> {
        // A panic while holding the lock is a bug; the map is still usable.
        self.due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes `handle`'s connection task at `at` (session time), unless cancelled first
    /// with the number returned.
    pub(crate) fn set(&self, at: Instant, handle: &Arc<SessionHandle>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut due = self.due();
        due.insert((at, id), Arc::downgrade(handle));
        let first = due.first_key_value().map(|(&(t, _), _)| t);
        drop(due);
        if first == Some(at) {
            self.earlier.notify_one();
        }
        id
    }

    /// Forgets alarm `id`, set for `at`, if it has not gone off.
    pub(crate) fn cancel(&self, at: Instant, id: u64) {
        self.due().remove(&(at, id));
    }

    /// Takes the alarms due at `now` and wakes their sessions' connections with `wake`;
    /// returns when the next one is due.
    fn fire(&self, now: Instant, wake: impl Fn(&Arc<SessionHandle>)) -> Option<Instant> {
        let mut woken = Vec::new();
        let next = {
            let mut due = self.due();
            while let Some(entry) = due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                woken.push(entry.remove());
            }
            due.first_key_value().map(|(&(t, _), _)| t)
        };
        for handle in woken.iter().filter_map(Weak::upgrade) {
            // A permit, if the task is between two waits: it finds the deadline passed
            // when it looks next. A parked connection is revived.
            wake(&handle);
        }
        next
    }

    /// How many alarms are set (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due().len()
    }
}

/// Serves `shared.alarms` until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    let alarms = &shared.alarms;
    loop {
        let wake = match alarms.fire(shared.now(), |h| shared.wake(h)) {
            Some(at) => shared.deadline(at),
            None => tokio::time::Instant::now() + std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = alarms.earlier.notified() => {}
            () = &mut shutdown => return,
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
            let alarms = &shared.alarms;
            let wake = |h: &Arc<crate::sessions::SessionHandle>| shared.wake(h);
            alarms.set(Instant::from_millis(100), &a);
            let of_b = alarms.set(Instant::from_millis(100), &b);
            alarms.set(Instant::from_millis(300), &c);
            // Two alarms of one session at one time (a takeover) are two alarms.
            let other_of_c = alarms.set(Instant::from_millis(300), &c);
            alarms.cancel(Instant::from_millis(300), other_of_c);
            alarms.cancel(Instant::from_millis(100), of_b);
            assert_eq!(
                alarms.fire(Instant::from_millis(99), wake),
                Some(Instant::from_millis(100))
            );
            assert!(!woken(&a).await);
            assert_eq!(
                alarms.fire(Instant::from_millis(100), wake),
                Some(Instant::from_millis(300))
            );
            assert!(woken(&a).await);
            assert!(!woken(&b).await);
            assert!(!woken(&c).await);
            assert_eq!(alarms.len(), 1);
            // A session gone before its alarm is simply skipped.
            drop(c);
            shared.remove_session(&shared.session(&ByteStr::from_static("c")), 0);
            assert_eq!(alarms.fire(Instant::from_millis(400), wake), None);
            assert_eq!(alarms.len(), 0);
        });
    }
}
