//! Routes PUBLISHes as a broker would: one delivery per subscriber at the highest
//! granted QoS with every subscription identifier, one member per shared group
//! (round-robin), and the retained messages a new subscription must receive.
//!
//! Run with `cargo run -p mqtt-topics --example route`.
#![allow(clippy::print_stdout)] // an example prints what it shows

use std::collections::HashMap;

use mqtt_codec::ProtocolVersion::V5;
use mqtt_topics::{Filter, GroupId, Matches, RetainedStore, ShardedIndex, TopicFilter, TopicName};

/// What the broker keeps per subscription.
#[derive(Clone, Copy, Debug)]
struct Granted {
    qos: u8,
    subscription_id: Option<u32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let index = ShardedIndex::new();
    let subscribe = |filter: &str, client: &'static str, qos: u8, id: Option<u32>| {
        let filter = Filter::parse(filter, V5)?;
        index.subscribe(
            filter,
            client,
            Granted {
                qos,
                subscription_id: id,
            },
        );
        Ok::<_, mqtt_topics::TopicError>(())
    };
    subscribe("tenant/acme/device/+/status", "dashboard", 1, Some(1))?;
    subscribe("tenant/acme/#", "dashboard", 2, Some(2))?;
    subscribe("tenant/+/device/0042/#", "device-0042-twin", 1, None)?;
    subscribe(
        "$share/alerts/tenant/+/device/+/status",
        "worker-a",
        1,
        None,
    )?;
    subscribe(
        "$share/alerts/tenant/+/device/+/status",
        "worker-b",
        1,
        None,
    )?;
    subscribe("#", "audit-log", 0, None)?;
    subscribe("$SYS/#", "monitor", 0, None)?;

    // One buffer per connection task: after the first few messages, routing allocates
    // nothing.
    let mut matches = Matches::new();
    let mut round_robin: HashMap<GroupId, usize> = HashMap::new();
    for (topic, qos) in [
        ("tenant/acme/device/0042/status", 2),
        ("tenant/acme/device/0042/status", 1),
        ("tenant/other/device/0042/telemetry", 1),
        ("$SYS/broker/uptime", 0),
    ] {
        println!("PUBLISH {topic} (QoS {qos})");
        index.matches(TopicName::new(topic)?, &mut matches);
        for s in matches.subscribers() {
            // [MQTT-3.3.4-2]: the highest QoS of the matching subscriptions, capped by
            // the message's; [MQTT-3.3.4-3]: every subscription identifier.
            let granted = s.values().map(|g| g.qos).max().unwrap_or(0);
            let ids: Vec<u32> = s.values().filter_map(|g| g.subscription_id).collect();
            println!("  -> {:<17} QoS {} ids {ids:?}", s.key(), granted.min(qos));
        }
        for group in matches.shared() {
            let next = round_robin.entry(group.id()).or_default();
            let members = group.members();
            let (client, g) = &members[*next % members.len()];
            *next += 1;
            println!(
                "  -> {client:<17} QoS {} (one of ${}: {} members)",
                g.qos.min(qos),
                group.name(),
                members.len()
            );
        }
    }

    // Retained messages: a new subscription gets those its filter matches, streamed.
    let mut retained = RetainedStore::new();
    for device in 0..1000 {
        let topic = format!("tenant/acme/device/{device:04}/status");
        retained.insert(TopicName::new(&topic)?, format!("online {device}"));
    }
    retained.insert(TopicName::new("$SYS/broker/version")?, "0.1.0".to_owned());
    let filter = TopicFilter::new("tenant/+/device/000+/status").err();
    println!(
        "\n'tenant/+/device/000+/status' is refused: {}",
        filter.map_or_else(String::new, |e| e.to_string())
    );
    let mut topic = String::new();
    for m in retained
        .matching(TopicFilter::new("tenant/acme/device/+/status")?)
        .take(3)
    {
        m.write_topic(&mut topic);
        println!("retained {topic}: {}", m.value());
    }
    println!(
        "'#' sees {} retained topics, '$SYS/#' sees {}",
        retained.matching(TopicFilter::new("#")?).count(),
        retained.matching(TopicFilter::new("$SYS/#")?).count()
    );
    Ok(())
}
