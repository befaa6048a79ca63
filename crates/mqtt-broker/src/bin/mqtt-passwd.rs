//! `mqtt-passwd`: manages a password file for `mqtt-broker` (and Mosquitto), with
//! `mosquitto_passwd`'s flags. The hashes are those of `mqtt_broker::auth::password`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::{
    fs,
    io::{self, BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use mqtt_broker::auth::password::{HashKind, PasswordHash};

/// Manages a password file for mqtt-broker and Mosquitto: one `user:hash` line per user.
///
/// Without -b the password is asked for twice, without echo (read from standard input
/// when it is not a terminal). Hashes: argon2id (the default, as Mosquitto 2.1, which
/// reads it; 2.0 does not), sha512-pbkdf2 (what Mosquitto 2.0 writes and reads) and
/// sha512 (old, fast to guess: only for old readers).
///
/// With --scram it writes SCRAM-SHA-256 credentials instead (`user:SCRAM-SHA-256$...`,
/// PostgreSQL's form), for the broker's `scram_file`: MQTT 5.0 enhanced authentication.
#[derive(Debug, Parser)]
#[command(
    name = "mqtt-passwd",
    version,
    override_usage = "mqtt-passwd [-H argon2id | -H sha512-pbkdf2 | -H sha512] [-I iterations] [-c | -D] passwordfile username\n       mqtt-passwd [-H ...] [-I iterations] [-c] -b passwordfile username password\n       mqtt-passwd [-H ...] [-I iterations] -U passwordfile"
)]
struct Args {
    /// Create a new password file (overwriting one that exists) with this user.
    #[arg(short = 'c')]
    create: bool,
    /// Batch mode: the password is the last argument.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete the user from the file.
    #[arg(short = 'D')]
    delete: bool,
    /// Upgrade a plain-text file (`user:password` lines): hash every password that is
    /// not a hash already.
    #[arg(short = 'U')]
    upgrade: bool,
    /// The hash: argon2id (default), sha512-pbkdf2 or sha512.
    #[arg(short = 'H', value_name = "HASH")]
    hash: Option<HashKind>,
    /// PBKDF2 iterations, with -H sha512-pbkdf2 (default 1000) or --scram (default
    /// 4096, at least 4096).
    #[arg(short = 'I', value_name = "ITERATIONS")]
    iterations: Option<u32>,
    /// Write SCRAM-SHA-256 credentials (salt, iterations, StoredKey, ServerKey) for the
    /// broker's `scram_file`, instead of a password hash.
    #[arg(long = "scram")]
    scram: bool,
    /// The password file.
    passwordfile: PathBuf,
    /// The user name.
    username: Option<String>,
    /// The password (with -b).
    password: Option<String>,
}

/// What to do, once the arguments are checked.
#[derive(Debug)]
enum Task {
    /// Write a file with this one user (`-c`), or set the user's password in it.
    Set {
        create: bool,
        username: String,
        password: Option<String>,
    },
    Delete {
        username: String,
    },
    Upgrade,
}

/// A failure, said as `Error: ...` (or as a warning) on standard error.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    let task = check(&args)?;
    let kind = args.hash.unwrap_or_default();
    let hash = |password: &str| {
        if args.scram {
            return scram_credential(password, args.iterations);
        }
        PasswordHash::create(kind, password.as_bytes(), args.iterations)
            .map(|h| h.to_string())
            .map_err(|e| Failure(format!("Error: Unable to hash password: {e}.")))
    };
    let file = &args.passwordfile;
    match task {
        Task::Set {
            create,
            username,
            password,
        } => {
            let password = match password {
                Some(p) => p,
                None => ask_password()?,
            };
            check_password(&password)?;
            let line = format!("{username}:{}", hash(&password)?);
            if create {
                return write_file(file, &format!("{line}\n"), true);
            }
            let mut lines = read_lines(file)?;
            let mut found = false;
            for l in &mut lines {
                if user_of(l) == Some(&username) {
                    // Every line of the user gets the new hash (a file should have one).
                    l.clone_from(&line);
                    found = true;
                }
            }
            if !found {
                lines.push(line);
            }
            write_file(file, &join(&lines), false)
        }
        Task::Delete { username } => {
            let mut lines = read_lines(file)?;
            let before = lines.len();
            lines.retain(|l| user_of(l) != Some(&username));
            if lines.len() == before {
                return Err(Failure(format!(
                    "Warning: User {username} not found in password file."
                )));
            }
            write_file(file, &join(&lines), false)
        }
        Task::Upgrade => {
            let mut lines = read_lines(file)?;
            for (i, l) in lines.iter_mut().enumerate() {
                let Some(user) = user_of(l) else { continue };
                let Some((_, password)) = l.split_once(':') else {
                    continue;
                };
                // A hash already (unlike mosquitto_passwd -U, running it twice does not
                // hash the hashes).
                if PasswordHash::parse(password.trim()).is_ok()
                    || mqtt_scram::StoredKeys::parse(password.trim()).is_ok()
                {
                    continue;
                }
                // As Mosquitto reads a plain-text line: up to a second `:`, trimmed.
                let password = password.split(':').next().unwrap_or_default().trim();
                if password.is_empty() {
                    return Err(Failure(format!(
                        "Error: No password for user {user} at line {}.",
                        i + 1
                    )));
                }
                *l = format!("{user}:{}", hash(password)?);
            }
            write_file(file, &join(&lines), false)
        }
    }
}

