//! The broker's shared state: the session registry, the subscription index, retained
//! messages, statistics, and routing.
//!
//! Routing runs in the publishing connection's own task: it matches the topic against
//! the concurrent index (sharded read locks, never a global lock), and hands the message
//! (payload shared, not copied) to each subscriber's session, whose queue is the bounded
//! outbox, then wakes that subscriber's task.
//!
//! A publisher never waits on a subscriber. Each session's queue is bounded (messages
//! and bytes, `limits.max_queued_messages` / `max_queued_bytes`); when a subscriber's
//! queue is full, the overflow policy applies to that subscriber alone (QoS 0 first,
//! then the new message is dropped) and the drop is counted and logged at a rate limit
//! ([`Shared::overflow`]). A global budget of queued bytes
//! (`limits.max_queued_bytes_total`) protects the process from many slow subscribers
//! at once: past it, only subscribers with an empty queue take new messages.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Decoder, Packet, ProtocolVersion, Publish, PublishProperties, QoS, QosPid,
    SubscriptionId, SubscriptionOptions,
};
use mqtt_session::{DropReason, Limits, Message, MessageId, ServerSession};
use mqtt_topics::{Filter, GroupId, Matches, RetainedStore, ShardedIndex, TopicFilter, TopicName};
use tokio::sync::Notify;

#[cfg(unix)]
use crate::parking::{Parked, Parking};
use crate::{alarms::Alarms, auth::Auth, config::Config};

/// A subscription as the index stores it: whose, and with what options.
#[derive(Clone, Debug)]
pub(crate) struct Sub {
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) identifier: Option<SubscriptionId>,
}

/// One client session, shared by its connection task (if any) and every publisher
/// routing to it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) key: u64,
    pub(crate) client_id: ByteStr,
    cell: Mutex<SessionCell>,
    /// Wakes the task that writes this session's packets.
    pub(crate) notify: Notify,
}

/// A session in the registry, found by its client identifier: the handle holds the
/// identifier already, so the registry's table holds one pointer per session rather than
/// a copy of the key beside it.
#[derive(Debug)]
struct Registered(Arc<SessionHandle>);

impl Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        self.0.client_id.as_str()
    }
}

impl PartialEq for Registered {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for Registered {}

impl Hash for Registered {
    // As `str` hashes, so lookups by `&str` find it (`Borrow` requires it).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id.as_str().hash(state);
    }
}

#[derive(Debug)]
pub(crate) struct SessionCell {
    pub(crate) session: ServerSession,
    /// Which connection owns the session; a takeover bumps it and the old connection
    /// task, seeing the change, leaves without touching the session.
    pub(crate) generation: u64,
    /// The session expired and was removed from the registry.
    pub(crate) gone: bool,
    /// Bytes of this session's queues counted in [`Shared::queued_total`] (see
    /// [`Shared::account`]).
    charged: usize,
    /// What only some sessions hold, boxed on first use: 8 bytes for the others.
    extra: Option<Box<CellExtra>>,
    /// The session's connection, parked without a task while idle (see `parking`).
    #[cfg(unix)]
    parked: Option<Box<Parked>>,
}

/// The parts of a [`SessionCell`] most sessions never use, or use only while busy.
#[derive(Debug, Default)]
struct CellExtra {
    /// QoS 1 messages this session received through a shared subscription and has not
    /// acknowledged: if the session ends first, another member of the group gets them
    /// (5.0 section 4.8.2: "SHOULD send the Application Message to another Client").
    /// QoS 2 messages are never redistributed ([MQTT-4.8.2-5]).
    shared_unacked: BTreeMap<MessageId, (GroupId, Message)>,
    /// QoS 0 PUBLISH packets encoded once for all their subscribers (see
    /// [`Shared::route`]), for this connection to write ahead of what the session
    /// sends next. They belong to the connection they were encoded for: a takeover or
    /// a lost connection discards them.
    encoded: BytesMut,
    /// How many packets `encoded` holds.
    encoded_count: u32,
}

impl SessionCell {
    /// Takes the parked connection, if any, to revive it.
    #[cfg(unix)]
    pub(crate) fn take_parked(&mut self) -> Option<Box<Parked>> {
        self.parked.take()
    }

    /// Takes the parked connection if it is the one registered as `token`.
    #[cfg(unix)]
    pub(crate) fn unpark(&mut self, token: usize) -> Option<Box<Parked>> {
        self.parked.take_if(|p| p.token() == token)
    }

