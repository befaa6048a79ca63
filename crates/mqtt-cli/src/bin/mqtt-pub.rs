//! mqtt-pub: publish one message, a file, stdin, or stdin line by line; the flags of
//! mosquitto_pub.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use bytes::Bytes;
use mqtt_cli::{ConnectArgs, Failure, Signals, finish, message, parse_properties, qos};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Publish MQTT messages (the flags of mosquitto_pub).
#[derive(clap::Parser, Debug)]
#[command(
    name = "mqtt-pub",
    version,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// Message payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Read stdin, sending one message per line.
    #[arg(short = 'l', long = "stdin-line")]
    lines: bool,
    /// Send a null (zero length) message.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// Read stdin, sending it whole as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin: bool,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Publish the message this many times (with -m, -f, -s, -n).
    #[arg(long = "repeat", default_value_t = 1)]
    repeat: u32,
    /// Seconds to wait between repeats.
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    repeat_delay: f64,
}

fn main() -> ExitCode {
    let args: Args = mqtt_cli::parse_args(|a: &mut Args| &mut a.conn);
    let quiet = args.conn.quiet;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return finish(Err(Failure::new(format!("cannot start: {e}"))), quiet),
    };
    let code = finish(runtime.block_on(run(args)), quiet);
    // A read of stdin (-l) may still block in its thread after a signal: do not wait
    // for it.
    runtime.shutdown_background();
    code
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    let sources = [
        args.message.is_some(),
        args.file.is_some(),
        args.lines,
        args.null,
        args.stdin,
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if sources > 1 {
        return Err(Failure::new(
            "only one of -m, -f, -l, -n and -s may be given",
        ));
    }
    let props = parse_properties(&args.conn.properties, args.conn.version)?;
    let (options, url_topic) = args.conn.options("mqtt-pub", &props)?;
    let Some(topic) = args.topic.clone().or(url_topic) else {
        return Err(Failure::new("Both topic and message must be supplied."));
    };
    if sources == 0 {
        return Err(Failure::new("Both topic and message must be supplied."));
    }
    mqtt_client::codec::topic::validate_topic_name(&topic).map_err(|_| {
        Failure::new(format!(
            "Invalid publish topic '{topic}', does it contain '+' or '#'?"
        ))
    })?;
    let payload: Option<Bytes> = if let Some(m) = &args.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(f) = &args.file {
        Some(Bytes::from(std::fs::read(f).map_err(|e| {
            Failure::new(format!("unable to read file {}: {e}", f.display()))
        })?))
    } else if args.null {
        Some(Bytes::new())
    } else if args.stdin {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Failure::new(format!("reading stdin: {e}")))?;
        Some(Bytes::from(buf))
    } else {
        None
    };
    let q = qos(args.conn.qos);
    let (client, mut conn) = tokio::select! {
        c = mqtt_cli::connect(options) => c?,
        () = signals.recv() => return Ok(()),
    };
    // Report connection losses while publishing.
    let watcher = tokio::spawn(async move {
        while let Some(ev) = conn.next_event().await {
            if let mqtt_client::Event::Disconnected { reason } = ev {
                return Some(reason);
            }
        }
        None
    });
    let publish = |payload: Bytes| {
        let client = client.clone();
        let m = message(&topic, payload, q, args.retain, &props);
        async move {
            client
                .publish_message(m?)
                .await
                .map_err(|e| Failure::new(e.to_string()))?;
            Ok::<(), Failure>(())
        }
    };
    let work = async {
        match payload {
            Some(p) => {
                for i in 0..args.repeat.max(1) {
                    if i > 0 && args.repeat_delay > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
                    }
                    publish(p.clone()).await?;
                }
            }
            None => {
                let mut lines = BufReader::new(tokio::io::stdin()).lines();
                while let Some(line) = lines
                    .next_line()
                    .await
                    .map_err(|e| Failure::new(format!("reading stdin: {e}")))?
                {
                    publish(Bytes::from(line)).await?;
                }
            }
        }
        Ok::<(), Failure>(())
    };
    // SIGINT or SIGTERM: stop publishing, disconnect cleanly (no will), exit 0.
    tokio::select! {
        r = work => r?,
        () = signals.recv() => {}
    }
    client.disconnect_with(props.disconnect_packet()).await?;
    match watcher.await {
        Ok(Some(mqtt_client::DisconnectReason::Requested) | None) | Err(_) => Ok(()),
        Ok(Some(reason)) => Err(Failure::new(reason.to_string())),
    }
}
