//! What outlives the process: the [`Store`] seam that a durable store implements, and
//! today's [`MemoryStore`], which keeps nothing.
//!
//! The broker's live state stays in memory (the session registry, the subscription
//! index, the retained-message shards) and is the source of truth while it runs. A
//! [`Store`] sits beside it, as a persistence interface: the broker tells it each
//! durable change as it takes effect, and reads everything back once, at start, before
//! the listeners open ([`Store::load`]).
//!
//! # What the broker tells it
//! - **Retained messages** ([`Store::retain`]): each one set, replaced or deleted, by a
//!   retained PUBLISH, a retained will or a peer's message ([`crate::Broker::publish`]),
//!   and each one that expired and was purged. Not the broker's own `$SYS/` topics, which
//!   it publishes again every interval.
//! - **Persistent sessions**, those that outlive their connection (3.x Clean Session 0,
//!   5.0 Session Expiry Interval above 0) ([`Store::save_session`],
//!   [`Store::remove_session`]): written when the session is created or replaced, when
//!   its subscriptions change, and when a connection attaches to it or leaves it (the
//!   record then says when the session expires); removed when it ends (it expired, a
//!   Clean Start replaced it with a session that ends with its connection, or the
//!   client's DISCONNECT set its expiry to 0). A session that ends with its connection
//!   costs the store nothing.
//!
//! - **What a persistent session holds** ([`Store::session_changed`]): it is marked,
//!   and the store exports it when it writes next ([`LiveSession::export`]): queued
//!   messages, QoS 1 and 2 messages in flight, QoS 2 packet identifiers awaiting
//!   PUBREL, its will.
//!
//! # Order and locks
//! The store is called with the lock held that orders the change it is told about:
//! the session's (and the registry's, when a session ends), or the retained shard's.
//! So it sees each session's and each topic's changes in the order they took effect,
//! and a store that applies them in the order it is called (a queue drained by its own
//! thread) never lets an older state overwrite a newer one. The price is that every
//! method must return at once: queue the write, do the I/O elsewhere, never block on
//! it, and never call back into the broker.
//!
//! # Failures
//! A retained PUBLISH whose write fails is refused: not retained, not routed, and
//! answered with 0x80 (Unspecified error) in 5.0 PUBACK / PUBREC (3.x clients are
//! acknowledged regardless, [MQTT-3.3.5-2]). A SUBSCRIBE whose write fails gets 0x80
//! for every filter it would have granted (3.1.1: 0x80 Failure), and neither the
//! session nor the subscription index changes. Other writes (a connection attaching or
//! leaving, an UNSUBSCRIBE, a session ending, a retained will) have nobody to tell:
//! they take effect in memory, the failure is logged, and a session's record is
//! written again at its next change. A failed [`Store::load`] stops the broker from
//! starting.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use mqtt_codec::{ByteStr, ProtocolVersion, QoS};
use mqtt_session::{DropReason, Message, MessageId, ServerSession, SubscriptionRecord};
use tracing::{info, warn};

use crate::{
    sessions::{SessionCell, SessionHandle},
    shared::Shared,
};

