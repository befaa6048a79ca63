//! What a session tells its driver.

use alloc::{boxed::Box, collections::VecDeque};

use mqtt_codec::{
    Auth, ConnAck, Disconnect, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};

use crate::message::{Arrival, DropReason, Message, MessageId};

/// Something the application (client end) or the router (server end) must act on.
/// Drain with `poll_event` after every call into the session.
///
/// The rare variants that carry a large packet box it, so that an event, moved once
/// per message on the way to the router, stays the size of an application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An application message arrived: hand it to the application (client) or route it
    /// (server). Already acknowledged as its QoS requires; a QoS 2 duplicate is never
    /// reported twice. The [`Arrival`] tells how this copy arrived (packet identifier,
    /// topic alias as received); the message itself is free of those per-connection
    /// parts.
    Message(Message, Arrival),
    /// One of our messages completed: PUBACK (QoS 1), PUBCOMP (QoS 2), or a PUBACK /
    /// PUBREC with an error code, which also ends the exchange ([MQTT-4.4.0-2]). A QoS 0
    /// message completes when it is handed to `poll_transmit`, without an event.
    Delivered {
        /// The message.
        id: MessageId,
        /// The peer's reason code (5.0); `Success` on 3.1 and 3.1.1.
        reason_code: ReasonCode,
    },
    /// One of our messages will never be sent.
    Dropped {
        /// The message.
        id: MessageId,
        /// Why.
        reason: DropReason,
    },
    /// The peer sent DISCONNECT.
    PeerDisconnected(Box<Disconnect>),
    /// The connection must end now: flush what `poll_transmit` still yields, then close
    /// the socket and call `connection_lost`.
    Closed {
        /// Why (also sent in a DISCONNECT, where the version and end allow one).
        reason: ReasonCode,
    },
    /// Client end: the server accepted the connection.
    Connected(Box<ConnAck>),
    /// Client end: the server refused the connection.
    Refused(Box<ConnAck>),
    /// Client end: the answer to our SUBSCRIBE.
    SubAck(Box<SubAck>),
    /// Client end: the answer to our UNSUBSCRIBE.
    UnsubAck(Box<UnsubAck>),
    /// Either end (5.0): an AUTH packet for the enhanced-authentication exchange.
    Auth(Box<Auth>),
    /// Server end: the client asks to subscribe; answer with `ServerSession::suback`.
    Subscribe(Subscribe),
    /// Server end: the client asks to unsubscribe; answer with `ServerSession::unsuback`.
    Unsubscribe(Unsubscribe),
    /// Server end: the will message is due: publish it.
    Will(Box<Will>),
    /// Server end: the session expired while disconnected: discard it and its
    /// subscriptions.
    SessionExpired,
}

/// An event as queued: the frequent ones inline and small, an application message by
/// its place in [`Events::messages`] (its 4-byte [`Arrival`] inline, which fits in the
/// space the other variants take anyway), the rare large ones boxed. Queue moves then copy
/// a few words instead of a whole [`Event`].
#[derive(Debug)]
enum Queued {
    Message(Arrival),
    Delivered {
        id: MessageId,
        reason_code: ReasonCode,
    },
    Dropped {
        id: MessageId,
        reason: DropReason,
    },
    Closed {
        reason: ReasonCode,
    },
    SessionExpired,
    Other(Box<Event>),
}

/// The event queue of a session, drained by `poll_event` in the order pushed.
#[derive(Debug, Default)]
pub(crate) struct Events {
    order: VecDeque<Queued>,
    /// The messages of the `Queued::Message` entries, in order.
    messages: VecDeque<Message>,
    /// How many of the QoS 1/2 messages still queued came on a connection that has
    /// ended (they are the first ones; see [`Events::unlink_received`]).
    unlinked: u32,
    /// How many of those were drained and are still to be settled, on no connection
    /// (see [`Events::take_unlinked_settlement`]).
    unlinked_drained: u32,
}

