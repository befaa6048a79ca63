//! Sessions: the registry from client identifier to session, and what each session
//! shares between its connection task and the publishers routing to it.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
};

use bytes::BytesMut;
use mqtt_codec::{ByteStr, Decoder, Packet, ProtocolVersion, SubscriptionId, SubscriptionOptions};
use mqtt_session::{Message, MessageId, ServerSession};
use mqtt_topics::{Filter, GroupId};
use tokio::sync::Notify;

#[cfg(unix)]
use crate::parking::Parked;
use crate::shared::Shared;

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
    pub(crate) cell: Mutex<SessionCell>,
    /// Wakes the task that writes this session's packets.
    pub(crate) notify: Notify,
    /// The store was told this session's messages changed and has not exported it
    /// since (see `Shared::session_changed`).
    pub(crate) dirty: std::sync::atomic::AtomicBool,
}

/// A session in the registry, found by its client identifier: the handle holds the
/// identifier already, so the registry's table holds one pointer per session rather than
/// a copy of the key beside it.
#[derive(Debug)]
pub(crate) struct Registered(pub(crate) Arc<SessionHandle>);

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
    pub(crate) charged: usize,
    /// What only some sessions hold, boxed on first use: 8 bytes for the others.
    pub(crate) extra: Option<Box<CellExtra>>,
    /// What the store holds of this session: `None` if nothing, as for every session
    /// that ends with its connection (see `store`).
    pub(crate) recorded: Option<crate::store::Recorded>,
    /// Who its client is, as its last connection authenticated: what the authorizer
    /// checks its deliveries against. `None` for a client without a user name on the
    /// first listener (no allocation for the common case), and for a session read back
    /// from the store that no client has connected to since.
    pub(crate) principal: Option<Arc<Principal>>,
    /// The session's connection, parked without a task while idle (see `parking`).
    #[cfg(unix)]
    pub(crate) parked: Option<Box<Parked>>,
}

/// Who a session's client is, beyond its client identifier (see
/// [`SessionCell::principal`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) username: Option<Box<str>>,
    /// The listener it connected on (an index in `Config::listeners`).
    pub(crate) listener: usize,
    /// What its JWT allows, if it says.
    pub(crate) grants: Option<crate::auth::jwt::TokenGrants>,
}

impl Principal {
    /// The principal of a connection, `None` for the common one (see
    /// [`SessionCell::principal`]).
    pub(crate) fn of(
        username: Option<&str>,
        listener: usize,
        grants: Option<crate::auth::jwt::TokenGrants>,
    ) -> Option<Arc<Self>> {
        (username.is_some() || listener != 0 || grants.is_some()).then(|| {
            Arc::new(Self {
                username: username.map(Box::from),
                listener,
                grants,
            })
        })
    }

    /// `client_id`'s client as the authorizer sees it.
    pub(crate) fn client<'a>(
        principal: Option<&'a Self>,
        client_id: &'a str,
    ) -> crate::auth::ClientInfo<'a> {
        let (username, listener, grants) = principal.map_or((None, 0, None), |p| {
            (p.username.as_deref(), p.listener, p.grants.as_ref())
        });
        crate::auth::ClientInfo::new(client_id, username)
            .on_listener(listener)
            .with_grants(grants)
    }
}

