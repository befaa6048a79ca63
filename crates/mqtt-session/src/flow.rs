//! The half of a session both ends share: publish flows in both directions, the
//! transmit and event queues, and the peer's limits.

use alloc::{boxed::Box, collections::VecDeque, sync::Arc};

use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};

use crate::{
    error::ProtocolError,
    event::{Event, Events},
    inbound::{Inbox, Received},
    message::{Arrival, DropReason, Limits, Message, MessageId, Refused},
    outbound::{AckOutcome, Awaiting, Outbox},
    time::Instant,
};

/// What the peer told us of its limits (5.0 CONNECT/CONNACK properties).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerLimits {
    pub(crate) receive_maximum: u16,
    pub(crate) max_packet_size: u32,
    pub(crate) topic_alias_maximum: u16,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            receive_maximum: u16::MAX,
            max_packet_size: mqtt_codec::MAX_PACKET_SIZE,
            topic_alias_maximum: 0,
        }
    }
}

/// A packet waiting in [`Flow::tx`]: acknowledgements and pings inline, anything else
/// boxed. Acknowledgements are most of the traffic, and a queued [`Packet`] would be
/// copied whole (the size of a PUBLISH) at each move.
#[derive(Debug)]
pub(crate) enum Tx {
    PubAck(PacketId, ReasonCode),
    PubRec(PacketId, ReasonCode),
    PubRel(PacketId, ReasonCode),
    PubComp(PacketId, ReasonCode),
    PingReq,
    PingResp,
    Packet(Box<Packet>),
}

impl Tx {
    #[inline]
    pub(crate) fn into_packet(self) -> Packet {
        match self {
            Self::PubAck(id, reason_code) => {
                let mut ack = PubAck::new(id);
                ack.reason_code = reason_code;
                Packet::PubAck(ack)
            }
            Self::PubRec(id, reason_code) => {
                let mut rec = PubRec::new(id);
                rec.reason_code = reason_code;
                Packet::PubRec(rec)
            }
            Self::PubRel(id, reason_code) => {
                let mut rel = PubRel::new(id);
                rel.reason_code = reason_code;
                Packet::PubRel(rel)
            }
            Self::PubComp(id, reason_code) => {
                let mut comp = PubComp::new(id);
                comp.reason_code = reason_code;
                Packet::PubComp(comp)
            }
            Self::PingReq => Packet::PingReq,
            Self::PingResp => Packet::PingResp,
            Self::Packet(packet) => *packet,
        }
    }
}

impl From<Packet> for Tx {
    fn from(packet: Packet) -> Self {
        match packet {
            Packet::PingReq => Self::PingReq,
            Packet::PingResp => Self::PingResp,
            packet => Self::Packet(Box::new(packet)),
        }
    }
}

/// The part of a session that is empty while nothing moves: the queues, windows and
/// topic aliases. Boxed in [`Flow`], allocated on first use and dropped again by
/// [`Flow::shrink`] once everything in it is empty, so an idle session costs one pointer
/// for all of it instead of a few hundred bytes of empty containers.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    /// Packets to send before any new PUBLISH: acknowledgements, resends, control.
    pub(crate) tx: VecDeque<Tx>,
    pub(crate) events: Events,
}

impl Traffic {
    /// Whether nothing in it holds state (capacity aside): dropping it loses nothing
    /// but the packet and message counters, which [`Flow`] keeps.
    fn is_empty(&self) -> bool {
        self.tx.is_empty()
            && self.events.is_empty()
            && self.outbox.is_empty()
            && self.inbox.is_empty()
    }
}

/// The counters that outlive the [`Traffic`] part: the next packet identifier and
/// message identifier, kept in its [`Outbox`] while it exists and here while it does not.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) next_packet_id: u16,
    pub(crate) next_message_id: u64,
}