/// Where retained messages and persistent sessions are kept so that they outlive the
/// process: the seam a durable store implements (see the [module docs](self) for what
/// the broker tells it, when, and under which locks).
///
/// # Example
/// A store that keeps retained messages in a map it shares, and no sessions: a broker
/// started again with the same store finds them.
///
/// ```
/// use std::{collections::BTreeMap, sync::{Arc, Mutex}};
///
/// use mqtt_broker::{
///     Backends,
///     store::{RetainedRecord, Store, StoreError, Stored, SessionRecord},
/// };
///
/// #[derive(Debug, Default)]
/// struct Shelf(Arc<Mutex<BTreeMap<String, RetainedRecord>>>);
///
/// impl Store for Shelf {
///     fn load(&self) -> Result<Stored, StoreError> {
///         let mut stored = Stored::default();
///         stored.retained = self.0.lock().map_err(|_| StoreError::new("poisoned"))?
///             .values().cloned().collect();
///         Ok(stored)
///     }
///
///     fn retain(&self, topic: &str, message: Option<&RetainedRecord>) -> Result<(), StoreError> {
///         let mut shelf = self.0.lock().map_err(|_| StoreError::new("poisoned"))?;
///         match message {
///             Some(m) => shelf.insert(topic.to_owned(), m.clone()),
///             None => shelf.remove(topic),
///         };
///         Ok(())
///     }
///
///     fn save_session(&self, _: &SessionRecord) -> Result<(), StoreError> {
///         Ok(())
///     }
///
///     fn remove_session(&self, _: &str) -> Result<(), StoreError> {
///         Ok(())
///     }
/// }
///
/// let backends = Backends {
///     store: Box::new(Shelf::default()),
///     ..Backends::default()
/// };
/// // `mqtt_broker::Broker::start_with(config, backends)` starts a broker with it.
/// # drop(backends);
/// ```
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Everything kept: retained messages and persistent sessions, read once when the
    /// broker starts, before its listeners open. Records whose deadline has passed are
    /// skipped (and expired sessions removed). An error stops the broker from starting;
    /// the store's `Debug` form names it in the error, so keep that short (a path, not
    /// the contents).
    fn load(&self) -> Result<Stored, StoreError>;

    /// A retained message on `topic` was set or replaced (`Some`), or deleted (`None`).
    /// An error refuses the PUBLISH that retained it (see the [module docs](self)).
    fn retain(&self, topic: &str, message: Option<&RetainedRecord>) -> Result<(), StoreError>;

    /// A persistent session was created or changed: `session` replaces whatever was kept
    /// for its client identifier. An error on a SUBSCRIBE refuses its filters.
    fn save_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The persistent session of `client_id` ended: forget it.
    fn remove_session(&self, client_id: &str) -> Result<(), StoreError>;

    /// Whether anything written here outlives the process. A store that says `false`
    /// (as [`MemoryStore`] does) is only asked to [`load`](Self::load): the broker then
    /// builds no record and makes no call for it on any path.
    fn is_durable(&self) -> bool {
        true
    }

    /// What a persistent session holds (queued messages, QoS 1/2 in flight, QoS 2
    /// packet identifiers awaiting PUBREL, its will) changed: the store exports
    /// `session` when it writes next ([`LiveSession::export`]), once however many times
    /// it was told. Called with the session locked; must only queue. The default keeps
    /// nothing.
    fn session_changed(&self, session: Arc<dyn LiveSession>) {
        let _ = session;
    }

    /// Holds the store's next batch open while the caller makes changes that must be
    /// committed together or not at all (the copies of an inbound QoS 2 message and its
    /// publisher's packet identifier): the store takes no batch and exports no session
    /// while a guard lives. Held briefly, never across an await, and taken before any
    /// session's lock. `None` (the default): the store has no batches.
    fn group(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        None
    }

    /// A ticket for everything told so far: covered once [`Commits::committed`] reaches
    /// it. The default is always covered.
    fn ticket(&self) -> Ticket {
        Ticket(0)
    }

    /// The commits to wait for before acknowledging a message that must be kept
    /// (`sync` mode): `None` if acknowledgements do not wait (the default, and `batch`
    /// mode).
    fn commits(&self) -> Option<tokio::sync::watch::Receiver<Commits>> {
        None
    }

    /// Whether the store keeps the messages a persistent session has no room for in
    /// memory ([`Store::page_out`]), so that a long backlog lives on disk only. The
    /// default: no, such messages are dropped by the overflow policy.
    fn pages(&self) -> bool {
        false
    }

    /// Keeps `record`, a message for the persistent session of `client_id` that does
    /// not fit its in-memory window, on disk only: written with the next commit (a
    /// [`Ticket`] taken afterwards covers it) and handed back, in identifier order, when
    /// the session asks with [`Store::page_in`]. Called with the session locked; must
    /// only queue. The default refuses: the store does not page.
    fn page_out(&self, client_id: &str, record: QueuedRecord) -> Result<(), StoreError> {
        let _ = (client_id, record);
        Err(StoreError::new(
            "this store does not keep messages on disk only",
        ))
    }

    /// Asks for the next of a session's paged messages: the store reads those it holds
    /// with identifiers from `request.from` on, once everything paged out before this
    /// call is committed, and hands them to [`PagedSession::page_in`] from its own
    /// thread. Called with the session locked; must only queue. The default does
    /// nothing (a store that does not page is never asked).
    fn page_in(&self, session: Box<dyn PagedSession>, request: PageRequest) {
        let _ = (session, request);
    }
}

/// A session waiting for its paged messages (see [`Store::page_in`]).
pub trait PagedSession: Send {
    /// The session's client identifier.
    fn client_id(&self) -> &str;

    /// The messages read back, in identifier order. Returns whether the session took
    /// them: false if it ended or started over since it asked (the store then holds
    /// their records as before).
    fn page_in(&self, page: Page) -> bool;
}