    /// Whether the session's connection is parked.
    #[cfg(all(test, unix))]
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Keeps a connection parked here (the session's connection, idle).
    #[cfg(unix)]
    pub(crate) fn park(&mut self, parked: Box<Parked>) {
        debug_assert!(self.parked.is_none(), "a session has one connection");
        self.parked = Some(parked);
    }

    fn extra_mut(&mut self) -> &mut CellExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the extra part if nothing in it is in use.
    fn shrink_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|x| x.encoded_count == 0 && x.shared_unacked.is_empty())
        {
            self.extra = None;
        }
    }

    /// Bytes of encoded packets waiting.
    pub(crate) fn encoded_len(&self) -> usize {
        self.extra.as_ref().map_or(0, |x| x.encoded.len())
    }

    /// Adds an encoded packet to write.
    fn push_encoded(&mut self, packet: &[u8]) {
        let x = self.extra_mut();
        x.encoded.extend_from_slice(packet);
        x.encoded_count += 1;
    }

    /// Takes the encoded packets, to be written before anything the session sends
    /// next; how many there were. Into an empty `out` they move without a copy.
    pub(crate) fn take_encoded(&mut self, out: &mut BytesMut) -> u32 {
        let Some(x) = self.extra.as_deref_mut() else {
            return 0;
        };
        if out.is_empty() {
            std::mem::swap(out, &mut x.encoded);
        } else {
            out.extend_from_slice(&x.encoded);
            x.encoded.clear();
        }
        std::mem::take(&mut x.encoded_count)
    }

    /// Gives back the encoded packets' buffer if it is empty (the connection idles).
    pub(crate) fn shrink_encoded(&mut self) {
        if let Some(x) = self.extra.as_deref_mut() {
            if x.encoded_count == 0 {
                x.encoded = BytesMut::new();
            }
        }
        self.shrink_extra();
    }

    /// The connection the encoded packets were for ended before writing them: they go
    /// back into the session's queue as the messages they are, ahead of what it queued
    /// since, so that the session keeps them as it keeps its other queued messages.
    /// Call it before the session learns that the connection is gone.
    pub(crate) fn restore_encoded(&mut self, now: mqtt_session::Instant) {
        let Some(x) = self.extra.as_deref_mut() else {
            return;
        };
        if x.encoded_count > 0 {
            let mut bytes = std::mem::take(&mut x.encoded);
            x.encoded_count = 0;
            // They were encoded for this version and decode as they were encoded.
            let mut decoder = Decoder::with_version(self.session.version());
            let mut messages = Vec::new();
            while let Ok(Some(packet)) = decoder.decode(&mut bytes) {
                if let Packet::Publish(p) = packet {
                    messages.push(Message::from_publish(p));
                }
            }
            self.session.restore_unsent(now, messages);
        }
        if let Some(x) = self.extra.as_deref_mut() {
            x.encoded = BytesMut::new();
        }
        self.shrink_extra();
    }

    /// Keeps a QoS 1 message delivered through shared subscription `group` until it is
    /// acknowledged.
    fn keep_shared(&mut self, id: MessageId, group: GroupId, message: Message) {
        self.extra_mut().shared_unacked.insert(id, (group, message));
    }

    /// Takes the shared-subscription messages still unacknowledged.
    fn take_shared(&mut self) -> BTreeMap<MessageId, (GroupId, Message)> {
        let taken = self
            .extra
            .as_deref_mut()
            .map(|x| std::mem::take(&mut x.shared_unacked))
            .unwrap_or_default();
        self.shrink_extra();
        taken
    }

    /// Forgets shared-subscription messages that completed or were dropped.
    pub(crate) fn settle_shared(&mut self, ids: &[MessageId]) {
        if let Some(x) = self.extra.as_deref_mut() {
            if !x.shared_unacked.is_empty() {
                for id in ids {
                    x.shared_unacked.remove(id);
                }
            }
        }
    }
}

impl SessionHandle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionCell> {
        // A panic while holding the lock is a bug; the session state is still usable.
        self.cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The most bytes of encoded packets a session holds before its messages go the usual
/// way, through its queue: one full write. Measured on fan-out 1 -> 100 at QoS 0
/// against holding 256 packets: 0.185 -> 0.151 CPU s per million deliveries, 6.6 ->
/// 15.5 MiB peak.
const ENCODED_BYTES: usize = crate::connection::WRITE_HIGH_WATER;

/// At most one log line about dropped messages per this many milliseconds.
const DROP_LOG_INTERVAL_MS: u64 = 10_000;

/// One subscriber's terms for a routed message: its session, the highest QoS its
/// matching subscriptions granted, whether any keeps RETAIN as published, and their
/// subscription identifiers ([MQTT-3.3.4-2], [MQTT-3.3.4-3]).
struct Recipient<'a> {
    handle: &'a Arc<SessionHandle>,
    granted: QoS,
    retain_as_published: bool,
    ids: Vec<SubscriptionId>,
}

impl Recipient<'_> {
    /// `message` (the routed one, or a copy) on this recipient's terms: at most the
    /// granted QoS, RETAIN kept only if asked, its own subscription identifiers.
    fn shape(self, mut message: Message) -> Message {
        message.qos = message.qos.min(self.granted);
        message.retain = message.retain && self.retain_as_published;
        message.properties.set_subscription_identifiers(self.ids);
        message
    }
}

