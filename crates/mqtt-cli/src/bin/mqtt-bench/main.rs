//! `mqtt-bench`: a load generator for MQTT brokers.
//!
//! Every scenario checks delivery (counts, order per publisher, duplicates) and fails
//! on any fault; with `--broker-pid` it also reports the broker's CPU seconds per
//! million delivered messages and its memory, read from /proc. `cargo xtask bench`
//! runs the scenarios against our broker and Mosquitto side by side.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod hist;
mod idle;
mod latency;
mod load;
mod probe;
mod report;
mod target;
mod wire;

use std::{
    io::{IsTerminal, Write},
    net::IpAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use mqtt_codec::{ProtocolVersion, QoS};

use crate::{
    load::{Load, Plan},
    probe::{Broker, Reading},
    report::{Output, Report},
    target::Target,
};

/// Load generator for MQTT brokers: throughput, connections and latency, with every
/// delivery checked.
#[derive(Debug, Parser)]
// `about` is given, not taken from Cargo.toml: the package's description is that of
// the whole crate ("mqtt-pub, mqtt-sub and friends").
#[command(
    name = "mqtt-bench",
    version,
    about = "Load generator for MQTT brokers: throughput, connections and latency, with \
             every delivery checked.",
    long_about = None,
    disable_help_flag = true
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print help (-h is the host, as in every other tool).
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Where the broker is, how to reach it, and what to report.
#[derive(Debug, Args, Clone)]
struct Common {
    #[command(flatten)]
    target: Target,
    /// Print help (-h is the host, as in every other tool).
    #[arg(long = "help", action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
    /// Process id of the broker, for its CPU time and memory (Linux /proc).
    #[arg(long = "broker-pid", global = true)]
    broker_pid: Option<u32>,
    /// Local source address for the connections (repeatable; taken in turn).
    #[arg(long = "source", global = true)]
    sources: Vec<IpAddr>,
    /// Also print one `result key=value ...` line for scripts.
    #[arg(long = "machine", global = true)]
    machine: bool,
    /// Print the figures (the result line's and the summary's) as one JSON object on
    /// stdout, and nothing else there.
    #[arg(long = "json", global = true, conflicts_with = "machine")]
    json: bool,
    /// No progress bar.
    #[arg(long = "quiet", global = true)]
    quiet: bool,
}

/// How each throughput scenario publishes.
#[derive(Debug, Args, Clone)]
struct Traffic {
    /// QoS of the messages and subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 16: the sender, sequence number and send time).
    #[arg(short = 's', long = "size", default_value_t = 16)]
    size: usize,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long = "inflight", default_value_t = 64)]
    inflight: u16,
    /// End-to-end limit on messages a publisher may have undelivered (0: none; the
    /// broker must push back or keep up).
    #[arg(long = "window", default_value_t = 0)]
    window: u32,
    /// Give up (and fail) after this many seconds (counted after --duration, if given).
    #[arg(long = "timeout", default_value_t = 300)]
    timeout: u64,
    /// Publish for this many seconds, then stop and check and report what was sent and
    /// delivered. Without -n, publishers send for all that time.
    #[arg(long = "duration", value_name = "SECS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Publish this many messages per second in all, split evenly between the
    /// publishers and spread evenly over time, released against a clock finer than 1 ms
    /// (default: as fast as the broker takes them). At a rate the broker keeps up with,
    /// the latency figures are what a client sees.
    #[arg(long = "rate", value_name = "MSG_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
    /// Fail when nothing was delivered for this many seconds.
    #[arg(long = "stall", default_value_t = 10)]
    stall: u64,
    /// Clean Session (3.1.1) / Clean Start (5.0) of the subscribers: `false` gives them
    /// sessions that outlive their connection (5.0: Session Expiry Interval 3600), which
    /// a durable broker writes to disk before acknowledging what it routes to them.
    #[arg(long = "clean", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    clean: bool,
    /// Protocol version: 311 or 5 (the shared scenario always uses 5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    version: ProtocolVersion,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("{s:?}: expected a number of seconds above 0")),
    }
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        other => Err(format!("{other:?}: use 311 or 5")),
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// P publishers on their own topics -> one subscriber on a wildcard.
    #[command(disable_help_flag = true)]
    FanIn {
        /// Publishers.
        #[arg(long = "publishers", default_value_t = 16)]
        publishers: u32,
        /// Messages in all [default: 1000000, or no limit with --duration].
        #[arg(short = 'n', long = "messages")]
        messages: Option<u32>,
        #[command(flatten)]
        traffic: Traffic,
        #[command(flatten)]
        common: Common,
    },
    /// One publisher -> K subscribers of its topic.
    #[command(disable_help_flag = true)]
    FanOut {
        /// Subscribers.
        #[arg(short = 'K', long = "subscribers", default_value_t = 100)]
        subscribers: u32,
        /// Messages published (each is delivered K times) [default: 10000, or no limit
        /// with --duration].
        #[arg(short = 'n', long = "messages")]
        messages: Option<u32>,
        #[command(flatten)]
        traffic: Traffic,
        #[command(flatten)]
        common: Common,
    },
    /// P publisher/subscriber pairs, each on its own topic.
    #[command(disable_help_flag = true)]
    Pairs {
        /// Pairs.
        #[arg(long = "pairs", default_value_t = 1000)]
        pairs: u32,
        /// Messages in all [default: 1000000, or no limit with --duration].
        #[arg(short = 'n', long = "messages")]
        messages: Option<u32>,
        #[command(flatten)]
        traffic: Traffic,
        #[command(flatten)]
        common: Common,
    },
    /// P publishers -> a shared subscription group ($share/bench/...) of M members.
    #[command(disable_help_flag = true)]
    Shared {
        /// Publishers.
        #[arg(long = "publishers", default_value_t = 16)]
        publishers: u32,
        /// Members of the group.
        #[arg(short = 'M', long = "members", default_value_t = 4)]
        members: u32,
        /// Messages in all [default: 1000000, or no limit with --duration].
        #[arg(short = 'n', long = "messages")]
        messages: Option<u32>,
        #[command(flatten)]
        traffic: Traffic,
        #[command(flatten)]
        common: Common,
    },
    /// N idle clients with keep-alive; the broker's memory per connection.
    #[command(disable_help_flag = true)]
    Connections {
        /// Connections in all.
        #[arg(short = 'n', long = "count", default_value_t = 19_000)]
        count: u32,
        /// Connections per generator process (one process may open only so many files).
        #[arg(long = "per-process", default_value_t = 9_000)]
        per_process: u32,
        /// Keep-alive in seconds.
        #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
        keep_alive: u16,
        /// Seconds to leave the connections idle before reading the broker's memory.
        #[arg(long = "settle", default_value_t = 7)]
        settle: u64,
        #[command(flatten)]
        common: Common,
    },
    /// One publisher at a fixed rate -> one subscriber; delay percentiles.
    #[command(disable_help_flag = true)]
    Latency {
        /// Messages per second.
        #[arg(short = 'r', long = "rate", default_value_t = 5000)]
        rate: u32,
        /// Seconds to run.
        #[arg(
            short = 'd',
            long = "seconds",
            visible_alias = "duration",
            default_value_t = 10
        )]
        seconds: u32,
        /// QoS of the messages and the subscription.
        #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Payload size in bytes (at least 16).
        #[arg(short = 's', long = "size", default_value_t = 16)]
        size: usize,
        /// Pace in ticks of this many microseconds, sending the messages due in a tick
        /// together, as a generator on a timer with that resolution does (tokio's is
        /// 1 ms: 1000); 0 sends each message at its own time.
        #[arg(long = "tick-us", default_value_t = 0)]
        tick_us: u32,
        #[command(flatten)]
        common: Common,
    },
    /// (Used by `connections`.) Hold idle connections until stdin closes.
    #[command(hide = true, disable_help_flag = true)]
    Hold {
        #[command(flatten)]
        target: Target,
        #[arg(long = "source")]
        source: Option<IpAddr>,
        #[arg(long = "count")]
        count: u32,
        #[arg(long = "keepalive", default_value_t = 60)]
        keep_alive: u16,
        #[arg(long = "tag")]
        tag: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.scenario.common().is_some_and(|c| c.json);
    let name = cli.scenario.name();
    match run(cli.scenario) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mqtt-bench: {e}");
            if json {
                println!("{}", report::json_error(name, &e));
            }
            ExitCode::from(2)
        }
    }
}