/// What a session asks of [`Store::page_in`]: its paged messages with identifiers
/// from `from` to `until`, at most `max_messages` and, but for the first, `max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageRequest {
    /// The first identifier wanted.
    pub from: u64,
    /// The last identifier wanted: the last the session had paged out when it asked
    /// (all of them committed before the store reads).
    pub until: u64,
    /// The most messages to read (at least one is).
    pub max_messages: usize,
    /// The most bytes of messages to read, as [`Message::size`] counts them (at least
    /// one message is read, whatever its size).
    pub max_bytes: usize,
}

impl PageRequest {
    /// A request for messages from identifier `from` to `until`, at most
    /// `max_messages` of them and `max_bytes` in all.
    pub fn new(from: u64, until: u64, max_messages: usize, max_bytes: usize) -> Self {
        Self {
            from,
            until,
            max_messages,
            max_bytes,
        }
    }
}

/// What [`Store::page_in`] read for a session.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Page {
    /// The messages, in identifier order.
    pub records: Vec<QueuedRecord>,
    /// The first identifier not read: where the next request starts.
    pub next: u64,
    /// Whether the store holds none of the messages asked for from `next` on: the
    /// request is served to its `until`.
    pub end: bool,
}

/// A persistent session's messages that the store holds on disk only, beyond what
/// [`Store::load`] read into memory (see [`SavedMessages::paged`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PagedBacklog {
    /// The first identifier not read.
    pub first: u64,
    /// The last identifier.
    pub last: u64,
    /// How many there are.
    pub messages: usize,
    /// Their size on disk in bytes (about what [`Message::size`] counts).
    pub bytes: usize,
}

/// A session the store exports when it writes (see [`Store::session_changed`]).
pub trait LiveSession: Send + Sync {
    /// The session's client identifier.
    fn client_id(&self) -> &str;

    /// The session's state now, taken under its lock, without its messages
    /// (`ServerSession::export_detached`), and the messages it holds for which `holds`
    /// (whether the store keeps message `id` of this session already) is false; `None`
    /// if the session ended or no longer outlives its connection (its record's removal
    /// removes what it held).
    fn export(&self, holds: &dyn Fn(u64) -> bool) -> Option<SessionExport>;
}

/// What [`LiveSession::export`] gives the store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionExport {
    /// The session's client identifier.
    pub client_id: ByteStr,
    /// Its state without messages (in-flight entries name theirs by message id).
    pub state: bytes::Bytes,
    /// The messages it holds that the store did not know, in order.
    pub new: Vec<QueuedRecord>,
    /// The identifiers of every message it holds: what the store keeps for it once
    /// written (those it kept and are not here went: sent and acknowledged, expired,
    /// dropped).
    pub present: BTreeSet<u64>,
}

/// A message a persistent session holds (queued, or in flight awaiting PUBACK or
/// PUBREC), as the store keeps it: one record each.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedRecord {
    /// Its message identifier in the session (increasing: the queue's order).
    pub id: u64,
    /// When it expires, on the wall clock (a queued message with a Message Expiry
    /// Interval); `None`: never, and for a message in flight.
    pub expires_at: Option<SystemTime>,
    /// The message.
    pub message: Message,
}

impl QueuedRecord {
    /// A record of message `id`, expiring at `expires_at`.
    pub fn new(id: u64, expires_at: Option<SystemTime>, message: Message) -> Self {
        Self {
            id,
            expires_at,
            message,
        }
    }
}

/// A place in the store's sequence of commits (see [`Store::ticket`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Where the store's commits are: what a [`Ticket`] is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Commits {
    /// Every ticket up to this one is on disk.
    pub committed: u64,
    /// The last batch that failed to commit (what it held is written again with the
    /// next); 0 if none did.
    pub failed: u64,
    /// Commits made since start (each a write transaction and its fsync).
    pub count: u64,
    /// Their time in all, from the start of the write transaction to the end of its
    /// commit, in microseconds: with `count`, the mean commit latency.
    pub micros_total: u64,
    /// The last commit's time, in microseconds.
    pub last_micros: u64,
}

impl Commits {
    /// Whether `ticket` is on disk.
    pub fn covers(&self, ticket: Ticket) -> bool {
        self.committed >= ticket.0
    }

    /// Whether the batch of `ticket` failed and has not been written since.
    pub fn failed(&self, ticket: Ticket) -> bool {
        self.failed >= ticket.0 && self.committed < ticket.0
    }
}

