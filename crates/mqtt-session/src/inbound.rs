//! Messages we receive: QoS 2 duplicate suppression, the Receive Maximum we announced,
//! and incoming topic aliases.

use alloc::{collections::BTreeSet, vec::Vec};

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
    /// QoS 2 packet identifiers delivered and waiting for PUBREL: found, added and
    /// removed in O(log n), at most our Receive Maximum of them.
    pub(crate) awaiting_pubrel: BTreeSet<PacketId>,
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
            self.awaiting_pubrel = BTreeSet::new();
        }
    }

    /// Checks and resolves a received PUBLISH. `alias_maximum` is what we announced;
    /// topic aliases exist in 5.0 only. `receive_maximum`, when given, bounds the QoS 2
    /// identifiers awaiting PUBREL: a 5.0 peer knows it (exceeding it is 0x93); a 3.1
    /// or 3.1.1 client does not, but a server given one per unreleased QoS 2 message
    /// with no bound could be made to hold 65,535 of them per session, so the server
    /// applies the same cap and closes the connection beyond it (3.x has no reason
    /// code to send). A 3.1.1 client that waits for PUBREL before sending more needs
    /// no more than its own in-flight window.
    #[inline]
    pub(crate) fn receive(
        &mut self,
        publish: &mut Publish,
        v5: bool,
        receive_maximum: Option<u16>,
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
            if receive_maximum.is_some_and(|max| self.awaiting_pubrel.len() >= usize::from(max)) {
                // [MQTT-3.3.4-9] seen from the receiving side (5.0); our own bound (3.x).
                return Err(if v5 {
                    ProtocolError::new(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        Some("MQTT-3.3.4-9"),
                        "more unacknowledged QoS 2 PUBLISH packets than Receive Maximum",
                    )
                } else {
                    ProtocolError::new(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        None,
                        "more QoS 2 PUBLISH packets awaiting PUBREL than the server keeps",
                    )
                });
            }
            self.awaiting_pubrel.insert(id);
        }
        Ok(Received::Deliver)
    }

    /// Applies PUBREL: true if the identifier was waiting for it.
    pub(crate) fn release(&mut self, id: PacketId) -> bool {
        self.awaiting_pubrel.remove(&id)
    }

    /// Forgets the aliases of the connection that ended ([MQTT-3.3.2-7]).
    pub(crate) fn reset_aliases(&mut self) {
        self.aliases.clear();
    }
}