/// A QoS 0 message encoded once for every subscriber that takes it as it is (see
/// `ServerSession::takes_encoded_publish`): one PUBLISH per protocol family (3.1 and
/// 3.1.1 encode alike) and RETAIN flag, encoded on first use. Fan-out to many
/// subscribers then costs a copy of the packet's bytes per subscriber instead of a copy
/// of the message, a trip through its session and an encoding.
#[derive(Default)]
struct Encoded {
    packets: [Option<Bytes>; 4],
}

impl Encoded {
    /// Whether `message` can go out as the same bytes to every subscriber: QoS 0 and no
    /// Message Expiry Interval, which a session counts down while the message waits.
    fn suits(message: &Message, granted: QoS) -> bool {
        message.qos.min(granted) == QoS::AtMostOnce
            && message.properties.message_expiry_interval.is_none()
    }

    /// The PUBLISH of `message` for `version` with RETAIN `retain`.
    fn get(&mut self, message: &Message, version: ProtocolVersion, retain: bool) -> Option<&Bytes> {
        let slot = self
            .packets
            .get_mut(usize::from(version.is_v5()) * 2 + usize::from(retain))?;
        if slot.is_none() {
            let properties = if version.is_v5() {
                PublishProperties {
                    subscription_identifiers: Vec::new(),
                    ..(*message.properties).clone()
                }
            } else {
                PublishProperties::default()
            };
            let publish = Publish {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain,
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                topic_alias: None,
                properties: properties.into(),
            };
            let mut bytes = BytesMut::new();
            Packet::Publish(publish).encode(version, &mut bytes).ok()?;
            *slot = Some(bytes.freeze());
        }
        slot.as_ref()
    }
}

/// How many retained-store shards there are.
const RETAINED_SHARDS: usize = 16;

/// The shard of a topic (or literal filter) by its first level (FNV-1a).
fn retained_shard(topic: &str) -> usize {
    let first = topic.split('/').next().unwrap_or("");
    let h = first.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % RETAINED_SHARDS as u64) as usize
}

/// A retained message and when it expires (5.0 Message Expiry Interval).
#[derive(Clone, Debug)]
pub(crate) struct RetainedMessage {
    message: Message,
    expires_at: Option<mqtt_session::Instant>,
}

/// Counters for `$SYS`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: AtomicUsize,
    /// Sockets accepted that have not been through CONNECT yet.
    pub(crate) handshaking: AtomicUsize,
    pub(crate) max_connected: AtomicUsize,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) publish_received: AtomicU64,
    pub(crate) publish_sent: AtomicU64,
    /// Messages not delivered to a subscriber, for any reason (the sum of the
    /// reasons below and of messages expired in a queue).
    pub(crate) publish_dropped: AtomicU64,
    /// Of those: the subscriber's queue was full.
    pub(crate) dropped_queue_full: AtomicU64,
    /// Of those: the global budget of queued bytes was spent.
    pub(crate) dropped_memory_budget: AtomicU64,
    /// Of those: a QoS 0 message for a disconnected session.
    pub(crate) dropped_offline: AtomicU64,
    /// PUBLISH packets refused to their sender (for example to `$SYS/`).
    pub(crate) publish_refused: AtomicU64,
    pub(crate) connections_total: AtomicU64,
}

/// Everything the connection tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Authentication and authorization backends.
    pub(crate) auth: Auth,
    /// Every session's limits, shared by all of them.
    pub(crate) limits: Arc<Limits>,
    origin: tokio::time::Instant,
    pub(crate) index: ShardedIndex<u64, Sub>,
    sessions: Mutex<HashSet<Registered>>,
    /// Retained messages, sharded by the topic's first level so that retained
    /// publishes on different first levels never wait on one another.
    retained: Vec<RwLock<RetainedStore<RetainedMessage>>>,
    retained_count: AtomicUsize,
    /// Of those, the broker's own `$SYS` topics (never removed).
    retained_sys: AtomicUsize,
    /// Bytes queued in all sessions (queues and encoded packets), against
    /// `limits.max_queued_bytes_total`.
    pub(crate) queued_total: AtomicUsize,
    /// When the last line about dropped messages was logged (session time, ms).
    last_drop_log: AtomicU64,
    /// Retained messages with an expiry: the purge runs only while there are some.
    retained_expiring: AtomicUsize,
    pub(crate) stats: Stats,
    next_key: AtomicU64,
    next_client: AtomicU64,
    /// Set to `true` once, at shutdown; every task holds a receiver, so none misses it.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The same, for connection tasks: they check it when woken, and shutdown wakes them
    /// through their sessions, which spares every wait a watch receiver.
    stopping: AtomicBool,
    pub(crate) local_addrs: Mutex<Vec<SocketAddr>>,
    /// Keep-alive deadlines of hibernating connections.
    pub(crate) alarms: Alarms,
    /// Idle connections parked without a task: started with the first one to park;
    /// `None` inside if it could not be (they hibernate in their tasks then).
    #[cfg(unix)]
    parking: std::sync::OnceLock<Option<Parking>>,
}

