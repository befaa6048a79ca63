//! SUBSCRIBE and UNSUBSCRIBE: checked, authorized, within quota, kept in the store (a
//! persistent session's), into the index.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, atomic::Ordering},
};

use mqtt_codec::{ProtocolVersion, QoS, ReasonCode, Subscribe, Unsubscribe};
use mqtt_session::SubscriptionRecord;
use mqtt_topics::Filter;

use crate::{
    retained::RetainedBacklog,
    sessions::{Principal, SessionHandle, Sub},
    shared::Shared,
};

/// The checks every subscription passes, a SUBSCRIBE's or one read back from the
/// store: the filter's syntax in `version`, then the authorizer of `client_id`'s client
/// `principal` (see `SessionCell::principal`). `Err` carries the reason code to refuse
/// it with.
pub(crate) fn check_filter<'a>(
    shared: &Shared,
    client_id: &str,
    principal: Option<&Principal>,
    filter: &'a str,
    version: ProtocolVersion,
) -> Result<Filter<'a>, ReasonCode> {
    let Ok(parsed) = Filter::parse(filter, version) else {
        return Err(ReasonCode::TOPIC_FILTER_INVALID);
    };
    let client = Principal::client(principal, client_id);
    if !client.token_allows_subscribe(filter)
        || !shared
            .authorizer(client.listener)
            .may_subscribe(&client, filter)
    {
        // 3.x has one failure code, 0x80, which the codec writes for any error.
        return Err(ReasonCode::NOT_AUTHORIZED);
    }
    Ok(parsed)
}

