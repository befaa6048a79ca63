//! mqtt-rr: MQTT 5.0 request/response, like mosquitto_rr: publish a request with a
//! Response Topic and Correlation Data, and print the matching response (with 3.1.1,
//! `-V 311`, the first message on the response topic).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use bytes::Bytes;
use mqtt_cli::{
    ConnectArgs, EXIT_TIMEOUT, Failure, Signals, finish, format, message, parse_properties, qos,
};
use mqtt_client::{ByteStr, Event, ProtocolVersion};
use tokio::io::AsyncReadExt;

/// Send a request and wait for its response (the flags of mosquitto_rr).
#[derive(clap::Parser, Debug)]
#[command(
    name = "mqtt-rr",
    version,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Topic to send the request to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// Topic to receive the response on.
    #[arg(short = 'e', long = "response-topic")]
    response_topic: String,
    /// Request payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send a file as the request.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Send an empty request.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// Read stdin, sending it whole as the request.
    #[arg(short = 's', long = "stdin-file")]
    stdin: bool,
    /// Do not print stale (retained) responses.
    #[arg(short = 'R')]
    no_stale: bool,
    /// Print the response topic before the payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Do not print a newline after the response.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Output format, as mqtt-sub -F.
    #[arg(short = 'F', long = "format")]
    format: Option<String>,
    /// Pretty-print JSON output (-F %j, -F %J) over several indented lines.
    #[arg(long = "pretty")]
    pretty: bool,
    /// Seconds to wait for the response (exit code 27 when it fires).
    #[arg(short = 'W', long = "timeout", default_value_t = 10)]
    timeout: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Args = mqtt_cli::parse_args(|a: &mut Args| &mut a.conn);
    let quiet = args.conn.quiet;
    finish(run(args).await, quiet)
}

async fn run(mut args: Args) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    // As mosquitto_rr: 5.0 unless -V says otherwise. With 3.1 and 3.1.1 there is no
    // Response Topic or Correlation Data: the request goes out plain, and the first
    // message on the response topic is the response.
    if !args.conn.version_given {
        args.conn.version = ProtocolVersion::V5;
    }
    let v5 = args.conn.version.is_v5();
    let mut props = parse_properties(&args.conn.properties, args.conn.version)?;
    let (options, url_topic) = args.conn.options("mqtt-rr", &props)?;
    let Some(topic) = args.topic.clone().or(url_topic) else {
        return Err(Failure::new(
            "a request topic (-t) and a response topic (-e) are needed",
        ));
    };
    let sources = [
        args.message.is_some(),
        args.file.is_some(),
        args.null,
        args.stdin,
    ];
    if sources.iter().filter(|&&b| b).count() > 1 {
        return Err(Failure::new("only one of -m, -f, -n and -s may be given"));
    }
    let payload = if let Some(m) = &args.message {
        Bytes::from(m.clone())
    } else if let Some(f) = &args.file {
        Bytes::from(
            std::fs::read(f)
                .map_err(|e| Failure::new(format!("unable to read file {}: {e}", f.display())))?,
        )
    } else if args.null {
        Bytes::new()
    } else if args.stdin {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Failure::new(format!("reading stdin: {e}")))?;
        Bytes::from(buf)
    } else {
        return Err(Failure::new(
            "a request payload is needed (-m, -f, -n or -s)",
        ));
    };
    // The Correlation Data given with -D publish is used as given; otherwise one that
    // no other request carries.
    let correlation = if v5 {
        let c = props.publish.correlation_data.clone().unwrap_or_else(|| {
            Bytes::from(format!(
                "{}-{}",
                mqtt_cli::random_client_id("mqtt-rr"),
                std::process::id()
            ))
        });
        props.publish.response_topic = Some(
            ByteStr::try_from(args.response_topic.as_str())
                .map_err(|e| Failure::new(format!("response topic: {e}")))?,
        );
        props.publish.correlation_data = Some(c.clone());
        Some(c)
    } else {
        None
    };
    let q = qos(args.conn.qos);
    let (client, mut conn) = tokio::select! {
        c = mqtt_cli::connect(options) => c?,
        () = signals.recv() => return Ok(()),
    };
    client.subscribe(&args.response_topic, q).await?;
    client
        .publish_message(message(&topic, payload, q, false, &props)?)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let next = tokio::select! {
            e = tokio::time::timeout_at(deadline, conn.next_event()) => e,
            () = signals.recv() => break,
        };
        let Ok(event) = next else {
            let _ = client.disconnect_with(props.disconnect_packet()).await;
            return Err(Failure {
                message: "Timed out".into(),
                code: EXIT_TIMEOUT,
            });
        };
        match event {
            Some(Event::Message(m, arrival)) => {
                // A response carries our Correlation Data back (a responder that
                // drops it is taken at its word).
                let matching = match (&correlation, &m.properties.correlation_data) {
                    (Some(ours), Some(theirs)) => ours == theirs,
                    _ => true,
                };
                if !matching || (args.no_stale && m.retain) {
                    continue;
                }
                let mut out = std::io::stdout().lock();
                let written = (|| {
                    if let Some(f) = &args.format {
                        match format::format(f, &m, arrival, args.pretty) {
                            Ok(text) => out.write_all(&text)?,
                            Err(e) => eprintln!("Error: {e}"),
                        }
                    } else {
                        if args.verbose {
                            out.write_all(m.topic.as_bytes())?;
                            out.write_all(b" ")?;
                        }
                        out.write_all(&m.payload)?;
                    }
                    if !args.no_eol {
                        out.write_all(b"\n")?;
                    }
                    out.flush()
                })();
                match written {
                    Ok(()) => {}
                    // The reader went away (`| head -c1`): nothing more to say.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    Err(e) => return Err(Failure::new(format!("writing output: {e}"))),
                }
                break;
            }
            Some(Event::Disconnected { reason }) => return Err(Failure::new(reason.to_string())),
            Some(_) => {}
            None => return Err(Failure::new("the connection ended")),
        }
    }
    client.disconnect_with(props.disconnect_packet()).await?;
    Ok(())
}