impl Shared {
    pub(crate) fn new(config: Config, auth: Auth) -> Self {
        let limits = Arc::new(config.session_limits());
        Self {
            config,
            auth,
            limits,
            origin: tokio::time::Instant::now(),
            index: ShardedIndex::new(),
            sessions: Mutex::new(HashSet::new()),
            retained: (0..RETAINED_SHARDS)
                .map(|_| RwLock::new(RetainedStore::new()))
                .collect(),
            retained_count: AtomicUsize::new(0),
            retained_sys: AtomicUsize::new(0),
            queued_total: AtomicUsize::new(0),
            last_drop_log: AtomicU64::new(0),
            retained_expiring: AtomicUsize::new(0),
            stats: Stats::default(),
            next_key: AtomicU64::new(1),
            next_client: AtomicU64::new(1),
            shutdown: tokio::sync::watch::Sender::new(false),
            stopping: AtomicBool::new(false),
            local_addrs: Mutex::new(Vec::new()),
            alarms: Alarms::default(),
            #[cfg(unix)]
            parking: std::sync::OnceLock::new(),
        }
    }

    /// Where idle connections park, if it has been started.
    #[cfg(unix)]
    pub(crate) fn parking(&self) -> Option<&Parking> {
        self.parking.get().and_then(Option::as_ref)
    }

