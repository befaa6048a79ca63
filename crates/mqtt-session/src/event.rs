//! What a session tells its driver.

use mqtt_codec::{
    Auth, ConnAck, Disconnect, PacketId, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};

use crate::message::{DropReason, Message, MessageId};

/// Something the application (client end) or the router (server end) must act on.
/// Drain with `poll_event` after every call into the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An application message arrived: hand it to the application (client) or route it
    /// (server). Already acknowledged as its QoS requires; a QoS 2 duplicate is never
    /// reported twice.
    Message(Message),
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
    PeerDisconnected(Disconnect),
    /// The connection must end now: flush what `poll_transmit` still yields, then close
    /// the socket and call `connection_lost`.
    Closed {
        /// Why (also sent in a DISCONNECT, where the version and end allow one).
        reason: ReasonCode,
    },
    /// Client end: the server accepted the connection.
    Connected(ConnAck),
    /// Client end: the server refused the connection.
    Refused(ConnAck),
    /// Client end: the answer to our SUBSCRIBE.
    SubAck(SubAck),
    /// Client end: the answer to our UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// Either end (5.0): an AUTH packet for the enhanced-authentication exchange.
    Auth(Auth),
    /// Server end: the client asks to subscribe; answer with `ServerSession::suback`.
    Subscribe(Subscribe),
    /// Server end: the client asks to unsubscribe; answer with `ServerSession::unsuback`.
    Unsubscribe(Unsubscribe),
    /// Server end: the will message is due: publish it.
    Will(Will),
    /// Server end: the session expired while disconnected: discard it and its
    /// subscriptions.
    SessionExpired,
    /// Client end: a SUBSCRIBE or UNSUBSCRIBE was lost with the session that carried it.
    RequestLost(PacketId),
}