/// SUBSCRIBE: checks each filter, keeps a persistent session's subscriptions in the
/// store, updates the index, answers, sends retained messages. Returns true if the
/// store was given subscriptions to keep: with a store whose acknowledgements wait
/// (`sync`), the SUBACK must not be written before their commit.
pub(crate) fn subscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    s: &Subscribe,
    backlog: &mut VecDeque<RetainedBacklog>,
) -> bool {
    if shared.live.log_subscriptions() {
        let filters: Vec<String> = s
            .subscriptions
            .iter()
            .map(|t| format!("'{}' q{}", t.filter, t.options.qos as u8))
            .collect();
        tracing::info!(client = %handle.client_id, "subscribe {}", filters.join(", "));
    }
    // Under the session's lock, so that a takeover cannot fall between the index and
    // the session: the index takes no session lock, so the order is safe.
    let mut cell = handle.lock();
    if cell.generation != generation {
        // Polled just before another connection took the session over: its SUBACK
        // could only go to that one, so it goes with this connection, as the session
        // does with the requests it still held (`connection_lost`).
        return false;
    }
    // First the verdict on every filter (syntax, authorization, then the session's
    // quota), then the store, then the index for those granted: a refused filter never
    // reaches it.
    let mut codes = Vec::with_capacity(s.subscriptions.len());
    let mut filters = Vec::with_capacity(s.subscriptions.len());
    for sub in &s.subscriptions {
        match check_filter(
            shared,
            &handle.client_id,
            cell.principal.as_deref(),
            &sub.filter,
            version,
        ) {
            Ok(filter) => {
                codes.push(ReasonCode(sub.options.qos.min(QoS::ExactlyOnce) as u8));
                filters.push(Some(filter));
            }
            Err(code) => {
                codes.push(code);
                filters.push(None);
            }
        }
    }
    cell.session.limit_subscriptions(s, &mut codes);
    // A persistent session's subscriptions are kept in the store before they take
    // effect: if it fails, every filter granted is refused with 0x80 (3.1.1: Failure),
    // and neither the session nor the index changes.
    let granted = s
        .subscriptions
        .iter()
        .zip(&codes)
        .filter(|(_, code)| !code.is_error())
        .map(|(sub, _)| SubscriptionRecord {
            filter: sub.filter.clone(),
            options: sub.options,
            identifier: s.properties.subscription_identifier,
        });
    // What `record_subscriptions` writes: the record of a session that outlives its
    // connection, if anything is granted.
    let mut kept = shared.durable
        && crate::store::Recorded::of(&cell.session).is_some()
        && codes.iter().any(|code| !code.is_error());
    if shared.record_subscriptions(&mut cell, granted).is_err() {
        kept = false;
        for code in codes.iter_mut().filter(|code| !code.is_error()) {
            *code = ReasonCode::UNSPECIFIED_ERROR;
        }
    }
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
        if !shared_sub {
            retained_for.push((
                sub.filter.clone(),
                send,
                options,
                s.properties.subscription_identifier,
            ));
        }
    }
    cell.session.suback(s, codes);
    drop(cell);
    // One pending delivery of retained messages a filter, with the subscription's
    // latest options ([MQTT-3.8.4-3]: the last of a packet's repeats counts, and the
    // packet sends them if any of its repeats does, as a sequence of SUBSCRIBEs would,
    // [MQTT-3.8.4-5]): a subscription that sends them again starts its delivery over,
    // one that does not (Retain Handling 1 or 2) lets a delivery still pending go on
    // with its options. So the backlog never holds more entries than the session has
    // subscriptions, however often a client repeats a SUBSCRIBE while its queue is full.
    // Each filter once, in the order it first appears: whether any repeat sends, and
    // the last repeat's QoS and identifier.
    let mut latest: Vec<(mqtt_codec::ByteStr, bool, QoS, _)> = Vec::new();
    let mut index = HashMap::new();
    for (filter, send, options, identifier) in retained_for {
        let known: Option<&usize> = index.get(&filter);
        match known.copied().and_then(|i| latest.get_mut(i)) {
            Some(entry) => {
                entry.1 |= send;
                (entry.2, entry.3) = (options.qos, identifier);
            }
            None => {
                index.insert(filter.clone(), latest.len());
                latest.push((filter, send, options.qos, identifier));
            }
        }
    }
    if !backlog.is_empty() {
        backlog.retain_mut(
            |e| match index.get(&e.filter).and_then(|&i| latest.get(i)) {
                None => true,
                // Started over below.
                Some((_, true, ..)) => false,
                Some(&(_, false, qos, identifier)) => {
                    (e.qos, e.identifier) = (qos, identifier);
                    true
                }
            },
        );
    }
    backlog.extend(latest.into_iter().filter(|entry| entry.1).map(
        |(filter, _, qos, identifier)| RetainedBacklog {
            filter,
            qos,
            identifier,
            shard: 0,
            cursor: None,
            delivered: 0,
            restarts: 0,
        },
    ));
    kept
}

/// UNSUBSCRIBE: removes the filters, and what is left of their retained messages'
/// delivery from `backlog`, and answers. True if the store was given the session's
/// subscriptions to keep (a persistent session, a durable store): the UNSUBACK then
/// waits for that commit in `sync` mode, so that a crash cannot bring back a
/// subscription the client was told is gone.
pub(crate) fn unsubscribe(
    shared: &Shared,
    handle: &Arc<SessionHandle>,
    generation: u64,
    version: ProtocolVersion,
    u: &Unsubscribe,
    backlog: &mut VecDeque<RetainedBacklog>,
) -> bool {
    if shared.live.log_subscriptions() {
        let filters: Vec<String> = u.filters.iter().map(|f| format!("'{f}'")).collect();
        tracing::info!(client = %handle.client_id, "unsubscribe {}", filters.join(", "));
    }
    // As in `subscribe`: under the lock, and only for the session's own connection.
    let mut cell = handle.lock();
    if cell.generation != generation {
        return false;
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
    // [MQTT-3.10.4-2]: no more messages for a filter once it is unsubscribed, retained
    // ones included.
    if !backlog.is_empty() {
        let gone: HashSet<&str> = u.filters.iter().map(|f| &**f).collect();
        backlog.retain(|e| !gone.contains(&*e.filter));
    }
    cell.session.unsuback(u, codes);
    // After the fact: the client asked to receive less, and does even if the store
    // fails (which is logged).
    shared.record_session(&mut cell, true);
    shared.durable && cell.recorded.is_some()
}
