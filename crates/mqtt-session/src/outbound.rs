//! Messages we send: the bounded queue, the in-flight window, packet identifiers and
//! outgoing topic aliases.

use alloc::{collections::VecDeque, vec::Vec};

use mqtt_codec::{ByteStr, PacketId, ProtocolVersion, Publish, QoS, QosPid, ReasonCode};

use crate::{
    message::{DropReason, Limits, Message, MessageId, Refused},
    time::Instant,
};

/// Where a QoS 1/2 message stands in its exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the packets awaited
pub(crate) enum Awaiting {
    /// QoS 1: PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2: PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP. The message itself is no longer needed.
    PubComp,
}

#[derive(Clone, Debug)]
pub(crate) struct Queued {
    pub(crate) id: MessageId,
    pub(crate) message: Message,
    pub(crate) expires_at: Option<Instant>,
}

#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) id: MessageId,
    pub(crate) packet_id: PacketId,
    pub(crate) phase: Awaiting,
    /// `None` once PUBREL was sent.
    pub(crate) message: Option<Message>,
}

/// What a peer's acknowledgement meant for our outgoing messages.
pub(crate) enum AckOutcome {
    /// The exchange finished (PUBACK, PUBCOMP, or PUBREC with an error code).
    Done(MessageId),
    /// PUBREC with success: send PUBREL now.
    SendPubRel,
    /// No message is waiting for this acknowledgement.
    Unknown,
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) queue: VecDeque<Queued>,
    pub(crate) queued_bytes: usize,
    pub(crate) inflight: VecDeque<InFlight>,
    /// Packet identifiers in use outside the in-flight window (a client's pending
    /// SUBSCRIBE and UNSUBSCRIBE).
    pub(crate) other_ids: Vec<PacketId>,
    pub(crate) next_packet_id: u16,
    pub(crate) next_message_id: u64,
    /// Outgoing topic aliases of this connection: alias `i + 1` stands for `aliases[i]`.
    aliases: Vec<ByteStr>,
    next_alias_victim: usize,
}

impl Outbox {
    pub(crate) fn next_id(&mut self) -> MessageId {
        self.next_message_id += 1;
        MessageId(self.next_message_id)
    }

    /// Queues a message, applying the overflow policy. Evicted QoS 0 messages are
    /// returned so the caller can report them.
    pub(crate) fn enqueue(
        &mut self,
        now: Instant,
        message: Message,
        limits: &Limits,
        evicted: &mut Vec<MessageId>,
    ) -> Result<MessageId, Refused> {
        let size = message.size();
        let fits = |q: &Self| {
            q.queue.len() < limits.max_queued_messages
                && q.queued_bytes.saturating_add(size) <= limits.max_queued_bytes
        };
        if !fits(self) {
            if message.qos == QoS::AtMostOnce {
                return Err(Refused {
                    message: message.into(),
                    reason: DropReason::QueueFull,
                });
            }
            // Make room by dropping queued QoS 0 messages, oldest first.
            while !fits(self) {
                let Some(pos) = self
                    .queue
                    .iter()
                    .position(|q| q.message.qos == QoS::AtMostOnce)
                else {
                    return Err(Refused {
                        message: message.into(),
                        reason: DropReason::QueueFull,
                    });
                };
                if let Some(old) = self.queue.remove(pos) {
                    self.queued_bytes -= old.message.size();
                    evicted.push(old.id);
                }
            }
        }
        let id = self.next_id();
        self.queued_bytes += size;
        let expires_at = message.expires_at(now);
        self.queue.push_back(Queued {
            id,
            message,
            expires_at,
        });
        Ok(id)
    }

    fn id_in_use(&self, id: PacketId) -> bool {
        self.inflight.iter().any(|f| f.packet_id == id) || self.other_ids.contains(&id)
    }