/// What a persistent session held when it was last written (see
/// [`Store::session_changed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SavedMessages {
    /// The session's state as `ServerSession::export_detached` wrote it (its times
    /// relative to `saved_at`), or, with no `messages`, as `ServerSession::export` did.
    pub state: bytes::Bytes,
    /// When it was exported, on the wall clock.
    pub saved_at: SystemTime,
    /// The messages it holds, in identifier order: all of them, or as many as its
    /// in-memory window holds.
    pub messages: Vec<QueuedRecord>,
    /// Those left on disk, after `messages`: the session asks for them with
    /// [`Store::page_in`] as it has room.
    pub paged: Option<PagedBacklog>,
}

/// Why a [`Store`] could not do what it was asked; what it says is the store's own.
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// An error from anything that says what went wrong: an `io::Error`, a message.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e)
    }
}

/// Everything a [`Store`] kept, as [`Store::load`] returns it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stored {
    /// Retained messages, one per topic.
    pub retained: Vec<RetainedRecord>,
    /// Persistent sessions, one per client identifier.
    pub sessions: Vec<SessionRecord>,
}

/// A retained message as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetainedRecord {
    /// The message: its topic, payload, QoS and properties as published (RETAIN set, no
    /// Subscription Identifier).
    pub message: Message,
    /// When it expires (5.0 Message Expiry Interval), on the wall clock: session time
    /// starts over with the process, wall-clock time does not. `None`: never. It decides
    /// over the interval in the message's properties, which says how long it had when
    /// it was published.
    pub expires_at: Option<SystemTime>,
}

impl RetainedRecord {
    /// A record of `message`, expiring at `expires_at` (`None`: never).
    pub fn new(message: Message, expires_at: Option<SystemTime>) -> Self {
        Self {
            message,
            expires_at,
        }
    }
}

/// What the store keeps of a persistent session: enough for the client to find its
/// session (Session Present 1) and its subscriptions after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRecord {
    /// The client identifier, the session's key.
    pub client_id: ByteStr,
    /// The protocol version of its last connection.
    pub version: ProtocolVersion,
    /// Its Session Expiry Interval in seconds; `u32::MAX` for never (3.x persistent
    /// sessions have the broker's `persistent_client_expiration`).
    pub session_expiry: u32,
    /// When it expires, on the wall clock, if it has no connection; `None` while a
    /// connection is attached (after a restart it then expires `session_expiry` after
    /// the start, as if that connection was lost then) and for a session that never
    /// expires.
    pub expires_at: Option<SystemTime>,
    /// Its subscriptions with their options and Subscription Identifier, ordered by
    /// filter.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// What it held (queued and in-flight messages, QoS 2 identifiers, will) when last
    /// written, if the store keeps that.
    pub messages: Option<SavedMessages>,
}

impl SessionRecord {
    /// A record of the session of `client_id`, with no deadline and no subscription.
    pub fn new(client_id: ByteStr, version: ProtocolVersion, session_expiry: u32) -> Self {
        Self {
            client_id,
            version,
            session_expiry,
            expires_at: None,
            subscriptions: Vec::new(),
            messages: None,
        }
    }
}

/// Today's store: nothing outlives the process. [`Store::load`] finds nothing, and the
/// broker, told it is not durable, asks nothing else of it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Result<Stored, StoreError> {
        Ok(Stored::default())
    }

    fn retain(&self, _: &str, _: Option<&RetainedRecord>) -> Result<(), StoreError> {
        Ok(())
    }

    fn save_session(&self, _: &SessionRecord) -> Result<(), StoreError> {
        Ok(())
    }

    fn remove_session(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }
}

/// What the store holds of a session, as the session's cell remembers it, to write only
/// what changed: its version and expiry, and whether it was written offline (with a
/// deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    version: ProtocolVersion,
    expiry: u32,
    offline: bool,
}

impl Recorded {
    /// What the store's record of `session` should be: one if it outlives its
    /// connection.
    pub(crate) fn of(session: &ServerSession) -> Option<Self> {
        (session.session_expiry() != 0).then(|| Self {
            version: session.version(),
            expiry: session.session_expiry(),
            offline: !session.is_connected(),
        })
    }
}

/// A session as the store exports it (see [`LiveSession`]).
struct Live {
    handle: Arc<SessionHandle>,
    origin: tokio::time::Instant,
}

impl LiveSession for Live {
    fn client_id(&self) -> &str {
        &self.handle.client_id
    }

