//! The broker's shared state: the session registry, the subscription index, retained
//! messages, statistics, and routing.
//!
//!
//! What lives where: the registry in `sessions`, routing in `router`, retained messages
//! in `retained`; this file holds the state itself, statistics, time and wake-ups.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use mqtt_session::Limits;
use mqtt_topics::{RetainedStore, ShardedIndex};

#[cfg(unix)]
use crate::parking::{Parked, Parking};
use crate::{
    Backends,
    auth::{Auth, Authenticator, Authorizer, ListenerAuth, ListenerBackends, failures::Failures},
    config::Config,
    retained::{RETAINED_SHARDS, RetainedMessage},
    sessions::{Principal, Registered, SessionCell, SessionHandle, Sub},
    timers::Timers,
};

/// Counters for `$SYS`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: AtomicUsize,
    /// Sockets accepted that have not been through CONNECT yet.
    pub(crate) handshaking: AtomicUsize,
    /// New connections waiting for their first packets in their task (see
    /// `connection::live`).
    pub(crate) in_grace: AtomicUsize,
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
    /// CONNECTs refused for a limit (connections, sessions, client identifier length).
    pub(crate) connections_refused: AtomicU64,
    /// Filters refused for `limits.max_subscriptions` or by the authorizer.
    pub(crate) subscriptions_refused: AtomicU64,
    /// Connections closed because the client read nothing for `limits.write_timeout`.
    pub(crate) write_timeouts: AtomicU64,
    /// Writes that waited for more (`limits.coalesce_writes`).
    pub(crate) writes_coalesced: AtomicU64,
    /// Retained messages routed but not retained: over `retain.max_messages` or
    /// `retain.max_bytes`.
    pub(crate) retained_refused: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    /// PUBLISH packets received, by QoS (added once per batch read).
    pub(crate) publish_received_qos: [AtomicU64; 3],
    /// PUBLISH packets sent, by QoS (added once per batch written).
    pub(crate) publish_sent_qos: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub(crate) payload_received_qos: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets sent, by QoS (QoS 0 packets encoded once for
    /// many subscribers count their whole packet).
    pub(crate) payload_sent_qos: [AtomicU64; 3],
    /// How long QoS 1 and 2 PUBLISH packets wait for the broker's acknowledgement
    /// (routing, then writing PUBACK / PUBREC), sampled (see `connection::active_loop`).
    pub(crate) ack_latency: crate::http::metrics::Histogram,
}

