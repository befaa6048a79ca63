//! Project chores, run as `cargo xtask <command>`.
//!
//! - `ci`: everything CI checks, in the order that fails fastest: formatting, clippy,
//!   the tests, the docs, the no_std build, a check with the declared minimum Rust
//!   (installed with rustup when missing), and `cargo deny` (installed when missing;
//!   bans, licenses and sources: the advisory database lives on GitHub, out of reach here).
//!   This is the README's test command.
//! - `no-std`: builds the `no_std` crates without default features, checks that no
//!   dependency turns `std` back on, and builds them for a target without `std`
//!   (`thumbv7em-none-eabihf`, added with rustup when missing).
//! - `msrv`: checks the workspace with its `rust-version`.
//! - `bench --micro`: the criterion micro-benchmarks of every crate.
//! - `bench [--quick] [--only TEXT] [--brokers LIST] [--install] [--no-record]`: the
//!   end-to-end load scenarios against our broker, Mosquitto and the floor (`mqtt-floor`)
//!   (see `bench.rs`).
//! - `conformance [--check]`: regenerates `docs/conformance.md` from the statement lists
//!   in `docs/spec/` and the tests that cite them; `--check` fails if it is stale.
//! - `fuzz [TARGET] [SECONDS]`: runs a cargo-fuzz target from `fuzz/` with its seed
//!   corpus (needs cargo-fuzz and a nightly toolchain).

mod bench;
mod conformance;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

/// The crates that must build without the standard library.
const NO_STD_CRATES: &[&str] = &["mqtt-codec", "mqtt-topics", "mqtt-session"];

pub(crate) type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci"] => ci(),
        ["no-std"] => no_std(),
        ["msrv"] => msrv(),
        ["bench", "--micro"] => cargo(&["bench", "-p", "benches"]),
        ["bench", rest @ ..] => bench::run(rest),
        ["fuzz", rest @ ..] => fuzz(rest),
        ["conformance"] => conformance::run(false),
        ["conformance", "--check"] => conformance::run(true),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <ci | no-std | msrv | bench [--micro | --quick | --only TEXT | --brokers ours,mosquitto,floor | --install | --no-record] | conformance [--check] | fuzz [TARGET] [SECONDS]>";

pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: running {cmd:?}");
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(project_root());
    }
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn cargo(args: &[&str]) -> Result {
    run(Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())).args(args))
}

fn ci() -> Result {
    ensure_peers()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--locked"])?;
    run(Command::new("cargo")
        .args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    no_std()?;
    msrv()?;
    conformance::run(true)?;
    deny()?;
    // The load scenarios, briefly, against our broker: delivery checks, not timing.
    bench::run(&["--quick"])
}

/// Checks the workspace with the oldest Rust it declares (`rust-version`), installed with
/// rustup when missing, so that a dependency or a language feature that needs a newer
/// one is caught here rather than by a user. Skipped, saying so, where rustup cannot
/// install that toolchain.
fn msrv() -> Result {
    let manifest = project_root().join("Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    // `rust-version = "1.85"`, perhaps with a comment after it.
    let version = text
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("rust-version")?.trim();
            let quoted = value.strip_prefix('=')?.trim().strip_prefix('"')?;
            quoted.split_once('"').map(|(v, _)| v.to_owned())
        })
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{}: no rust-version = \"x.y\"", manifest.display()))?;
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(args);
        // What the outer cargo set would pick its toolchain over the one asked for.
        for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
            cmd.env_remove(var);
        }
        cmd
    };
    let installed = rustup(&["run", &version, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed
        && run(&mut rustup(&[
            "toolchain",
            "install",
            &version,
            "--profile",
            "minimal",
        ]))
        .is_err()
    {
        eprintln!("xtask: SKIPPED the MSRV check: rustup could not install Rust {version}");
        return Ok(());
    }
    run(
        rustup(&["run", &version, "cargo", "check", "--workspace", "--locked"]).env(
            "CARGO_TARGET_DIR",
            project_root().join("target").join("msrv"),
        ),
    )?;
    eprintln!("xtask: the workspace builds with Rust {version}, its rust-version");
    Ok(())
}

/// The test peers nobody here wrote: Debian's Mosquitto (broker, clients and
/// `mosquitto_passwd`), its `openssl` command (test keys in PKCS#1 and SEC1 forms),
/// Python paho-mqtt, and a real browser: Debian's Chromium driven by playwright-core,
/// with MQTT.js (npm packages pinned in `crates/mqtt-broker/tests/browser/` and
/// `tests/dashboard/` package-lock.json files; playwright-core downloads no browser).
/// Installed when missing, so the test command works on a fresh machine.
fn ensure_peers() -> Result {
    let succeeds = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    let installed =
        |bin: &str| succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")]));
    // Debian package and a program it installs.
    let wanted = [
        ("mosquitto", "mosquitto"),
        ("mosquitto-clients", "mosquitto_pub"),
        ("mosquitto-clients", "mosquitto_sub"),
        // mosquitto_passwd writes the password files the auth_files tests read.
        ("mosquitto", "mosquitto_passwd"),
        ("openssl", "openssl"),
        ("chromium", "chromium"),
        ("nodejs", "node"),
        ("npm", "npm"),
    ];
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, bin)| !installed(bin))
        .map(|(package, _)| *package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        eprintln!("xtask: installing {} (Debian packages)", missing.join(", "));
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let apt = |args: &[&str]| {
            let mut cmd = if root {
                Command::new("apt-get")
            } else {
                Command::new("sudo")
            };
            if !root {
                cmd.arg("apt-get");
            }
            run(cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
        };
        apt(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq"];
        install.extend(&missing);
        apt(&install)?;
    }
    let browser = project_root().join("crates/mqtt-broker/tests/browser");
    let modules = browser.join("node_modules");
    if !modules.join("playwright-core").exists() || !modules.join("mqtt/dist/mqtt.min.js").exists()
    {
        eprintln!("xtask: installing playwright-core and mqtt (npm ci, from package-lock.json)");
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser))?;
    }
    if !succeeds(Command::new("python3").args(["-c", "import paho.mqtt.client"])) {
        eprintln!("xtask: installing paho-mqtt (PyPI)");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "paho-mqtt==2.1.0"]))?;
    }
    let dashboard = project_root().join("crates/mqtt-broker/tests/dashboard");
    if !dashboard.join("node_modules/playwright-core").exists() {
        eprintln!("xtask: installing playwright-core (npm, from package-lock.json)");
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dashboard))?;
    }
    Ok(())
}