    fn export(&self, holds: &dyn Fn(u64) -> bool) -> Option<SessionExport> {
        // Cleared before the lock: a change after it marks the session again.
        self.handle.dirty.store(false, Ordering::Release);
        let cell = self.handle.lock();
        if cell.gone || cell.recorded.is_none() {
            return None;
        }
        let now = mqtt_session::Instant::from_millis(self.origin.elapsed().as_millis() as u64);
        let unrouted = cell.extra.as_ref().map_or(&[][..], |e| &e.unrouted[..]);
        let wall = SystemTime::now();
        let (mut new, mut present) = (Vec::new(), BTreeSet::new());
        cell.session.for_each_message(|id, expires_at, message| {
            present.insert(id.0);
            if !holds(id.0) {
                let expires_at = expires_at.and_then(|at| {
                    let left = at.saturating_since(now).as_millis();
                    wall.checked_add(std::time::Duration::from_millis(left))
                });
                new.push(QueuedRecord::new(id.0, expires_at, message));
            }
        });
        Some(SessionExport {
            client_id: cell.session.client_id().clone(),
            state: cell.session.export_detached(now, unrouted),
            new,
            present,
        })
    }
}

/// Past the global budget (`limits.max_queued_bytes_total`), a session pages in at
/// most this many messages at a time.
const PAGE_OVER_BUDGET: usize = 16;

/// At most one log line about store failures per this many milliseconds.
const STORE_LOG_INTERVAL_MS: u64 = 10_000;

/// The messages of a persistent session that the store holds on disk only (see
/// [`Shared::page_out`]): those with identifiers from `next` to `last`, but for any
/// that expired or were dropped on disk.
#[derive(Debug)]
pub(crate) struct Paged {
    /// The first identifier not handed back yet.
    next: u64,
    /// The last identifier paged out.
    last: u64,
    /// How many are on disk only.
    messages: usize,
    /// Their bytes ([`Message::size`]; after a restart, their size on disk).
    bytes: usize,
    /// The store was asked for the next of them and has not answered.
    asked: bool,
}

impl From<PagedBacklog> for Paged {
    fn from(b: PagedBacklog) -> Self {
        Self {
            next: b.first,
            last: b.last,
            messages: b.messages,
            bytes: b.bytes,
            asked: false,
        }
    }
}

/// A session waiting for its paged messages (see [`Shared::page_in_if_low`]).
struct Pager {
    handle: Arc<SessionHandle>,
    shared: std::sync::Weak<Shared>,
    /// Where its request started: an answer to an older request is not taken.
    from: u64,
    /// The last identifier it had paged out when it asked: all of them were committed
    /// before the store read, so a page that ends (`Page::end`) accounts for them all.
    upto: u64,
}

impl PagedSession for Pager {
    fn client_id(&self) -> &str {
        &self.handle.client_id
    }

    fn page_in(&self, page: Page) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let mut cell = self.handle.lock();
        if cell.gone || cell.recorded.is_none() {
            return false;
        }
        let (now, wall) = (shared.now(), SystemTime::now());
        // Paged out for whoever had the session then: a connected client that may not
        // read one does not get it (an offline session's are checked when it resumes).
        let reader = cell.session.is_connected().then(|| cell.principal.clone());
        let Some(x) = cell.extra.as_deref_mut() else {
            return false;
        };
        let Some(p) = x.paged.as_mut().filter(|p| p.asked && p.next == self.from) else {
            return false;
        };
        p.asked = false;
        let mut taken = Vec::with_capacity(page.records.len());
        let mut refused = 0u64;
        for r in page.records {
            if r.id < p.next || r.id > p.last {
                continue;
            }
            p.messages = p.messages.saturating_sub(1);
            p.bytes = p.bytes.saturating_sub(r.message.size());
            if let Some(principal) = &reader {
                if !shared.may_receive(
                    &self.handle.client_id,
                    principal.as_deref(),
                    &r.message.topic,
                ) {
                    refused += 1;
                    continue;
                }
            }
            let at = match r.expires_at {
                None => None,
                // Expired on disk: its record goes with the session's next export.
                Some(at) => match session_time(at, now, wall) {
                    Some(at) => Some(at),
                    None => continue,
                },
            };
            taken.push((r.id, at, r.message));
        }
        p.next = p.next.max(page.next);
        if page.end {
            // Read to the end: what it had paged out when it asked is all back, or
            // gone on disk (expired, or a damaged record, logged by the store).
            p.next = p.next.max(self.upto.saturating_add(1));
        }
        if page.end && p.next > p.last {
            // Everything paged out is back: new messages queue in memory again.
            x.paged = None;
        }
        for (id, at, message) in taken {
            cell.session.page_in(MessageId(id), at, message);
        }
        if refused > 0 {
            shared
                .stats
                .publish_dropped
                .fetch_add(refused, Ordering::Relaxed);
        }
        cell.shrink_extra();
        shared.session_changed(&self.handle, &cell);
        shared.account(&mut cell);
        shared.page_in_if_low(&self.handle, &mut cell);
        shared.wake_locked(&self.handle, cell);
        true
    }
}