/// The parts of a [`SessionCell`] most sessions never use, or use only while busy.
#[derive(Debug, Default)]
pub(crate) struct CellExtra {
    /// QoS 1 messages this session received through a shared subscription and has not
    /// acknowledged: if the session ends first, another member of the group gets them
    /// (5.0 section 4.8.2: "SHOULD send the Application Message to another Client").
    /// QoS 2 messages are never redistributed ([MQTT-4.8.2-5]).
    pub(crate) shared_unacked: BTreeMap<MessageId, (GroupId, Message)>,
    /// QoS 0 PUBLISH packets encoded once for all their subscribers (see
    /// [`Shared::route`]), for this connection to write ahead of what the session
    /// sends next. They belong to the connection they were encoded for: a takeover or
    /// a lost connection discards them.
    pub(crate) encoded: BytesMut,
    /// How many packets `encoded` holds.
    pub(crate) encoded_count: u32,
    /// What the client did wrong, when the session closes its connection for a
    /// protocol error: for the disconnection's log line.
    pub(crate) close_why: Option<Box<str>>,
    /// The enhanced authentication of the connection (5.0 Authentication Method):
    /// what a re-authentication must match, and one under way.
    pub(crate) enhanced_auth: Option<Box<crate::connection::EnhancedAuth>>,
    /// Inbound QoS 2 packet identifiers of messages received but not yet routed (a
    /// durable session only): the store's export leaves them out until the copies of
    /// their message are queued, in the same commit group (see `Store::group`).
    pub(crate) unrouted: Vec<mqtt_codec::PacketId>,
    /// The messages of this persistent session that the store holds on disk only,
    /// beyond its in-memory window (see `Shared::page_out`).
    pub(crate) paged: Option<crate::store::Paged>,
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

