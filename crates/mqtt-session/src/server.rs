//! The server end of a session.

use alloc::{
    boxed::Box,
    collections::{BTreeMap, BTreeSet, btree_map},
    sync::Arc,
    vec::Vec,
};
use core::num::{NonZeroU16, NonZeroU32};

use mqtt_codec::{
    ByteStr, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, ReasonCode, SubAck,
    Subscribe, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use crate::{
    error::ProtocolError,
    event::Event,
    flow::{Flow, PeerLimits, Tx},
    message::{Limits, Message, MessageId, Refused},
    outbound::Awaiting,
    time::{Duration, Instant},
};

/// A subscription the session holds, kept so the session can be exported and moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The topic filter as the client sent it (with `$share/` if shared).
    pub filter: ByteStr,
    /// Its options.
    pub options: SubscriptionOptions,
    /// Its Subscription Identifier (5.0).
    pub identifier: Option<SubscriptionId>,
}

/// What a session keeps of one subscription beside its filter, which is the key it is
/// found by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) options: SubscriptionOptions,
    pub(crate) identifier: Option<SubscriptionId>,
}

/// The subscriptions a session holds, ordered by filter (byte order), found by filter
/// in O(log n): what [`ServerSession::subscriptions`] returns.
///
/// Iterating yields [`SubscriptionRecord`]s by value; their filters share the session's
/// bytes (a reference count, no copy).
#[derive(Clone, Copy, Debug)]
pub struct Subscriptions<'a>(&'a BTreeMap<ByteStr, Granted>);

impl<'a> Subscriptions<'a> {
    /// How many subscriptions the session holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the session holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The subscriptions, ordered by filter.
    pub fn iter(&self) -> SubscriptionIter<'a> {
        SubscriptionIter(self.0.iter())
    }

    /// The filters alone, ordered, borrowed.
    pub fn filters(&self) -> impl Iterator<Item = &'a ByteStr> + 'a {
        self.0.keys()
    }

    /// The subscription with exactly this filter (`$share/` prefix included), if held.
    pub fn get(&self, filter: &str) -> Option<SubscriptionRecord> {
        self.0
            .get_key_value(filter)
            .map(|(filter, g)| SubscriptionRecord {
                filter: filter.clone(),
                options: g.options,
                identifier: g.identifier,
            })
    }

    /// Whether a subscription with exactly this filter is held.
    pub fn contains(&self, filter: &str) -> bool {
        self.0.contains_key(filter)
    }
}

impl PartialEq for Subscriptions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Subscriptions<'_> {}

impl<'a> IntoIterator for Subscriptions<'a> {
    type Item = SubscriptionRecord;
    type IntoIter = SubscriptionIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The subscriptions of a session, ordered by filter: from [`Subscriptions::iter`].
#[derive(Clone, Debug)]
pub struct SubscriptionIter<'a>(btree_map::Iter<'a, ByteStr, Granted>);