impl Shared {
    /// Reads what the store kept into the live state: retained messages (those expired
    /// skipped, the others with the time they have left) and persistent sessions,
    /// offline, with their subscriptions in the index and their expiry running. Called
    /// once, before the listeners open.
    pub(crate) fn restore(self: &Arc<Self>) -> Result<(), StoreError> {
        let _ = self.me.set(Arc::downgrade(self));
        let stored = self.store.load()?;
        let (now, wall) = (self.now(), SystemTime::now());
        let mut retained = 0;
        for record in stored.retained {
            let expires_at = match record.expires_at {
                None => None,
                Some(at) => match session_time(at, now, wall) {
                    Some(at) => Some(at),
                    None => {
                        // It expired while the broker was down.
                        if let Err(e) = self.store.retain(&record.message.topic, None) {
                            self.store_failed("an expired retained message", &e);
                        }
                        continue;
                    }
                },
            };
            // Put back as it was: nothing to write.
            if self
                .put_retained(&record.message, expires_at, false)
                .is_ok()
            {
                retained += 1;
            }
        }
        let mut sessions = 0;
        for record in stored.sessions {
            let expires_at = match record.expires_at {
                Some(at) => session_time(at, now, wall),
                None => (record.session_expiry != u32::MAX).then(|| {
                    now + mqtt_session::Duration::from_secs(u64::from(record.session_expiry))
                }),
            };
            if record.session_expiry == 0 || (record.expires_at.is_some() && expires_at.is_none()) {
                // It ended while the broker was down.
                if let Err(e) = self.store.remove_session(&record.client_id) {
                    self.store_failed("an expired session", &e);
                }
                continue;
            }
            if self.restore_session(record, expires_at)? {
                sessions += 1;
            }
        }
        if retained + sessions > 0 {
            info!(retained, sessions, "restored from the store");
        }
        Ok(())
    }

    /// Tells the store that what the session in `cell` holds changed (a message queued,
    /// sent, acknowledged, a QoS 2 exchange moved on), if it is persistent and the store
    /// was not told since it last wrote it. Called with the session locked; nothing when
    /// the store is not durable.
    pub(crate) fn session_changed(&self, handle: &Arc<SessionHandle>, cell: &SessionCell) {
        if self.durable && cell.recorded.is_some() && !handle.dirty.swap(true, Ordering::AcqRel) {
            self.store.session_changed(Arc::new(Live {
                handle: Arc::clone(handle),
                origin: self.origin,
            }));
        }
    }

    /// Whether a message for the session in `cell` may be kept on disk only
    /// ([`Shared::page_out`]): the store pages, the session outlives its connection, and
    /// the message is not QoS 0 for a connected client (such a message never touches
    /// the store: a full queue drops it).
    pub(crate) fn may_page_out(&self, cell: &SessionCell, message: &Message) -> bool {
        self.pages
            && cell.recorded.is_some()
            && !(message.qos == QoS::AtMostOnce && cell.session.is_connected())
    }

    /// Whether messages of the session in `cell` are on disk only: a new one goes
    /// there too, behind them ([`Shared::page_out`]), to keep their order.
    pub(crate) fn is_paging(cell: &SessionCell) -> bool {
        cell.extra.as_ref().is_some_and(|x| x.paged.is_some())
    }