impl Scenario {
    /// The scenario's name, as on the command line.
    fn name(&self) -> &'static str {
        match self {
            Self::FanIn { .. } => "fan-in",
            Self::FanOut { .. } => "fan-out",
            Self::Pairs { .. } => "pairs",
            Self::Shared { .. } => "shared",
            Self::Connections { .. } => "connections",
            Self::Latency { .. } => "latency",
            Self::Hold { .. } => "hold",
        }
    }

    /// The common flags, for the scenarios that have them.
    fn common(&self) -> Option<&Common> {
        match self {
            Self::FanIn { common, .. }
            | Self::FanOut { common, .. }
            | Self::Pairs { common, .. }
            | Self::Shared { common, .. }
            | Self::Connections { common, .. }
            | Self::Latency { common, .. } => Some(common),
            Self::Hold { .. } => None,
        }
    }
}

impl Common {
    fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else if self.machine {
            Output::Machine
        } else {
            Output::Human
        }
    }
}

/// Runs one scenario; `Ok(false)` when it ran but a check failed.
fn run(scenario: Scenario) -> Result<bool, String> {
    match scenario {
        Scenario::FanIn {
            publishers,
            messages,
            traffic,
            common,
        } => {
            let p = publishers.max(1);
            let plan = Plan {
                publishers: (0..p).map(|i| format!("bench/fan-in/{i}")).collect(),
                per_publisher: per_publisher(messages, 1_000_000, p, &traffic),
                subscribers: vec!["bench/fan-in/#".to_owned()],
                shared: false,
                hears: vec![(0..p as usize).collect()],
            };
            throughput("fan-in", plan, &traffic, &common)
        }
        Scenario::FanOut {
            subscribers,
            messages,
            traffic,
            common,
        } => {
            let k = subscribers.max(1);
            let plan = Plan {
                publishers: vec!["bench/fan-out".to_owned()],
                per_publisher: per_publisher(messages, 10_000, 1, &traffic),
                subscribers: (0..k).map(|_| "bench/fan-out".to_owned()).collect(),
                shared: false,
                hears: (0..k).map(|_| vec![0]).collect(),
            };
            throughput("fan-out", plan, &traffic, &common)
        }
        Scenario::Pairs {
            pairs,
            messages,
            traffic,
            common,
        } => {
            let p = pairs.max(1);
            let plan = Plan {
                publishers: (0..p).map(|i| format!("bench/pairs/{i}")).collect(),
                per_publisher: per_publisher(messages, 1_000_000, p, &traffic),
                subscribers: (0..p).map(|i| format!("bench/pairs/{i}")).collect(),
                shared: false,
                hears: (0..p as usize).map(|i| vec![i]).collect(),
            };
            throughput("pairs", plan, &traffic, &common)
        }
        Scenario::Shared {
            publishers,
            members,
            messages,
            traffic,
            common,
        } => {
            let p = publishers.max(1);
            let m = members.max(1);
            let plan = Plan {
                publishers: (0..p).map(|i| format!("bench/shared/{i}")).collect(),
                per_publisher: per_publisher(messages, 1_000_000, p, &traffic),
                subscribers: (0..m)
                    .map(|_| "$share/bench/bench/shared/#".to_owned())
                    .collect(),
                shared: true,
                hears: Vec::new(),
            };
            // Shared subscriptions are MQTT 5.0.
            let mut traffic = traffic;
            traffic.version = ProtocolVersion::V5;
            throughput("shared", plan, &traffic, &common)
        }
        Scenario::Connections {
            count,
            per_process,
            keep_alive,
            settle,
            common,
        } => connections(count, per_process, keep_alive, settle, &common),
        Scenario::Latency {
            rate,
            seconds,
            qos,
            size,
            tick_us,
            common,
        } => latency(rate, seconds, qos, size, tick_us, &common),
        Scenario::Hold {
            target,
            source,
            count,
            keep_alive,
            tag,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            let dialer = target.dialer(wire::VERSION)?;
            rt.block_on(idle::hold(dialer, source, count, keep_alive, &tag))?;
            Ok(true)
        }
    }
}

