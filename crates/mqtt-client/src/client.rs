//! The application's side: the [`Client`] handle, the [`Connection`] event stream and
//! [`connect`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::Stream;
use mqtt_codec::{
    ByteStr, ConnAck, Disconnect, ProtocolVersion, QoS, ReasonCode, SubAck, SubscribeProperties,
    Subscription, SubscriptionOptions, UnsubAck, UnsubscribeProperties,
    topic::{validate_topic_filter, validate_topic_name},
};
use mqtt_session::{Arrival, Message};
use tokio::sync::{mpsc, oneshot};

use crate::{
    driver::Driver,
    error::{ClientError, ConnectError, TryPublishError},
    options::ConnectOptions,
    transport::tls_config,
};

pub(crate) type Responder<T> = oneshot::Sender<Result<T, ClientError>>;

/// A request from a [`Client`] to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        message: Message,
        done: Responder<ReasonCode>,
    },
    Subscribe {
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
        done: Responder<SubAck>,
    },
    Unsubscribe {
        filters: Vec<ByteStr>,
        properties: UnsubscribeProperties,
        done: Responder<UnsubAck>,
    },
    Disconnect {
        packet: Disconnect,
        done: oneshot::Sender<()>,
    },
    Reauthenticate {
        done: Responder<()>,
    },
}

/// Something that happened on the connection: a message, or a change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "messages are nearly every event: boxing them would allocate once per message \
              to save space in the rare state events"
)]
pub enum Event {
    /// An application message arrived (already acknowledged as its QoS requires; a
    /// QoS 2 message is reported once), and how it arrived: the packet identifier and
    /// the topic alias (5.0) its PUBLISH carried. The topic is already resolved.
    Message(Message, Arrival),
    /// A connection was accepted (the first one, and every reconnection).
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
        /// The whole CONNACK (5.0 properties: assigned client identifier, limits, ...).
        connack: Box<ConnAck>,
    },
    /// An accepted connection ended.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// An attempt to reconnect failed.
    ConnectFailed {
        /// Why, in words.
        error: String,
    },
    /// The driver waits `delay` before reconnection attempt `attempt` (1 for the first).
    Reconnecting {
        /// Attempt number, from 1, reset after each successful connection.
        attempt: u32,
        /// The delay before it (exponential backoff with jitter).
        delay: Duration,
    },
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application called [`Client::disconnect`], or dropped every handle.
    Requested,
    /// The server sent DISCONNECT (5.0).
    Server {
        /// Its reason code.
        reason: ReasonCode,
        /// Its Reason String, if any.
        reason_string: Option<String>,
    },
    /// The server did not answer PINGREQ in time.
    KeepAliveTimeout,
    /// A protocol violation (by the server, or detected in its packets).
    Protocol(String),
    /// The network connection failed or was closed.
    Io(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("disconnected by the client"),
            Self::Server {
                reason,
                reason_string,
            } => {
                write!(f, "the server disconnected: {reason}")?;
                if let Some(s) = reason_string {
                    write!(f, " ({s})")?;
                }
                Ok(())
            }
            Self::KeepAliveTimeout => {
                f.write_str("the server stopped answering (keep-alive timeout)")
            }
            Self::Protocol(what) => write!(f, "protocol error: {what}"),
            Self::Io(what) => write!(f, "connection lost: {what}"),
        }
    }
}

/// A handle to send requests through a connection. Cheap to clone; every clone talks
/// to the same driver task. The driver keeps running while any `Client` or the
/// [`Connection`] is alive; when all are dropped it disconnects cleanly.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    /// Disconnect and re-authenticate: taken by the driver even while a full queue
    /// keeps it from taking requests from `tx`.
    ctl: mpsc::Sender<Command>,
    version: ProtocolVersion,
}

/// The stream of [`Event`]s from one client: messages and state changes.
///
/// Bounded ([`ConnectOptions::event_capacity`]): when the application does not read
/// it, the driver stops reading from the network, while it still sends
/// acknowledgements, pings and the application's messages. Dropping the `Connection`
/// discards incoming messages from then on; the [`Client`] keeps working.
#[derive(Debug)]
pub struct Connection {
    rx: mpsc::Receiver<Event>,
    connack: Box<ConnAck>,
}

/// The completion of one published message: resolves to the server's reason code
/// when the exchange ends (PUBACK for QoS 1, PUBCOMP for QoS 2; at once for QoS 0).
///
/// Dropping it does not cancel the message: it is still delivered.
#[derive(Debug)]
#[must_use = "a Delivery does nothing unless awaited; dropping it does not cancel the message"]
pub struct Delivery {
    rx: oneshot::Receiver<Result<ReasonCode, ClientError>>,
}