/// The traffic part of `slot`, allocated (with the counters `saved`) if there is none.
/// A function of the two fields rather than a method, so the rest of the [`Flow`] can be
/// borrowed alongside.
#[inline]
fn traffic(slot: &mut Option<Box<Traffic>>, saved: Counters) -> &mut Traffic {
    slot.get_or_insert_with(|| {
        let mut traffic = Box::<Traffic>::default();
        traffic.outbox.next_packet_id = saved.next_packet_id;
        traffic.outbox.next_message_id = saved.next_message_id;
        traffic
    })
}

#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) version: ProtocolVersion,
    /// Shared: a broker gives the same limits to every session.
    pub(crate) limits: Arc<Limits>,
    pub(crate) peer: PeerLimits,
    pub(crate) connected: bool,
    /// Queues, windows and aliases: `None` while all of them are empty and shrunk.
    traffic: Option<Box<Traffic>>,
    /// The counters while `traffic` is `None` (its outbox holds them otherwise), as two
    /// fields rather than a [`Counters`], which would pad the packet identifier to 8 bytes.
    saved_packet_id: u16,
    saved_message_id: u64,
    pub(crate) last_rx: Instant,
    pub(crate) last_tx: Instant,
    /// A DISCONNECT went out: nothing more may be sent on this connection ([MQTT-3.14.4-1]).
    pub(crate) sent_disconnect: bool,
    /// The peer asked for no Reason String or User Property on acknowledgements
    /// ([MQTT-3.1.2-29]).
    pub(crate) strip_diagnostics: bool,
    /// The session's state was discarded (clean start) since the last connection
    /// ended: packet identifiers awaiting PUBREL are the new connection's, and a late
    /// verdict of the old one's messages must not release them.
    discarded_since_lost: bool,
}

impl Flow {
    /// Gives back the memory of queues that are empty: for idle connections, whose
    /// queues otherwise keep the capacity of their busiest moment. With nothing left in
    /// any of them, the whole traffic part goes.
    pub(crate) fn shrink(&mut self) {
        let Some(t) = self.traffic.as_deref_mut() else {
            return;
        };
        if t.is_empty() {
            self.saved_packet_id = t.outbox.next_packet_id;
            self.saved_message_id = t.outbox.next_message_id;
            self.traffic = None;
            return;
        }
        if t.tx.is_empty() {
            t.tx = VecDeque::new();
        }
        t.events.shrink();
        t.outbox.shrink();
        t.inbox.shrink();
    }

    pub(crate) fn new(version: ProtocolVersion, limits: Arc<Limits>) -> Self {
        Self {
            version,
            limits,
            peer: PeerLimits::default(),
            connected: false,
            traffic: None,
            saved_packet_id: 0,
            saved_message_id: 0,
            last_rx: Instant::ZERO,
            last_tx: Instant::ZERO,
            sent_disconnect: false,
            strip_diagnostics: false,
            discarded_since_lost: false,
        }
    }

    /// The traffic part, allocated on first use.
    #[inline]
    pub(crate) fn traffic_mut(&mut self) -> &mut Traffic {
        let saved = self.saved();
        traffic(&mut self.traffic, saved)
    }

    /// The counters kept while the traffic part is dropped.
    fn saved(&self) -> Counters {
        Counters {
            next_packet_id: self.saved_packet_id,
            next_message_id: self.saved_message_id,
        }
    }

    /// The traffic part, if allocated (when not, every queue in it is empty).
    #[inline]
    pub(crate) fn traffic(&self) -> Option<&Traffic> {
        self.traffic.as_deref()
    }

    /// The traffic part, if allocated, to change.
    #[inline]
    pub(crate) fn traffic_mut_if_any(&mut self) -> Option<&mut Traffic> {
        self.traffic.as_deref_mut()
    }

    /// The packet and message counters.
    pub(crate) fn counters(&self) -> Counters {
        match self.traffic() {
            Some(t) => Counters {
                next_packet_id: t.outbox.next_packet_id,
                next_message_id: t.outbox.next_message_id,
            },
            None => self.saved(),
        }
    }

