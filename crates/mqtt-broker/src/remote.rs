//! Subscribers that are not local sessions: a bridge link to another broker, a cluster
//! peer. They subscribe with filters as a session does, and routing hands them each
//! matching message through [`Forward`]; what they bring from elsewhere enters through
//! [`Broker::publish`](crate::Broker::publish).
//!
//! They live in an index of their own, looked up only while there are any: a broker
//! without them pays one atomic load per message. They take no retained messages at
//! subscribe time and no part in shared subscriptions (a peer forwards its own
//! groups' messages as it sees fit).

use std::{
    fmt,
    sync::{Arc, atomic::Ordering},
};

use mqtt_codec::{ProtocolVersion, QoS};
use mqtt_session::Message;
use mqtt_topics::{Filter, Matches, TopicName};

use crate::shared::Shared;

/// Takes the messages routed to a remote subscriber.
pub trait Forward: Send + Sync + fmt::Debug + 'static {
    /// A message matched one of this subscriber's filters, shaped for it: its QoS is
    /// at most the one subscribed with. Called in the publishing connection's task, so
    /// it must not block or wait: queue the message (bounded) and return; `false` says
    /// it could not be taken, and the broker counts it as dropped.
    fn forward(&self, message: Message) -> bool;
}

/// A remote subscription, as the index keeps it.
#[derive(Clone, Debug)]
pub(crate) struct RemoteSub {
    forward: Arc<dyn Forward>,
    qos: QoS,
}

/// A subscription made with [`Broker::subscribe_remote`](crate::Broker::subscribe_remote):
/// give it back to `unsubscribe_remote` to end it, and name it as the origin of what the
/// same peer publishes, so that it is not sent back there.
#[derive(Debug)]
pub struct RemoteSubscription {
    key: u64,
    filter: String,
}

/// A filter a remote subscriber cannot use: invalid, or a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFilter(pub String);

impl fmt::Display for InvalidFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a filter a remote subscriber can use: {:?}", self.0)
    }
}

impl std::error::Error for InvalidFilter {}

impl Shared {
    /// Adds a remote subscription to `filter` with at most `qos`.
    pub(crate) fn subscribe_remote(
        &self,
        filter: &str,
        qos: QoS,
        forward: Arc<dyn Forward>,
    ) -> Result<RemoteSubscription, InvalidFilter> {
        let Ok(parsed @ Filter::Plain(_)) = Filter::parse(filter, ProtocolVersion::V5) else {
            return Err(InvalidFilter(filter.to_owned()));
        };
        // Keys come from the sessions' counter, so none is ever a session's too.
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let qos = qos.min(QoS::ExactlyOnce);
        if self
            .remote
            .subscribe(parsed, key, RemoteSub { forward, qos })
            .is_none()
        {
            self.remote_count.fetch_add(1, Ordering::Release);
        }
        Ok(RemoteSubscription {
            key,
            filter: filter.to_owned(),
        })
    }

    /// Ends a remote subscription.
    pub(crate) fn unsubscribe_remote(&self, sub: RemoteSubscription) {
        if let Ok(filter) = Filter::parse(&sub.filter, ProtocolVersion::V5) {
            if self.remote.unsubscribe(filter, &sub.key).is_some() {
                self.remote_count.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// Hands `message` to every remote subscriber whose filters match `topic`, except
    /// `from` (the peer it came from); how many took it.
    pub(crate) fn route_remote(&self, from: u64, topic: TopicName<'_>, message: &Message) -> usize {
        if self.remote_count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut matches = Matches::<u64, RemoteSub>::default();
        self.remote.matches(topic, &mut matches);
        let mut taken = 0;
        for subscriber in matches.subscribers() {
            if *subscriber.key() == from {
                continue;
            }
            let Some(first) = subscriber.values().next() else {
                continue;
            };
            let granted = subscriber
                .values()
                .map(|s| s.qos)
                .max()
                .unwrap_or(first.qos);
            let mut copy = message.clone();
            copy.qos = copy.qos.min(granted);
            if first.forward.forward(copy) {
                taken += 1;
            } else {
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        taken
    }
}

impl RemoteSubscription {
    /// The key routing knows this subscriber by.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }
}
