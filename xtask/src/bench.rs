//! `cargo xtask bench`: the end-to-end load scenarios of `mqtt-bench`, run against our
//! broker and Debian's Mosquitto side by side, on loopback.
//!
//! Each broker runs pinned to CPU 0 and the generator to CPU 1 (`taskset`), so the
//! figures compare per core. The broker's CPU seconds come from /proc/PID/stat, read by
//! the generator just before the load starts and just after the last delivery. A fault
//! (lost, duplicated or reordered message) of our broker fails the command; Mosquitto's
//! are reported.
//!
//! `--quick` runs every scenario briefly against our broker only (dev build), as the
//! smoke test of `cargo xtask ci`: it checks delivery, never timing, and records nothing.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Result, cargo, project_root};

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default)]
struct Options {
    quick: bool,
    /// Run only the scenarios whose label contains this.
    only: Option<String>,
    /// Install Mosquitto with apt-get when it is missing.
    install: bool,
    /// Do not append to docs/benchmarks.md or write the chart.
    no_record: bool,
}

/// A scenario: its label, the `mqtt-bench` arguments, and our bar for it (broker CPU
/// seconds per million deliveries), if the issue sets one.
#[derive(Debug, Clone)]
struct Scenario {
    label: String,
    args: Vec<String>,
    bar: Option<f64>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Throughput,
    Connections,
    Latency,
}

fn scenario(label: &str, args: &str, bar: Option<f64>, kind: Kind) -> Scenario {
    Scenario {
        label: label.to_owned(),
        args: args.split_whitespace().map(str::to_owned).collect(),
        bar,
        kind,
    }
}

/// A throughput shape: name, mqtt-bench arguments, messages at QoS 0/1/2 with 16 B
/// payloads (1 KiB runs send a fifth), and the bars at QoS 0/1/2 with 16 B.
///
/// Every shape runs closed loop (`--window`: messages a publisher may have out before
/// its subscribers have them), as independent load generators do: a broker drops for a
/// subscriber that cannot keep up rather than slow its publishers (decision 0014), and a
/// drop fails the run. Each subscriber has at most about 800 messages outstanding, within
/// its queue of 1,000.
type Shape = (&'static str, &'static str, [u32; 3], [Option<f64>; 3]);

fn scenarios(quick: bool) -> Vec<Scenario> {
    use Kind::*;
    let mut list = Vec::new();
    let shapes: [Shape; 4] = [
        (
            "fan-in 16→1",
            "fan-in --publishers 16 --window 50",
            [1_000_000, 1_000_000, 500_000],
            [Some(0.5), Some(1.5), Some(3.0)],
        ),
        (
            "fan-out 1→100",
            "fan-out --subscribers 100 --window 500",
            [100_000, 10_000, 5_000],
            [Some(0.2), None, None],
        ),
        (
            "1000 pairs",
            "pairs --pairs 1000 --window 500",
            [1_000_000, 500_000, 250_000],
            [Some(0.5), None, None],
        ),
        (
            "shared 16→4",
            "shared --publishers 16 --members 4 --window 100",
            [1_000_000, 500_000, 250_000],
            [None, None, None],
        ),
    ];
    for (name, args, counts, bars) in shapes {
        for size in [16usize, 1024] {
            for qos in 0..3usize {
                let full = counts.get(qos).copied().unwrap_or(10_000);
                let n = if quick {
                    // Enough for every publisher to send a few.
                    if args.starts_with("pairs") {
                        2_000
                    } else {
                        400
                    }
                } else if size == 16 {
                    full
                } else {
                    (full / 5).max(1_000)
                };
                let bar = if size == 16 {
                    bars.get(qos).copied().flatten()
                } else {
                    None
                };
                list.push(scenario(
                    &format!("{name}, QoS {qos}, {} B", size),
                    &format!("{args} -q {qos} -s {size} -n {n}"),
                    bar,
                    Throughput,
                ));
            }
        }
    }
    let (count, settle) = if quick { (200, 1) } else { (19_000, 7) };
    list.push(scenario(
        &format!("{count} idle connections"),
        &format!("connections -n {count} --settle {settle}"),
        None,
        Connections,
    ));
    let (rate, secs) = if quick { (1000, 1) } else { (5000, 10) };
    for qos in 0..2 {
        list.push(scenario(
            &format!("latency {rate}/s, QoS {qos}"),
            &format!("latency -r {rate} -d {secs} -q {qos}"),
            None,
            Latency,
        ));
    }
    list
}

