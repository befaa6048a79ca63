//! The connections scenario: many idle clients with keep-alive, spread over several
//! 127.0.0.x source addresses and several processes (each process may open only so many
//! files), and the broker's memory per connection.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, sync::Semaphore, task::JoinSet};

use crate::{
    target::{Dialer, Target},
    wire::Conn,
};

/// Connections opened at once while ramping up.
const CONNECT_CONCURRENCY: usize = 256;

/// Holds `count` idle connections from `source` until stdin closes; prints
/// `ready N` once they are all up (N connected), or `failed: why`.
pub(crate) async fn hold(
    dialer: Dialer,
    source: Option<IpAddr>,
    count: u32,
    keep_alive: u16,
    tag: &str,
) -> Result<(), String> {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let dialer = Arc::new(dialer);
    let mut connecting = JoinSet::new();
    for i in 0..count {
        let gate = gate.clone();
        let dialer = dialer.clone();
        let id = format!("idle-{tag}-{i}");
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await;
            Conn::connect(
                &dialer,
                source,
                &id,
                keep_alive,
                64,
                crate::wire::VERSION,
                false,
            )
            .await
        });
    }
    let mut conns = Vec::with_capacity(count as usize);
    let mut first_error = None;
    while let Some(r) = connecting.join_next().await {
        match r {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let connected = conns.len();
    // Each connection pings at three quarters of its keep-alive and reads what comes.
    let mut holders = JoinSet::new();
    for conn in conns {
        holders.spawn(keep_idle(conn, keep_alive));
    }
    {
        let mut out = std::io::stdout().lock();
        let line = match &first_error {
            Some(e) => format!("failed: {connected} of {count} connected; first error: {e}"),
            None => format!("ready {connected}"),
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    // Until the parent closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    holders.abort_all();
    Ok(())
}

async fn keep_idle(mut conn: Conn, keep_alive: u16) {
    let every = Duration::from_millis(u64::from(keep_alive.max(1)) * 750);
    loop {
        tokio::select! {
            r = conn.read() => {
                if r.is_err() { return; }
                conn.rbuf.clear();
            }
            () = tokio::time::sleep(every) => {
                if conn.send(&mqtt_codec::Packet::PingReq).await.is_err() { return; }
            }
        }
    }
}

/// What the connections scenario measured.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) connected: u64,
    pub(crate) ramp: Duration,
    pub(crate) faults: Vec<String>,
}

/// Starts helper processes holding `count` connections in all to `target`, at most
/// `per_process` each, source addresses taken in turn; waits until all report. The
/// processes live until the returned guard is dropped.
pub(crate) fn spread(
    target: &Target,
    count: u32,
    per_process: u32,
    sources: &[IpAddr],
    keep_alive: u16,
) -> Result<(Held, Holders), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find mqtt-bench itself: {e}"))?;
    let started = Instant::now();
    let mut holders = Holders(Vec::new());
    let mut left = count;
    let mut n = 0usize;
    while left > 0 {
        let take = left.min(per_process.max(1));
        left -= take;
        let mut cmd = Command::new(&exe);
        cmd.arg("hold")
            .args(target.to_args())
            .arg("--count")
            .arg(take.to_string())
            .arg("--keepalive")
            .arg(keep_alive.to_string())
            .arg("--tag")
            .arg(format!("{}-{n}", std::process::id()));
        if let Some(ip) = sources.get(n % sources.len().max(1)) {
            cmd.arg("--source").arg(ip.to_string());
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        holders.0.push(child);
        n += 1;
    }
    let mut held = Held::default();
    for child in &mut holders.0 {
        let Some(stdout) = child.stdout.take() else {
            continue;
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let line = line.trim();
        if let Some(n) = line.strip_prefix("ready ") {
            held.connected += n.parse::<u64>().unwrap_or(0);
        } else if line.is_empty() {
            held.faults.push("a holder process ended early".to_owned());
        } else {
            held.faults.push(line.to_owned());
        }
    }
    held.ramp = started.elapsed();
    if held.connected < u64::from(count) && held.faults.is_empty() {
        held.faults
            .push(format!("{} of {count} connected", held.connected));
    }
    Ok((held, holders))
}

/// The holder processes; dropping closes their stdin and waits for them.
#[derive(Debug)]
pub(crate) struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}
