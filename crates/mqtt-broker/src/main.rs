//! The `mqtt-broker` binary.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use mqtt_broker::{Broker, Config, config::Listener};
use tracing::{error, info, warn};

/// An MQTT 3.1, 3.1.1 and 5.0 broker.
///
/// With no arguments it listens on 127.0.0.1:1883 and [::1]:1883 only (this machine's
/// clients) and allows anonymous clients; a configuration file with listeners, or
/// --listen, opens it to the network. Options given here override the configuration file.
#[derive(Debug, Parser)]
#[command(name = "mqtt-broker", version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this port on 127.0.0.1 and [::1] (loopback only) instead of the
    /// configured listeners.
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Listen on ADDR:PORT instead of the configured listeners (repeatable).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Verbose logging (debug); the same as --log-level debug.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Log level: error, warn, info, debug or trace (RUST_LOG takes precedence).
    #[arg(long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = args.log_level.clone().unwrap_or_else(|| {
        if args.verbose {
            "debug".into()
        } else {
            "info".into()
        }
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},mqtt_broker={level}"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();

    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mqtt-broker: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(port) = args.port {
        config.listeners = Listener::loopback(port);
    }
    if !args.listen.is_empty() {
        config.listeners = args
            .listen
            .iter()
            .map(|&bind| Listener::new(bind))
            .collect();
    }
    let local_only = config.listeners.iter().all(|l| l.bind.ip().is_loopback());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqtt-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                error!("cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        if local_only && args.config.is_none() && args.listen.is_empty() {
            // As Mosquitto 2.0: safe until told otherwise, and says how.
            warn!(
                "local only: listening on loopback addresses, so only clients on this \
                 machine can connect. To accept connections from the network, give a \
                 configuration file with listeners (-c FILE, see docs/configuration.md: \
                 TLS, client certificates, WebSocket) or --listen 0.0.0.0:1883"
            );
        }
        wait_for_signal().await;
        info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