    /// Where idle connections park, started if this is the first; `None` if it cannot
    /// start (a warning says why, once).
    #[cfg(unix)]
    pub(crate) fn start_parking(self: &Arc<Self>) -> Option<&Parking> {
        self.parking
            .get_or_init(|| {
                Parking::start(self)
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "idle connections cannot park; they hibernate in their tasks");
                    })
                    .ok()
            })
            .as_ref()
    }

    /// Wakes the connection of `handle`'s session: its task, through the session's
    /// signal, or a new task if the connection is parked.
    pub(crate) fn wake(&self, handle: &Arc<SessionHandle>) {
        self.wake_locked(handle, handle.lock());
    }

    /// [`Shared::wake`] with the session already locked, as routing has it; the lock is
    /// released first.
    #[cfg_attr(not(unix), allow(unused_mut))]
    pub(crate) fn wake_locked(
        &self,
        handle: &Arc<SessionHandle>,
        mut cell: MutexGuard<'_, SessionCell>,
    ) {
        #[cfg(unix)]
        if let Some(parked) = cell.take_parked() {
            // A new task: nobody waits on the signal.
            drop(cell);
            self.revive(handle, parked);
            return;
        }
        drop(cell);
        handle.notify.notify_one();
    }

    /// Serves a connection just taken out of its session (`SessionCell::take_parked`)
    /// in a new task.
    #[cfg(unix)]
    pub(crate) fn revive(&self, handle: &Arc<SessionHandle>, parked: Box<Parked>) {
        // A connection parks only once parking has started, so it is there.
        if let Some(parking) = self.parking() {
            parking.revive(Arc::clone(handle), parked);
        }
    }

    /// Resolves once shutdown has begun.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|&down| down).await;
        }
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Begins shutdown for the connection tasks: sets the flag, then wakes every
    /// session's task (each checks the flag when woken; hibernating ones listen for
    /// nothing else).
    pub(crate) fn stop_connections(&self) {
        self.stopping.store(true, Ordering::Release);
        // Not under the registry's lock: waking takes each session's.
        let handles: Vec<_> = self.registry().iter().map(|r| Arc::clone(&r.0)).collect();
        for handle in &handles {
            self.wake(handle);
        }
    }

    /// Session time: milliseconds since the broker started.
    pub(crate) fn now(&self) -> mqtt_session::Instant {
        mqtt_session::Instant::from_millis(self.origin.elapsed().as_millis() as u64)
    }

    /// Converts a session deadline back to tokio time.
    pub(crate) fn deadline(&self, at: mqtt_session::Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_millis(at.as_millis())
    }

    pub(crate) fn session_count(&self) -> usize {
        self.registry().len()
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.retained_count.load(Ordering::Relaxed)
    }

    fn registry(&self) -> MutexGuard<'_, HashSet<Registered>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client identifier for a client that sent none.
    pub(crate) fn assign_client_id(&self) -> ByteStr {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        let nanos = self.origin.elapsed().subsec_nanos();
        ByteStr::try_from(format!("auto-{n:x}-{nanos:08x}")).unwrap_or_default()
    }

    /// The session for `client_id`, created if missing.
    pub(crate) fn session(&self, client_id: &ByteStr) -> Arc<SessionHandle> {
        let mut registry = self.registry();
        if let Some(Registered(h)) = registry.get(client_id.as_str()) {
            return Arc::clone(h);
        }
        let handle = Arc::new(SessionHandle {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            client_id: client_id.clone(),
            cell: Mutex::new(SessionCell {
                session: ServerSession::new(client_id.clone(), Arc::clone(&self.limits)),
                generation: 0,
                gone: false,
                charged: 0,
                extra: None,
                #[cfg(unix)]
                parked: None,
            }),
            notify: Notify::new(),
        });
        registry.insert(Registered(Arc::clone(&handle)));
        handle
    }

    /// Forgets an expired session and its subscriptions, unless a connection (of a
    /// later `generation` than the expiry was seen at) has taken it back meanwhile.
    pub(crate) fn remove_session(&self, handle: &Arc<SessionHandle>, generation: u64) {
        let (filters, version) = {
            // The registry first, then the session (the order `attach` never nests the
            // other way): a client that connected again since the session expired keeps
            // it.
            let mut registry = self.registry();
            let mut cell = handle.lock();
            if cell.gone || cell.generation != generation || cell.session.is_connected() {
                return;
            }
            if registry
                .get(handle.client_id.as_str())
                .is_some_and(|Registered(h)| Arc::ptr_eq(h, handle))
            {
                registry.remove(handle.client_id.as_str());
            }
            drop(registry);
            cell.gone = true;
            self.uncharge(&mut cell);
            let filters: Vec<ByteStr> = cell
                .session
                .subscriptions()
                .iter()
                .map(|r| r.filter.clone())
                .collect();
            (filters, cell.session.version())
        };
        // Out of the index first, so the ended session is not picked again.
        self.unsubscribe_all(handle, filters.iter(), version);
        self.redistribute_shared(handle);
    }

    /// Removes `filters` of the session from the index.
    pub(crate) fn unsubscribe_all<'a>(
        &self,
        handle: &SessionHandle,
        filters: impl Iterator<Item = &'a ByteStr>,
        version: ProtocolVersion,
    ) {
        for f in filters {
            if let Ok(filter) = Filter::parse(f, version) {
                self.index.unsubscribe(filter, &handle.key);
            }
        }
    }

    /// Stores, replaces or (empty payload) deletes a retained message.
    pub(crate) fn retain(&self, message: &Message) {
        if !self.config.retain.enabled {
            return;
        }
        let Ok(topic) = TopicName::new(&message.topic) else {
            return;
        };
        let Some(shard) = self.retained.get(retained_shard(&message.topic)) else {
            return;
        };
        let mut store = shard
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if message.payload.is_empty() {
            if let Some(old) = store.remove(topic) {
                self.retained_count.fetch_sub(1, Ordering::Relaxed);
                if message.topic.starts_with("$SYS/") {
                    self.retained_sys.fetch_sub(1, Ordering::Relaxed);
                }
                if old.expires_at.is_some() {
                    self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let exists = store.get(topic).is_some();
        // The broker's own `$SYS` topics do not use up the clients' retained quota.
        let is_sys = message.topic.starts_with("$SYS/");
        let used = self
            .retained_count
            .load(Ordering::Relaxed)
            .saturating_sub(self.retained_sys.load(Ordering::Relaxed));
        if !exists && !is_sys && used >= self.config.retain.max_messages {
            return;
        }
        if !exists && is_sys {
            self.retained_sys.fetch_add(1, Ordering::Relaxed);
        }
        let mut stored = message.clone();
        stored.retain = true;
        stored.properties.set_subscription_identifiers(Vec::new());
        let expires_at = stored
            .properties
            .message_expiry_interval
            .map(|secs| self.now() + mqtt_session::Duration::from_secs(u64::from(secs)));
        if expires_at.is_some() {
            self.retained_expiring.fetch_add(1, Ordering::Relaxed);
        }
        match store.insert(
            topic,
            RetainedMessage {
                message: stored,
                expires_at,
            },
        ) {
            None => {
                self.retained_count.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) if old.expires_at.is_some() => {
                self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
            }
            Some(_) => {}
        }
    }

    /// A retained message as a subscriber gets it: `None` once expired (5.0 Message
    /// Expiry Interval); otherwise with the time it has left ([MQTT-3.3.2-6]).
    pub(crate) fn retained_copy(
        &self,
        stored: &RetainedMessage,
        now: mqtt_session::Instant,
    ) -> Option<Message> {
        let mut m = stored.message.clone();
        if let Some(at) = stored.expires_at {
            if now >= at {
                return None;
            }
            let left = at.saturating_since(now).as_secs_ceil();
            m.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
        }
        Some(m)
    }

    /// Drops expired retained messages (delivery skips them anyway; this bounds memory).
    /// Scans under the read lock, removes under the write lock; does nothing while no
    /// retained message has an expiry.
    pub(crate) fn purge_expired_retained(&self) {
        if self.retained_expiring.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = self.now();
        let (Ok(all), Ok(sys)) = (TopicFilter::new("#"), TopicFilter::new("$SYS/#")) else {
            return;
        };
        for shard in &self.retained {
            let expired: Vec<String> = {
                let store = shard
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                store
                    .matching(all)
                    .chain(store.matching(sys))
                    .filter(|r| r.value().expires_at.is_some_and(|at| now >= at))
                    .map(|r| r.topic())
                    .collect()
            };
            if expired.is_empty() {
                continue;
            }
            let mut store = shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for topic in expired {
                let Ok(name) = TopicName::new(&topic) else {
                    continue;
                };
                if store
                    .get(name)
                    .is_some_and(|r| r.expires_at.is_some_and(|at| now >= at))
                {
                    store.remove(name);
                    self.retained_count.fetch_sub(1, Ordering::Relaxed);
                    self.retained_expiring.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The retained-store shards a filter can match, in order: the one of its first
    /// level when that is literal, every shard when it is a wildcard.
    pub(crate) fn retained_shards(&self, filter: &str) -> std::ops::Range<usize> {
        if filter.starts_with('+') || filter.starts_with('#') {
            0..self.retained.len()
        } else {
            let i = retained_shard(filter);
            i..i + 1
        }
    }

    /// One retained-store shard, read-locked.
    pub(crate) fn retained_shard_read(
        &self,
        shard: usize,
    ) -> Option<std::sync::RwLockReadGuard<'_, RetainedStore<RetainedMessage>>> {
        self.retained
            .get(shard)
            .map(|s| s.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Routes a message published by session `from` to every matching subscriber, and
    /// says to how many sessions it went (shared-subscription groups count once):
    /// none is 5.0's "No matching subscribers". `matches` is a reusable buffer, so
    /// routing allocates nothing per message in the steady state beyond the copies each
    /// subscriber gets. Nothing here waits: a subscriber that cannot take the message
    /// loses it ([`Shared::overflow`]).
    pub(crate) fn route(
        &self,
        from: u64,
        message: Message,
        matches: &mut Matches<u64, Sub>,
        now: mqtt_session::Instant,
    ) -> usize {
        let Ok(topic) = TopicName::new(&message.topic) else {
            return 0;
        };
        if message.retain {
            self.retain(&message);
        }
        matches.clear();
        self.index.matches(topic, matches);
        // [MQTT-3.3.4-2], [MQTT-3.3.4-3]: one copy per subscriber at the highest granted
        // QoS, with every matching subscription identifier (`Recipient::shape`).
        // Each recipient is delivered once the next is found, so the last one can take
        // the message itself instead of a copy (with one subscriber: no copy at all).
        // Recipients that take the message as encoded bytes need no copy of it at all.
        let mut encoded = Encoded::default();
        let mut previous = None;
        let mut recipients = 0;
        for subscriber in matches.subscribers() {
            let key = *subscriber.key();
            let mut handle = None;
            let mut granted = None::<QoS>;
            let mut retain_as_published = false;
            let mut ids = Vec::new();
            for sub in subscriber.values() {
                // [MQTT-3.8.3-3]: No Local keeps a client's own messages from it.
                if sub.options.no_local && key == from {
                    continue;
                }
                handle = Some(&sub.handle);
                granted = Some(granted.map_or(sub.options.qos, |q| q.max(sub.options.qos)));
                retain_as_published |= sub.options.retain_as_published;
                if let Some(id) = sub.identifier {
                    ids.push(id);
                }
            }
            let (Some(handle), Some(granted)) = (handle, granted) else {
                continue;
            };
            recipients += 1;
            let next = Recipient {
                handle,
                granted,
                retain_as_published,
                ids,
            };
            if let Some(to) = previous.replace(next) {
                self.deliver_copy(to, &mut encoded, &message, now);
            }
        }
        let mut groups = matches.shared().peekable();
        if let Some(to) = previous {
            if groups.peek().is_some() {
                self.deliver_copy(to, &mut encoded, &message, now);
            } else if !self.deliver_encoded(&to, &mut encoded, &message) {
                // The last recipient takes the message itself.
                let h = to.handle;
                self.deliver(h, now, to.shape(message), None);
                return recipients;
            }
        }
        for group in groups {
            recipients += 1;
            self.deliver_to_group(group.id(), group.members(), &message, now, None);
        }
        recipients
    }

    /// Delivers `message` to `to`: as encoded bytes if it can take them, else as a copy
    /// on its terms.
    fn deliver_copy(
        &self,
        to: Recipient<'_>,
        encoded: &mut Encoded,
        message: &Message,
        now: mqtt_session::Instant,
    ) {
        if !self.deliver_encoded(&to, encoded, message) {
            let h = to.handle;
            self.deliver(h, now, to.shape(message.clone()), None);
        }
    }

    /// Queues `message` on a connection as encoded bytes shared with its other
    /// subscribers, if it and the session allow it (see [`Encoded`]) and the session
    /// holds less than `ENCODED_BYTES` of them; false if it must go the usual way.
    fn deliver_encoded(
        &self,
        to: &Recipient<'_>,
        encoded: &mut Encoded,
        message: &Message,
    ) -> bool {
        if !to.ids.is_empty() || !Encoded::suits(message, to.granted) {
            return false;
        }
        // A packet is longer than its message's topic and payload: one that cannot fit
        // is not worth encoding.
        if message.size() >= ENCODED_BYTES {
            return false;
        }
        let handle = to.handle;
        let mut cell = handle.lock();
        if !cell.session.takes_encoded_publish(0) || (cell.encoded_len() > 0 && self.over_budget())
        {
            return false;
        }
        let version = cell.session.version();
        let Some(packet) = encoded.get(message, version, message.retain && to.retain_as_published)
        else {
            return false;
        };
        if cell.encoded_len() + packet.len() > ENCODED_BYTES
            || !cell.session.takes_encoded_publish(packet.len())
        {
            return false;
        }
        cell.push_encoded(packet);
        self.account(&mut cell);
        self.wake_locked(handle, cell);
        true
    }

    /// Delivers `message` to one member of a shared subscription group: round robin,
    /// preferring connected members with room, never `exclude` (a member whose session
    /// ended).
    fn deliver_to_group(
        &self,
        group: GroupId,
        members: &[(u64, Sub)],
        message: &Message,
        now: mqtt_session::Instant,
        exclude: Option<u64>,
    ) {
        let candidates = || members.iter().filter(|(key, _)| Some(*key) != exclude);
        let count = candidates().count();
        if count == 0 {
            return;
        }
        let start = self.stats.publish_received.load(Ordering::Relaxed) as usize % count;
        let ready = |s: &Sub| {
            let cell = s.handle.lock();
            cell.session.is_connected() && cell.session.queued_messages() == 0
        };
        let pick = candidates()
            .cycle()
            .skip(start)
            .take(count)
            .find(|(_, s)| ready(s))
            .or_else(|| {
                candidates().cycle().skip(start).take(count).find(|(_, s)| {
                    let cell = s.handle.lock();
                    cell.session.is_connected() && cell.session.queue_room() > 0
                })
            })
            .or_else(|| candidates().nth(start));
        let Some((_, sub)) = pick else { return };
        let mut out = message.clone();
        out.qos = message.qos.min(sub.options.qos);
        out.retain = message.retain && sub.options.retain_as_published;
        out.properties
            .set_subscription_identifiers(sub.identifier.into_iter().collect());
        self.deliver(&sub.handle, now, out, Some(group));
    }

    /// A session ended: its unacknowledged QoS 1 messages from shared subscriptions go to
    /// other members of their groups.
    pub(crate) fn redistribute_shared(&self, from: &SessionHandle) {
        let orphans: Vec<(GroupId, Message)> = from.lock().take_shared().into_values().collect();
        if orphans.is_empty() {
            return;
        }
        let now = self.now();
        let mut matches = Matches::default();
        for (group, mut message) in orphans {
            message.properties.set_subscription_identifiers(Vec::new());
            let Ok(topic) = TopicName::new(&message.topic) else {
                continue;
            };
            matches.clear();
            self.index.matches(topic, &mut matches);
            if let Some(g) = matches.shared().find(|g| g.id() == group) {
                self.deliver_to_group(group, g.members(), &message, now, Some(from.key));
            }
        }
    }

    /// Queues a message on a session and wakes its writer. A session that cannot take
    /// it (its queue is full, the global budget is spent, QoS 0 while it is offline)
    /// loses it, and only it: see [`Shared::overflow`].
    pub(crate) fn deliver(
        &self,
        handle: &Arc<SessionHandle>,
        now: mqtt_session::Instant,
        message: Message,
        group: Option<GroupId>,
    ) {
        let mut cell = handle.lock();
        // Past the global budget only a session with nothing queued takes more: each
        // subscriber keeps moving, and the slow ones stop growing.
        if cell.session.queued_messages() > 0 && self.over_budget() {
            drop(cell);
            self.overflow(handle, DropReason::QueueFull, true);
            return;
        }
        // A QoS 1 message from a shared subscription is kept to hand to another member
        // should this one leave without acknowledging it.
        let keep = (group.is_some() && message.qos == QoS::AtLeastOnce).then(|| message.clone());
        match cell.session.deliver(now, message) {
            Ok(id) => {
                if let (Some(group), Some(copy)) = (group, keep) {
                    cell.keep_shared(id, group, copy);
                }
                self.account(&mut cell);
                self.wake_locked(handle, cell);
            }
            Err(refused) => {
                drop(cell);
                self.overflow(handle, refused.reason, false);
            }
        }
    }

    /// The overflow policy's last step: a message `handle`'s session could not take is
    /// dropped, counted by reason for `$SYS`, and logged at most once per
    /// `DROP_LOG_INTERVAL_MS`. This is where a durable store would take an overflowing
    /// persistent session's message to disk instead.
    pub(crate) fn overflow(&self, handle: &SessionHandle, reason: DropReason, budget: bool) {
        let stats = &self.stats;
        stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        if budget {
            stats.dropped_memory_budget.fetch_add(1, Ordering::Relaxed);
        } else if reason == DropReason::QueueFull {
            stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        } else {
            // QoS 0 for a session without a connection, which does not queue it: what
            // such a client expects, not news for the log.
            if reason == DropReason::Offline {
                stats.dropped_offline.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let now = self.now().as_millis().max(1);
        let last = self.last_drop_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= DROP_LOG_INTERVAL_MS)
            && self
                .last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client = %handle.client_id,
                reason = if budget { "memory budget (limits.max_queued_bytes_total)" } else { "queue full" },
                dropped_queue_full = stats.dropped_queue_full.load(Ordering::Relaxed),
                dropped_memory_budget = stats.dropped_memory_budget.load(Ordering::Relaxed),
                "a slow subscriber is losing messages (at most one such line per 10 s)"
            );
        }
    }

    /// How long a write may make no progress before the connection is closed
    /// (`limits.write_timeout`).
    pub(crate) fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.limits.write_timeout)
    }

    /// Whether the queued bytes of all sessions are past `limits.max_queued_bytes_total`.
    fn over_budget(&self) -> bool {
        self.queued_total.load(Ordering::Relaxed) > self.config.limits.max_queued_bytes_total
    }

    /// Brings the session's share of [`Shared::queued_total`] up to date: what its
    /// queue and encoded packets hold now. Called under the session's lock wherever the
    /// queue grows (delivery) and where its writer drains it, so the total is exact
    /// whenever no session is between the two.
    pub(crate) fn account(&self, cell: &mut SessionCell) {
        let now = cell.session.queued_bytes() + cell.encoded_len();
        let before = std::mem::replace(&mut cell.charged, now);
        if now > before {
            self.queued_total.fetch_add(now - before, Ordering::Relaxed);
        } else if before > now {
            self.queued_total.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Takes the session's share out of [`Shared::queued_total`]: it is gone.
    fn uncharge(&self, cell: &mut SessionCell) {
        let before = std::mem::take(&mut cell.charged);
        self.queued_total.fetch_sub(before, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_codec::Connect;

    fn message(payload: &'static str) -> Message {
        Message::new(
            ByteStr::from_static("t"),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
        )
    }

    // Packets encoded for a connection that ended unwritten go back to the session as
    // the messages they were, ahead of what it queued since, in both protocol families.
    #[test]
    fn unwritten_encoded_packets_return_to_the_session() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let now = mqtt_session::Instant::ZERO;
            let id = ByteStr::from_static("c");
            let mut cell = SessionCell {
                session: ServerSession::new(id.clone(), Limits::default()),
                generation: 0,
                gone: false,
                charged: 0,
                extra: None,
                #[cfg(unix)]
                parked: None,
            };
            let mut connect = Connect::new(version, id);
            connect.clean_start = false;
            connect.properties.session_expiry_interval = Some(60);
            cell.session.accept(now, &connect, Default::default());
            assert!(cell.session.poll_transmit(now).is_some(), "CONNACK");
            let mut retained = message("encoded 2");
            retained.retain = true;
            for m in [message("encoded 1"), retained] {
                let mut encoded = Encoded::default();
                let packet = encoded.get(&m, version, m.retain).unwrap().clone();
                assert!(cell.session.takes_encoded_publish(packet.len()));
                cell.push_encoded(&packet);
            }
            cell.session.deliver(now, message("queued")).unwrap();
            assert_eq!(
                cell.session.pending_messages()
                    + cell.extra.as_ref().map_or(0, |x| x.encoded_count as usize),
                3
            );

            cell.restore_encoded(now);
            cell.session.connection_lost(now);
            assert_eq!(cell.encoded_len(), 0);
            assert!(cell.extra.is_none(), "nothing left in the extra part");
            cell.session.accept(now, &connect, Default::default());
            let sent: Vec<(String, bool)> = std::iter::from_fn(|| cell.session.poll_transmit(now))
                .filter_map(|p| match p {
                    Packet::Publish(p) => {
                        Some((String::from_utf8_lossy(&p.payload).into_owned(), p.retain))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(
                sent,
                [
                    ("encoded 1".to_owned(), false),
                    ("encoded 2".to_owned(), true),
                    ("queued".to_owned(), false)
                ],
                "{version:?}"
            );
        }
    }
}
