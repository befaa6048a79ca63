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
use mqtt_broker::{
    Broker, Config,
    config::Listener,
    logging::{self, LogLevel, Logging},
};
use tracing::{error, info, warn};

/// An MQTT 3.1, 3.1.1 and 5.0 broker.
///
/// With no arguments it listens on 127.0.0.1:1883 and [::1]:1883 only (this machine's
/// clients) and allows anonymous clients; a configuration file with listeners, or
/// --listen, opens it to the network. Options given here override the configuration file.
#[derive(Clone, Debug, Parser)]
#[command(name = "mqtt-broker", version, about, long_about = None)]
struct Args {
    /// Configuration file: TOML, or Mosquitto's mosquitto.conf (told apart by content);
    /// see docs/configuration.md.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Configuration file in Mosquitto's format, whatever it looks like.
    #[arg(
        long = "mosquitto-conf",
        value_name = "FILE",
        conflicts_with = "config"
    )]
    mosquitto_conf: Option<PathBuf>,
    /// Print the configuration (the file with the flags applied) as TOML, and exit.
    #[arg(long = "print-config")]
    print_config: bool,
    /// Check the configuration, and exit: 0 if the broker would start with it.
    #[arg(long = "test-config")]
    test_config: bool,
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
    log_level: Option<LogLevel>,
}

impl Args {
    /// The configuration: the file's (with the flags that override it), or the
    /// defaults.
    fn load(&self) -> Result<Config, mqtt_broker::config::ConfigError> {
        let mut config = match (&self.config, &self.mosquitto_conf) {
            (Some(path), _) => Config::load(path)?,
            (None, Some(path)) => mqtt_broker::mosquitto_conf::load(path)?,
            (None, None) => Config::default(),
        };
        if let Some(port) = self.port {
            config.listeners = Listener::loopback(port);
        }
        if !self.listen.is_empty() {
            config.listeners = self.listen.iter().copied().map(Listener::new).collect();
        }
        if let Some(level) = self.level() {
            config.log.level = level;
        }
        Ok(config)
    }

    /// The configuration file, if any.
    fn file(&self) -> Option<&std::path::Path> {
        self.config.as_deref().or(self.mosquitto_conf.as_deref())
    }

    /// The level the command line asks for, if it does (`--log-level`, or `-v`).
    fn level(&self) -> Option<LogLevel> {
        self.log_level
            .or_else(|| self.verbose.then_some(LogLevel::Debug))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mqtt-broker: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        use std::io::Write;
        let _ = std::io::stdout().write_all(config.to_toml().as_bytes());
        return ExitCode::SUCCESS;
    }
    if args.test_config {
        eprintln!(
            "mqtt-broker: configuration OK{}",
            args.file()
                .map_or(String::new(), |p| format!(": {}", p.display()))
        );
        return ExitCode::SUCCESS;
    }
    let logging = match logging::init(&config.log, config.log.level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mqtt-broker: cannot start logging: {e}");
            return ExitCode::from(2);
        }
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args.file().map_or("(defaults)".into(), |p| p.display().to_string()),
        pid = std::process::id(),
        "mqtt-broker {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // The pid file, written before the listeners open and removed at exit.
    let pid_file = config.process.pid_file.clone();
    if let Some(path) = &pid_file {
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            error!("pid file {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let code = serve(args, config, logging);
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    code
}

/// Runs the broker until SIGINT or SIGTERM.
fn serve(args: Args, config: Config, logging: Logging) -> ExitCode {
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
    // No listener open beyond this machine, and none asked for: say how to open it.
    let local_only = config.listeners.iter().all(|l| l.bind.ip().is_loopback())
        && args.file().is_none()
        && args.listen.is_empty();
    runtime.block_on(async move {
        // SIGHUP is handled from before the listeners open: its default would end the
        // process.
        let mut hangups = Hangups::install();
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            // A password or ACL file that cannot be used, or settings that cannot work
            // together: the configuration's fault, as for the file itself.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                ) =>
            {
                error!("invalid configuration: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                error!("cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        if local_only {
            // As Mosquitto 2.0: safe until told otherwise, and says how.
            warn!(
                "local only: listening on loopback addresses, so only clients on this \
                 machine can connect. To accept connections from the network, give a \
                 configuration file with listeners (-c FILE, see docs/configuration.md: \
                 TLS, client certificates, WebSocket) or --listen 0.0.0.0:1883"
            );
        }
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = hangups.next() => reload(&args, &logging, &broker).await,
            }
        }
        info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP, as a stream (never, where there are no signals).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| warn!("SIGHUP cannot be handled, no reload: {e}"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGHUP.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// On SIGHUP: reopens the log files (after logrotate moved them), reads the
/// configuration file again and applies what can change in a running broker (the log
/// level, the limits of `mqtt_broker::reload`), logging what it did and what waits for
/// a restart. A file that no longer reads is reported and changes nothing: SIGHUP never
/// stops the broker.
async fn reload(args: &Args, logging: &Logging, broker: &Broker) {
    info!("SIGHUP: reloading");
    match logging.reopen() {
        Ok(0) => {}
        Ok(n) => info!(files = n, "log files reopened"),
        Err(e) => error!("log file not reopened: {e}"),
    }
    // Password, ACL, JWT key and TLS files, whether the configuration reads or not.
    let files = broker.reload_files().await;
    if args.file().is_none() {
        info!("no configuration file to reload");
        return;
    }
    // Reading the file blocks: not on a runtime thread.
    let reader = args.clone();
    let config = match tokio::task::spawn_blocking(move || reader.load()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            error!("configuration not reloaded, nothing changed: {e}");
            return;
        }
        Err(e) => {
            error!("configuration not reloaded, nothing changed: {e}");
            return;
        }
    };
    let mut reloaded = broker.reload(&config);
    reloaded.files = files;
    for change in &reloaded.applied {
        if change.key == "log.level" {
            let level = config.log.level;
            if logging.level_from_env() {
                info!("log level unchanged: RUST_LOG decides it");
            } else if let Some(before) = logging.set_level(level) {
                info!("log level: {before} -> {level}");
            }
        } else {
            info!("{}: {} -> {} (applied)", change.key, change.from, change.to);
        }
    }
    for change in &reloaded.need_restart {
        warn!(
            "{}: {} -> {} takes effect at the next start",
            change.key, change.from, change.to
        );
    }
    if reloaded.applied.is_empty() && reloaded.need_restart.is_empty() && reloaded.files.is_empty()
    {
        info!("configuration unchanged");
    }
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