/// One broker under test.
#[derive(Debug)]
struct Running {
    name: &'static str,
    port: u16,
    child: Child,
    _dir: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `result key=value ...` line of mqtt-bench.
type Figures = BTreeMap<String, String>;

pub(crate) fn run(args: &[&str]) -> Result {
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--quick" => opts.quick = true,
            "--install" => opts.install = true,
            "--no-record" => opts.no_record = true,
            "--only" => opts.only = it.next().map(|s| (*s).to_owned()),
            other => return Err(format!("bench: unknown argument {other:?}")),
        }
    }
    let profile = if opts.quick { "dev" } else { "release" };
    cargo(&[
        "build",
        "--profile",
        profile,
        "-p",
        "mqtt-broker",
        "-p",
        "mqtt-cli",
        "--bin",
        "mqtt-broker",
        "--bin",
        "mqtt-bench",
    ])?;
    let dir = if opts.quick { "debug" } else { "release" };
    let target = target_dir().join(dir);
    let bench_exe = target.join("mqtt-bench");
    let broker_exe = target.join("mqtt-broker");

    let cores = thread::available_parallelism().map_or(1, usize::from);
    let pin = cores >= 2 && installed("taskset");
    if !pin {
        eprintln!(
            "xtask: bench: not pinning (needs taskset and 2 cores): figures are not per core"
        );
    }
    // Which brokers take part; each scenario gets fresh ones, so memory figures (RSS,
    // peak RSS, bytes per connection) belong to that scenario alone.
    let mosquitto = if opts.quick {
        eprintln!("xtask: bench --quick: our broker only, delivery checks only");
        None
    } else {
        let found = mosquitto_exe(opts.install)?;
        if found.is_none() {
            eprintln!(
                "xtask: bench: Mosquitto not found; the comparison is skipped \
                 (install the Debian package `mosquitto`, or pass --install)"
            );
        }
        found
    };
    let mut names = vec!["ours"];
    if mosquitto.is_some() {
        names.push("Mosquitto");
    }

    let mut rows: Vec<(Scenario, Vec<Option<Figures>>)> = Vec::new();
    let mut our_faults = Vec::new();
    for sc in scenarios(opts.quick) {
        if opts
            .only
            .as_ref()
            .is_some_and(|o| !sc.label.contains(o.as_str()))
        {
            continue;
        }
        let mut per_broker = Vec::new();
        for name in &names {
            let b = match (*name, &mosquitto) {
                ("Mosquitto", Some(exe)) => start_mosquitto(exe, pin)?,
                _ => start_ours(&broker_exe, pin, None)?,
            };
            eprintln!("xtask: bench: {} on {}", sc.label, b.name);
            let figures = run_bench(&bench_exe, &b, &sc.args, pin)?;
            drop(b);
            let ok = figures
                .as_ref()
                .is_some_and(|f| f.get("ok").map(String::as_str) == Some("true"));
            if !ok && *name == "ours" {
                our_faults.push(sc.label.clone());
            }
            per_broker.push(figures);
        }
        rows.push((sc, per_broker));
    }

    // Throughput with one and with two worker threads, unpinned: does the second help?
    let mut scaling = Vec::new();
    if !opts.quick && cores >= 2 && opts.only.is_none() {
        for workers in [1, 2] {
            let b = start_ours(&broker_exe, false, Some(workers))?;
            let args: Vec<String> = "pairs --pairs 1000 --window 500 -q 0 -s 16 -n 1000000"
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            eprintln!("xtask: bench: 1000 pairs, QoS 0, unpinned, {workers} worker thread(s)");
            let f = run_bench(&bench_exe, &b, &args, false)?;
            scaling.push((workers, f));
        }
    }

    let table = render(&rows, &names, &scaling);
    #[allow(clippy::print_stdout)] // the report is the command's output
    {
        println!("{table}");
    }
    if !opts.quick && !opts.no_record && opts.only.is_none() {
        record(&table, &rows, &names)?;
    }
    if our_faults.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench: our broker failed the delivery check in: {}",
            our_faults.join("; ")
        ))
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