/// Messages each of `publishers` sends: `messages` (or `default`) shared out; with a
/// duration, no limit unless `-n` sets one, and never more than the rate allows.
fn per_publisher(messages: Option<u32>, default: u32, publishers: u32, t: &Traffic) -> u32 {
    let Some(duration) = t.duration else {
        return messages.unwrap_or(default) / publishers.max(1);
    };
    let mut n = messages.map_or(u32::MAX, |m| m / publishers.max(1));
    if let Some(rate) = t.rate {
        // Paced, a publisher sends at most one message per period, plus the first.
        let paced = duration.as_secs_f64() * f64::from(rate) / f64::from(publishers.max(1));
        n = n.min((paced.ceil() as u32).saturating_add(1));
    }
    n
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap_or(QoS::AtMostOnce)
}

/// Broker readings around a measured phase.
#[derive(Debug, Default)]
struct Measured {
    before: Option<Reading>,
    after: Option<Reading>,
}

impl Measured {
    fn cpu_seconds(&self) -> Option<f64> {
        Some(self.after?.cpu_seconds - self.before?.cpu_seconds)
    }
}

fn read_broker(broker: Option<Broker>) -> Option<Reading> {
    match broker?.read() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("mqtt-bench: cannot read the broker's figures: {e}");
            None
        }
    }
}

