//! The half of a session both ends share: publish flows in both directions, the
//! transmit and event queues, and the peer's limits.

use alloc::{collections::VecDeque, vec::Vec};

use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};

use crate::{
    error::ProtocolError,
    event::Event,
    inbound::{Inbox, Received},
    message::{DropReason, Limits, Message, MessageId, Refused},
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

#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) version: ProtocolVersion,
    pub(crate) limits: Limits,
    pub(crate) peer: PeerLimits,
    pub(crate) connected: bool,
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    /// Packets to send before any new PUBLISH: acknowledgements, resends, control.
    pub(crate) tx: VecDeque<Packet>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) last_rx: Instant,
    pub(crate) last_tx: Instant,
    /// A DISCONNECT went out: nothing more may be sent on this connection ([MQTT-3.14.4-1]).
    pub(crate) sent_disconnect: bool,
    /// The peer asked for no Reason String or User Property on acknowledgements
    /// ([MQTT-3.1.2-29]).
    pub(crate) strip_diagnostics: bool,
}

impl Flow {
    pub(crate) fn new(version: ProtocolVersion, limits: Limits) -> Self {
        Self {
            version,
            limits,
            peer: PeerLimits::default(),
            connected: false,
            outbox: Outbox::default(),
            inbox: Inbox::default(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            last_rx: Instant::ZERO,
            last_tx: Instant::ZERO,
            sent_disconnect: false,
            strip_diagnostics: false,
        }
    }

    /// The in-flight window: the peer's Receive Maximum, capped by ours ([MQTT-4.9.0-1]).
    fn window(&self) -> usize {
        let peer = if self.version.is_v5() {
            self.peer.receive_maximum
        } else {
            u16::MAX
        };
        usize::from(peer.min(self.limits.max_inflight).max(1))
    }

    /// Queues an outgoing message. QoS 0 is refused while disconnected unless
    /// `qos0_offline` or the limits allow it.
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
        let mut evicted = Vec::new();
        let result = self
            .outbox
            .enqueue(now, message, &self.limits, &mut evicted);
        for id in evicted {
            self.events.push_back(Event::Dropped {
                id,
                reason: DropReason::QueueFull,
            });
        }
        result
    }

    /// The next packet to write, if connected.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        if !self.connected || self.sent_disconnect {
            return None;
        }
        let mut packet = match self.tx.pop_front() {
            Some(p) => p,
            None => {
                let alias_max = if self.version.is_v5() && self.limits.send_topic_aliases {
                    self.peer.topic_alias_maximum
                } else {
                    0
                };
                let mut dropped = Vec::new();
                let next = self.outbox.next_publish(
                    now,
                    self.window(),
                    self.peer.max_packet_size,
                    if alias_max > 0 { 3 } else { 0 },
                    self.version,
                    &mut dropped,
                );
                for (id, reason) in dropped {
                    self.events.push_back(Event::Dropped { id, reason });
                }
                let mut publish = next?;
                self.outbox.apply_alias(&mut publish, alias_max);
                Packet::Publish(publish)
            }
        };
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
                return self.poll_transmit(now);
            }
        }
        self.last_tx = now;
        if matches!(packet, Packet::Disconnect(_)) {
            self.sent_disconnect = true;
        }
        Some(packet)
    }

    /// Handles the packets both ends treat alike. Returns the packet back if it is not
    /// one of them.
    pub(crate) fn handle_common(
        &mut self,
        packet: Packet,
    ) -> Result<Option<Packet>, ProtocolError> {
        match packet {
            Packet::Publish(p) => self.handle_publish(p)?,
            Packet::PubAck(a) => self.handle_ack(a.packet_id, Awaiting::PubAck, a.reason_code),
            Packet::PubRec(a) => self.handle_ack(a.packet_id, Awaiting::PubRec, a.reason_code),
            Packet::PubComp(a) => self.handle_ack(a.packet_id, Awaiting::PubComp, a.reason_code),
            Packet::PubRel(r) => {
                // [MQTT-4.3.3-11]: answer PUBREL with PUBCOMP, with 0x92 if we had no such id.
                let known = self.inbox.release(r.packet_id);
                let mut comp = PubComp::new(r.packet_id);
                if !known && self.version.is_v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.tx.push_back(comp.into());
            }
            Packet::Auth(a) if self.version.is_v5() => self.events.push_back(Event::Auth(a)),
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    fn handle_publish(&mut self, publish: Publish) -> Result<(), ProtocolError> {
        let v5 = self.version.is_v5();
        match self.inbox.receive(
            publish,
            v5,
            self.limits.receive_maximum,
            self.limits.topic_alias_maximum,
        )? {
            Received::Deliver(p) => {
                // [MQTT-4.3.2-4], [MQTT-4.3.3-8]: acknowledge after taking ownership;
                // [MQTT-4.6.0-2], [MQTT-4.6.0-3]: in the order received.
                match p.qos_pid {
                    mqtt_codec::QosPid::AtMostOnce => {}
                    mqtt_codec::QosPid::AtLeastOnce(id) => {
                        self.tx.push_back(PubAck::new(id).into());
                    }
                    mqtt_codec::QosPid::ExactlyOnce(id) => {
                        self.tx.push_back(PubRec::new(id).into());
                    }
                }
                self.events
                    .push_back(Event::Message(Message::from_publish(p)));
            }
            Received::Duplicate(id) => self.tx.push_back(PubRec::new(id).into()),
        }
        Ok(())
    }

    fn handle_ack(&mut self, packet_id: PacketId, phase: Awaiting, code: ReasonCode) {
        match self.outbox.acknowledge(packet_id, phase, code) {
            AckOutcome::Done(id) => self.events.push_back(Event::Delivered {
                id,
                reason_code: code,
            }),
            // [MQTT-4.6.0-4]: PUBREL in the order the PUBRECs arrived.
            AckOutcome::SendPubRel => self.tx.push_back(PubRel::new(packet_id).into()),
            AckOutcome::Unknown if phase == Awaiting::PubRec => {
                // Answer a PUBREC we cannot match, so the peer can finish its side.
                let mut rel = PubRel::new(packet_id);
                if self.version.is_v5() {
                    rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.tx.push_back(rel.into());
            }
            AckOutcome::Unknown => {}
        }
    }

    /// The connection ended: what was not written is dropped (the peer will resend),
    /// connection-scoped state is reset, the session state stays.
    pub(crate) fn connection_lost(&mut self) {
        self.connected = false;
        self.sent_disconnect = false;
        self.tx.clear();
        self.outbox.reset_aliases();
        self.inbox.reset_aliases();
    }

    /// A new connection resumes the session: resend what is unacknowledged, in order.
    pub(crate) fn resume(&mut self, now: Instant) {
        self.connected = true;
        self.sent_disconnect = false;
        self.last_rx = now;
        self.last_tx = now;
        let resend: Vec<Packet> = self.outbox.resend().collect();
        self.tx.extend(resend);
    }

    /// Discards the session state (clean start, or no session on the other side).
    pub(crate) fn discard_state(&mut self) {
        for id in self.outbox.discard() {
            self.events.push_back(Event::Dropped {
                id,
                reason: DropReason::SessionDiscarded,
            });
        }
        self.inbox.awaiting_pubrel.clear();
    }

    /// Queues a DISCONNECT with `reason` where the version has one to send.
    pub(crate) fn queue_disconnect(&mut self, reason: ReasonCode) {
        if self.version.is_v5() && self.connected {
            self.tx
                .push_back(mqtt_codec::Disconnect::new(reason).into());
        }
    }
}