/// SCRAM-SHA-256 credentials for `password`, with a random 16-byte salt.
fn scram_credential(password: &str, iterations: Option<u32>) -> Result<String, Failure> {
    let iterations = iterations.unwrap_or(mqtt_scram::DEFAULT_ITERATIONS);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| Failure(format!("Error: no random numbers from the OS: {e}.")))?;
    Ok(mqtt_scram::StoredKeys::derive(password.as_bytes(), &salt, iterations).to_string())
}

/// The task the arguments ask for, or the error `mosquitto_passwd` gives.
fn check(args: &Args) -> Result<Task, Failure> {
    let fail = |m: &str| Err(Failure(format!("Error: {m}")));
    if args.create && args.delete {
        return fail("-c and -D cannot be used together.");
    }
    if args.create && args.upgrade {
        return fail("-c and -U cannot be used together.");
    }
    if args.delete && args.upgrade {
        return fail("-D and -U cannot be used together.");
    }
    if args.batch && args.delete {
        return fail("-b and -D cannot be used together.");
    }
    if args.batch && args.upgrade {
        return fail("-b and -U cannot be used together.");
    }
    if args.scram && args.hash.is_some() {
        return fail("--scram and -H cannot be used together.");
    }
    if let Some(n) = args.iterations {
        if n == 0 {
            return fail("Number of iterations must be > 0.");
        }
        if args.scram {
            if !(mqtt_scram::MIN_ITERATIONS..=mqtt_scram::MAX_ITERATIONS).contains(&n) {
                return fail("SCRAM iterations must be between 4096 and 10000000.");
            }
        } else if args.hash != Some(HashKind::Sha512Pbkdf2) {
            return fail("-I applies to -H sha512-pbkdf2 only (the default hash is argon2id).");
        }
    }
    if args.upgrade {
        if args.username.is_some() {
            return fail("-U takes the password file only.");
        }
        return Ok(Task::Upgrade);
    }
    let Some(username) = args.username.clone() else {
        return fail("a user name is needed after the password file.");
    };
    check_username(&username)?;
    if args.delete {
        if args.password.is_some() {
            return fail("-D takes a user name, not a password.");
        }
        return Ok(Task::Delete { username });
    }
    if args.batch && args.password.is_none() {
        return fail("-b needs the password after the user name.");
    }
    if !args.batch && args.password.is_some() {
        return fail("a password on the command line needs -b.");
    }
    Ok(Task::Set {
        create: args.create,
        username,
        password: args.password.clone(),
    })
}

fn check_username(username: &str) -> Result<(), Failure> {
    if username.is_empty() {
        return Err(Failure("Error: Empty username.".into()));
    }
    if username.len() > 65_535 {
        return Err(Failure(
            "Error: Username must be less than 65536 characters long.".into(),
        ));
    }
    if username.chars().any(char::is_control) {
        return Err(Failure(
            "Error: Username must not contain control characters.".into(),
        ));
    }
    if username.contains(':') {
        return Err(Failure(
            "Error: Username must not contain the ':' character.".into(),
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), Failure> {
    if password.len() > 65_535 {
        return Err(Failure(
            "Error: Password must be less than 65536 characters long.".into(),
        ));
    }
    Ok(())
}

/// The password, asked for twice: without echo on a terminal, else read from standard
/// input (a line each), as `mosquitto_passwd` does.
fn ask_password() -> Result<String, Failure> {
    let terminal = io::stdin().is_terminal();
    let mut lines = io::stdin().lock().lines();
    let mut ask = |prompt: &str| -> Result<String, Failure> {
        if terminal {
            return rpassword::prompt_password(prompt).map_err(Failure::from);
        }
        let mut out = io::stdout().lock();
        out.write_all(prompt.as_bytes())?;
        out.flush()?;
        let line = lines.next();
        // The line break the Enter key would have shown (as mosquitto_passwd prints).
        out.write_all(b"\n")?;
        match line {
            Some(line) => Ok(line?.trim_end_matches('\r').to_owned()),
            None => Err(Failure("Error: No password given.".into())),
        }
    };
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first.is_empty() {
        return Err(Failure("Error: Empty password.".into()));
    }
    if first != second {
        return Err(Failure("Error: Passwords do not match.".into()));
    }
    Ok(first)
}

/// The user a line is about: what comes before `:` (trimmed), unless it is a comment
/// or blank.
fn user_of(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some(
        trimmed
            .split_once(':')
            .map_or(trimmed, |(user, _)| user.trim()),
    )
}

/// The file's lines, as they are.
fn read_lines(path: &Path) -> Result<Vec<String>, Failure> {
    let text = fs::read_to_string(path).map_err(|e| {
        Failure(format!(
            "Error: Unable to open password file {}. {e}.",
            path.display()
        ))
    })?;
    Ok(text.lines().map(str::to_owned).collect())
}

fn join(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Replaces the file's contents at once: written beside it, then renamed over it, so
/// that a broker reading it never sees half a file. An existing file keeps its
/// permissions (and, for root, its owner); a new one is readable by its owner only.
fn write_file(path: &Path, text: &str, create: bool) -> Result<(), Failure> {
    let failed = |e: io::Error| {
        Failure(format!(
            "Error: Unable to open file {} for writing. {e}.",
            path.display()
        ))
    };
    let existing = fs::metadata(path).ok();
    if existing.is_none() && !create {
        return Err(Failure(format!(
            "Error: Unable to open password file {}.",
            path.display()
        )));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.mqtt-passwd-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut f = options.open(&temp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Some(meta) = &existing {
            fs::set_permissions(&temp, meta.permissions())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Only root can give a file away; anyone else keeps their own.
                let _ = std::os::unix::fs::chown(&temp, Some(meta.uid()), Some(meta.gid()));
            }
        }
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(failed(e));
    }
    Ok(())
}
