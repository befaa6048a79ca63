//! MQTT session state and QoS flows as a sans-IO state machine, for both ends.
//!
//! This layer does the protocol work between the codec and the network: packet
//! identifiers, the QoS 1 and QoS 2 exchanges in both directions, the in-flight window
//! (Receive Maximum), bounded queues, message expiry, topic aliases, keep-alive, session
//! resumption with its resends, will delay and session expiry. It does no I/O, reads no
//! clock and uses no randomness: inputs are decoded packets, commands and the current
//! time; outputs are packets to send, events, and the next deadline. Everything is
//! deterministic, so every flow is tested with virtual time and no sockets.
//!
//! - [`ClientSession`] is the client end (used by mqtt-client).
//! - [`ServerSession`] is the server end (used by mqtt-broker), one per client session,
//!   living across the connections that resume it.
//!
//! Both are driven the same way, as quinn-proto's `Connection` is: after every input
//! (`handle_packet`, `handle_timeout`, `connection_lost`) or command (`publish`,
//! `deliver`, `subscribe`, ...), drain `poll_transmit` (packets to encode and write),
//! then `poll_event`, then read `poll_timeout` to arm the timer.
//!
//! Every queue a peer can grow is bounded by [`Limits`]: the outgoing queue by messages
//! and bytes (QoS 0 dropped first), the QoS 2 receive window by our Receive Maximum,
//! topic aliases by our Topic Alias Maximum. [`ClientSession::export`] and
//! [`ServerSession::export`] write the whole session state in a stable, versioned
//! encoding (see [`state`]); [`ServerSession::restored`] brings back the part of a
//! server session a broker keeps in its store (subscriptions and expiry) after a restart.
//!
//! `#![no_std]` with `alloc`.
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod client;
mod error;
mod event;
mod flow;
mod inbound;
mod message;
mod outbound;
mod server;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod time;

pub use crate::{
    client::{ClientOptions, ClientSession},
    error::ProtocolError,
    event::Event,
    message::{Arrival, DropReason, Limits, Message, MessageId, Refused},
    server::{ServerSession, SubscriptionIter, SubscriptionRecord, Subscriptions},
    state::StateError,
    time::{Duration, Instant},
};
