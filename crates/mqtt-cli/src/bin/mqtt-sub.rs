//! mqtt-sub: subscribe and print messages; the flags of mosquitto_sub.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{io::Write, process::ExitCode, time::Duration};

use bytes::Bytes;
use mqtt_cli::{
    ConnectArgs, EXIT_TIMEOUT, Failure, RandomFilter, finish, format, parse_properties, qos,
};
use mqtt_client::{
    Arrival, ByteStr, Event, Message, QoS, RetainHandling, Subscription, SubscriptionOptions,
    UnsubscribeProperties,
};

/// Subscribe to MQTT topics and print the messages (the flags of mosquitto_sub).
#[derive(clap::Parser, Debug)]
#[command(
    name = "mqtt-sub",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic")]
    topics: Vec<String>,
    /// Topic filter of messages not to print (repeatable).
    #[arg(short = 'T', long = "filter-out")]
    filter_out: Vec<String>,
    /// Topic filter to unsubscribe from after connecting (repeatable).
    #[arg(short = 'U', long = "unsubscribe")]
    unsubscribe: Vec<String>,
    /// Print the topic before the payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Do not print a newline after each message.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,
    /// Exit after this many seconds (exit code 27 when it fires).
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,
    /// Do not print stale (retained) messages.
    #[arg(short = 'R')]
    no_stale: bool,
    /// Output format: %t topic, %p payload, %q QoS, %r retain, %l length, %j/%J JSON, ...
    #[arg(short = 'F', long = "format")]
    format: Option<String>,
    /// Print each message as a JSON object (like -F %j without the time).
    #[arg(long = "json")]
    json: bool,
    /// Pretty-print JSON output (--json, -F %j, -F %J) over several indented lines.
    #[arg(long = "pretty")]
    pretty: bool,
    /// Print only this percentage of the messages received, chosen at random
    /// (0.1 to 100.0); -C still counts every message.
    #[arg(long = "random-filter", value_name = "CHANCE")]
    random_filter: Option<String>,
    /// Print only retained messages; exit at the first non-retained one.
    #[arg(long = "retained-only")]
    retained_only: bool,
    /// Clear every retained message received (publish an empty retained message).
    #[arg(long = "remove-retained")]
    remove_retained: bool,
    /// Exit once subscribed.
    #[arg(short = 'E')]
    exit_after_sub: bool,
    /// 5.0 No Local: do not receive our own messages.
    #[arg(long = "nl")]
    no_local: bool,
    /// 5.0 Retain As Published.
    #[arg(long = "rap")]
    retain_as_published: bool,
    /// 5.0 Retain Handling: 0 always, 1 only new subscriptions, 2 never.
    #[arg(long = "rh", value_parser = clap::value_parser!(u8).range(0..=2))]
    retain_handling: Option<u8>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Args = mqtt_cli::parse_args(|a: &mut Args| &mut a.conn);
    let quiet = args.conn.quiet;
    finish(run(args).await, quiet)
}