fn installed(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn pinned(cpu: u32, program: &Path, pin: bool) -> Command {
    if pin {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu.to_string()).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn wait_until_listening(port: u16, child: &mut Child, name: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited at start: {status}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{name} did not listen on 127.0.0.1:{port} within 10 s"
    ))
}

fn start_ours(exe: &Path, pin: bool, workers: Option<usize>) -> Result<Running> {
    let port = free_port()?;
    let mut cmd = pinned(0, exe, pin);
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--log-level",
        "warn",
    ])
    .stdin(Stdio::null());
    if let Some(w) = workers {
        cmd.env("TOKIO_WORKER_THREADS", w.to_string());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    wait_until_listening(port, &mut child, "mqtt-broker")?;
    Ok(Running {
        name: "ours",
        port,
        child,
        _dir: None,
    })
}

/// Debian's Mosquitto broker, installed with apt-get first if asked to.
fn mosquitto_exe(install: bool) -> Result<Option<PathBuf>> {
    let find = || {
        ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(exe) = find() {
        return Ok(Some(exe));
    }
    if install {
        crate::run(Command::new("apt-get").args(["install", "-y", "-qq", "mosquitto"]))?;
    }
    Ok(find())
}

fn start_mosquitto(exe: &Path, pin: bool) -> Result<Running> {
    let port = free_port()?;
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = dir.join("mosquitto.conf");
    // Defaults otherwise, as a Debian user would run it.
    fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut child = pinned(0, exe, pin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    wait_until_listening(port, &mut child, "mosquitto")?;
    Ok(Running {
        name: "Mosquitto",
        port,
        child,
        _dir: Some(dir),
    })
}

/// Runs mqtt-bench once; `None` if it printed no result line.
fn run_bench(exe: &Path, broker: &Running, args: &[String], pin: bool) -> Result<Option<Figures>> {
    let out = pinned(1, exe, pin)
        .args(args)
        .args(["-p", &broker.port.to_string()])
        .args(["--broker-pid", &broker.child.id().to_string()])
        .args(["--machine", "--quiet"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("result ") {
            figures = Some(
                rest.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
        } else {
            eprintln!("    {line}");
        }
    }
    Ok(figures)
}

fn get(f: &Option<Figures>, key: &str) -> Option<f64> {
    f.as_ref()?.get(key)?.parse().ok()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn ok_mark(f: &Option<Figures>) -> &'static str {
    match f.as_ref().and_then(|f| f.get("ok")).map(String::as_str) {
        Some("true") => "",
        Some(_) => " ✗ faults",
        None => " ✗ no result",
    }
}

/// The results as markdown tables.
fn render(
    rows: &[(Scenario, Vec<Option<Figures>>)],
    names: &[&str],
    scaling: &[(usize, Option<Figures>)],
) -> String {
    let mut s = String::new();
    let theirs = names.get(1).copied();
    // Throughput.
    let _ = writeln!(
        s,
        "| scenario | ours msg/s | ours CPU s / M | ours peak RSS | {} | bar | met |",
        theirs.map_or_else(
            || "–".to_owned(),
            |t| format!("{t} msg/s | {t} CPU s / M | {t} peak RSS | CPU ours/{t}")
        )
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|{}---|---|",
        if theirs.is_some() {
            "---|---|---|---|"
        } else {
            "---|"
        }
    );
    for (sc, figs) in rows.iter().filter(|(sc, _)| sc.kind == Kind::Throughput) {
        let ours = figs.first().cloned().flatten();
        let ours_cpu = get(&ours, "cpu_s_per_million");
        let mut line = format!(
            "| {} | {}{} | {} | {} MiB |",
            sc.label,
            fmt_opt(get(&ours, "rate"), 0),
            ok_mark(&ours),
            fmt_opt(ours_cpu, 2),
            fmt_opt(get(&ours, "peak_rss").map(|b| b / 1048576.0), 1)
        );
        if theirs.is_some() {
            let t = figs.get(1).cloned().flatten();
            let t_cpu = get(&t, "cpu_s_per_million");
            let ratio = match (ours_cpu, t_cpu) {
                (Some(o), Some(t)) if t > 0.0 => Some(o / t),
                _ => None,
            };
            let _ = write!(
                line,
                " {}{} | {} | {} MiB | {} |",
                fmt_opt(get(&t, "rate"), 0),
                ok_mark(&t),
                fmt_opt(t_cpu, 2),
                fmt_opt(get(&t, "peak_rss").map(|b| b / 1048576.0), 1),
                fmt_opt(ratio, 2)
            );
        } else {
            line.push_str(" – |");
        }
        let met = match (sc.bar, ours_cpu) {
            (Some(bar), Some(c)) if c <= bar => "yes",
            (Some(_), Some(_)) => "**no**",
            _ => "",
        };
        let _ = writeln!(
            line,
            " {} | {met} |",
            sc.bar.map_or_else(String::new, |b| format!("≤ {b}"))
        );
        s.push_str(&line);
    }
    // Connections.
    for (sc, figs) in rows.iter().filter(|(sc, _)| sc.kind == Kind::Connections) {
        let _ = writeln!(s, "\n{}:\n", sc.label);
        let _ = writeln!(
            s,
            "| broker | connected | ramp s | RSS before | RSS after | bytes per connection |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (name, f) in names.iter().zip(figs) {
            let _ = writeln!(
                s,
                "| {name}{} | {} | {} | {} MiB | {} MiB | {} |",
                ok_mark(f),
                fmt_opt(get(f, "connected"), 0),
                fmt_opt(get(f, "ramp_s"), 2),
                fmt_opt(get(f, "rss_before").map(|b| b / 1048576.0), 1),
                fmt_opt(get(f, "rss_after").map(|b| b / 1048576.0), 1),
                fmt_opt(get(f, "bytes_per_connection"), 0)
            );
        }
    }
    // Latency.
    let lat: Vec<_> = rows
        .iter()
        .filter(|(sc, _)| sc.kind == Kind::Latency)
        .collect();
    if !lat.is_empty() {
        let _ = writeln!(
            s,
            "\n| latency | broker | p50 µs | p99 µs | p99.9 µs | max µs | broker CPU µs / msg |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (sc, figs) in lat {
            for (name, f) in names.iter().zip(figs) {
                let _ = writeln!(
                    s,
                    "| {} | {name}{} | {} | {} | {} | {} | {} |",
                    sc.label,
                    ok_mark(f),
                    fmt_opt(get(f, "p50_us"), 1),
                    fmt_opt(get(f, "p99_us"), 1),
                    fmt_opt(get(f, "p999_us"), 1),
                    fmt_opt(get(f, "max_us"), 1),
                    fmt_opt(get(f, "cpu_us_per_message"), 2)
                );
            }
        }
    }
    if !scaling.is_empty() {
        let _ = writeln!(
            s,
            "\nOur broker unpinned (both cores shared with the generator), 1000 pairs, QoS 0, 16 B:\n"
        );
        let _ = writeln!(s, "| worker threads | msg/s | CPU s / M |");
        let _ = writeln!(s, "|---|---|---|");
        for (w, f) in scaling {
            let _ = writeln!(
                s,
                "| {w}{} | {} | {} |",
                ok_mark(f),
                fmt_opt(get(f, "rate"), 0),
                fmt_opt(get(f, "cpu_s_per_million"), 2)
            );
        }
    }
    s
}

fn command_output(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let mosquitto = command_output(Command::new("sh").args(["-c", "mosquitto -h | head -1"]));
    format!("{model}, {cores} cores; {mosquitto}")
}

/// Appends the tables to docs/benchmarks.md and draws docs/bench/e2e.svg.
fn record(table: &str, rows: &[(Scenario, Vec<Option<Figures>>)], names: &[&str]) -> Result {
    let root = project_root();
    let commit = command_output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&root),
    );
    let dirty = !command_output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&root),
    )
    .is_empty();
    let date = command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let mut section = format!(
        "\n## End-to-end: `cargo xtask bench` ({date}, commit {commit}{})\n\n\
         Machine: {}. Broker pinned to CPU 0, generator to CPU 1; broker CPU seconds from \
         /proc/PID/stat per million delivered messages. Chart: `docs/bench/e2e.svg`.\n\n",
        if dirty { " with local changes" } else { "" },
        machine()
    );
    section.push_str(table);
    let path = root.join("docs/benchmarks.md");
    let mut doc = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !doc.ends_with('\n') {
        doc.push('\n');
    }
    doc.push_str(&section);
    fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display()))?;
    let svg_dir = root.join("docs/bench");
    fs::create_dir_all(&svg_dir).map_err(|e| format!("{}: {e}", svg_dir.display()))?;
    let svg_path = svg_dir.join("e2e.svg");
    fs::write(&svg_path, chart(rows, names)).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    eprintln!(
        "xtask: bench: appended to {} and drew {}",
        path.display(),
        svg_path.display()
    );
    Ok(())
}

