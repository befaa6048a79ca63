//! The client end of a session.

use alloc::{boxed::Box, sync::Arc, vec::Vec};
use core::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use mqtt_codec::{
    Auth, ByteStr, ConnAck, Connect, ConnectProperties, Disconnect, Packet, PacketId,
    ProtocolVersion, QoS, ReasonCode, Subscribe, SubscribeProperties, Subscription, Unsubscribe,
    UnsubscribeProperties, Will,
};

use crate::{
    error::ProtocolError,
    event::Event,
    flow::{Flow, PeerLimits, Tx},
    message::{DropReason, Limits, Message, MessageId, Refused},
    outbound::Awaiting,
    time::{Duration, Instant},
};

/// How a client connects: what goes into CONNECT, and the session's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The protocol version to speak.
    pub version: ProtocolVersion,
    /// The Client Identifier; empty asks the server to assign one (replaced by the
    /// assigned one after the first CONNACK, so reconnects resume the same session).
    pub client_id: ByteStr,
    /// Clean Start (5.0) / Clean Session (3.x) on the first connection. Reconnects of
    /// the same session always ask to resume it.
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Session Expiry Interval in seconds (5.0); 3.x uses Clean Session instead.
    pub session_expiry_interval: u32,
    /// The will message.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<ByteStr>,
    /// Password.
    pub password: Option<Bytes>,
    /// Further CONNECT properties (authentication, request/problem information, user
    /// properties); the session fills in Receive Maximum, Maximum Packet Size, Topic
    /// Alias Maximum and Session Expiry Interval from the other fields.
    pub properties: ConnectProperties,
    /// Limits of the session.
    pub limits: Limits,
}