    pub(crate) fn extra_mut(&mut self) -> &mut CellExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the extra part if nothing in it is in use.
    pub(crate) fn shrink_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|x| {
            x.encoded_count == 0
                && x.shared_unacked.is_empty()
                && x.close_why.is_none()
                && x.enhanced_auth.is_none()
                && x.unrouted.is_empty()
                && x.paged.is_none()
        }) {
            self.extra = None;
        }
    }

    /// Bytes of encoded packets waiting.
    pub(crate) fn encoded_len(&self) -> usize {
        self.extra.as_ref().map_or(0, |x| x.encoded.len())
    }

    /// Adds an encoded packet to write.
    pub(crate) fn push_encoded(&mut self, packet: &[u8]) {
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

    /// Notes what the client did wrong, as the session closes its connection.
    pub(crate) fn set_close_why(&mut self, why: Box<str>) {
        self.extra_mut().close_why = Some(why);
    }

    /// Acts on the session's deadlines that have passed at `now` (keep-alive, the
    /// connection's token), noting why for the close's log line when the token ran out.
    pub(crate) fn handle_timeout(&mut self, now: mqtt_session::Instant) {
        let expired = self
            .session
            .credentials_expiry()
            .is_some_and(|at| now >= at);
        self.session.handle_timeout(now);
        if expired {
            self.set_close_why("the token it connected with expired (exp plus leeway)".into());
        }
    }

    /// Takes what [`SessionCell::set_close_why`] noted.
    pub(crate) fn take_close_why(&mut self) -> Option<Box<str>> {
        let why = self.extra.as_deref_mut().and_then(|x| x.close_why.take());
        self.shrink_extra();
        why
    }

    /// Keeps a QoS 1 message delivered through shared subscription `group` until it is
    /// acknowledged.
    pub(crate) fn keep_shared(&mut self, id: MessageId, group: GroupId, message: Message) {
        self.extra_mut().shared_unacked.insert(id, (group, message));
    }

    /// Takes the shared-subscription messages still unacknowledged.
    pub(crate) fn take_shared(&mut self) -> BTreeMap<MessageId, (GroupId, Message)> {
        let taken = self
            .extra
            .as_deref_mut()
            .map(|x| std::mem::take(&mut x.shared_unacked))
            .unwrap_or_default();
        self.shrink_extra();
        taken
    }

    /// Takes the shared-subscription messages among `ids` still unacknowledged.
    pub(crate) fn take_shared_of(&mut self, ids: &[MessageId]) -> Vec<(GroupId, Message)> {
        let Some(x) = self.extra.as_deref_mut() else {
            return Vec::new();
        };
        let taken = ids
            .iter()
            .filter_map(|id| x.shared_unacked.remove(id))
            .collect();
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

impl Shared {
    pub(crate) fn session_count(&self) -> usize {
        self.registry().len()
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, HashSet<Registered>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every session, as the registry holds them now (a snapshot of handles taken under
    /// its lock; each session is locked, if at all, after it is released).
    pub(crate) fn handles(&self) -> Vec<Arc<SessionHandle>> {
        self.registry().iter().map(|r| Arc::clone(&r.0)).collect()
    }

    /// A client identifier for a client that sent none.
    pub(crate) fn assign_client_id(&self) -> ByteStr {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        let nanos = self.origin.elapsed().subsec_nanos();
        ByteStr::try_from(format!("auto-{n:x}-{nanos:08x}")).unwrap_or_default()
    }

    /// The session for `client_id`, if there is one.
    pub(crate) fn existing_session(&self, client_id: &str) -> Option<Arc<SessionHandle>> {
        self.registry()
            .get(client_id)
            .map(|Registered(h)| Arc::clone(h))
    }

    /// The session for `client_id`, created if missing.
    pub(crate) fn session(&self, client_id: &ByteStr) -> Arc<SessionHandle> {
        let mut registry = self.registry();
        if let Some(Registered(h)) = registry.get(client_id.as_str()) {
            return Arc::clone(h);
        }
        let session = ServerSession::new(client_id.clone(), Arc::clone(&self.limits));
        let handle = self.new_handle(session, None);
        registry.insert(Registered(Arc::clone(&handle)));
        handle
    }

    /// A handle for `session`, not registered yet.
    fn new_handle(
        &self,
        session: ServerSession,
        recorded: Option<crate::store::Recorded>,
    ) -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            client_id: session.client_id().clone(),
            cell: Mutex::new(SessionCell {
                session,
                generation: 0,
                gone: false,
                charged: 0,
                extra: None,
                recorded,
                principal: None,
                #[cfg(unix)]
                parked: None,
            }),
            notify: Notify::new(),
            dirty: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Registers a persistent session read back from the store, without a connection:
    /// its subscriptions pass the checks a SUBSCRIBE's do (syntax, authorization: what
    /// the authorizer refuses now is left out) and go into the index, and its expiry
    /// (`expires_at`, `None` for never) runs. False if the registry has the client
    /// already.
    pub(crate) fn restore_session(
        self: &Arc<Self>,
        record: crate::store::SessionRecord,
        expires_at: Option<mqtt_session::Instant>,
    ) -> Result<bool, crate::store::StoreError> {
        let crate::store::SessionRecord {
            client_id,
            version,
            session_expiry,
            subscriptions,
            expires_at: deadline,
            messages,
            ..
        } = record;
        let (kept, left_out): (Vec<_>, Vec<_>) = subscriptions.into_iter().partition(|r| {
            // No client has connected since: checked as one without a user name on the
            // first listener, as its deliveries are until its client comes back.
            crate::connection::check_filter(self, &client_id, None, &r.filter, version).is_ok()
        });
        if !left_out.is_empty() {
            tracing::info!(client = %client_id, filters = ?left_out.iter().map(|r| &r.filter).collect::<Vec<_>>(), "stored subscriptions left out: refused now");
        }
        let mut session = ServerSession::restored(
            client_id,
            Arc::clone(&self.limits),
            version,
            session_expiry,
            expires_at,
            kept,
        );
        let mut paged = None;
        if let Some(saved) = messages {
            // Times in the state are relative to its export: rebased on a `now` as far
            // back as the broker was down, so that they run on the wall clock (as far as
            // session time reaches back; later otherwise, never earlier).
            let down = std::time::SystemTime::now()
                .duration_since(saved.saved_at)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let then =
                mqtt_session::Instant::from_millis(self.now().as_millis().saturating_sub(down));
            // Format 2: the messages are records of their own (see `disk`).
            let detached = saved.state.get(4) == Some(&2);
            let wall = std::time::SystemTime::now();
            let now = self.now();
            let messages = saved.messages.into_iter().filter_map(|r| {
                let at = match r.expires_at {
                    None => None,
                    // Expired while the broker was down: left out (its record goes
                    // with the session's next write).
                    Some(at) => Some(crate::store::session_time(at, now, wall)?),
                };
                Some((MessageId(r.id), at, r.message))
            });
            paged = saved.paged.map(crate::store::Paged::from);
            let restored = if detached {
                session.restore_detached(&saved.state, then, messages)
            } else {
                session.restore_messages(&saved.state, then)
            };
            restored.map_err(|e| {
                crate::store::StoreError::new(format!(
                    "table `messages`, key {:?}: {e}",
                    session.client_id().as_str()
                ))
            })?;
        }
        // A will whose connection ended with the process waits for its delay from now.
        session.connection_lost_with_process(self.now());
        let recorded = crate::store::Recorded::of(&session);
        let handle = {
            let mut registry = self.registry();
            if registry.contains(session.client_id().as_str()) {
                return Ok(false);
            }
            let handle = self.new_handle(session, recorded);
            registry.insert(Registered(Arc::clone(&handle)));
            handle
        };
        {
            let mut cell = handle.lock();
            if paged.is_some() {
                cell.extra_mut().paged = paged;
            }
            for r in cell.session.subscriptions().iter() {
                if let Ok(filter) = Filter::parse(&r.filter, version) {
                    let sub = Sub {
                        handle: Arc::clone(&handle),
                        options: r.options,
                        identifier: r.identifier,
                    };
                    self.index.subscribe(filter, handle.key, sub);
                }
            }
            self.keep_restored_shared(&handle, &mut cell);
            // The record goes without what was left out, and with the deadline that
            // runs from now if it had none (its connection was lost with the process).
            if !left_out.is_empty() || (deadline.is_none() && expires_at.is_some()) {
                self.record_session(&mut cell, true);
            }
        }
        self.start_offline_timers(&handle);
        Ok(true)
    }

    /// After a restart, a restored session's QoS 1 messages that came through a shared
    /// subscription are kept again to hand to another member of the group should the
    /// session end before they are acknowledged (as `Shared::deliver` keeps them): a
    /// message whose topic matches one of the session's shared subscriptions and none of
    /// its other subscriptions came through that group. Called with its subscriptions in
    /// the index, for the messages it holds in memory (those paged out stay with it).
    fn keep_restored_shared(&self, handle: &Arc<SessionHandle>, cell: &mut SessionCell) {
        let shares = cell
            .session
            .subscriptions()
            .filters()
            .any(|f| f.starts_with("$share/"));
        if !shares {
            return;
        }
        let mut held = Vec::new();
        cell.session.for_each_message(|id, _, message| {
            if message.qos == mqtt_codec::QoS::AtLeastOnce {
                held.push((id, message));
            }
        });
        let mut matches = mqtt_topics::Matches::default();
        for (id, message) in held {
            let Ok(topic) = mqtt_topics::TopicName::new(&message.topic) else {
                continue;
            };
            matches.clear();
            self.index.matches(topic, &mut matches);
            if matches.subscribers().any(|s| *s.key() == handle.key) {
                continue;
            }
            let group = matches
                .shared()
                .find(|g| g.members().iter().any(|(key, _)| *key == handle.key))
                .map(|g| g.id());
            if let Some(group) = group {
                cell.keep_shared(id, group, message);
            }
        }
    }

    /// Runs the timers of a session that has no connection (its expiry; a will, once
    /// the store keeps wills): the one place a restored session's timers start.
    fn start_offline_timers(self: &Arc<Self>, handle: &Arc<SessionHandle>) {
        crate::timers::offline(self, handle, None);
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
                // Its record goes before the registry lets a new session of the client
                // in, whose record it would otherwise remove.
                self.forget_session(&mut cell);
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
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use mqtt_codec::QoS;
    use mqtt_session::Limits;

    use super::*;
    use crate::router::Encoded;
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
                recorded: None,
                principal: None,
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
                let packet = encoded.get(&m, version, m.retain).unwrap();
                assert!(cell.session.takes_encoded_publish(packet.len()));
                cell.push_encoded(packet);
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