fn throughput(name: &str, plan: Plan, traffic: &Traffic, common: &Common) -> Result<bool, String> {
    if traffic.size < wire::Stamp::LEN {
        return Err(format!(
            "--size must be at least {} bytes (the stamp)",
            wire::Stamp::LEN
        ));
    }
    if plan.per_publisher == 0 {
        return Err("fewer messages than publishers".to_owned());
    }
    if plan.shared && plan.per_publisher == u32::MAX {
        // One bit per message and publisher records which arrived.
        return Err(
            "shared with --duration needs -n or --rate: they bound the delivery check".to_owned(),
        );
    }
    let dialer = common.target.dialer(traffic.version)?;
    let transport = dialer.transport();
    let load = Load {
        dialer: std::sync::Arc::new(dialer),
        sources: common.sources.clone(),
        qos: qos(traffic.qos),
        version: traffic.version,
        size: traffic.size,
        inflight: traffic.inflight,
        window: traffic.window,
        timeout: Duration::from_secs(traffic.timeout),
        stall: Duration::from_secs(traffic.stall),
        name: format!("bench-{name}"),
        duration: traffic.duration,
        rate: traffic.rate,
        persistent_subscribers: !traffic.clean,
    };
    let broker = common.broker_pid.map(|pid| Broker { pid });
    if let Some(b) = broker {
        b.reset_peak();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let mut measured = Measured::default();
    let bar = Progress::new(!common.quiet);
    let outcome = rt.block_on(load::run(
        plan.clone(),
        load,
        || measured.before = read_broker(broker),
        || measured.after = read_broker(broker),
        |done, total| bar.show(done, total),
    ));
    bar.finish();
    let outcome = outcome?;
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let rate = outcome.delivered as f64 / secs;
    let cpu = measured.cpu_seconds();
    let cpu_per_million = cpu.map(|c| c / (outcome.delivered.max(1) as f64) * 1e6);
    let peak = measured.after.map(|r| r.peak_rss);
    let publish_rate = outcome.sent as f64 / secs;
    let us = |q: f64| outcome.latency.quantile_ns(q).map(|ns| ns as f64 / 1000.0);
    let (p50, p99, p999) = (us(0.50), us(0.99), us(0.999));
    let max_us = (outcome.latency.len() > 0).then(|| outcome.latency.max_ns() as f64 / 1000.0);
    let mut r = Report::new(name);
    r.line(format!(
        "{name}: {} publishers, {} subscribers, QoS {}, {} B: {}/{} delivered in {:.2} s, {:.0} msg/s",
        plan.publishers.len(),
        plan.subscribers.len(),
        traffic.qos,
        traffic.size,
        outcome.delivered,
        outcome.expected,
        secs,
        rate
    ));
    if let (Some(c), Some(per_m)) = (cpu, cpu_per_million) {
        r.line(format!(
            "  broker: {c:.2} CPU s, {per_m:.3} CPU s per million deliveries, peak RSS {:.1} MiB",
            peak.unwrap_or(0) as f64 / 1048576.0
        ));
    }
    if let (Some(p50), Some(p99), Some(p999), Some(max)) = (p50, p99, p999, max_us) {
        r.line(format!(
            "  published {} at {publish_rate:.0} msg/s{}; latency, send to delivery: p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us",
            outcome.sent,
            traffic
                .rate
                .map_or_else(String::new, |r| format!(" (asked {r})")),
        ));
    }
    r.count("qos", u64::from(traffic.qos));
    r.count("size", traffic.size as u64);
    r.count("expected", outcome.expected);
    r.count("delivered", outcome.delivered);
    r.measure("seconds", secs, 4);
    r.measure("rate", rate, 1);
    r.count("sent", outcome.sent);
    r.measure("publish_rate", publish_rate, 1);
    r.measure("p50_us", p50, 1);
    r.measure("p99_us", p99, 1);
    r.measure("p999_us", p999, 1);
    r.measure("max_us", max_us, 1);
    r.count("latency_samples", outcome.latency.len());
    r.measure("cpu_s", cpu, 3);
    r.measure("cpu_s_per_million", cpu_per_million, 4);
    r.count("peak_rss", peak);
    r.count("publishers", plan.publishers.len() as u64);
    r.count("subscribers", plan.subscribers.len() as u64);
    r.measure("duration_s", traffic.duration.map(|d| d.as_secs_f64()), 3);
    r.count("rate_limit", traffic.rate.map(u64::from));
    r.word("transport", transport);
    Ok(r.print(&outcome.faults, common.output()))
}

fn connections(
    count: u32,
    per_process: u32,
    keep_alive: u16,
    settle: u64,
    common: &Common,
) -> Result<bool, String> {
    // Checks the flags (and the TLS files) once, here, rather than in every process.
    let dialer = common.target.dialer(wire::VERSION)?;
    let addr = dialer.addr;
    let broker = common.broker_pid.map(|pid| Broker { pid });
    let sources: Vec<IpAddr> =
        if common.sources.is_empty() && addr.ip().is_loopback() && addr.is_ipv4() {
            (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect()
        } else {
            common.sources.clone()
        };
    let before = read_broker(broker);
    let (held, holders) = idle::spread(&common.target, count, per_process, &sources, keep_alive)?;
    std::thread::sleep(Duration::from_secs(settle));
    let after = read_broker(broker);
    drop(holders);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if held.connected > 0 => {
            Some((a.rss as f64 - b.rss as f64) / held.connected as f64)
        }
        _ => None,
    };
    let mut r = Report::new("connections");
    r.line(format!(
        "connections: {} of {count} connected in {:.2} s over {} source addresses",
        held.connected,
        held.ramp.as_secs_f64(),
        sources.len().max(1)
    ));
    if let (Some(b), Some(a), Some(p)) = (before, after, per_conn) {
        r.line(format!(
            "  broker RSS {:.1} MiB -> {:.1} MiB: {p:.0} B per connection",
            b.rss as f64 / 1048576.0,
            a.rss as f64 / 1048576.0
        ));
    }
    r.count("count", u64::from(count));
    r.count("connected", held.connected);
    r.measure("ramp_s", held.ramp.as_secs_f64(), 3);
    r.count("rss_before", before.map(|b| b.rss));
    r.count("rss_after", after.map(|a| a.rss));
    r.measure("bytes_per_connection", per_conn, 0);
    r.count("sources", sources.len().max(1) as u64);
    r.word("transport", dialer.transport());
    Ok(r.print(&held.faults, common.output()))
}

fn latency(
    rate: u32,
    seconds: u32,
    q: u8,
    size: usize,
    tick_us: u32,
    common: &Common,
) -> Result<bool, String> {
    if size < wire::Stamp::LEN {
        return Err(format!(
            "--size must be at least {} bytes (the stamp)",
            wire::Stamp::LEN
        ));
    }
    let dialer = common.target.dialer(wire::VERSION)?;
    let broker = common.broker_pid.map(|pid| Broker { pid });
    let count = rate.saturating_mul(seconds).max(1);
    let mut measured = Measured::default();
    let result = latency::run(
        &dialer,
        qos(q),
        size,
        latency::Pacing {
            rate,
            tick: Duration::from_micros(u64::from(tick_us)),
        },
        count,
        || measured.before = read_broker(broker),
        || measured.after = read_broker(broker),
    )?;
    let cpu_us = measured
        .cpu_seconds()
        .map(|c| c / result.received.max(1) as f64 * 1e6);
    let mut r = Report::new("latency");
    r.line(format!(
        "latency: {rate} msg/s{}, QoS {q}, {size} B: {}/{} received; p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        if tick_us > 0 {
            format!(" in ticks of {tick_us} us")
        } else {
            String::new()
        },
        result.received,
        result.sent,
        result.p50_us, result.p99_us, result.p999_us, result.max_us
    ));
    if let Some(c) = cpu_us {
        r.line(format!("  broker: {c:.2} CPU us per message"));
    }
    r.count("qos", u64::from(q));
    r.count("size", size as u64);
    r.count("rate", u64::from(rate));
    r.count("tick_us", u64::from(tick_us));
    r.count("sent", result.sent);
    r.count("received", result.received);
    r.measure("seconds", result.elapsed.as_secs_f64(), 3);
    r.measure("p50_us", result.p50_us, 1);
    r.measure("p99_us", result.p99_us, 1);
    r.measure("p999_us", result.p999_us, 1);
    r.measure("max_us", result.max_us, 1);
    r.measure("cpu_us_per_message", cpu_us, 2);
    r.word("transport", dialer.transport());
    Ok(r.print(&result.faults, common.output()))
}

/// A one-line progress bar on stderr, drawn only on a terminal and at most ten times a
/// second.
#[derive(Debug)]
struct Progress {
    enabled: bool,
    last: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
            last: std::cell::Cell::new(None),
        }
    }

    fn show(&self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last.set(Some(now));
        let width = 40;
        let filled = (done.min(total) * width / total.max(1)) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{total} ",
            "=".repeat(filled),
            " ".repeat(width as usize - filled)
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled && self.last.get().is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
