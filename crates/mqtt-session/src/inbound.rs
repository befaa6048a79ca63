//! Messages we receive: QoS 2 duplicate suppression, the Receive Maximum we announced,
//! and incoming topic aliases.

use alloc::vec::Vec;

use mqtt_codec::{ByteStr, PacketId, Publish, QoS, ReasonCode};

use crate::error::ProtocolError;

/// What to do with a received PUBLISH.
pub(crate) enum Received {
    /// Deliver the message, then acknowledge (QoS 1: PUBACK, QoS 2: PUBREC).
    Deliver,
    /// A QoS 2 PUBLISH seen before and not yet released: acknowledge again with PUBREC,
    /// do not deliver ([MQTT-4.3.3-10]).
    Duplicate(PacketId),
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// QoS 2 packet identifiers delivered and waiting for PUBREL, in arrival order.
    pub(crate) awaiting_pubrel: Vec<PacketId>,
    /// Incoming topic aliases of this connection: alias `i + 1` is `aliases[i]`, found
    /// by index in O(1). Grown as the peer uses higher aliases, never beyond the Topic
    /// Alias Maximum we announced (checked before any growth).
    aliases: Vec<Option<ByteStr>>,
}

impl Inbox {
    /// Whether no QoS 2 message waits for PUBREL and no topic alias is mapped.
    pub(crate) fn is_empty(&self) -> bool {
        self.awaiting_pubrel.is_empty() && self.aliases.is_empty()
    }

    /// Gives back the memory of an empty QoS 2 window (aliases stay: they are in use).
    pub(crate) fn shrink(&mut self) {
        if self.awaiting_pubrel.is_empty() {
            self.awaiting_pubrel = Vec::new();
        }
    }

    /// Checks and resolves a received PUBLISH. `receive_maximum` and `alias_maximum` are
    /// what we announced (enforced for 5.0 only, where the peer knows them).
    #[inline]
    pub(crate) fn receive(
        &mut self,
        publish: &mut Publish,
        v5: bool,
        receive_maximum: u16,
        alias_maximum: u16,
    ) -> Result<Received, ProtocolError> {
        if let Some(alias) = publish.topic_alias {
            let slot = usize::from(alias.get()) - 1;
            if !v5 || alias.get() > alias_maximum {
                // [MQTT-3.3.2-12] in reverse: above the maximum we announced.
                return Err(ProtocolError::new(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    None,
                    "topic alias above the Topic Alias Maximum",
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(slot).and_then(Option::as_ref) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return Err(ProtocolError::new(
                            ReasonCode::PROTOCOL_ERROR,
                            None,
                            "topic alias with no topic mapped to it",
                        ));
                    }
                }
            } else {
                if self.aliases.len() <= slot {
                    // Amortized doubling, but capped at the maximum: the capacity never
                    // exceeds `alias_maximum` entries.
                    let want = (self.aliases.capacity() * 2)
                        .clamp(slot + 1, usize::from(alias_maximum).max(slot + 1));
                    self.aliases
                        .reserve_exact(want.saturating_sub(self.aliases.len()));
                    self.aliases.resize(slot + 1, None);
                }
                if let Some(entry) = self.aliases.get_mut(slot) {
                    *entry = Some(publish.topic.clone());
                }
            }
            publish.topic_alias = None;
        }
        if publish.qos() == QoS::ExactlyOnce {
            let Some(id) = publish.packet_id() else {
                return Ok(Received::Deliver);
            };
            if self.awaiting_pubrel.contains(&id) {
                return Ok(Received::Duplicate(id));
            }
            if v5 && self.awaiting_pubrel.len() >= usize::from(receive_maximum) {
                // [MQTT-3.3.4-9] seen from the receiving side.
                return Err(ProtocolError::new(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    Some("MQTT-3.3.4-9"),
                    "more unacknowledged QoS 2 PUBLISH packets than Receive Maximum",
                ));
            }
            self.awaiting_pubrel.push(id);
        }
        Ok(Received::Deliver)
    }

    /// Applies PUBREL: true if the identifier was waiting for it.
    pub(crate) fn release(&mut self, id: PacketId) -> bool {
        match self.awaiting_pubrel.iter().position(|&p| p == id) {
            Some(pos) => {
                self.awaiting_pubrel.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Forgets the aliases of the connection that ended ([MQTT-3.3.2-7]).
    pub(crate) fn reset_aliases(&mut self) {
        self.aliases.clear();
    }
}
