//! An async MQTT 3.1/3.1.1/5.0 client on tokio.
//!
//! This layer owns the network: it opens TCP, TLS, WebSocket or secure WebSocket
//! connections (over TCP from a chosen local address, a Unix domain socket, or a
//! SOCKS5 proxy), runs an [`mqtt_session::ClientSession`] over them in a spawned driver
//! task, reconnects with backoff, and hands the application a [`Client`] handle for
//! requests and a [`Connection`] stream of [`Event`]s. The protocol itself (QoS flows,
//! resends, keep-alive, session resumption) lives in `mqtt-session`; this crate never
//! decides anything the protocol decides. A program that speaks MQTT itself on its
//! own sockets can still borrow the TLS and WebSocket layers: [`TransportLayers`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mqtt_client::{ConnectOptions, Event, QoS};
//!
//! let options = ConnectOptions::from_url("mqtt://localhost:1883")?.client_id("demo");
//! let (client, mut connection) = mqtt_client::connect(options).await?;
//! client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
//! client.publish("sensors/temp", "21.5", QoS::ExactlyOnce, false).await?;
//! while let Some(event) = connection.next_event().await {
//!     if let Event::Message(m, _) = event {
//!         println!("{}: {:?}", m.topic, m.payload);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # The driver and back-pressure
//! [`connect`] spawns one task per client that owns the socket. The application talks
//! to it through bounded channels, so every buffer is bounded:
//! - Requests ([`Client::publish`], ...) go through a queue of
//!   [`ConnectOptions::request_capacity`]. The driver takes a new message only while
//!   the session holds fewer than [`ConnectOptions::max_pending`] (in flight and
//!   queued), so `publish` waits when the in-flight window is full, and
//!   [`Client::try_publish`] hands the message back ([`TryPublishError::Full`]).
//! - Incoming events go through a queue of [`ConnectOptions::event_capacity`]. When the
//!   application stops reading, the driver goes on reading the socket and holds
//!   further PUBLISH packets, not yet acknowledged, up to a read-ahead bound
//!   ([`ConnectOptions::read_ahead`]: 4,096 messages and 8 MiB by default). All the
//!   while it keeps **writing** acknowledgements, pings and the application's messages,
//!   and keeps processing acknowledgements of the application's messages. So a task
//!   that reads messages and publishes (awaiting each completion) does not deadlock.
//!   Only past the read-ahead bound does the driver stop **reading** the socket; then a
//!   completion may wait until the application reads events again (await
//!   [`Delivery`]s from another task if you expect floods that large). An application
//!   that reads nothing for longer than keep-alive plus the ping timeout while stopped
//!   this way sees its connection deemed dead and re-established.
//!
//! # Reconnection
//! When an accepted connection is lost, the driver reconnects with exponential backoff
//! and jitter ([`ReconnectOptions`]), asks to resume the session, and the session
//! resends unacknowledged messages (DUP set) and PUBRELs. State changes are reported as
//! [`Event::Disconnected`], [`Event::Reconnecting`], [`Event::ConnectFailed`] and
//! [`Event::Connected`]. Messages published while disconnected are queued (QoS 1 and
//! 2) and sent after reconnection. For a session that survives reconnection, use
//! `clean_start(false)` (3.1.1) or a `session_expiry` above 0 (5.0).
//!
//! # Enhanced authentication (5.0)
//! An [`Authenticator`] given to [`ConnectOptions::authenticator`] supplies the
//! Authentication Method and the data of each step: CONNECT, answers to the server's
//! AUTH challenges, and [`Client::reauthenticate`]. See [`Authenticator`].
//! [`Scram`] is one: SCRAM-SHA-256 with a user name and password, which also checks
//! the server's proof.
//!
//! # Cancel safety
//! Every `async fn` documents its cancel safety. State lives in the driver, never in
//! a future the application holds, so cancelling a call never corrupts the session;
//! at worst the outcome of a request that was already queued is lost.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod auth;
mod client;
mod driver;
mod error;
mod options;
mod scram;
mod socks5;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use crate::{
    auth::Authenticator,
    client::{Client, Connection, Delivery, DisconnectReason, Event, connect, message},
    error::{ClientError, ConnectError, TryPublishError, refusal_text},
    options::{
        ConnectOptions, PacketDirection, ReconnectOptions, TlsOptions, TlsVersion, Transport,
    },
    scram::Scram,
    socks5::Socks5Proxy,
    transport::{BoxIo, Io, TransportLayers},
};
pub use mqtt_codec::{
    self as codec, ByteStr, ConnAck, ConnectProperties, Disconnect, PropertyBox, ProtocolVersion,
    PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, SubscribeProperties, Subscription,
    SubscriptionOptions, UnsubAck, UnsubscribeProperties, Will, WillProperties,
};
pub use mqtt_session::{Arrival, DropReason, Limits, Message};
