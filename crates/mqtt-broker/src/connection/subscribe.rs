//! SUBSCRIBE and UNSUBSCRIBE: checked, authorized, within quota, into the index.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
};

use mqtt_codec::{ProtocolVersion, QoS, ReasonCode, Subscribe, Unsubscribe};
use mqtt_topics::Filter;

use crate::{
    retained::RetainedBacklog,
    sessions::{SessionHandle, Sub},
    shared::Shared,
};

/// SUBSCRIBE: checks each filter, updates the index, answers, sends retained messages.
pub(crate) fn subscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    s: &Subscribe,
    backlog: &mut VecDeque<RetainedBacklog>,
) {
    // Under the session's lock, so that a takeover cannot fall between the index and
    // the session: the index takes no session lock, so the order is safe.
    let mut cell = handle.lock();
    if cell.generation != generation {
        // Polled just before another connection took the session over: its SUBACK
        // could only go to that one, so it goes with this connection, as the session
        // does with the requests it still held (`connection_lost`).
        return;
    }
    // First the verdict on every filter (syntax, authorization, then the session's
    // quota), then the index for those granted: a refused filter never reaches it.
    let mut codes = Vec::with_capacity(s.subscriptions.len());
    let mut filters = Vec::with_capacity(s.subscriptions.len());
    for sub in &s.subscriptions {
        let Ok(filter) = Filter::parse(&sub.filter, version) else {
            codes.push(ReasonCode::TOPIC_FILTER_INVALID);
            filters.push(None);
            continue;
        };
        if !shared
            .auth
            .authorizer
            .may_subscribe(&handle.client_id, &sub.filter)
        {
            // 3.x has one failure code, 0x80, which the codec writes for any error.
            codes.push(ReasonCode::NOT_AUTHORIZED);
            filters.push(None);
            continue;
        }
        codes.push(ReasonCode(sub.options.qos.min(QoS::ExactlyOnce) as u8));
        filters.push(Some(filter));
    }
    cell.session.limit_subscriptions(s, &mut codes);
    let refused = codes.iter().filter(|c| c.is_error()).count();
    if refused > 0 {
        shared
            .stats
            .subscriptions_refused
            .fetch_add(refused as u64, Ordering::Relaxed);
    }
    let mut retained_for = Vec::new();
    for ((sub, filter), code) in s.subscriptions.iter().zip(filters).zip(&codes) {
        let Some(filter) = filter.filter(|_| !code.is_error()) else {
            continue;
        };
        let mut options = sub.options;
        options.qos = options.qos.min(QoS::ExactlyOnce);
        let value = Sub {
            handle: Arc::clone(handle),
            options,
            identifier: s.properties.subscription_identifier,
        };
        let existed = shared.index.subscribe(filter, handle.key, value).is_some();
        // [MQTT-3.3.1-9] .. [MQTT-3.3.1-11]: retained messages by Retain Handling;
        // none for shared subscriptions.
        let shared_sub = matches!(filter, Filter::Shared(_));
        let send = match options.retain_handling {
            mqtt_codec::RetainHandling::SendAtSubscribe => true,
            mqtt_codec::RetainHandling::SendIfNew => !existed,
            mqtt_codec::RetainHandling::DoNotSend => false,
        };
        if send && !shared_sub {
            retained_for.push((
                sub.filter.clone(),
                options,
                s.properties.subscription_identifier,
            ));
        }
    }
    cell.session.suback(s, codes);
    drop(cell);
    backlog.extend(
        retained_for
            .into_iter()
            .map(|(filter, options, identifier)| RetainedBacklog {
                filter,
                qos: options.qos,
                identifier,
                shard: 0,
                cursor: None,
                delivered: 0,
                restarts: 0,
            }),
    );
}

/// UNSUBSCRIBE: removes the filters and answers.
pub(crate) fn unsubscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    u: &Unsubscribe,
) {
    // As in `subscribe`: under the lock, and only for the session's own connection.
    let mut cell = handle.lock();
    if cell.generation != generation {
        return;
    }
    let codes = u
        .filters
        .iter()
        .map(|f| match Filter::parse(f, version) {
            Ok(filter) if shared.index.unsubscribe(filter, &handle.key).is_some() => {
                ReasonCode::SUCCESS
            }
            Ok(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
        })
        .collect::<Vec<_>>();
    let codes = if version.is_v5() { codes } else { Vec::new() };
    cell.session.unsuback(u, codes);
}