impl Stats {
    /// Adds a batch's PUBLISH packets and payload bytes by QoS (`received`, or sent),
    /// one relaxed addition per QoS that has any.
    pub(crate) fn add_by_qos(&self, packets: [u64; 3], bytes: [u64; 3], received: bool) {
        let (p, b) = if received {
            (&self.publish_received_qos, &self.payload_received_qos)
        } else {
            (&self.publish_sent_qos, &self.payload_sent_qos)
        };
        for ((n, bytes), (pc, bc)) in packets.into_iter().zip(bytes).zip(p.iter().zip(b)) {
            if n > 0 {
                pc.fetch_add(n, Ordering::Relaxed);
                bc.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

/// Everything the connection tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The limits a reload can change while the broker runs (see `reload`): read
    /// there, not in `config`.
    pub(crate) live: crate::reload::Live,
    /// Authentication and authorization backends.
    pub(crate) auth: Auth,
    /// What each listener's own keys change of them, by listener index.
    pub(crate) listener_auth: Vec<ListenerAuth>,
    /// SCRAM-SHA-256 credentials by listener index (its `scram_file`, else
    /// `auth.scram_file`); none: the method is not offered there.
    pub(crate) scram: Vec<Option<Arc<crate::auth::ScramFile>>>,
    /// Whether any authorizer filters deliveries (`Authorizer::filters_delivery`): if
    /// not, routing asks none.
    pub(crate) filters_delivery: bool,
    /// Recent authentication failures by address, to slow repeated ones down.
    pub(crate) auth_failures: Failures,
    /// Where retained messages and persistent sessions are kept (see `store`).
    pub(crate) store: Box<dyn crate::store::Store>,
    /// Whether it keeps anything (`Store::is_durable`): if not, no record is built.
    pub(crate) durable: bool,
    /// The store's commits, if acknowledgements wait for them (`sync` mode): see
    /// `Store::commits`.
    pub(crate) commits: Option<tokio::sync::watch::Receiver<crate::store::Commits>>,
    /// When the last line about a store failure was logged (session time, ms).
    pub(crate) last_store_log: AtomicU64,
    /// Every session's limits, shared by all of them.
    pub(crate) limits: Arc<Limits>,
    pub(crate) origin: tokio::time::Instant,
    pub(crate) index: ShardedIndex<u64, Sub>,
    /// Subscribers that are not local sessions (bridges, cluster peers), and how many.
    pub(crate) remote: ShardedIndex<u64, crate::remote::RemoteSub>,
    pub(crate) remote_count: AtomicUsize,
    pub(crate) sessions: Mutex<HashSet<Registered>>,
    /// Retained messages, sharded by the topic's first level so that retained
    /// publishes on different first levels never wait on one another.
    pub(crate) retained: Vec<RwLock<RetainedStore<RetainedMessage>>>,
    pub(crate) retained_count: AtomicUsize,
    /// Of those, the broker's own `$SYS` topics (never removed).
    pub(crate) retained_sys: AtomicUsize,
    /// What the clients' retained messages are charged, against `retain.max_bytes`.
    pub(crate) retained_bytes: AtomicUsize,
    /// When the last line about the retained quotas was logged (session time, ms).
    pub(crate) retained_refused_logged: AtomicU64,
    /// Bytes queued in all sessions (queues and encoded packets), against
    /// `limits.max_queued_bytes_total`.
    pub(crate) queued_total: AtomicUsize,
    /// When the last line about dropped messages was logged (session time, ms).
    pub(crate) last_drop_log: AtomicU64,
    /// Retained messages with an expiry: the purge runs only while there are some.
    pub(crate) retained_expiring: AtomicUsize,
    pub(crate) stats: Stats,
    /// What the dashboards watching want sampled (see `http::dashboard`).
    pub(crate) dashboard: crate::http::dashboard::Watch,
    pub(crate) next_key: AtomicU64,
    pub(crate) next_client: AtomicU64,
    /// Set to `true` once, at shutdown; every task holds a receiver, so none misses it.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The same, for connection tasks: they check it when woken, and shutdown wakes them
    /// through their sessions, which spares every wait a watch receiver.
    pub(crate) stopping: AtomicBool,
    pub(crate) local_addrs: Mutex<Vec<SocketAddr>>,
    /// Every deadline no active connection waits on (see `timers`).
    pub(crate) timers: Timers,
    /// Idle connections parked without a task: started with the first one to park;
    /// `None` inside if it could not be (they hibernate in their tasks then).
    #[cfg(unix)]
    pub(crate) parking: std::sync::OnceLock<Option<Parking>>,
    /// The broker itself, for what the store's thread hands back to a session (its
    /// paged messages): set when the store is read, at start.
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Self>>,
    /// Whether the store keeps what a persistent session has no room for in memory
    /// (`Store::pages`).
    pub(crate) pages: bool,
}

impl Shared {
    pub(crate) fn new(config: Config, backends: Backends) -> Self {
        let limits = Arc::new(config.session_limits());
        let Backends { auth, store } = backends;
        let listener_auth = config
            .listeners
            .iter()
            .map(|l| ListenerAuth {
                allow_anonymous: l.allow_anonymous.unwrap_or(config.auth.allow_anonymous),
                ..ListenerAuth::default()
            })
            .collect();
        Self {
            live: crate::reload::Live::new(&config),
            config,
            filters_delivery: auth.authorizer.filters_delivery(),
            auth,
            listener_auth,
            scram: Vec::new(),
            auth_failures: Failures::default(),
            durable: store.is_durable(),
            pages: store.is_durable() && store.pages(),
            me: std::sync::OnceLock::new(),
            commits: store.commits(),
            store,
            last_store_log: AtomicU64::new(0),
            limits,
            origin: tokio::time::Instant::now(),
            index: ShardedIndex::new(),
            remote: ShardedIndex::new(),
            remote_count: AtomicUsize::new(0),
            sessions: Mutex::new(HashSet::new()),
            retained: (0..RETAINED_SHARDS)
                .map(|_| RwLock::new(RetainedStore::new()))
                .collect(),
            retained_count: AtomicUsize::new(0),
            retained_sys: AtomicUsize::new(0),
            retained_bytes: AtomicUsize::new(0),
            retained_refused_logged: AtomicU64::new(0),
            queued_total: AtomicUsize::new(0),
            last_drop_log: AtomicU64::new(0),
            retained_expiring: AtomicUsize::new(0),
            stats: Stats::default(),
            dashboard: Default::default(),
            next_key: AtomicU64::new(1),
            next_client: AtomicU64::new(1),
            shutdown: tokio::sync::watch::Sender::new(false),
            stopping: AtomicBool::new(false),
            local_addrs: Mutex::new(Vec::new()),
            timers: Timers::default(),
            #[cfg(unix)]
            parking: std::sync::OnceLock::new(),
        }
    }

    /// Puts each listener's own backends (read from its `password_file` and `acl_file`)
    /// in place of the broker's, by listener index.
    pub(crate) fn with_listener_backends(mut self, backends: Vec<ListenerBackends>) -> Self {
        for (l, (authenticator, authorizer)) in self.listener_auth.iter_mut().zip(backends) {
            l.authenticator = authenticator;
            l.authorizer = authorizer;
        }
        self.filters_delivery = self.auth.authorizer.filters_delivery()
            || self
                .listener_auth
                .iter()
                .filter_map(|l| l.authorizer.as_ref())
                .any(|a| a.filters_delivery());
        self
    }

    /// Puts each listener's JWT verifier (its own `jwt`, or `auth`'s) in place, by
    /// listener index.
    pub(crate) fn with_jwt(mut self, jwt: Vec<Option<Arc<crate::auth::Jwt>>>) -> Self {
        // A token's permissions apply to deliveries too (`Shared::may_receive`).
        self.filters_delivery |= jwt.iter().flatten().any(|j| j.carries_permissions());
        for (l, jwt) in self.listener_auth.iter_mut().zip(jwt) {
            l.jwt = jwt;
        }
        self
    }

    /// The JWT verifier of clients connecting on `listener`, if its passwords are
    /// tokens.
    pub(crate) fn jwt(&self, listener: usize) -> Option<&crate::auth::Jwt> {
        self.listener_auth
            .get(listener)
            .and_then(|l| l.jwt.as_deref())
    }

    /// Puts the SCRAM credentials of each listener in place, by listener index.
    pub(crate) fn with_scram(mut self, scram: Vec<Option<Arc<crate::auth::ScramFile>>>) -> Self {
        self.scram = scram;
        self
    }

    /// The SCRAM-SHA-256 credentials of clients connecting on `listener`, if it offers
    /// the method.
    pub(crate) fn scram(&self, listener: usize) -> Option<&crate::auth::ScramFile> {
        self.scram.get(listener).and_then(Option::as_deref)
    }

    /// The authenticator of clients connecting on `listener`.
    pub(crate) fn authenticator(&self, listener: usize) -> &dyn Authenticator {
        match self
            .listener_auth
            .get(listener)
            .and_then(|l| l.authenticator.as_ref())
        {
            Some(a) => a.as_ref(),
            None => self.auth.authenticator.as_ref(),
        }
    }

    /// The authorizer of clients that connected on `listener`.
    pub(crate) fn authorizer(&self, listener: usize) -> &dyn Authorizer {
        match self
            .listener_auth
            .get(listener)
            .and_then(|l| l.authorizer.as_ref())
        {
            Some(a) => a.as_ref(),
            None => self.auth.authorizer.as_ref(),
        }
    }

    /// Whether clients without a user name may connect on `listener`.
    pub(crate) fn allows_anonymous(&self, listener: usize) -> bool {
        self.listener_auth
            .get(listener)
            .map_or(self.config.auth.allow_anonymous, |l| l.allow_anonymous)
    }

    /// Whether a message on `topic` may go to the session of `client_id`, whose client
    /// is `principal` (see `SessionCell::principal`): asks its token's permissions and
    /// its authorizer only if some authorizer or token can refuse deliveries, so that
    /// without one this is a branch.
    #[inline]
    pub(crate) fn may_receive(
        &self,
        client_id: &str,
        principal: Option<&Principal>,
        topic: &str,
    ) -> bool {
        !self.filters_delivery || self.may_receive_checked(client_id, principal, topic)
    }

    #[inline(never)]
    fn may_receive_checked(
        &self,
        client_id: &str,
        principal: Option<&Principal>,
        topic: &str,
    ) -> bool {
        let client = Principal::client(principal, client_id);
        client.token_allows_receive(topic)
            && self.authorizer(client.listener).may_receive(&client, topic)
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
    /// signal, or a new task if the connection is parked. A session without a
    /// connection has its events taken at once (see [`crate::timers::drain`]).
    pub(crate) fn wake(&self, handle: &Arc<SessionHandle>) {
        self.wake_locked(handle, handle.lock());
    }

    /// [`Shared::wake`] with the session already locked, as routing has it; the lock is
    /// released first.
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
        // Without a connection, what a delivery left in the session's events (the QoS 0
        // messages it dropped to make room) is taken here, as a connection would take
        // it: nothing else would until the session's next deadline.
        let offline = (!cell.session.is_connected() && !cell.gone)
            .then(|| (crate::timers::drain(&mut cell), cell.generation));
        drop(cell);
        if let Some((work, generation)) = offline {
            work.act(self, handle, generation);
        }
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
        Self::session_time(self.elapsed())
    }

    /// The time since the broker started, to the clock's resolution.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.origin.elapsed()
    }

    /// [`Shared::now`] at `elapsed` (from [`Shared::elapsed`]).
    pub(crate) fn session_time(elapsed: std::time::Duration) -> mqtt_session::Instant {
        mqtt_session::Instant::from_millis(elapsed.as_millis() as u64)
    }

    /// Converts a session deadline back to tokio time.
    /// A deadline too far to represent (a token valid for ever, as good as) is a year
    /// from now: the timer set for it fires then, finds nothing due, and is set again.
    pub(crate) fn deadline(&self, at: mqtt_session::Instant) -> tokio::time::Instant {
        self.origin
            .checked_add(std::time::Duration::from_millis(at.as_millis()))
            .unwrap_or_else(|| {
                tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 86_400)
            })
    }

    /// How long a write may make no progress before the connection is closed
    /// (`limits.write_timeout`).
    pub(crate) fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.live.write_timeout_secs())
    }
}