impl Iterator for SubscriptionIter<'_> {
    type Item = SubscriptionRecord;

    fn next(&mut self) -> Option<SubscriptionRecord> {
        self.0.next().map(|(filter, g)| SubscriptionRecord {
            filter: filter.clone(),
            options: g.options,
            identifier: g.identifier,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for SubscriptionIter<'_> {}

/// "Never" for a Session Expiry Interval.
const NEVER: u32 = u32::MAX;

/// An optional deadline in 8 bytes instead of an `Option<Instant>`'s 16: `u64::MAX`
/// milliseconds (half a billion years) stands for none.
#[derive(Clone, Copy, Debug)]
struct Deadline(u64);

impl Deadline {
    const NONE: Self = Self(u64::MAX);

    /// `at`, a time past the largest one kept being kept as the largest.
    fn new(at: Option<Instant>) -> Self {
        at.map_or(Self::NONE, |t| Self(t.as_millis().min(u64::MAX - 1)))
    }

    fn get(self) -> Option<Instant> {
        (self.0 != u64::MAX).then(|| Instant::from_millis(self.0))
    }
}

/// The server end of an MQTT session: one per client session, living across the
/// connections that resume it, with no I/O, no clock and no randomness.
///
/// # Driving it
/// The broker's connection task decodes the client's CONNECT, decides whether to accept
/// it (authentication, client identifier rules), finds or creates the session, and calls
/// [`accept`](Self::accept). After that:
/// - **Inputs:** [`handle_packet`](Self::handle_packet) for each decoded packet;
///   [`handle_timeout`](Self::handle_timeout) at the deadline from
///   [`poll_timeout`](Self::poll_timeout); [`connection_lost`](Self::connection_lost) when
///   the socket closes, however it closes.
/// - **Commands:** [`deliver`](Self::deliver) a routed message;
///   [`suback`](Self::suback) / [`unsuback`](Self::unsuback) to answer requests;
///   [`disconnect`](Self::disconnect) to end the connection with a reason.
/// - **Outputs**, drained after every input or command, in this order:
///   [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
///   [`poll_timeout`](Self::poll_timeout).
///
/// While no connection is attached the session still takes messages (QoS 1/2, and QoS 0
/// if [`Limits::queue_qos0_offline`]), and its timer reports the will delay and session
/// expiry as [`Event::Will`] and [`Event::SessionExpired`].
#[derive(Debug)]
pub struct ServerSession {
    flow: Flow,
    client_id: ByteStr,
    established: bool,
    /// Keep Alive in seconds (0: none).
    keep_alive: u16,
    /// Session Expiry Interval in seconds; [`NEVER`] for never.
    session_expiry: u32,
    /// Boxed: most sessions have none, and the session is kept per client.
    will: Option<Box<Will>>,
    will_due: Deadline,
    expires_at: Deadline,
    /// While connected: when the credentials the connection was accepted with run out
    /// (a token's expiry, see [`ServerSession::set_credentials_expiry`]).
    credentials_expire: Deadline,
    /// By filter, so that SUBSCRIBE and UNSUBSCRIBE cost O(log n) per filter: a packet
    /// of 100,000 filters is O(n log n), not quadratic.
    subscriptions: BTreeMap<ByteStr, Granted>,
}

impl ServerSession {
    /// A new, empty session for `client_id`. `limits` may be shared (an
    /// `Arc<Limits>`): a server gives the same limits to every session, and each session
    /// then keeps a pointer instead of a copy.
    pub fn new(client_id: ByteStr, limits: impl Into<Arc<Limits>>) -> Self {
        Self {
            flow: Flow::new(ProtocolVersion::V5, limits.into()),
            client_id,
            established: false,
            keep_alive: 0,
            session_expiry: 0,
            will: None,
            will_due: Deadline::NONE,
            expires_at: Deadline::NONE,
            credentials_expire: Deadline::NONE,
            subscriptions: BTreeMap::new(),
        }
    }

    /// A session brought back from storage after a restart, without its connection: the
    /// persistent session of `client_id`, last connected with `version`, with its Session
    /// Expiry Interval (`session_expiry`, seconds, `u32::MAX` for never) and
    /// `subscriptions`.
    ///
    /// It is established and has no connection, as after
    /// [`connection_lost`](Self::connection_lost): a CONNECT with Clean Start 0 before
    /// `expires_at` resumes it (Session Present 1, its subscriptions kept; see
    /// [`would_resume`](Self::would_resume)), one with Clean Start 1 replaces it. Its
    /// timer ([`poll_timeout`](Self::poll_timeout)) is `expires_at`, where
    /// [`handle_timeout`](Self::handle_timeout) reports [`Event::SessionExpired`]; `None`
    /// is never. The caller chooses the deadline: the one stored, rebased on its own
    /// clock, or `session_expiry` from the restart.
    ///
    /// Only that comes back: no message queued or in flight, no will, no QoS 2 exchange
    /// half done (what [`export`](Self::export) and [`restore`](Self::restore) carry
    /// too). Subscriptions with the same filter keep the last one. `limits` is as for
    /// [`new`](Self::new).
    pub fn restored(
        client_id: ByteStr,
        limits: impl Into<Arc<Limits>>,
        version: ProtocolVersion,
        session_expiry: u32,
        expires_at: Option<Instant>,
        subscriptions: impl IntoIterator<Item = SubscriptionRecord>,
    ) -> Self {
        let mut session = Self::new(client_id, limits);
        session.flow.version = version;
        session.import_fields(
            true,
            session_expiry,
            None,
            None,
            expires_at,
            subscriptions.into_iter().collect(),
        );
        session
    }

    /// The client identifier.
    pub fn client_id(&self) -> &ByteStr {
        &self.client_id
    }

    /// The protocol version of the current (or last) connection.
    pub fn version(&self) -> ProtocolVersion {
        self.flow.version
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.flow.connected
    }

    /// The subscriptions the session holds, ordered by filter.
    pub fn subscriptions(&self) -> Subscriptions<'_> {
        Subscriptions(&self.subscriptions)
    }

    /// Whether the inbound QoS 2 message with packet identifier `id` was received and
    /// awaits its PUBREL (a PUBLISH with it now is a duplicate, not delivered again).
    pub fn awaits_pubrel(&self, id: mqtt_codec::PacketId) -> bool {
        self.flow
            .traffic()
            .is_some_and(|t| t.inbox.awaiting_pubrel.contains(&id))
    }

    /// How many subscriptions the session holds; O(1).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The Session Expiry Interval in force, in seconds (`u32::MAX`: never): what the
    /// last CONNECT asked, capped by [`Limits::max_session_expiry`], or what the
    /// client's DISCONNECT changed it to (5.0); for 3.x, 0 with Clean Session 1 and
    /// [`Limits::persistent_session_expiry`] without. 0 means the session ends with its
    /// connection.
    pub fn session_expiry(&self) -> u32 {
        self.session_expiry
    }

    /// When the session expires: set while it has no connection and an expiry (from
    /// [`connection_lost`](Self::connection_lost), or given to
    /// [`restored`](Self::restored)), `None` while connected, for a session that never
    /// expires, and once [`handle_timeout`](Self::handle_timeout) reported it.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at.get()
    }

    /// Whether [`accept`](Self::accept) of `connect` at `now` would resume this session
    /// (Session Present 1) instead of starting a new, empty one. Call it with the old
    /// connection attached (a takeover) or after
    /// [`connection_lost`](Self::connection_lost): the answer is the same.
    ///
    /// It resumes only when `connect` has Clean Start (Clean Session) 0 and the session
    /// is still alive: it was established, it could outlive its connection (not 3.x
    /// Clean Session 1, not a 5.0 Session Expiry Interval of 0, whether CONNECT or the
    /// client's DISCONNECT set it), and its expiry has not passed, whether or not
    /// [`handle_timeout`](Self::handle_timeout) has reported it yet (3.1.1
    /// [MQTT-3.1.2-6], [MQTT-3.2.2-3]; 5.0 [MQTT-3.1.2-6], [MQTT-3.2.2-3], §3.1.2.11.2).
    ///
    /// When it would not, `accept` discards every subscription the session holds: a
    /// broker that keeps them in an index of its own reads
    /// [`subscriptions`](Self::subscriptions) first and takes them out.
    pub fn would_resume(&self, now: Instant, connect: &Connect) -> bool {
        !connect.clean_start && self.is_alive(now)
    }

    /// Whether a session exists to be resumed at `now` (see
    /// [`would_resume`](Self::would_resume)).
    fn is_alive(&self, now: Instant) -> bool {
        if !self.established {
            return false;
        }
        if self.flow.connected {
            // It ends when this connection does if its expiry is 0.
            self.session_expiry != 0
        } else {
            self.expires_at.get().is_none_or(|t| now < t)
        }
    }

    /// Accepts a connection for this session: ends the one attached, if any (session
    /// takeover); resumes the session or starts a new one, as
    /// [`would_resume`](Self::would_resume) says; takes the client's limits; queues
    /// CONNACK (Reason Code 0x00, [MQTT-3.1.4-5]) and then the resends of a resumed
    /// session. Returns the CONNACK queued: its Session Present tells which happened.
    ///
    /// `properties` holds what the broker announces of itself (Maximum QoS, Retain
    /// Available, wildcard / shared / identifier support, Assigned Client Identifier,
    /// ...); the session adds Receive Maximum, Maximum Packet Size, Topic Alias Maximum,
    /// Server Keep Alive and Session Expiry Interval where they differ from the defaults.
    ///
    /// # The session it starts
    /// A new session keeps nothing of the old one: subscriptions, queued and in-flight
    /// messages (each reported as [`Event::Dropped`] with
    /// [`DropReason::SessionDiscarded`](crate::DropReason::SessionDiscarded)), and QoS 2
    /// messages from the client awaiting PUBREL. An [`Event::SessionExpired`] not yet
    /// drained is withdrawn: the session it spoke of is the one being replaced.
    ///
    /// # The will of the previous connection
    /// It is reported as [`Event::Will`] if it was due by `now`: its Will Delay Interval
    /// had passed, or its session had ended (expired, or could not outlive its
    /// connection), "whichever happens first" (5.0 §3.1.3.2.2). A will without a delay
    /// (every 3.1.1 will) is due when its connection closes, so a takeover publishes it
    /// (3.1.1 [MQTT-3.1.2-8]; 5.0 §3.1.4 step 3: "that Will Message is published as
    /// described in section 3.1.2.5"), whether the session resumes or not. A will still
    /// waiting for its delay is cancelled by this connection, Clean Start 1 included
    /// (5.0 [MQTT-3.1.2-8]: "... unless ... a new Network Connection for the ClientID is
    /// opened before the Will Delay Interval has elapsed"; [MQTT-3.1.3-9]).
    ///
    /// A connection already attached may be ended with
    /// [`connection_lost`](Self::connection_lost) first or left to `accept`: the same
    /// happens, at the same `now`.
    pub fn accept(
        &mut self,
        now: Instant,
        connect: &Connect,
        mut properties: ConnAckProperties,
    ) -> ConnAck {
        let session_present = self.would_resume(now, connect);
        self.connection_lost(now);
        self.flow.forget_unsettled();
        self.credentials_expire = Deadline::NONE;
        let version = connect.version;
        let v5 = version.is_v5();
        self.flow.version = version;
        let limits = Arc::clone(&self.flow.limits);

        if let Some(will) = self.will.take() {
            if self.will_due.get().is_some_and(|t| t <= now) {
                self.flow.push_event(Event::Will(will));
            }
        }
        self.will_due = Deadline::NONE;
        self.will = connect.will.clone().map(Box::new);
        self.expires_at = Deadline::NONE;
        if let Some(t) = self.flow.traffic_mut_if_any() {
            t.events.forget_expiry();
        }

        // 3.1.2.4: Clean Start (and a session that did not survive) starts a new one;
        // [MQTT-3.2.2-2], [MQTT-3.2.2-3]: Session Present tells the client which happened.
        if !session_present {
            self.flow.discard_state();
            self.subscriptions.clear();
        }

        let cp = &connect.properties;
        self.session_expiry = if v5 {
            let asked = cp.session_expiry_interval.unwrap_or(0);
            let granted = asked.min(limits.max_session_expiry);
            if granted != asked {
                properties.session_expiry_interval = Some(granted);
            }
            granted
        } else if connect.clean_start {
            0
        } else {
            // 3.x has no Session Expiry: a persistent session lives until the server
            // ends it (Mosquitto's `persistent_client_expiration`).
            limits.persistent_session_expiry
        };

        let mut keep_alive = connect.keep_alive;
        if v5
            && limits.max_keep_alive > 0
            && (keep_alive == 0 || keep_alive > limits.max_keep_alive)
        {
            keep_alive = limits.max_keep_alive;
            properties.server_keep_alive = Some(keep_alive);
        }
        self.keep_alive = keep_alive;

        if v5 {
            self.flow.peer = PeerLimits {
                receive_maximum: cp.receive_maximum.map_or(u16::MAX, NonZeroU16::get),
                max_packet_size: cp
                    .maximum_packet_size
                    .map_or(mqtt_codec::MAX_PACKET_SIZE, NonZeroU32::get),
                topic_alias_maximum: cp.topic_alias_maximum.unwrap_or(0),
            };
            self.flow.strip_diagnostics = cp.request_problem_information == Some(false);
            if limits.receive_maximum < u16::MAX {
                properties.receive_maximum = NonZeroU16::new(limits.receive_maximum);
            }
            if limits.max_packet_size < mqtt_codec::MAX_PACKET_SIZE {
                properties.maximum_packet_size = NonZeroU32::new(limits.max_packet_size);
            }
            if limits.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
            }
        } else {
            self.flow.peer = PeerLimits::default();
            properties = ConnAckProperties::default();
        }

        let connack = ConnAck {
            session_present,
            reason_code: ReasonCode::SUCCESS,
            properties,
        };
        self.established = true;
        self.flow.send(connack.clone());
        self.flow.resume(now);
        connack
    }

    /// Drops the messages waiting for the client, queued or in flight with their
    /// PUBLISH unacknowledged, for which `refuse` says so: for a server whose read
    /// permissions may differ for the client that resumes the session (another user,
    /// or rules changed since the messages were queued), as Mosquitto checks a durable
    /// client's queued messages when it reconnects. Each is reported as
    /// [`Event::Dropped`] with [`DropReason::NotAuthorized`](crate::DropReason). A QoS 2
    /// message already sent is not resent: its exchange goes on with PUBREL, which
    /// releases the packet identifier the client may hold (4.3.3). Call it before
    /// [`accept`](Self::accept), which resends what is in flight. Returns the
    /// identifiers of the messages dropped.
    pub fn drop_messages_where(&mut self, refuse: impl FnMut(&Message) -> bool) -> Vec<MessageId> {
        match self.flow.traffic_mut_if_any() {
            Some(t) => t
                .outbox
                .drop_where(refuse, crate::DropReason::NotAuthorized, &mut t.events),
            None => Vec::new(),
        }
    }

    /// Queues a message routed to this session. Refused, with the message handed back,
    /// when the queue is full (see [`crate::DropReason::QueueFull`]) or when a QoS 0
    /// message finds the session offline.
    pub fn deliver(&mut self, now: Instant, message: Message) -> Result<MessageId, Refused> {
        self.flow.enqueue(now, message, false)
    }

    /// Acknowledges a PUBLISH that [`Event::Message`] reported, when
    /// [`Limits::defer_publish_acks`] leaves the verdict to the server: call it once per
    /// QoS 1 or 2 message, in the order of the events ([MQTT-4.6.0-2]), after the
    /// message was authorized and routed. `reason` is what 5.0 PUBACK / PUBREC carry:
    /// 0x00 Success, 0x10 No matching subscribers, 0x87 Not authorized, 0x97 Quota
    /// exceeded, 0x80 Unspecified error; 3.1 and 3.1.1 acknowledge regardless, as
    /// [MQTT-3.3.5-2] allows. `qos` and `packet_id` are the message's and its
    /// [`Arrival`](crate::Arrival)'s.
    pub fn settle_publish(
        &mut self,
        qos: mqtt_codec::QoS,
        packet_id: Option<mqtt_codec::PacketId>,
        reason: ReasonCode,
    ) {
        self.flow.settle_publish(qos, packet_id, reason);
    }

    /// What [`settle_publish`](Self::settle_publish) is for a PUBLISH whose connection
    /// ended (or was taken over) before its verdict was settled: nothing is sent, since
    /// the next connection's client may use the identifier for another message, but a
    /// refused QoS 2 message (5.0) frees its identifier, so that its resend is decided
    /// anew rather than answered as a duplicate of a message never routed.
    pub fn settle_publish_unsent(
        &mut self,
        qos: mqtt_codec::QoS,
        packet_id: Option<mqtt_codec::PacketId>,
        reason: ReasonCode,
    ) {
        self.flow.settle_unsent(qos, packet_id, reason);
    }

    /// Applies [`Limits::max_subscriptions`] to the reason codes of `subscribe`:
    /// success codes of filters the session does not hold yet (nor granted earlier in
    /// this packet) beyond the limit become 0x97 Quota exceeded (5.0) or 0x80 Failure
    /// (3.x). Replacing a filter the session holds is always allowed. Returns how many
    /// it refused. [`suback`](Self::suback) applies it itself; a broker calls it first
    /// to learn which filters to leave out of its own index. O(n log n) in the packet.
    pub fn limit_subscriptions(
        &self,
        subscribe: &Subscribe,
        reason_codes: &mut [ReasonCode],
    ) -> usize {
        let max = self.flow.limits.max_subscriptions;
        let held = self.subscriptions.len();
        // The common case: everything fits even if every filter is new.
        if held.saturating_add(subscribe.subscriptions.len()) <= max {
            return 0;
        }
        let refusal = if self.flow.version.is_v5() {
            ReasonCode::QUOTA_EXCEEDED
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        let mut room = max.saturating_sub(held);
        let mut added = BTreeSet::new();
        let mut refused = 0;
        for (sub, code) in subscribe.subscriptions.iter().zip(reason_codes.iter_mut()) {
            let filter = sub.filter.as_str();
            if code.is_error() || self.subscriptions.contains_key(filter) || added.contains(filter)
            {
                continue;
            }
            if room == 0 {
                *code = refusal;
                refused += 1;
            } else {
                room -= 1;
                added.insert(filter);
            }
        }
        refused
    }

    /// Answers a SUBSCRIBE from [`Event::Subscribe`] with one reason code per filter, in
    /// order ([MQTT-3.9.3-1]), and records the granted subscriptions. New filters beyond
    /// [`Limits::max_subscriptions`] are refused whatever `reason_codes` says (see
    /// [`limit_subscriptions`](Self::limit_subscriptions)).
    pub fn suback(&mut self, subscribe: &Subscribe, mut reason_codes: Vec<ReasonCode>) {
        self.limit_subscriptions(subscribe, &mut reason_codes);
        let identifier = subscribe.properties.subscription_identifier;
        for (sub, code) in subscribe.subscriptions.iter().zip(&reason_codes) {
            if code.is_error() {
                continue;
            }
            let granted = Granted {
                options: sub.options,
                identifier,
            };
            // [MQTT-3.8.4-3]: a filter already held is replaced, not added.
            match self.subscriptions.get_mut(sub.filter.as_str()) {
                Some(existing) => *existing = granted,
                None => {
                    self.subscriptions.insert(sub.filter.clone(), granted);
                }
            }
        }
        let ack = SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            properties: Default::default(),
        };
        self.flow.send(ack);
    }

    /// Answers an UNSUBSCRIBE from [`Event::Unsubscribe`] and forgets the filters. 5.0
    /// sends `reason_codes`, one per filter; 3.x sends none.
    pub fn unsuback(&mut self, unsubscribe: &Unsubscribe, reason_codes: Vec<ReasonCode>) {
        for filter in &unsubscribe.filters {
            self.subscriptions.remove(filter.as_str());
        }
        let ack = UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes,
            properties: Default::default(),
        };
        self.flow.send(ack);
    }

    /// Queues AUTH (5.0 enhanced authentication): 0x18 (Continue authentication) with
    /// the next challenge, or 0x00 (Success) ending a re-authentication. The caller
    /// runs the method's exchange (it answers [`Event::Auth`]) and fills in the
    /// Authentication Method of CONNECT ([MQTT-4.12.0-5]); it must not send AUTH to a
    /// client whose CONNECT had none ([MQTT-4.12.0-6]). Nothing is queued for 3.x.
    pub fn send_auth(&mut self, auth: mqtt_codec::Auth) {
        if self.flow.version.is_v5() {
            self.flow.send(auth);
        }
    }

    /// Ends the connection from the server side with `reason` (sent in DISCONNECT for
    /// 5.0; 3.x just closes). [`Event::Closed`] follows.
    pub fn disconnect(&mut self, reason: ReasonCode) {
        self.flow.queue_disconnect(reason);
        self.flow.push_event(Event::Closed { reason });
    }

    /// As [`disconnect`](Self::disconnect), with a Reason String (5.0) saying why, for
    /// the client's logs: "malformed PUBLISH: topic name contains a wildcard character".
    pub fn disconnect_explained(&mut self, reason: ReasonCode, why: &str) {
        self.flow.queue_disconnect_explained(reason, Some(why));
        self.flow.push_event(Event::Closed { reason });
    }

    /// Handles a packet from the client. On error the connection must close; for 5.0 a
    /// DISCONNECT with the reason is queued first ([MQTT-4.13.1-1]).
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        self.flow.last_rx = now;
        let result = self.dispatch(packet);
        if let Err(e) = &result {
            self.flow.queue_disconnect_explained(e.reason, Some(e.what));
        }
        result
    }

    fn dispatch(&mut self, packet: Packet) -> Result<(), ProtocolError> {
        if !self.flow.connected {
            return Err(ProtocolError::new(
                ReasonCode::PROTOCOL_ERROR,
                None,
                "packet on a session with no connection",
            ));
        }
        match packet {
            // Our Receive Maximum bounds a 3.x client's unreleased QoS 2 messages too.
            // [MQTT-3.3.4-6]: Subscription Identifiers are the server's to send.
            Packet::Publish(p) if !p.properties.subscription_identifiers.is_empty() => {
                return Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    Some("MQTT-3.3.4-6"),
                    "PUBLISH from a client carries a Subscription Identifier",
                ));
            }
            Packet::Publish(p) => return self.flow.handle_publish(p, true),
            Packet::PubAck(a) => self
                .flow
                .handle_ack(a.packet_id, Awaiting::PubAck, a.reason_code),
            Packet::PubRec(a) => self
                .flow
                .handle_ack(a.packet_id, Awaiting::PubRec, a.reason_code),
            Packet::PubComp(a) => {
                self.flow
                    .handle_ack(a.packet_id, Awaiting::PubComp, a.reason_code);
            }
            Packet::PubRel(r) => self.flow.handle_pubrel(r.packet_id),
            Packet::Auth(a) if self.flow.version.is_v5() => {
                self.flow.push_event(Event::Auth(Box::new(a)));
            }
            // [MQTT-3.12.4-1]
            Packet::PingReq => self.flow.traffic_mut().tx.push_back(Tx::PingResp),
            Packet::Subscribe(s) => self.flow.push_event(Event::Subscribe(s)),
            Packet::Unsubscribe(u) => self.flow.push_event(Event::Unsubscribe(u)),
            Packet::Disconnect(d) => {
                if let Some(interval) = d.properties.session_expiry_interval {
                    // 3.14.2.2.2: a session that was to end with the connection may not be
                    // given a life now.
                    if self.session_expiry == 0 && interval != 0 {
                        return Err(ProtocolError::new(
                            ReasonCode::PROTOCOL_ERROR,
                            None,
                            "DISCONNECT sets a Session Expiry Interval after CONNECT set 0",
                        ));
                    }
                    self.session_expiry = interval.min(self.flow.limits.max_session_expiry);
                }
                // [MQTT-3.14.4-3]: a normal DISCONNECT discards the will; 0x04 keeps it.
                if d.reason_code != ReasonCode::DISCONNECT_WITH_WILL {
                    self.will = None;
                }
                self.flow.push_event(Event::PeerDisconnected(Box::new(d)));
            }
            Packet::Connect(_) => {
                return Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    Some("MQTT-3.1.0-2"),
                    "second CONNECT on a connection",
                ));
            }
            _ => {
                return Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    None,
                    "a client may not send this packet type",
                ));
            }
        }
        Ok(())
    }

    /// The connection ended (socket closed, keep-alive timeout, takeover, DISCONNECT).
    /// Arms the will delay and the session expiry. Does nothing if no connection is
    /// attached.
    pub fn connection_lost(&mut self, now: Instant) {
        if !self.flow.connected {
            return;
        }
        self.flow.connection_lost();
        self.flow.unlink_received();
        self.credentials_expire = Deadline::NONE;
        let expiry = match self.session_expiry {
            NEVER => None,
            secs => Some(Duration::from_secs(u64::from(secs))),
        };
        self.expires_at = Deadline::new(expiry.map(|d| now + d));
        if let Some(will) = &self.will {
            // The will waits for its delay, but never outlives the session.
            let delay =
                Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            let delay = expiry.map_or(delay, |e| delay.min(e));
            self.will_due = Deadline::new(Some(now + delay));
        }
    }

    /// Drops the messages received on an earlier connection and not yet drained with
    /// [`poll_event`](Self::poll_event) (a connection taken over between reading them
    /// and acting on them): for a server that authorizes what a client publishes and
    /// whose resuming client is not the one that sent them. With
    /// [`Limits::defer_publish_acks`](crate::Limits::defer_publish_acks), as a broker
    /// runs, none of them was acknowledged (without it, their acknowledgements may have
    /// been written already, and dropping them loses messages their publisher was told
    /// were taken). The packet identifiers of the QoS 2 ones are released, so that
    /// their publisher's resends, if it resumes the session, are taken as new messages
    /// rather than as duplicates of ones never delivered. Returns how many were dropped.
    pub fn forget_received(&mut self) -> usize {
        self.flow.forget_received()
    }

    /// For a session restored from a store whose state was saved while a connection was
    /// attached (the process ended with it): its will, if it has one that is not due
    /// already, is due after its Will Delay Interval from `now` (never after the
    /// session's expiry), as [`connection_lost`](Self::connection_lost) would have made
    /// it. Nothing for a connected session.
    pub fn connection_lost_with_process(&mut self, now: Instant) {
        if self.flow.connected || self.will_due.get().is_some() {
            return;
        }
        if let Some(will) = &self.will {
            let delay =
                Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            let delay = match self.session_expiry {
                NEVER => delay,
                secs => delay.min(Duration::from_secs(u64::from(secs))),
            };
            self.will_due = Deadline::new(Some(now + delay));
        }
    }

    /// Closes the connection at `at` (DISCONNECT 0x87 Not authorized in 5.0), unless it
    /// ends first: the credentials it was accepted with, a token, run out then. `None`
    /// clears it. It holds for the current connection only: [`accept`](Self::accept)
    /// and a lost connection clear it. Call it after `accept`.
    pub fn set_credentials_expiry(&mut self, at: Option<Instant>) {
        if self.flow.connected {
            self.credentials_expire = Deadline::new(at);
        }
    }

    /// When the current connection's credentials run out, if they were given one
    /// ([`set_credentials_expiry`](Self::set_credentials_expiry)).
    pub fn credentials_expiry(&self) -> Option<Instant> {
        self.credentials_expire.get()
    }

    /// The timer set from [`poll_timeout`](Self::poll_timeout) fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flow.connected {
            if self.credentials_expire.get().is_some_and(|t| now >= t) {
                self.credentials_expire = Deadline::NONE;
                self.disconnect_explained(
                    ReasonCode::NOT_AUTHORIZED,
                    "the credentials of this connection expired",
                );
                return;
            }
            // [MQTT-3.1.2-22]: close after one and a half keep-alives of silence.
            if let Some(deadline) = self.keep_alive_deadline() {
                if now >= deadline {
                    self.disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT);
                }
            }
            return;
        }
        if self.will_due.get().is_some_and(|t| now >= t) {
            self.will_due = Deadline::NONE;
            if let Some(will) = self.will.take() {
                self.flow.push_event(Event::Will(will));
            }
        }
        if self.expires_at.get().is_some_and(|t| now >= t) {
            self.expires_at = Deadline::NONE;
            // Gone: a CONNECT that comes before the driver acts on the event starts anew.
            self.established = false;
            self.flow.push_event(Event::SessionExpired);
        }
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        (self.keep_alive > 0)
            .then(|| self.flow.last_rx + Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The next packet to write.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        self.flow.poll_transmit(now)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.flow.pop_event()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.flow.connected {
            return match (self.keep_alive_deadline(), self.credentials_expire.get()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        match (self.will_due.get(), self.expires_at.get()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many more messages [`deliver`](Self::deliver) would take now before its queue
    /// is full (by count; the byte limit may refuse earlier).
    pub fn queue_room(&self) -> usize {
        self.flow
            .limits
            .max_queued_messages
            .saturating_sub(self.flow.queued_messages())
    }

    /// Gives back the memory of queues that are empty. Call it when the connection has
    /// been idle for a while: busy sessions keep their capacity, idle ones need little.
    pub fn shrink_idle(&mut self) {
        self.flow.shrink();
    }

    /// Whether the connection may be sent a QoS 0 PUBLISH of `len` bytes that the
    /// caller encoded itself, bypassing [`deliver`](Self::deliver): what a server does
    /// to encode a message once for many subscribers. True when a connection is up and
    /// was not sent DISCONNECT; no control packet waits to go out, so CONNACK is always
    /// first ([MQTT-3.2.0-1]); no QoS 0 message is queued, which it would overtake
    /// (order is kept per QoS, [MQTT-4.6.0-6]: it may go ahead of QoS 1 and 2 messages
    /// waiting for the client's Receive Maximum); the session assigns no topic aliases,
    /// which would make the packet differ per connection; and `len` fits the client's
    /// Maximum Packet Size (5.0 [MQTT-3.1.2-24]).
    ///
    /// The packet must carry nothing that belongs to one session (packet identifier,
    /// topic alias, subscription identifiers) and no Message Expiry Interval, which
    /// [`deliver`](Self::deliver) counts down. The caller writes it before anything
    /// [`poll_transmit`](Self::poll_transmit) returns afterwards; if the connection
    /// ends first, it gives the messages back with [`restore_unsent`](Self::restore_unsent).
    pub fn takes_encoded_publish(&self, len: usize) -> bool {
        let f = &self.flow;
        f.connected
            && !f.sent_disconnect
            && f.traffic().is_none_or(|t| t.tx.is_empty())
            && f.queued_qos0() == 0
            && !(f.version.is_v5() && f.limits.send_topic_aliases && f.peer.topic_alias_maximum > 0)
            && u32::try_from(len).is_ok_and(|len| len <= f.peer.max_packet_size)
    }

    /// Queues again, in their order and ahead of every message queued since, messages
    /// that [`takes_encoded_publish`](Self::takes_encoded_publish) let the caller send
    /// itself and that never went out: call it before
    /// [`connection_lost`](Self::connection_lost), so that the session keeps them as it
    /// keeps the messages it queued. No quota applies (the caller bounds them).
    pub fn restore_unsent(&mut self, now: Instant, messages: Vec<Message>) {
        let outbox = &mut self.flow.traffic_mut().outbox;
        for message in messages.into_iter().rev() {
            let id = outbox.next_id();
            let expires_at = message.expires_at(now);
            outbox.push_queued(id, message, expires_at, true);
        }
    }

    /// The identifier of a message the caller keeps outside the session for now (a
    /// broker paging a long backlog to its store) and queues later with
    /// [`page_in`](Self::page_in): taken from the same sequence as the identifiers of
    /// messages [`deliver`](Self::deliver) queues, so that identifiers keep the order in
    /// which messages arrived.
    pub fn reserve_message_id(&mut self) -> MessageId {
        self.flow.traffic_mut().outbox.next_id()
    }

    /// Queues at the back a message whose identifier
    /// [`reserve_message_id`](Self::reserve_message_id) gave, expiring at `expires_at`.
    /// No quota applies: the caller pages in what the session has room for. Messages
    /// paged in must come in the order of their identifiers, after every message the
    /// session queued before the first of them was reserved.
    pub fn page_in(&mut self, id: MessageId, expires_at: Option<Instant>, message: Message) {
        self.flow
            .traffic_mut()
            .outbox
            .push_queued(id, message, expires_at, false);
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to send now: a
    /// control packet, or a queued message the in-flight window lets out. A connection
    /// with nothing to send and nothing read may sleep until something changes that
    /// ([`deliver`](Self::deliver), a packet from the peer, a timeout). Messages queued
    /// behind a full window are not outgoing: only the peer's acknowledgement lets them
    /// out.
    pub fn has_outgoing(&self) -> bool {
        self.flow.has_outgoing()
    }

    /// The most QoS 1 and 2 messages in flight to the client at once: its Receive
    /// Maximum (5.0), capped by [`Limits::max_inflight`](crate::Limits::max_inflight)
    /// ([MQTT-4.9.0-1]).
    pub fn inflight_window(&self) -> usize {
        self.flow.window()
    }

    /// Bytes of the messages queued (not yet sent), as the queue quota counts them
    /// ([`Message::size`]).
    pub fn queued_bytes(&self) -> usize {
        self.flow.queued_bytes()
    }

    /// Bytes ([`Message::size`]) of the messages the session holds, queued or in flight
    /// (until their PUBACK or PUBREC): what it costs in memory, for a broker's global
    /// budget. [`queued_bytes`](Self::queued_bytes) is the queue's part, which the
    /// queue quota bounds; the in-flight part is bounded by the window.
    pub fn held_bytes(&self) -> usize {
        self.flow.held_bytes()
    }

    /// Messages queued (not yet sent): in flight ones are not counted.
    pub fn queued_messages(&self) -> usize {
        self.flow.queued_messages()
    }

    /// Messages queued or in flight.
    pub fn pending_messages(&self) -> usize {
        self.flow.pending_messages()
    }

    pub(crate) fn flow(&self) -> &Flow {
        &self.flow
    }

    pub(crate) fn export_fields(&self) -> crate::state::ServerFields<'_> {
        crate::state::ServerFields {
            client_id: &self.client_id,
            established: self.established,
            session_expiry: self.session_expiry,
            will: self.will.as_deref(),
            will_due: self.will_due.get(),
            expires_at: self.expires_at.get(),
            subscriptions: self.subscriptions(),
        }
    }

    pub(crate) fn import_fields(
        &mut self,
        established: bool,
        session_expiry: u32,
        will: Option<Will>,
        will_due: Option<Instant>,
        expires_at: Option<Instant>,
        subscriptions: Vec<SubscriptionRecord>,
    ) {
        self.established = established;
        self.session_expiry = session_expiry;
        self.will = will.map(Box::new);
        self.will_due = Deadline::new(will_due);
        self.expires_at = Deadline::new(expires_at);
        self.subscriptions = subscriptions
            .into_iter()
            .map(|r| {
                let granted = Granted {
                    options: r.options,
                    identifier: r.identifier,
                };
                (r.filter, granted)
            })
            .collect();
    }

    pub(crate) fn set_will(&mut self, will: Option<Will>, will_due: Option<Instant>) {
        self.will = will.map(Box::new);
        self.will_due = Deadline::new(will_due);
    }

    pub(crate) fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }
}