impl Future for Delivery {
    type Output = Result<ReasonCode, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// Connects to the broker and spawns the driver task on the current tokio runtime.
///
/// Returns once the server accepted the first connection (CONNACK), or with the
/// reason it did not. Later losses of the connection are handled by the driver
/// (reconnection, resumption, resends) and reported as [`Event`]s.
///
/// # Cancel safety
/// Cancel safe: if the future is dropped before it completes, the driver task
/// notices, disconnects if it got connected, and ends.
pub async fn connect(options: ConnectOptions) -> Result<(Client, Connection), ConnectError> {
    if let Some(invalid) = &options.invalid {
        return Err(ConnectError::InvalidOption(invalid.clone()));
    }
    if let Some(will) = &options.session.will {
        validate_topic_name(&will.topic).map_err(|e| {
            ConnectError::InvalidOption(format!("will topic {:?}: {e}", will.topic.as_str()))
        })?;
    }
    let tls = if options.transport.uses_tls() {
        Some(tls_config(&options.tls)?)
    } else {
        None
    };
    let version = options.session.version;
    let (cmd_tx, cmd_rx) = mpsc::channel(options.request_capacity);
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let (event_tx, event_rx) = mpsc::channel(options.event_capacity);
    let (first_tx, first_rx) = oneshot::channel();
    let driver = Driver::new(options, tls, cmd_rx, ctl_rx, event_tx, first_tx);
    tokio::spawn(driver.run());
    match first_rx.await {
        Ok(Ok(connack)) => Ok((
            Client {
                tx: cmd_tx,
                ctl: ctl_tx,
                version,
            },
            Connection {
                rx: event_rx,
                connack,
            },
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Closed("the driver task ended".into())),
    }
}

/// Builds a message, checking the topic name.
pub fn message(
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
) -> Result<Message, ClientError> {
    let bad = |reason: String| ClientError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    let name = ByteStr::try_from(topic).map_err(|e| bad(e.to_string()))?;
    let mut m = Message::new(name, payload.into(), qos);
    m.retain = retain;
    Ok(m)
}

fn check_message(m: &Message) -> Result<(), ClientError> {
    let bad = |topic: &str, reason: String| ClientError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    validate_topic_name(&m.topic).map_err(|e| bad(&m.topic, e.to_string()))?;
    if let Some(rt) = &m.properties.response_topic {
        validate_topic_name(rt).map_err(|e| bad(rt, format!("response topic: {e}")))?;
    }
    Ok(())
}

impl Client {
    /// The protocol version this client speaks.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Publishes a message and waits until the exchange completes: PUBACK (QoS 1),
    /// PUBCOMP (QoS 2), or handed to the session for sending (QoS 0). Returns the
    /// server's reason code (5.0; `Success` for earlier versions), or
    /// [`ClientError::Rejected`] for an error code.
    ///
    /// Waits first when the request queue is full (back-pressure: the in-flight window
    /// and the session's queue are used up). While the connection is down, QoS 1 and
    /// 2 messages are queued and sent after reconnection; QoS 0 messages fail with
    /// [`ClientError::Dropped`].
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense that cancelling does not withdraw the message:
    /// once queued it will be delivered, only the outcome is lost. If cancelled while
    /// still waiting for room in the queue, the message is not sent. Use
    /// [`Client::enqueue`] to separate the two.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<ReasonCode, ClientError> {
        let m = message(topic, payload, qos, retain)?;
        self.publish_message(m).await
    }

    /// Publishes a message with all its fields (5.0 properties included), waiting for
    /// completion like [`Client::publish`].
    ///
    /// # Cancel safety
    /// As [`Client::publish`]: once queued, cancelling does not withdraw the message.
    pub async fn publish_message(&self, message: Message) -> Result<ReasonCode, ClientError> {
        self.enqueue(message).await?.await
    }

    /// Queues a message, waiting only for room in the request queue, and returns a
    /// [`Delivery`] that resolves when the exchange completes.
    ///
    /// # Cancel safety
    /// Cancel safe: if cancelled, the message was not queued and will not be sent.
    pub async fn enqueue(&self, message: Message) -> Result<Delivery, ClientError> {
        check_message(&message)?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish { message, done })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
    }

    /// Queues a message without waiting: fails with [`TryPublishError::Full`], handing
    /// the message back, when the request queue is full.
    pub fn try_publish(&self, message: Message) -> Result<Delivery, TryPublishError> {
        check_message(&message).map_err(TryPublishError::Invalid)?;
        let (done, rx) = oneshot::channel();
        match self.tx.try_send(Command::Publish { message, done }) {
            Ok(()) => Ok(Delivery { rx }),
            Err(mpsc::error::TrySendError::Full(Command::Publish { message, .. })) => {
                Err(TryPublishError::Full(Box::new(message)))
            }
            Err(mpsc::error::TrySendError::Closed(Command::Publish { message, .. })) => {
                Err(TryPublishError::Closed(Box::new(message)))
            }
            Err(_) => Err(TryPublishError::Invalid(ClientError::Closed)),
        }
    }