    /// Keeps `message` for the persistent session in `cell` on disk only, behind its
    /// queue: the session has no room for it in memory (its queue is at
    /// `limits.max_queued_messages` / `max_queued_bytes`, or the global budget is
    /// spent), or holds earlier messages on disk already. It comes back into the queue,
    /// in order, when the session has room and a connection ([`Shared::page_in_if_low`]).
    /// `Err` with why it cannot (the session's `persistence.max_queued_bytes` is
    /// reached, QoS 0 for a session that does not queue it, the store failed): the
    /// overflow policy applies. Called with the session locked, only where
    /// [`Shared::may_page_out`] allows it.
    pub(crate) fn page_out(
        &self,
        handle: &Arc<SessionHandle>,
        cell: &mut SessionCell,
        message: Message,
    ) -> Result<(), DropReason> {
        if message.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
            return Err(DropReason::Offline);
        }
        let size = message.size();
        let on_disk = cell
            .extra
            .as_ref()
            .and_then(|x| x.paged.as_ref())
            .map_or(0, |p| p.bytes);
        let held = cell.session.held_bytes().saturating_add(on_disk);
        if held.saturating_add(size) > self.config.persistence.max_queued_bytes {
            return Err(DropReason::QueueFull);
        }
        let id = cell.session.reserve_message_id();
        // Marked before the record is queued: the export that writes the session's
        // identifier counter past `id` is in the same commit as the record or an
        // earlier one, so that after a crash no new message takes `id` again.
        self.session_changed(handle, cell);
        let expires_at = message.properties.message_expiry_interval.and_then(|secs| {
            SystemTime::now().checked_add(std::time::Duration::from_secs(u64::from(secs)))
        });
        let record = QueuedRecord::new(id.0, expires_at, message);
        if let Err(e) = self.store.page_out(&handle.client_id, record) {
            self.store_failed("a paged message", &e);
            return Err(DropReason::QueueFull);
        }
        let p = cell.extra_mut().paged.get_or_insert(Paged {
            next: id.0,
            last: id.0,
            messages: 0,
            bytes: 0,
            asked: false,
        });
        p.last = id.0;
        p.messages += 1;
        p.bytes += size;
        Ok(())
    }

    /// Asks the store for the next of the session's paged messages if it has a
    /// connection to send them to and its queue is down to half its window; they come
    /// back in [`PagedSession::page_in`], as many as the window has room for. Called
    /// with the session locked.
    pub(crate) fn page_in_if_low(&self, handle: &Arc<SessionHandle>, cell: &mut SessionCell) {
        let (queued, queued_bytes) = (cell.session.queued_messages(), cell.session.queued_bytes());
        let connected = cell.session.is_connected();
        let Some(p) = cell.extra.as_deref_mut().and_then(|x| x.paged.as_mut()) else {
            return;
        };
        let (most, most_bytes) = (
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
        );
        if p.asked || !connected || queued > most / 2 || queued_bytes > most_bytes / 2 {
            return;
        }
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        p.asked = true;
        // Past the global budget, a little at a time: the client keeps moving, and
        // its memory does not grow.
        let (most, most_bytes) = if self.over_budget() {
            (PAGE_OVER_BUDGET, most_bytes.min(PAGE_OVER_BUDGET * 1024))
        } else {
            (most, most_bytes)
        };
        let request = PageRequest::new(
            p.next,
            p.last,
            most.saturating_sub(queued),
            most_bytes.saturating_sub(queued_bytes),
        );
        let pager = Pager {
            handle: Arc::clone(handle),
            shared: me,
            from: p.next,
            upto: p.last,
        };
        self.store.page_in(Box::new(pager), request);
    }

    /// Forgets the session's paged messages with their records: a new session takes
    /// the place of the one they were for (Clean Start), and starts with none. Its
    /// record is written again with the next [`Shared::record_session`]. Called with
    /// the session locked.
    pub(crate) fn forget_paged(&self, cell: &mut SessionCell) {
        if cell
            .extra
            .as_deref_mut()
            .and_then(|x| x.paged.take())
            .is_some()
        {
            if let Err(e) = self.store.remove_session(cell.session.client_id()) {
                self.store_failed("an ended session", &e);
            }
            cell.recorded = None;
            cell.shrink_extra();
        }
    }

    /// The wall-clock time of session time `at`; `None` past what the clock holds.
    pub(crate) fn wall_clock(&self, at: mqtt_session::Instant) -> Option<SystemTime> {
        let left = at.saturating_since(self.now()).as_millis();
        SystemTime::now().checked_add(std::time::Duration::from_millis(left))
    }

    /// The record of `cell`'s session, with `subscriptions`.
    fn session_record(
        &self,
        cell: &SessionCell,
        subscriptions: Vec<SubscriptionRecord>,
    ) -> SessionRecord {
        let s = &cell.session;
        SessionRecord {
            client_id: s.client_id().clone(),
            version: s.version(),
            session_expiry: s.session_expiry(),
            expires_at: s.expires_at().and_then(|at| self.wall_clock(at)),
            subscriptions,
            messages: None,
        }
    }

    /// Brings the store's record of the session in `cell` up to date after a connection
    /// attached to it or left it: written if the session outlives its connection and
    /// the record differs (new, another version or expiry, connected or not) or `force`
    /// says the rest changed (a new session took the old one's place, its subscriptions
    /// changed), removed if it ends with its connection now. Nothing for a session that
    /// never had a record and needs none. Called with the session locked; a failure is
    /// logged, and retried at the next change.
    pub(crate) fn record_session(&self, cell: &mut SessionCell, force: bool) {
        if !self.durable {
            return;
        }
        let wanted = Recorded::of(&cell.session);
        if wanted == cell.recorded && !(force && wanted.is_some()) {
            return;
        }
        let result = match wanted {
            Some(_) => {
                let record =
                    self.session_record(cell, cell.session.subscriptions().iter().collect());
                self.store.save_session(&record)
            }
            None => {
                // Its records go: what it held on disk only is lost with them (the
                // session no longer outlives its connection).
                if let Some(p) = cell.extra.as_deref_mut().and_then(|x| x.paged.take()) {
                    let dropped = p.messages as u64;
                    self.stats
                        .publish_dropped
                        .fetch_add(dropped, Ordering::Relaxed);
                    self.stats
                        .dropped_queue_full
                        .fetch_add(dropped, Ordering::Relaxed);
                    info!(client = %cell.session.client_id(), dropped, "the session no longer outlives its connection: its messages on disk are dropped");
                    cell.shrink_extra();
                }
                self.store.remove_session(cell.session.client_id())
            }
        };
        match result {
            Ok(()) => cell.recorded = wanted,
            Err(e) => self.store_failed("a session", &e),
        }
    }

    /// As [`Shared::record_session`], and what the session holds is written too (its
    /// connection attached or left: messages went back to the queue or out).
    pub(crate) fn record_session_and_messages(
        &self,
        handle: &Arc<SessionHandle>,
        cell: &mut SessionCell,
        force: bool,
    ) {
        self.record_session(cell, force);
        self.session_changed(handle, cell);
    }

    /// Writes the record of the session in `cell` with the subscriptions `granted` by a
    /// SUBSCRIBE (new, or replacing one with the same filter), before they take effect:
    /// `Err` if the store fails, and then they must not. `Ok` at once if the session
    /// ends with its connection, the store is not durable or nothing is granted.
    /// Called with the session locked.
    pub(crate) fn record_subscriptions(
        &self,
        cell: &mut SessionCell,
        granted: impl Iterator<Item = SubscriptionRecord>,
    ) -> Result<(), StoreError> {
        let mut granted = granted.peekable();
        let wanted = Recorded::of(&cell.session);
        if !self.durable || wanted.is_none() || granted.peek().is_none() {
            return Ok(());
        }
        let mut subscriptions: BTreeMap<ByteStr, SubscriptionRecord> = cell
            .session
            .subscriptions()
            .iter()
            .map(|r| (r.filter.clone(), r))
            .collect();
        for r in granted {
            subscriptions.insert(r.filter.clone(), r);
        }
        let record = self.session_record(cell, subscriptions.into_values().collect());
        match self.store.save_session(&record) {
            Ok(()) => {
                cell.recorded = wanted;
                Ok(())
            }
            Err(e) => {
                self.store_failed("a SUBSCRIBE", &e);
                Err(e)
            }
        }
    }

    /// The session in `cell` ended: its record, if it has one, goes. Called with the
    /// registry and the session locked, so that a new session of the same client
    /// cannot be written before this one is removed.
    pub(crate) fn forget_session(&self, cell: &mut SessionCell) {
        if let Some(x) = cell.extra.as_deref_mut() {
            x.paged = None;
        }
        if cell.recorded.take().is_some() {
            if let Err(e) = self.store.remove_session(cell.session.client_id()) {
                self.store_failed("an ended session", &e);
            }
        }
    }

    /// Logs a store failure, at most once per `STORE_LOG_INTERVAL_MS`.
    pub(crate) fn store_failed(&self, what: &str, error: &StoreError) {
        let now = self.now().as_millis().max(1);
        let last = self.last_store_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= STORE_LOG_INTERVAL_MS)
            && self
                .last_store_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(store = ?self.store, %error, "the store failed to keep {what} (at most one such line per 10 s)");
        }
    }
}

/// Session time of wall-clock time `at`, given that `wall` is `now`; `None` if it has
/// passed.
pub(crate) fn session_time(
    at: SystemTime,
    now: mqtt_session::Instant,
    wall: SystemTime,
) -> Option<mqtt_session::Instant> {
    let left = at.duration_since(wall).ok().filter(|d| !d.is_zero())?;
    let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    Some(now + mqtt_session::Duration::from_millis(left))
}