impl ClientOptions {
    /// Options for `client_id` in `version`, with a clean start and a 60 s keep-alive.
    pub fn new(version: ProtocolVersion, client_id: ByteStr) -> Self {
        Self {
            version,
            client_id,
            clean_start: true,
            keep_alive: 60,
            session_expiry_interval: 0,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            limits: Limits::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No connection.
    Idle,
    /// CONNECT queued or sent, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted.
    Connected,
}

/// What the server allows, from CONNACK.
#[derive(Clone, Copy, Debug)]
struct ServerCaps {
    maximum_qos: QoS,
    retain_available: bool,
}

/// The client end of an MQTT session: QoS flows, keep-alive and session resumption,
/// with no I/O, no clock and no randomness.
///
/// # Driving it
/// The driver (mqtt-client, or a test harness) owns the socket and a timer:
/// - **Inputs:** [`connect`](Self::connect) when a connection is open;
///   [`handle_packet`](Self::handle_packet) for each decoded packet;
///   [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) passes; [`connection_lost`](Self::connection_lost)
///   when the socket closes.
/// - **Commands:** [`publish`](Self::publish), [`subscribe`](Self::subscribe),
///   [`unsubscribe`](Self::unsubscribe), [`disconnect`](Self::disconnect).
/// - **Outputs**, to drain after every input or command, in this order:
///   [`poll_transmit`](Self::poll_transmit) until `None` (encode and write each packet),
///   [`poll_event`](Self::poll_event) until `None`, then [`poll_timeout`](Self::poll_timeout)
///   to re-arm the timer.
///
/// Time is passed in with every call and must never go backwards.
///
/// # Sessions across connections
/// The first connection uses [`ClientOptions::clean_start`]; later ones ask to resume.
/// When the server resumes the session, unacknowledged QoS 1/2 messages are resent with
/// DUP set and PUBREL packets are resent, in their original order ([MQTT-4.4.0-1]). When
/// it does not (Session Present 0), the session state is discarded ([MQTT-3.2.2-5]); QoS
/// 1/2 messages whose PUBLISH was never acknowledged are then sent again as new messages
/// (they keep their [`MessageId`]), so the application loses none.
#[derive(Debug)]
pub struct ClientSession {
    options: ClientOptions,
    flow: Flow,
    state: State,
    caps: ServerCaps,
    keep_alive: Duration,
    ping_sent_at: Option<Instant>,
    /// SUBSCRIBE / UNSUBSCRIBE asked for before the connection was accepted.
    pending_requests: Vec<Packet>,
    /// SUBSCRIBE / UNSUBSCRIBE sent and not yet answered: sent again, in order, on the
    /// next connection if this one is lost first.
    sent_requests: Vec<Packet>,
    /// Whether a session may exist on the server from an earlier connection.
    had_session: bool,
}

impl ClientSession {
    /// A session that has not connected yet.
    pub fn new(options: ClientOptions) -> Self {
        let flow = Flow::new(options.version, Arc::new(options.limits.clone()));
        Self {
            options,
            flow,
            state: State::Idle,
            caps: ServerCaps {
                maximum_qos: QoS::ExactlyOnce,
                retain_available: true,
            },
            keep_alive: Duration::ZERO,
            ping_sent_at: None,
            pending_requests: Vec::new(),
            sent_requests: Vec::new(),
            had_session: false,
        }
    }

    /// The options, with the server-assigned client identifier once known.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Whether CONNACK accepted the current connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// A connection is open: queue CONNECT.
    pub fn connect(&mut self, now: Instant) {
        self.flow.connection_lost();
        self.state = State::Connecting;
        self.ping_sent_at = None;
        let o = &self.options;
        let limits = &o.limits;
        let mut properties = o.properties.clone();
        if o.version.is_v5() {
            properties.session_expiry_interval =
                (o.session_expiry_interval > 0).then_some(o.session_expiry_interval);
            properties.receive_maximum = (limits.receive_maximum < u16::MAX)
                .then(|| NonZeroU16::new(limits.receive_maximum))
                .flatten();
            properties.maximum_packet_size = (limits.max_packet_size < mqtt_codec::MAX_PACKET_SIZE)
                .then(|| NonZeroU32::new(limits.max_packet_size))
                .flatten();
            properties.topic_alias_maximum =
                (limits.topic_alias_maximum > 0).then_some(limits.topic_alias_maximum);
        } else {
            properties = ConnectProperties::default();
        }
        let connect = Connect {
            version: o.version,
            // Reconnects resume the session only if it can outlive a connection.
            clean_start: o.clean_start && !(self.had_session && self.session_persists()),
            keep_alive: o.keep_alive,
            client_id: o.client_id.clone(),
            will: o.will.clone(),
            username: o.username.clone(),
            password: o.password.clone(),
            properties,
        };
        self.flow.send(connect);
        self.flow.last_tx = now;
        self.flow.last_rx = now;
    }

    /// Queues an application message. QoS 1/2 messages are sent as the server's Receive
    /// Maximum allows; completion is reported as [`Event::Delivered`].
    ///
    /// Refused, with the message handed back, when the queue is full, or the server
    /// announced it does not support the message's QoS or retain flag.
    pub fn publish(&mut self, now: Instant, mut message: Message) -> Result<MessageId, Refused> {
        if message.qos > self.caps.maximum_qos {
            return Err(Refused {
                message: message.into(),
                reason: DropReason::QosNotSupported,
            });
        }
        if message.retain && !self.caps.retain_available {
            return Err(Refused {
                message: message.into(),
                reason: DropReason::RetainNotSupported,
            });
        }
        // [MQTT-3.3.4-6]: identifiers are the server's to send; a received message
        // published again (a bridge, a relay) goes without them.
        message.properties.set_subscription_identifiers(Vec::new());
        // Queue even while disconnected: the client sends when the connection is back.
        self.flow.enqueue(now, message, true)
    }

    /// Queues a SUBSCRIBE; the answer comes as [`Event::SubAck`] with the returned packet
    /// identifier. `None` if every packet identifier is in use.
    pub fn subscribe(
        &mut self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Option<PacketId> {
        let outbox = &mut self.flow.traffic_mut().outbox;
        let packet_id = outbox.allocate_packet_id()?;
        outbox.other_ids.push(packet_id);
        self.request(
            Subscribe {
                packet_id,
                subscriptions,
                properties,
            }
            .into(),
        );
        Some(packet_id)
    }

    /// Queues an UNSUBSCRIBE; the answer comes as [`Event::UnsubAck`].
    pub fn unsubscribe(
        &mut self,
        filters: Vec<ByteStr>,
        properties: UnsubscribeProperties,
    ) -> Option<PacketId> {
        let outbox = &mut self.flow.traffic_mut().outbox;
        let packet_id = outbox.allocate_packet_id()?;
        outbox.other_ids.push(packet_id);
        self.request(
            Unsubscribe {
                packet_id,
                filters,
                properties,
            }
            .into(),
        );
        Some(packet_id)
    }

    fn request(&mut self, packet: Packet) {
        if self.state == State::Connected {
            self.sent_requests.push(packet.clone());
            self.flow.send(packet);
        } else {
            self.pending_requests.push(packet);
        }
    }

    /// Whether the session survives the end of a connection: a 5.0 Session Expiry
    /// Interval above 0, or Clean Session 0 in 3.x.
    fn session_persists(&self) -> bool {
        if self.options.version.is_v5() {
            self.options.session_expiry_interval > 0
        } else {
            !self.options.clean_start
        }
    }

    /// Sets the Authentication Data for the next CONNECT (5.0 enhanced authentication,
    /// whose first step usually differs on every connection). `None` leaves it out.
    pub fn set_authentication_data(&mut self, data: Option<Bytes>) {
        self.options.properties.authentication_data = data;
    }

    /// Queues AUTH (5.0 enhanced authentication): reason 0x18 (Continue authentication)
    /// to answer the server's AUTH, or 0x19 (Re-authenticate) once connected. The
    /// Authentication Method is filled in from CONNECT.
    ///
    /// Refused when CONNECT carried no Authentication Method ([MQTT-4.12.0-7]), for a
    /// 3.x session, for a reason code other than 0x18 and 0x19, and for 0x19 before
    /// the connection is accepted; nothing is queued then.
    pub fn auth(&mut self, reason: ReasonCode, data: Option<Bytes>) -> Result<(), ProtocolError> {
        let refuse = |rule, what| Err(ProtocolError::new(ReasonCode::PROTOCOL_ERROR, rule, what));
        let Some(method) = self.options.properties.authentication_method.clone() else {
            return refuse(
                Some("MQTT-4.12.0-7"),
                "AUTH without an Authentication Method in CONNECT",
            );
        };
        if !self.options.version.is_v5() {
            return refuse(None, "AUTH exists only in MQTT 5.0");
        }
        match (reason, self.state) {
            (ReasonCode::CONTINUE_AUTHENTICATION, State::Connecting | State::Connected)
            | (ReasonCode::REAUTHENTICATE, State::Connected) => {}
            _ => return refuse(None, "AUTH with this reason code is not allowed now"),
        }
        let mut auth = Auth {
            reason_code: reason,
            ..Auth::default()
        };
        // [MQTT-4.12.1-1]: re-authentication uses the method of CONNECT.
        auth.properties.authentication_method = Some(method);
        auth.properties.authentication_data = data;
        self.flow.send(auth);
        Ok(())
    }

    /// A server AUTH: it needs an Authentication Method in CONNECT ([MQTT-4.12.0-6])
    /// and must carry the same one ([MQTT-4.12.0-5]); 0x19 is the client's to send.
    fn check_server_auth(&self, auth: &Auth) -> Result<(), ProtocolError> {
        let ours = self.options.properties.authentication_method.as_ref();
        let error = |rule, what| Err(ProtocolError::new(ReasonCode::PROTOCOL_ERROR, rule, what));
        match ours {
            None => error(
                Some("MQTT-4.12.0-6"),
                "AUTH from the server although CONNECT had no Authentication Method",
            ),
            Some(m) if auth.properties.authentication_method.as_ref() != Some(m) => error(
                Some("MQTT-4.12.0-5"),
                "AUTH with an Authentication Method other than CONNECT's",
            ),
            Some(_) if auth.reason_code == ReasonCode::REAUTHENTICATE => {
                error(None, "a server may not send AUTH 0x19 (Re-authenticate)")
            }
            Some(_) => Ok(()),
        }
    }

    /// Queues DISCONNECT; nothing is sent after it. `reason` 0x04 asks the server to
    /// publish the will anyway (5.0).
    pub fn disconnect(&mut self, disconnect: Disconnect) {
        if self.state != State::Idle {
            self.flow.send(disconnect);
        }
    }

    /// Handles a packet from the server. On error the connection must close; for 5.0 a
    /// DISCONNECT with the reason is queued first.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        self.flow.last_rx = now;
        let result = self.dispatch(now, packet);
        if let Err(e) = &result {
            self.flow.queue_disconnect(e.reason);
        }
        result
    }

    fn dispatch(&mut self, now: Instant, packet: Packet) -> Result<(), ProtocolError> {
        if self.state == State::Connecting {
            return match packet {
                Packet::ConnAck(ack) => {
                    let ours = self.options.properties.authentication_method.as_ref();
                    if self.options.version.is_v5()
                        && ours.is_some()
                        && !ack.reason_code.is_error()
                        && ack.properties.authentication_method.as_ref() != ours
                    {
                        return Err(ProtocolError::new(
                            ReasonCode::PROTOCOL_ERROR,
                            Some("MQTT-4.12.0-5"),
                            "CONNACK without CONNECT's Authentication Method",
                        ));
                    }
                    self.handle_connack(now, ack);
                    Ok(())
                }
                Packet::Auth(a) if self.options.version.is_v5() => {
                    self.check_server_auth(&a)?;
                    if a.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
                        // Success comes as CONNACK while connecting.
                        return Err(ProtocolError::new(
                            ReasonCode::PROTOCOL_ERROR,
                            None,
                            "AUTH other than 0x18 (Continue authentication) before CONNACK",
                        ));
                    }
                    self.flow.push_event(Event::Auth(Box::new(a)));
                    Ok(())
                }
                _ => Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    None,
                    "packet before CONNACK",
                )),
            };
        }
        if self.state == State::Idle {
            return Err(ProtocolError::new(
                ReasonCode::PROTOCOL_ERROR,
                None,
                "packet while not connected",
            ));
        }
        match packet {
            // A 3.x server does not know our Receive Maximum; its own window bounds it.
            Packet::Publish(p) => return self.flow.handle_publish(p, false),
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
            Packet::Auth(a) if self.options.version.is_v5() => {
                self.check_server_auth(&a)?;
                self.flow.push_event(Event::Auth(Box::new(a)));
            }
            Packet::PingResp => self.ping_sent_at = None,
            Packet::SubAck(ack) => {
                if self.release_request_id(ack.packet_id) {
                    self.flow.push_event(Event::SubAck(Box::new(ack)));
                }
            }
            Packet::UnsubAck(ack) => {
                if self.release_request_id(ack.packet_id) {
                    self.flow.push_event(Event::UnsubAck(Box::new(ack)));
                }
            }
            Packet::Disconnect(d) => {
                let reason = d.reason_code;
                self.flow.push_event(Event::PeerDisconnected(Box::new(d)));
                self.flow.push_event(Event::Closed { reason });
            }
            _ => {
                return Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    None,
                    "a server may not send this packet type",
                ));
            }
        }
        Ok(())
    }

    fn release_request_id(&mut self, id: PacketId) -> bool {
        self.sent_requests.retain(|p| request_id(p) != Some(id));
        let ids = &mut self.flow.traffic_mut().outbox.other_ids;
        match ids.iter().position(|&p| p == id) {
            Some(pos) => {
                ids.remove(pos);
                true
            }
            None => false,
        }
    }

    fn handle_connack(&mut self, now: Instant, ack: Box<ConnAck>) {
        if ack.reason_code.is_error() {
            let reason = ack.reason_code;
            self.state = State::Idle;
            self.flow.push_event(Event::Refused(ack));
            self.flow.push_event(Event::Closed { reason });
            return;
        }
        let v5 = self.options.version.is_v5();
        let p = &ack.properties;
        if v5 {
            self.flow.peer = PeerLimits {
                receive_maximum: p.receive_maximum.map_or(u16::MAX, NonZeroU16::get),
                max_packet_size: p
                    .maximum_packet_size
                    .map_or(mqtt_codec::MAX_PACKET_SIZE, NonZeroU32::get),
                topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            };
            self.caps = ServerCaps {
                maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
                retain_available: p.retain_available.unwrap_or(true),
            };
            if let Some(id) = &p.assigned_client_identifier {
                self.options.client_id = id.clone();
            }
        }
        // [MQTT-3.2.2-21]: the server's keep-alive wins.
        let keep_alive = p
            .server_keep_alive
            .filter(|_| v5)
            .unwrap_or(self.options.keep_alive);
        self.keep_alive = Duration::from_secs(u64::from(keep_alive));
        // 3.1 has no Session Present (the byte is unused): a client that asked for Clean
        // Session 0 there can only assume the server kept the session.
        let v3_1_kept = self.options.version == ProtocolVersion::V3_1 && !self.options.clean_start;
        if !ack.session_present && !v3_1_kept {
            self.discard_sent_state();
        }
        // [MQTT-3.2.2-11], [MQTT-3.2.2-14]: this server may take less than the last
        // one did; what is queued or in flight beyond it is dropped before anything is
        // sent (a QoS 2 message past PUBLISH moves on to PUBREL).
        let (maximum_qos, retain_available) = (self.caps.maximum_qos, self.caps.retain_available);
        if maximum_qos != QoS::ExactlyOnce || !retain_available {
            if let Some(t) = self.flow.traffic_mut_if_any() {
                t.outbox.drop_where(
                    |m| m.qos as u8 > maximum_qos as u8,
                    DropReason::QosNotSupported,
                    &mut t.events,
                );
                if !retain_available {
                    t.outbox.drop_where(
                        |m| m.retain,
                        DropReason::RetainNotSupported,
                        &mut t.events,
                    );
                }
            }
        }
        self.state = State::Connected;
        self.had_session = true;
        self.flow.resume(now);
        let pending: Vec<Packet> = self.pending_requests.drain(..).collect();
        for packet in pending {
            self.request(packet);
        }
        self.flow.push_event(Event::Connected(ack));
    }

    /// Session Present 0: forget what the server would have known ([MQTT-3.2.2-5]), and
    /// send again, as new messages, those it never acknowledged.
    fn discard_sent_state(&mut self) {
        let Some(t) = self.flow.traffic_mut_if_any() else {
            return;
        };
        let inflight = t.outbox.drain_inflight();
        for (f, message) in inflight.into_iter().rev() {
            match (f.phase, message) {
                (Awaiting::PubComp, _) | (_, None) => {
                    // PUBREC arrived: the server has the message.
                    t.events.push(Event::Delivered {
                        id: f.id,
                        reason_code: ReasonCode::SUCCESS,
                    });
                }
                (_, Some(message)) => t.outbox.push_queued(f.id, message, None, true),
            }
        }
        t.inbox.awaiting_pubrel.clear();
    }

    /// The connection ended. The session state stays for the next [`connect`](Self::connect).
    pub fn connection_lost(&mut self, _now: Instant) {
        self.flow.connection_lost();
        // Requests in flight on the dead connection are answered by nobody: send them
        // again, in their order and before newer ones, after the next CONNACK.
        let unanswered = core::mem::take(&mut self.sent_requests);
        self.pending_requests.splice(0..0, unanswered);
        self.state = State::Idle;
        self.ping_sent_at = None;
    }

    /// The timer set from [`poll_timeout`](Self::poll_timeout) fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Connected || self.keep_alive == Duration::ZERO {
            return;
        }
        if let Some(sent) = self.ping_sent_at {
            if now >= sent + self.ping_timeout() {
                self.flow.push_event(Event::Closed {
                    reason: ReasonCode::KEEP_ALIVE_TIMEOUT,
                });
                self.state = State::Idle;
                return;
            }
        }
        // [MQTT-3.1.2-20]: send PINGREQ when nothing else went out for a keep-alive.
        if self.ping_sent_at.is_none() && now >= self.flow.last_tx + self.keep_alive {
            self.flow.traffic_mut().tx.push_back(Tx::PingReq);
            self.ping_sent_at = Some(now);
        }
    }

    fn ping_timeout(&self) -> Duration {
        self.options.limits.ping_timeout.min(self.keep_alive)
    }

    /// The next packet to write.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        match self.state {
            State::Idle => None,
            State::Connecting => {
                let packet = self
                    .flow
                    .traffic_mut_if_any()?
                    .tx
                    .pop_front()?
                    .into_packet();
                self.flow.last_tx = now;
                Some(packet)
            }
            State::Connected => self.flow.poll_transmit(now),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.flow.pop_event()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Connected || self.keep_alive == Duration::ZERO {
            return None;
        }
        Some(match self.ping_sent_at {
            Some(sent) => sent + self.ping_timeout(),
            None => self.flow.last_tx + self.keep_alive,
        })
    }

    /// Gives back the memory of queues that are empty. Call it when the connection has
    /// been idle for a while: busy sessions keep their capacity, idle ones need little.
    pub fn shrink_idle(&mut self) {
        self.flow.shrink();
    }

    /// Messages queued or in flight.
    pub fn pending_messages(&self) -> usize {
        self.flow.pending_messages()
    }

    pub(crate) fn flow(&self) -> &Flow {
        &self.flow
    }

    pub(crate) fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }

    pub(crate) fn mark_resumable(&mut self) {
        self.had_session = true;
    }
}

/// The packet identifier of a SUBSCRIBE or UNSUBSCRIBE.
fn request_id(packet: &Packet) -> Option<PacketId> {
    match packet {
        Packet::Subscribe(s) => Some(s.packet_id),
        Packet::Unsubscribe(u) => Some(u.packet_id),
        _ => None,
    }
}