fn no_std() -> Result {
    for krate in NO_STD_CRATES {
        // Clippy builds it too, and fails on warnings that only this configuration has
        // (code that only `std` uses).
        cargo(&[
            "clippy",
            "-p",
            krate,
            "--no-default-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])?;
        let out = Command::new("cargo")
            .args([
                "tree",
                "-p",
                krate,
                "--no-default-features",
                "-e",
                "normal,features",
                "--locked",
            ])
            .current_dir(project_root())
            .output()
            .map_err(|e| format!("cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        let with_std: Vec<&str> = tree
            .lines()
            .filter(|l| l.contains("feature \"std\""))
            .collect();
        if !with_std.is_empty() {
            return Err(format!(
                "{krate} without default features still enables std:\n{}",
                with_std.join("\n")
            ));
        }
        eprintln!("xtask: {krate} builds as no_std and no dependency enables std");
    }
    embedded()
}

/// A target with no standard library at all, where a stray `std` cannot even link: the
/// Cortex-M4F of many devices.
const EMBEDDED_TARGET: &str = "thumbv7em-none-eabihf";

/// Builds the `no_std` crates for [`EMBEDDED_TARGET`], added with rustup when missing.
/// Skipped, saying so, where rustup cannot add it.
fn embedded() -> Result {
    // Added with rustup if it can; what counts is whether the compiler has it then.
    let _ = Command::new("rustup")
        .args(["target", "add", EMBEDDED_TARGET])
        .output();
    // The compiler cargo uses may not be rustup's (a distribution's cargo first in PATH).
    let rustc = env::var_os("CARGO").map_or_else(
        || PathBuf::from("rustc"),
        |cargo| PathBuf::from(cargo).with_file_name("rustc"),
    );
    let has_target = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", EMBEDDED_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_dir());
    if !has_target {
        eprintln!(
            "xtask: SKIPPED the {EMBEDDED_TARGET} build: the target is not installed for {} \
             and rustup could not add it",
            rustc.display()
        );
        return Ok(());
    }
    for krate in NO_STD_CRATES {
        cargo(&[
            "build",
            "-p",
            krate,
            "--no-default-features",
            "--locked",
            "--target",
            EMBEDDED_TARGET,
        ])?;
    }
    eprintln!("xtask: the no_std crates build for {EMBEDDED_TARGET}");
    Ok(())
}

fn deny() -> Result {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        cargo(&["install", "--locked", "cargo-deny"])?;
    }
    // The advisories check clones the RustSec database from GitHub, which the project's
    // machines cannot reach (only package registries are reachable); run it by hand where
    // GitHub is reachable: `cargo deny check advisories`.
    eprintln!("xtask: cargo deny: checking bans, licenses and sources (advisories need GitHub)");
    cargo(&[
        "deny",
        "--workspace",
        "check",
        "bans",
        "licenses",
        "sources",
    ])
}

fn fuzz(args: &[&str]) -> Result {
    let target = args.first().copied().unwrap_or("decode");
    let seconds = args.get(1).copied().unwrap_or("60");
    let corpus = format!("corpus/{target}");
    let seeds = format!("seeds/{target}");
    std::fs::create_dir_all(project_root().join("fuzz").join(&corpus))
        .map_err(|e| e.to_string())?;
    run(Command::new("cargo")
        .args(["+nightly", "fuzz", "run", target, &corpus, &seeds, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .current_dir(project_root().join("fuzz")))
}