/// Whether `topic` matches `filter` (`+` and `#` wildcards; `$` topics only match
/// filters starting with `$`).
fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut sample = match &args.random_filter {
        Some(chance) => RandomFilter::parse(chance)?,
        None => RandomFilter::all(),
    };
    let props = parse_properties(&args.conn.properties, args.conn.version)?;
    let (options, url_topic) = args.conn.options("mqtt-sub", &props)?;
    let mut topics = args.topics.clone();
    topics.extend(url_topic);
    if topics.is_empty() && args.unsubscribe.is_empty() {
        return Err(Failure::new(
            "You must specify a topic to subscribe to (-t).",
        ));
    }
    let sub_qos = qos(args.conn.qos);
    let debug = args.conn.debug;
    let mut subscriptions = Vec::new();
    for t in &topics {
        let filter =
            ByteStr::try_from(t.as_str()).map_err(|e| Failure::new(format!("{t:?}: {e}")))?;
        mqtt_client::codec::topic::validate_topic_filter(&filter)
            .map_err(|e| Failure::new(format!("Invalid subscription topic '{t}': {e}")))?;
        let mut o = SubscriptionOptions::new(sub_qos);
        o.no_local = args.no_local;
        o.retain_as_published = args.retain_as_published;
        o.retain_handling = match args.retain_handling {
            Some(1) => RetainHandling::SendIfNew,
            Some(2) => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        };
        subscriptions.push(Subscription { filter, options: o });
    }
    let (client, mut conn) = mqtt_cli::connect(options).await?;
    if debug {
        eprintln!(
            "Connected (session present {})",
            u8::from(conn.connack().session_present)
        );
    }
    if !subscriptions.is_empty() {
        let ack = client
            .subscribe_many(subscriptions, props.subscribe.clone())
            .await?;
        for (t, code) in topics.iter().zip(&ack.reason_codes) {
            if code.is_error() {
                eprintln!("Warning: subscription to {t} refused: {code}");
            } else if debug {
                eprintln!("Subscribed to {t} (granted QoS {})", code.0);
            }
        }
        if ack.reason_codes.iter().all(|c| c.is_error()) {
            return Err(Failure::new("all subscriptions were refused"));
        }
    }
    if !args.unsubscribe.is_empty() {
        let filters = args
            .unsubscribe
            .iter()
            .map(|t| ByteStr::try_from(t.as_str()).map_err(|e| Failure::new(format!("{t:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        client
            .unsubscribe_many(filters, UnsubscribeProperties::default())
            .await?;
    }
    if args.exit_after_sub {
        client.disconnect().await?;
        return Ok(());
    }
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut received = 0u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, conn.next_event()).await.ok(),
                None => Some(conn.next_event().await),
            }
        };
        let Some(event) = next.await else {
            let _ = client.disconnect().await;
            return Err(Failure {
                message: "Timed out".into(),
                code: EXIT_TIMEOUT,
            });
        };
        let Some(event) = event else {
            return Err(Failure::new("the connection ended"));
        };
        let (m, arrival) = match event {
            Event::Message(m, arrival) => (m, arrival),
            Event::Disconnected { reason } => {
                return Err(Failure::new(reason.to_string()));
            }
            other => {
                if debug {
                    eprintln!("{other:?}");
                }
                continue;
            }
        };
        if args.retained_only && !m.retain {
            break;
        }
        if args.remove_retained && m.retain && !m.payload.is_empty() {
            let clear = mqtt_client::message(&m.topic, Bytes::new(), QoS::AtMostOnce, true)?;
            client.publish_message(clear).await?;
        }
        if args.no_stale && m.retain {
            continue;
        }
        if args.filter_out.iter().any(|f| matches(f, &m.topic)) {
            continue;
        }
        if sample.keep() {
            print(&mut stdout, &args, &m, arrival)
                .map_err(|e| Failure::new(format!("writing output: {e}")))?;
        }
        // As mosquitto_sub: -C counts the messages --random-filter does not print.
        received += 1;
        if args.count.is_some_and(|c| received >= c) {
            break;
        }
    }
    client.disconnect().await?;
    Ok(())
}

fn print(out: &mut impl Write, args: &Args, m: &Message, arrival: Arrival) -> std::io::Result<()> {
    if let Some(f) = &args.format {
        match format::format(f, m, arrival, args.pretty) {
            Ok(text) => out.write_all(&text)?,
            // As mosquitto_sub: the message is skipped, and the subscription goes on.
            Err(e) => eprintln!("Error: {e}"),
        }
    } else if args.json {
        match format::json(m, arrival, None, false, args.pretty) {
            Ok(text) => out.write_all(text.as_bytes())?,
            Err(e) => eprintln!("Error: {e}"),
        }
    } else if args.verbose {
        out.write_all(m.topic.as_bytes())?;
        out.write_all(b" ")?;
        if m.payload.is_empty() {
            out.write_all(b"(null)")?;
        } else {
            out.write_all(&m.payload)?;
        }
    } else {
        out.write_all(&m.payload)?;
    }
    if !args.no_eol {
        out.write_all(b"\n")?;
    }
    out.flush()
}
