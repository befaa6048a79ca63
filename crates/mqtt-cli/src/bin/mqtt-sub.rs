//! mqtt-sub: subscribe and print messages; the flags of mosquitto_sub.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{io::Write, process::ExitCode, time::Duration};

use bytes::Bytes;
use mqtt_cli::{
    ConnectArgs, EXIT_TIMEOUT, Failure, RandomFilter, Signals, finish, format, parse_properties,
    qos,
};
use mqtt_client::{
    Arrival, ByteStr, DisconnectReason, Event, Message, QoS, ReasonCode, ReconnectOptions,
    RetainHandling, Subscription, SubscriptionOptions,
};

/// Subscribe to MQTT topics and print the messages (the flags of mosquitto_sub).
#[derive(clap::Parser, Debug)]
#[command(
    name = "mqtt-sub",
    version,
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
    /// Clear the retained messages received (publish an empty retained message); those
    /// -R or -T keep from being printed are left alone.
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
    let mut signals = Signals::new()?;
    let mut sample = match &args.random_filter {
        Some(chance) => RandomFilter::parse(chance)?,
        None => RandomFilter::all(),
    };
    if args.no_stale && args.retained_only {
        return Err(Failure::new(
            "Combining '-R' and '--retained-only' makes no sense.",
        ));
    }
    let props = parse_properties(&args.conn.properties, args.conn.version)?;
    let (options, url_topic) = args.conn.options("mqtt-sub", &props)?;
    // A long-running subscriber outlives broker restarts, as mosquitto_sub does.
    let options = options.reconnect(ReconnectOptions::default());
    let mut topics = args.topics.clone();
    topics.extend(url_topic);
    if topics.is_empty() && args.unsubscribe.is_empty() {
        return Err(Failure::new(
            "You must specify a topic to subscribe to (-t).",
        ));
    }
    let sub_qos = qos(args.conn.qos);
    let debug = args.conn.debug;
    let quiet = args.conn.quiet;
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
    let (client, mut conn) = tokio::select! {
        c = mqtt_cli::connect(options) => c?,
        () = signals.recv() => return Ok(()),
    };
    if !subscriptions.is_empty() {
        let ack = client
            .subscribe_many(subscriptions.clone(), props.subscribe.clone())
            .await?;
        if debug {
            // As mosquitto_sub -d, on stdout with the trace.
            let granted: Vec<String> = ack.reason_codes.iter().map(|c| c.0.to_string()).collect();
            println!(
                "Subscribed (mid: {}): {}",
                ack.packet_id.get(),
                granted.join(", ")
            );
        }
        for (t, code) in topics.iter().zip(&ack.reason_codes) {
            if code.is_error() {
                eprintln!("Warning: subscription to {t} refused: {code}");
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
            .unsubscribe_many(filters, props.unsubscribe.clone())
            .await?;
    }
    if args.exit_after_sub {
        client.disconnect_with(props.disconnect_packet()).await?;
        return Ok(());
    }
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut received = 0u64;
    let mut stdout = std::io::stdout().lock();
    // Removals of retained messages not yet acknowledged: awaited before disconnecting.
    let mut removals = Vec::new();
    let mut reconnected = false;
    let outcome = loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, conn.next_event()).await.ok(),
                None => Some(conn.next_event().await),
            }
        };
        let event = tokio::select! {
            e = next => e,
            () = signals.recv() => break Ok(()),
        };
        let Some(event) = event else {
            break Err(Failure {
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
                if let DisconnectReason::Server { reason: code, .. } = &reason {
                    if *code == ReasonCode::SESSION_TAKEN_OVER {
                        // Another client took our identifier: fighting over it helps nobody.
                        let _ = client.disconnect().await;
                        return Err(Failure::new(reason.to_string()));
                    }
                }
                if !quiet {
                    eprintln!("Connection lost ({reason}); reconnecting");
                }
                continue;
            }
            Event::ConnectFailed { error } => {
                if !quiet {
                    eprintln!("Reconnection failed: {error}");
                }
                continue;
            }
            Event::Connected {
                session_present, ..
            } => {
                // The first connection's event: subscribed above already.
                if !reconnected {
                    reconnected = true;
                    continue;
                }
                if !quiet {
                    eprintln!(
                        "Reconnected (session present {})",
                        u8::from(session_present)
                    );
                }
                if !session_present && !subscriptions.is_empty() {
                    // A new session: subscribe again, as mosquitto_sub does on every
                    // connection; the messages keep flowing while the answer comes.
                    let (c, subs, p) = (
                        client.clone(),
                        subscriptions.clone(),
                        props.subscribe.clone(),
                    );
                    tokio::spawn(async move {
                        match c.subscribe_many(subs, p).await {
                            Ok(ack) if ack.reason_codes.iter().any(|c| c.is_error()) => {
                                eprintln!("Warning: a subscription was refused on reconnection");
                            }
                            Ok(_) => {}
                            Err(e) => eprintln!("Warning: subscribing again failed: {e}"),
                        }
                    });
                }
                continue;
            }
            _ => continue,
        };
        if args.retained_only && !m.retain {
            break Ok(());
        }
        // mosquitto_sub's order: a message -R or -T hides is neither printed nor
        // cleared by --remove-retained.
        if args.no_stale && m.retain {
            continue;
        }
        if args.filter_out.iter().any(|f| matches(f, &m.topic)) {
            continue;
        }
        if args.remove_retained && m.retain && !m.payload.is_empty() {
            let clear = mqtt_client::message(&m.topic, Bytes::new(), QoS::AtLeastOnce, true)?;
            removals.push(client.enqueue(clear).await?);
        }
        if sample.keep() {
            match print(&mut stdout, &args, &m, arrival) {
                Ok(()) => {}
                // The reader went away (`| head -1`): done, as a pipeline expects.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                Err(e) => return Err(Failure::new(format!("writing output: {e}"))),
            }
        }
        // As mosquitto_sub: -C counts the messages --random-filter does not print.
        received += 1;
        if args.count.is_some_and(|c| received >= c) {
            break Ok(());
        }
    };
    for r in removals {
        if let Err(e) = r.await {
            eprintln!("Warning: removing a retained message failed: {e}");
        }
    }
    let _ = client.disconnect_with(props.disconnect_packet()).await;
    outcome
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