    /// Sets the packet and message counters (restoring a session).
    pub(crate) fn set_counters(&mut self, counters: Counters) {
        self.saved_packet_id = counters.next_packet_id;
        self.saved_message_id = counters.next_message_id;
        if let Some(t) = self.traffic.as_deref_mut() {
            t.outbox.next_packet_id = counters.next_packet_id;
            t.outbox.next_message_id = counters.next_message_id;
        }
    }

    /// Queues an event.
    #[inline]
    pub(crate) fn push_event(&mut self, event: Event) {
        self.traffic_mut().events.push(event);
    }

    /// The next event.
    #[inline]
    pub(crate) fn pop_event(&mut self) -> Option<Event> {
        self.traffic.as_deref_mut()?.events.pop()
    }

    /// Bytes of messages queued (not yet sent), as [`Message::size`] counts them.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.traffic().map_or(0, |t| t.outbox.queued_bytes)
    }

    /// Bytes ([`Message::size`](crate::Message::size)) of the messages queued or in
    /// flight.
    pub(crate) fn held_bytes(&self) -> usize {
        self.traffic()
            .map_or(0, |t| t.outbox.queued_bytes + t.outbox.inflight_bytes)
    }

    /// Messages queued (not yet sent).
    pub(crate) fn queued_messages(&self) -> usize {
        self.traffic().map_or(0, |t| t.outbox.queue.len())
    }

    /// QoS 0 messages queued.
    pub(crate) fn queued_qos0(&self) -> usize {
        self.traffic().map_or(0, |t| t.outbox.queued_qos0)
    }

    /// Messages queued or in flight.
    pub(crate) fn pending_messages(&self) -> usize {
        self.traffic()
            .map_or(0, |t| t.outbox.queue.len() + t.outbox.inflight.len())
    }

    /// Queues a control packet.
    pub(crate) fn send(&mut self, packet: impl Into<Packet>) {
        self.traffic_mut().tx.push_back(packet.into().into());
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) would return a packet now (or
    /// drop an expired message on the way).
    pub(crate) fn has_outgoing(&self) -> bool {
        if !self.connected || self.sent_disconnect {
            return false;
        }
        let window = self.window();
        self.traffic().is_some_and(|t| {
            !t.tx.is_empty()
                || t.outbox
                    .queue
                    .front()
                    .is_some_and(|m| m.qos == QoS::AtMostOnce || t.outbox.inflight.len() < window)
                || (t.outbox.waiting > 0
                    && t.outbox.inflight.len().saturating_sub(t.outbox.waiting) < window)
        })
    }

    /// The in-flight window: the peer's Receive Maximum, capped by ours ([MQTT-4.9.0-1]).
    pub(crate) fn window(&self) -> usize {
        let peer = if self.version.is_v5() {
            self.peer.receive_maximum
        } else {
            u16::MAX
        };
        usize::from(peer.min(self.limits.max_inflight).max(1))
    }

    /// Queues an outgoing message. QoS 0 is refused while disconnected unless
    /// `qos0_offline` or the limits allow it.
    #[inline]
    pub(crate) fn enqueue(
        &mut self,
        now: Instant,
        message: Message,
        qos0_offline: bool,
    ) -> Result<MessageId, Refused> {
        let offline_ok = qos0_offline || self.limits.queue_qos0_offline;
        if !self.connected && message.qos == QoS::AtMostOnce && !offline_ok {
            return Err(Refused {
                message: message.into(),
                reason: DropReason::Offline,
            });
        }
        let saved = self.saved();
        let t = traffic(&mut self.traffic, saved);
        t.outbox.enqueue(now, message, &self.limits, &mut t.events)
    }

    /// The next packet to write, if connected.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        if !self.connected || self.sent_disconnect {
            return None;
        }
        while let Some(tx) = self.traffic.as_deref_mut()?.tx.pop_front() {
            if let Some(packet) = self.control(tx) {
                self.last_tx = now;
                return Some(packet);
            }
        }
        let alias_max = if self.version.is_v5() && self.limits.send_topic_aliases {
            self.peer.topic_alias_maximum
        } else {
            0
        };
        let window = self.window();
        let t = self.traffic.as_deref_mut()?;
        // What a resumed session had in flight goes first, as the window lets it.
        if t.outbox.waiting > 0 {
            if let Some(packet) = t
                .outbox
                .next_resend(now, window, self.version, &mut t.events)
            {
                self.last_tx = now;
                return Some(packet);
            }
        }
        // The PUBLISH is checked against the peer's Maximum Packet Size there.
        let packet = t.outbox.next_publish(
            now,
            window,
            self.peer.max_packet_size,
            alias_max,
            self.version,
            &mut t.events,
        );
        if packet.is_some() {
            self.last_tx = now;
        }
        packet
    }

    /// A queued control packet, ready to write, or `None` if it cannot be sent.
    #[inline]
    fn control(&mut self, tx: Tx) -> Option<Packet> {
        let mut packet = tx.into_packet();
        if self.strip_diagnostics
            && !matches!(
                packet,
                Packet::Publish(_) | Packet::ConnAck(_) | Packet::Disconnect(_)
            )
        {
            let _ = packet.fit_to_size(self.version, 0);
        }
        if self.version.is_v5() {
            // Acknowledgements may shed their reason string and user properties to fit
            // ([MQTT-3.4.2-2], [MQTT-3.4.2-3]); anything else that does not fit is not sent.
            if packet
                .fit_to_size(self.version, self.peer.max_packet_size)
                .is_err()
            {
                return None;
            }
        }
        if matches!(packet, Packet::Disconnect(_)) {
            self.sent_disconnect = true;
        }
        Some(packet)
    }

    /// PUBREL from the peer: always answered with PUBCOMP Success.
    ///
    /// [MQTT-4.3.3-11]: a PUBREL gets a PUBCOMP with the same packet identifier;
    /// [MQTT-4.3.3-12]: after it the identifier is free, and a PUBLISH with it is a new
    /// message. An identifier we do not hold is answered with Success too, not 0x92
    /// (Packet Identifier not found). Its usual cause is recovery: the exchange completed,
    /// its PUBCOMP was lost with the connection, and the peer resent PUBREL on the resumed
    /// session ([MQTT-4.4.0-1]). 5.0 §3.7.2.1 says 0x92 "is not an error during
    /// recovery", yet clients take it for one (MQTT.js fails a message that was
    /// delivered). Telling that case from a peer's mismatched state would need a record
    /// of every identifier ever completed (8 KB a session for a bitmap), and the answer
    /// would change nothing: either way no message is waiting, the identifier is free,
    /// and Success is the true state of it ("Packet Identifier released"). A session
    /// discarded by Clean Start or expiry leaves no PUBREL behind, since a peer told
    /// Session Present 0 discards its state (5.0 [MQTT-3.2.2-5]). Mosquitto answers
    /// every unknown PUBREL this way. [MQTT-4.3.3-13] holds as well: an expired message
    /// still completes its exchange.
    pub(crate) fn handle_pubrel(&mut self, packet_id: PacketId) {
        let t = self.traffic_mut();
        t.inbox.release(packet_id);
        t.tx.push_back(Tx::PubComp(packet_id, ReasonCode::SUCCESS));
    }

    /// PUBLISH from the peer. `cap_v3`: hold a 3.1 / 3.1.1 peer, which was told no
    /// Receive Maximum, to ours for QoS 2 messages awaiting PUBREL (a server does; see
    /// [`Inbox::receive`]).
    #[inline]
    pub(crate) fn handle_publish(
        &mut self,
        mut publish: Publish,
        cap_v3: bool,
    ) -> Result<(), ProtocolError> {
        let v5 = self.version.is_v5();
        // Before `receive` resolves (and clears) the topic alias.
        let arrival = Arrival::of(&publish);
        let saved = self.saved();
        let t = traffic(&mut self.traffic, saved);
        match t.inbox.receive(
            &mut publish,
            v5,
            (v5 || cap_v3).then_some(self.limits.receive_maximum),
            self.limits.topic_alias_maximum,
        )? {
            Received::Deliver => {
                // [MQTT-4.3.2-4], [MQTT-4.3.3-8]: acknowledge after taking ownership;
                // [MQTT-4.6.0-2], [MQTT-4.6.0-3]: in the order received. A server that
                // decides the acknowledgement itself (after authorization and routing)
                // sends it with `settle_publish`, in the order of the events.
                if !self.limits.defer_publish_acks {
                    match publish.qos_pid {
                        mqtt_codec::QosPid::AtMostOnce => {}
                        mqtt_codec::QosPid::AtLeastOnce(id) => {
                            t.tx.push_back(Tx::PubAck(id, ReasonCode::SUCCESS));
                        }
                        mqtt_codec::QosPid::ExactlyOnce(id) => {
                            t.tx.push_back(Tx::PubRec(id, ReasonCode::SUCCESS));
                        }
                    }
                }
                t.events
                    .push_message(Message::from_publish(publish), arrival);
            }
            Received::Duplicate(id) => t.tx.push_back(Tx::PubRec(id, ReasonCode::SUCCESS)),
        }
        Ok(())
    }

    /// Sends the acknowledgement of a PUBLISH taken with `defer_publish_acks`: PUBACK
    /// (QoS 1) or PUBREC (QoS 2) with `reason` in 5.0. An error code ends a QoS 2 flow
    /// at PUBREC, so its packet identifier is free again ([MQTT-4.3.3-9]: a PUBREC with
    /// a code of 0x80 or above ends the exchange). 3.1 and 3.1.1 have no codes: the
    /// message is acknowledged as usual, whatever became of it ([MQTT-3.3.5-2]).
    pub(crate) fn settle_publish(
        &mut self,
        qos: QoS,
        packet_id: Option<PacketId>,
        reason: ReasonCode,
    ) {
        let Some(id) = packet_id else {
            return;
        };
        if self.traffic_mut().events.take_unlinked_settlement() {
            // Received on a connection that has ended: no acknowledgement on this one.
            return self.settle_unsent(qos, packet_id, reason);
        }
        let v5 = self.version.is_v5();
        let reason = if v5 { reason } else { ReasonCode::SUCCESS };
        let t = self.traffic_mut();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => t.tx.push_back(Tx::PubAck(id, reason)),
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    t.inbox.release(id);
                }
                t.tx.push_back(Tx::PubRec(id, reason));
            }
        }
    }

    /// PUBACK, PUBREC or PUBCOMP from the peer.
    #[inline]
    pub(crate) fn handle_ack(&mut self, packet_id: PacketId, phase: Awaiting, code: ReasonCode) {
        let v5 = self.version.is_v5();
        let t = self.traffic_mut();
        match t.outbox.acknowledge(packet_id, phase, code) {
            AckOutcome::Done(id) => {
                // PUBCOMP's only failure, 0x92, says the receiver no longer knows the
                // identifier: it completed the exchange before (its PUBCOMP was lost with a
                // connection, and our resent PUBREL found nothing). The message was
                // accepted at PUBREC, so it is delivered.
                let reason_code = if phase == Awaiting::PubComp {
                    ReasonCode::SUCCESS
                } else {
                    code
                };
                t.events.push_delivered(id, reason_code);
            }
            // [MQTT-4.6.0-4]: PUBREL in the order the PUBRECs arrived.
            AckOutcome::SendPubRel => t.tx.push_back(Tx::PubRel(packet_id, ReasonCode::SUCCESS)),
            AckOutcome::Unknown if phase == Awaiting::PubRec => {
                // Answer a PUBREC we cannot match, so the peer can finish its side.
                let reason_code = if v5 {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                } else {
                    ReasonCode::SUCCESS
                };
                t.tx.push_back(Tx::PubRel(packet_id, reason_code));
            }
            AckOutcome::Unknown => {}
        }
    }

    /// The connection ended: what was not written is dropped (the peer will resend),
    /// connection-scoped state is reset, the session state stays.
    pub(crate) fn connection_lost(&mut self) {
        self.connected = false;
        self.sent_disconnect = false;
        self.discarded_since_lost = false;
        if let Some(t) = self.traffic.as_deref_mut() {
            t.tx.clear();
            t.events.forget_connection();
            t.outbox.reset_aliases();
            t.inbox.reset_aliases();
        }
    }

    /// Server end: received messages not yet drained are acknowledged on no
    /// connection (see [`Events::unlink_received`]).
    pub(crate) fn unlink_received(&mut self) {
        if let Some(t) = self.traffic.as_deref_mut() {
            t.events.unlink_received();
        }
    }

    /// The verdict of a PUBLISH whose connection ended before it was settled: nothing
    /// is sent, but a refused QoS 2 message (5.0) frees its identifier, so that its
    /// resend is decided anew rather than answered as a duplicate (unless the session
    /// was discarded since: the identifier is then the new connection's).
    pub(crate) fn settle_unsent(
        &mut self,
        qos: QoS,
        packet_id: Option<PacketId>,
        reason: ReasonCode,
    ) {
        if let Some(id) = packet_id {
            if qos == QoS::ExactlyOnce
                && self.version.is_v5()
                && reason.is_error()
                && !self.discarded_since_lost
            {
                self.traffic_mut().inbox.release(id);
            }
        }
    }

    /// A new connection begins (see [`Events::forget_unsettled`]).
    pub(crate) fn forget_unsettled(&mut self) {
        if let Some(t) = self.traffic.as_deref_mut() {
            t.events.forget_unsettled();
        }
    }

    /// Drops the received messages not yet drained, releasing the identifiers of the
    /// QoS 2 ones; returns how many were dropped.
    pub(crate) fn forget_received(&mut self) -> usize {
        let Some(t) = self.traffic.as_deref_mut() else {
            return 0;
        };
        let (count, qos2) = t.events.forget_received();
        for id in qos2 {
            t.inbox.release(id);
        }
        count
    }

    /// A new connection resumes the session: resend what is unacknowledged, in order.
    pub(crate) fn resume(&mut self, now: Instant) {
        self.connected = true;
        self.sent_disconnect = false;
        self.last_rx = now;
        self.last_tx = now;
        let window = self.window();
        let Some(t) = self.traffic.as_deref_mut() else {
            return;
        };
        let resend = t.outbox.resend(
            now,
            self.version,
            window,
            self.peer.max_packet_size,
            &mut t.events,
        );
        for packet in resend {
            let tx = match packet {
                Packet::PubRel(rel) => Tx::PubRel(rel.packet_id, rel.reason_code),
                packet => packet.into(),
            };
            t.tx.push_back(tx);
        }
    }

    /// Discards the session state (clean start, or no session on the other side).
    pub(crate) fn discard_state(&mut self) {
        self.discarded_since_lost = true;
        let Some(t) = self.traffic.as_deref_mut() else {
            return;
        };
        for id in t.outbox.discard() {
            t.events.push(Event::Dropped {
                id,
                reason: DropReason::SessionDiscarded,
            });
        }
        t.inbox.awaiting_pubrel.clear();
    }

    /// Queues a DISCONNECT with `reason` where the version has one to send.
    pub(crate) fn queue_disconnect(&mut self, reason: ReasonCode) {
        self.queue_disconnect_explained(reason, None);
    }

    /// Queues a DISCONNECT with `reason` and, in 5.0, a Reason String saying why. The
    /// Reason String is dropped if it would not fit the peer's Maximum Packet Size
    /// ([MQTT-3.14.2-3]); DISCONNECT may carry one even when the peer asked for no
    /// problem information ([MQTT-3.1.2-29]).
    pub(crate) fn queue_disconnect_explained(&mut self, reason: ReasonCode, why: Option<&str>) {
        if self.version.is_v5() && self.connected {
            let mut d = mqtt_codec::Disconnect::new(reason);
            d.properties.reason_string = why.and_then(|w| mqtt_codec::ByteStr::try_from(w).ok());
            self.send(d);
        }
    }
}