/// A horizontal bar chart of broker CPU seconds per million deliveries (log scale), one
/// bar per broker per throughput scenario.
fn chart(rows: &[(Scenario, Vec<Option<Figures>>)], names: &[&str]) -> String {
    let colors = ["#1f77b4", "#ff7f0e"];
    let rows: Vec<_> = rows
        .iter()
        .filter(|(sc, _)| sc.kind == Kind::Throughput)
        .collect();
    let bar_h = 9.0;
    let group_h = bar_h * names.len() as f64 + 8.0;
    let left = 230.0;
    let width = 560.0;
    let top = 40.0;
    let height = top + group_h * rows.len() as f64 + 40.0;
    // Log scale from 0.01 to 1000 CPU s per million.
    let (lo, hi) = (0.01f64.log10(), 1000f64.log10());
    let x = |v: f64| left + (v.max(0.01).log10() - lo) / (hi - lo) * width;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"16\" font-size=\"13\">Broker CPU seconds per million delivered messages (log scale; lower is better)</text>\n",
        left + width + 20.0
    );
    for (i, name) in names.iter().enumerate() {
        let c = colors.get(i).copied().unwrap_or("#888");
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"24\" width=\"10\" height=\"8\" fill=\"{c}\"/><text x=\"{}\" y=\"32\">{name}</text>",
            left + 120.0 * i as f64,
            left + 14.0 + 120.0 * i as f64
        );
    }
    for decade in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
        let gx = x(decade);
        let _ = writeln!(
            s,
            "<line x1=\"{gx}\" y1=\"{top}\" x2=\"{gx}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{gx}\" y=\"{}\" text-anchor=\"middle\">{decade}</text>",
            height - 30.0,
            height - 18.0
        );
    }
    for (r, (sc, figs)) in rows.iter().enumerate() {
        let gy = top + group_h * r as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            gy + group_h / 2.0,
            sc.label.replace('&', "&amp;").replace('<', "&lt;")
        );
        for (i, f) in figs.iter().enumerate() {
            if let Some(v) = get(f, "cpu_s_per_million") {
                let c = colors.get(i).copied().unwrap_or("#888");
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{c}\"/>",
                    gy + bar_h * i as f64,
                    (x(v) - left).max(1.0)
                );
            }
        }
        if let Some(bar) = sc.bar {
            let bx = x(bar);
            let _ = writeln!(
                s,
                "<line x1=\"{bx}\" y1=\"{gy}\" x2=\"{bx}\" y2=\"{}\" stroke=\"black\" stroke-dasharray=\"2,2\"/>",
                gy + group_h - 8.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