    /// A packet identifier not in use ([MQTT-2.2.1-3], [MQTT-2.2.1-4]), or `None` if
    /// all 65,535 are.
    pub(crate) fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_packet_id) {
                if !self.id_in_use(id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Takes the next message that may be sent now, as a PUBLISH, moving QoS 1/2 into
    /// the in-flight window. Expired and oversized messages are skipped and reported in
    /// `dropped`.
    pub(crate) fn next_publish(
        &mut self,
        now: Instant,
        window: usize,
        max_packet_size: u32,
        alias_overhead: usize,
        version: ProtocolVersion,
        dropped: &mut Vec<(MessageId, DropReason)>,
    ) -> Option<Publish> {
        loop {
            let front = self.queue.front()?;
            if front.message.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                // [MQTT-4.9.0-2]: the send quota is used up. Messages behind wait too,
                // so order is kept.
                return None;
            }
            let queued = self.queue.pop_front()?;
            self.queued_bytes -= queued.message.size();
            let mut message = queued.message;
            if let Some(expires_at) = queued.expires_at {
                // [MQTT-3.3.2-5]: expired before onward delivery started: delete it.
                if now >= expires_at {
                    dropped.push((queued.id, DropReason::Expired));
                    continue;
                }
                // [MQTT-3.3.2-6]: send the time that is left.
                let left = expires_at.saturating_since(now).as_secs_ceil();
                message.properties.message_expiry_interval =
                    Some(u32::try_from(left).unwrap_or(u32::MAX));
            }
            let qos_pid = match message.qos {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                qos => match self.allocate_packet_id() {
                    Some(id) => QosPid::new(qos, id),
                    None => {
                        // Every identifier is in flight: wait.
                        self.queued_bytes += message.size();
                        self.queue.push_front(Queued {
                            id: queued.id,
                            message,
                            expires_at: queued.expires_at,
                        });
                        return None;
                    }
                },
            };
            // QoS 0 is not kept: move it into the packet instead of copying.
            let (publish, message) = match qos_pid {
                QosPid::AtMostOnce => (message.into_publish(), None),
                _ => (message.to_publish(qos_pid, false), Some(message)),
            };
            // A first use of a topic alias adds three bytes.
            if publish.encoded_len(version) + alias_overhead > max_packet_size as usize {
                // [MQTT-3.1.2-25]: discard it and behave as if it was delivered.
                dropped.push((queued.id, DropReason::TooLarge));
                continue;
            }
            if let (Some(packet_id), Some(message)) = (qos_pid.packet_id(), message) {
                let phase = if message.qos == QoS::AtLeastOnce {
                    Awaiting::PubAck
                } else {
                    Awaiting::PubRec
                };
                self.inflight.push_back(InFlight {
                    id: queued.id,
                    packet_id,
                    phase,
                    message: Some(message),
                });
            }
            return Some(publish);
        }
    }

    /// Applies PUBACK, PUBREC or PUBCOMP (`expect` says which phase it ends).
    pub(crate) fn acknowledge(
        &mut self,
        packet_id: PacketId,
        expect: Awaiting,
        code: ReasonCode,
    ) -> AckOutcome {
        let Some(pos) = self
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.phase == expect)
        else {
            return AckOutcome::Unknown;
        };
        if expect == Awaiting::PubRec && code.is_success() {
            // [MQTT-4.3.3-4]: answer with PUBREL; [MQTT-4.3.3-6]: never resend the PUBLISH.
            if let Some(f) = self.inflight.get_mut(pos) {
                f.phase = Awaiting::PubComp;
                f.message = None;
            }
            return AckOutcome::SendPubRel;
        }
        // [MQTT-4.4.0-2]: an error code also ends the exchange.
        match self.inflight.remove(pos) {
            Some(f) => AckOutcome::Done(f.id),
            None => AckOutcome::Unknown,
        }
    }

    /// The packets to resend on a resumed session, in their original order
    /// ([MQTT-4.4.0-1], [MQTT-4.6.0-1]): PUBLISH with DUP set, or PUBREL.
    pub(crate) fn resend(&self) -> impl Iterator<Item = mqtt_codec::Packet> + '_ {
        self.inflight
            .iter()
            .filter_map(|f| match (&f.message, f.phase) {
                (_, Awaiting::PubComp) => Some(mqtt_codec::PubRel::new(f.packet_id).into()),
                (Some(m), _) => Some(m.to_publish(QosPid::new(m.qos, f.packet_id), true).into()),
                (None, _) => None,
            })
    }

    /// Drops everything (clean start, or the peer has no session): returns the ids of
    /// the messages lost.
    pub(crate) fn discard(&mut self) -> Vec<MessageId> {
        let lost = self
            .inflight
            .drain(..)
            .map(|f| f.id)
            .chain(self.queue.drain(..).map(|q| q.id))
            .collect();
        self.queued_bytes = 0;
        self.other_ids.clear();
        lost
    }

    /// Forgets the aliases of the connection that ended ([MQTT-3.3.2-7]).
    pub(crate) fn reset_aliases(&mut self) {
        self.aliases.clear();
        self.next_alias_victim = 0;
    }

    /// Replaces the topic of `publish` by an alias where the peer allows them: the
    /// first use of a topic sends topic and alias, later uses the alias alone.
    pub(crate) fn apply_alias(&mut self, publish: &mut Publish, peer_max: u16) {
        if peer_max == 0 || publish.topic.is_empty() {
            return;
        }
        if let Some(pos) = self.aliases.iter().position(|t| *t == publish.topic) {
            publish.properties.topic_alias = alias_number(pos);
            publish.topic = ByteStr::new();
            return;
        }
        let slot = if self.aliases.len() < usize::from(peer_max) {
            self.aliases.push(publish.topic.clone());
            self.aliases.len() - 1
        } else {
            // Reuse aliases round-robin: cheap, and fair to topics seen once.
            let slot = self.next_alias_victim % self.aliases.len().max(1);
            self.next_alias_victim = slot + 1;
            if let Some(t) = self.aliases.get_mut(slot) {
                *t = publish.topic.clone();
            }
            slot
        };
        // [MQTT-3.1.2-26]: never above the peer's maximum; the slot is below it.
        publish.properties.topic_alias = alias_number(slot);
    }
}

fn alias_number(slot: usize) -> Option<core::num::NonZeroU16> {
    u16::try_from(slot + 1)
        .ok()
        .and_then(core::num::NonZeroU16::new)
}