    /// Subscribes to one filter and returns the granted QoS, or
    /// [`ClientError::Refused`] with the server's reason code.
    ///
    /// # Cancel safety
    /// Cancelling does not withdraw the SUBSCRIBE once queued; only the answer is lost.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<QoS, ClientError> {
        let filter_str = ByteStr::try_from(filter).map_err(|e| ClientError::InvalidTopic {
            topic: filter.to_owned(),
            reason: e.to_string(),
        })?;
        let ack = self
            .subscribe_many(
                vec![Subscription {
                    filter: filter_str,
                    options: SubscriptionOptions::new(qos),
                }],
                SubscribeProperties::default(),
            )
            .await?;
        match ack.reason_codes.first() {
            Some(&code) if code.is_success() => {
                QoS::from_u8(code.0).ok_or(ClientError::Refused(code))
            }
            Some(&code) => Err(ClientError::Refused(code)),
            None => Err(ClientError::Refused(ReasonCode::UNSPECIFIED_ERROR)),
        }
    }

    /// Subscribes with every option (no local, retain as published, retain handling,
    /// subscription identifier, user properties) and returns the whole SUBACK: one
    /// reason code per filter, granted QoS or error.
    ///
    /// # Cancel safety
    /// Cancelling does not withdraw the SUBSCRIBE once queued; only the answer is lost.
    pub async fn subscribe_many(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<SubAck, ClientError> {
        for s in &subscriptions {
            validate_topic_filter(&s.filter).map_err(|e| ClientError::InvalidTopic {
                topic: s.filter.to_string(),
                reason: e.to_string(),
            })?;
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                subscriptions,
                properties,
                done,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Unsubscribes from one filter; returns the reason code (5.0; `Success` before).
    ///
    /// # Cancel safety
    /// Cancelling does not withdraw the UNSUBSCRIBE once queued; only the answer is lost.
    pub async fn unsubscribe(&self, filter: &str) -> Result<ReasonCode, ClientError> {
        let f = ByteStr::try_from(filter).map_err(|e| ClientError::InvalidTopic {
            topic: filter.to_owned(),
            reason: e.to_string(),
        })?;
        let ack = self
            .unsubscribe_many(vec![f], UnsubscribeProperties::default())
            .await?;
        let code = ack
            .reason_codes
            .first()
            .copied()
            .unwrap_or(ReasonCode::SUCCESS);
        if code.is_error() {
            Err(ClientError::Refused(code))
        } else {
            Ok(code)
        }
    }

    /// Unsubscribes from several filters; returns the whole UNSUBACK.
    ///
    /// # Cancel safety
    /// Cancelling does not withdraw the UNSUBSCRIBE once queued; only the answer is lost.
    pub async fn unsubscribe_many(
        &self,
        filters: Vec<ByteStr>,
        properties: UnsubscribeProperties,
    ) -> Result<UnsubAck, ClientError> {
        for f in &filters {
            validate_topic_filter(f).map_err(|e| ClientError::InvalidTopic {
                topic: f.to_string(),
                reason: e.to_string(),
            })?;
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Unsubscribe {
                filters,
                properties,
                done,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Re-authenticates (5.0 enhanced authentication, [MQTT-4.12.1-1]): sends AUTH 0x19
    /// with the [`crate::Authenticator`]'s first data, answers the server's challenges,
    /// and completes when the server's AUTH 0x00 (Success) is accepted by the
    /// authenticator. When the server or the authenticator refuses, the connection is
    /// closed ([MQTT-4.12.1-2]) and this fails with [`ClientError::Auth`].
    ///
    /// Fails with [`ClientError::Auth`] at once without an authenticator, while not
    /// connected, or while another re-authentication runs.
    ///
    /// # Cancel safety
    /// Cancelling does not withdraw the AUTH once queued; only the outcome is lost.
    pub async fn reauthenticate(&self) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.ctl
            .send(Command::Reauthenticate { done })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends DISCONNECT (normal disconnection, so no will), closes the connection and
    /// stops the driver. Messages still in flight are not waited for; await their
    /// completions first for a clean handover.
    ///
    /// # Cancel safety
    /// Cancelling after the request was queued does not withdraw it.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
            .await
    }

    /// Like [`Client::disconnect`] with a chosen DISCONNECT (5.0: reason code 0x04
    /// asks the server to publish the will anyway; session expiry; user properties).
    ///
    /// # Cancel safety
    /// Cancelling after the request was queued does not withdraw it.
    pub async fn disconnect_with(&self, packet: Disconnect) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        if self
            .ctl
            .send(Command::Disconnect { packet, done })
            .await
            .is_err()
        {
            // Already gone: that is what was asked for.
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }
}

impl Connection {
    /// The CONNACK of the first connection.
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// The next event, or `None` once the driver has ended (after a disconnect, or
    /// when reconnection gave up).
    ///
    /// # Cancel safety
    /// Cancel safe: no event is lost if the future is dropped before it completes.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next application message, skipping state events; `None` once the driver
    /// has ended.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped before it completes
    /// (skipped state events are gone, though).
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(m, _) = self.rx.recv().await? {
                return Some(m);
            }
        }
    }

    /// An event if one is ready now.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Connection {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