impl Events {
    /// Whether no event is queued and no settlement is owed to an ended connection's
    /// messages (the counts must outlive an idle session's shrinking).
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty() && self.unlinked == 0 && self.unlinked_drained == 0
    }

    /// Gives back the memory of empty queues.
    pub(crate) fn shrink(&mut self) {
        if self.order.is_empty() {
            self.order = VecDeque::new();
        }
        if self.messages.is_empty() {
            self.messages = VecDeque::new();
        }
    }

    /// Forgets the events that only the connection just lost could act on: the peer's
    /// DISCONNECT, an order to close, an AUTH exchange, the CONNACK's verdict (client
    /// end), and SUBSCRIBE and UNSUBSCRIBE requests (server end), whose answer can only
    /// go back on the connection that asked (the client saw no SUBACK or UNSUBACK, so
    /// for it they did not happen, as if lost on the way). Left queued, the next
    /// connection would take them for its own: close at once, believe itself connected,
    /// or get an acknowledgement for a packet identifier it never used. Messages, their
    /// acknowledgements, SUBACKs received and the rest stay: they belong to the session.
    pub(crate) fn forget_connection(&mut self) {
        self.order.retain(|q| match q {
            Queued::Closed { .. } => false,
            Queued::Other(e) => !matches!(
                **e,
                Event::PeerDisconnected(_)
                    | Event::Auth(_)
                    | Event::Connected(_)
                    | Event::Refused(_)
                    | Event::Subscribe(_)
                    | Event::Unsubscribe(_)
            ),
            _ => true,
        });
    }

    /// Server end: the messages received but not yet drained, from a connection that
    /// has ended, are acknowledged on none: the next settlements of QoS 1/2 messages,
    /// as many as there are of them, send nothing (the next connection's client may
    /// use those identifiers for other messages). Their publisher, which saw no
    /// acknowledgement, sends them again if it resumes the session.
    pub(crate) fn unlink_received(&mut self) {
        let queued = self
            .messages
            .iter()
            .filter(|m| m.qos != mqtt_codec::QoS::AtMostOnce)
            .count();
        self.unlinked = u32::try_from(queued).unwrap_or(u32::MAX);
    }

    /// A new connection begins: settlements of messages drained before it (and never
    /// settled: a session gone offline drops them) are not waited for any longer, so
    /// none of this connection's own is taken for one.
    pub(crate) fn forget_unsettled(&mut self) {
        self.unlinked_drained = 0;
    }

    /// Whether the next settlement is of one of the messages [`unlink_received`]
    /// (Self::unlink_received) counted, drained since: it sends nothing. Counts it.
    pub(crate) fn take_unlinked_settlement(&mut self) -> bool {
        let unlinked = self.unlinked_drained > 0;
        self.unlinked_drained = self.unlinked_drained.saturating_sub(1);
        unlinked
    }

    /// Takes out the messages received but not yet drained; returns the packet
    /// identifiers of the QoS 2 ones (see [`crate::ServerSession::forget_received`]).
    pub(crate) fn forget_received(&mut self) -> (usize, alloc::vec::Vec<mqtt_codec::PacketId>) {
        let messages = core::mem::take(&mut self.messages);
        let count = messages.len();
        self.unlinked = 0;
        let mut qos2 = alloc::vec::Vec::new();
        let mut messages = messages.into_iter();
        self.order.retain(|q| {
            let Queued::Message(arrival) = q else {
                return true;
            };
            if let (Some(m), Some(id)) = (messages.next(), arrival.packet_id) {
                if m.qos == mqtt_codec::QoS::ExactlyOnce {
                    qos2.push(id);
                }
            }
            false
        });
        (count, qos2)
    }

    /// Forgets a [`Event::SessionExpired`] not yet drained: a new connection replaced
    /// the session it reported.
    pub(crate) fn forget_expiry(&mut self) {
        self.order.retain(|q| !matches!(q, Queued::SessionExpired));
    }

    /// Queues an event.
    #[inline]
    pub(crate) fn push(&mut self, event: Event) {
        let queued = match event {
            Event::Message(message, arrival) => return self.push_message(message, arrival),
            Event::Delivered { id, reason_code } => Queued::Delivered { id, reason_code },
            Event::Dropped { id, reason } => Queued::Dropped { id, reason },
            Event::Closed { reason } => Queued::Closed { reason },
            Event::SessionExpired => Queued::SessionExpired,
            other => Queued::Other(Box::new(other)),
        };
        self.order.push_back(queued);
    }

    /// Queues [`Event::Delivered`]: one per acknowledged message, so it goes straight
    /// into the queue, without an [`Event`] built and matched on the way.
    #[inline]
    pub(crate) fn push_delivered(&mut self, id: MessageId, reason_code: ReasonCode) {
        self.order.push_back(Queued::Delivered { id, reason_code });
    }

    /// Queues [`Event::Message`].
    #[inline]
    pub(crate) fn push_message(&mut self, message: Message, arrival: Arrival) {
        self.messages.push_back(message);
        self.order.push_back(Queued::Message(arrival));
    }

    /// The next event.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Event> {
        Some(match self.order.pop_front()? {
            Queued::Message(arrival) => {
                let message = self.messages.pop_front()?;
                if self.unlinked > 0 && message.qos != mqtt_codec::QoS::AtMostOnce {
                    self.unlinked -= 1;
                    self.unlinked_drained += 1;
                }
                return Some(Event::Message(message, arrival));
            }
            Queued::Delivered { id, reason_code } => Event::Delivered { id, reason_code },
            Queued::Dropped { id, reason } => Event::Dropped { id, reason },
            Queued::Closed { reason } => Event::Closed { reason },
            Queued::SessionExpired => Event::SessionExpired,
            Queued::Other(event) => *event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The arrival rides inline in the queue entry without making entries larger: the
    // `Delivered` entry (a u64 id and a reason code) already sets the size.
    #[test]
    fn a_queued_message_costs_no_more_than_a_delivery() {
        assert!(size_of::<Queued>() <= 16);
    }

    // The large, rare packets are boxed, so an event is no larger than an application
    // message with its arrival: 96 bytes to move, where it was 264.
    #[test]
    fn an_event_is_the_size_of_a_message_event() {
        assert!(size_of::<Event>() <= size_of::<Message>() + 16);
    }
}
