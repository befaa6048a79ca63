//! A Mosquitto password file (`password_file`) as an [`Authenticator`]: `user:hash`
//! lines as `mosquitto_passwd` (or `mqtt-passwd`) writes them, `#` comments and blank
//! lines. A line that is not one of these refuses the whole file, naming the line.
//!
//! Verification runs on tokio's blocking threads, at most one per core at once across
//! every password file of the process; a CONNECT waiting for its turn waits within its
//! `connect_timeout`. A user name the file does not have is verified against a decoy
//! hash of the kind and cost most of the file's users have, so that an unknown user
//! takes as long to refuse as a wrong password.

use std::{
    collections::HashMap,
    num::NonZero,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwap;
use mqtt_codec::ReasonCode;
use tokio::sync::Semaphore;

use super::{
    AuthFileError, Authenticating, Authenticator, Credentials,
    password::{HashKind, PasswordHash},
};

/// The longest user name MQTT can carry, as Mosquitto checks it.
const MAX_USERNAME: usize = 65_535;

/// The users of a password file, checked by [`PasswordFile`].
#[derive(Debug)]
struct Users {
    hashes: HashMap<String, PasswordHash>,
    /// What unknown user names are verified against.
    decoy: PasswordHash,
}

impl Users {
    /// Whether `password` is `username`'s. Costs one verification whatever the answer:
    /// an unknown user, or a known one without a password, verifies against the decoy
    /// or with an empty password.
    fn check(&self, username: &str, password: Option<&[u8]>) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(hash) => (hash, true),
            None => (&self.decoy, false),
        };
        let matched = hash.verify(password.unwrap_or_default());
        known & password.is_some() & matched
    }
}

/// Authentication against a Mosquitto password file.
///
/// The users sit behind an [`ArcSwap`]: [`PasswordFile::reload`] replaces them at once,
/// and a CONNECT being verified finishes with the users it started with.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    users: ArcSwap<Users>,
}

impl PasswordFile {
    /// Reads and checks the password file at `path` (blocking: call it at start-up or
    /// on a blocking thread).
    ///
    /// # Errors
    /// If the file cannot be read, or a line is malformed: the error names the file,
    /// the line and the reason.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthFileError> {
        let path = path.as_ref();
        let users = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            users: ArcSwap::from_pointee(users),
        })
    }

    /// A password file from its text; `path` names it in errors.
    ///
    /// # Errors
    /// As [`PasswordFile::load`].
    pub fn parse(text: &[u8], path: impl AsRef<Path>) -> Result<Self, AuthFileError> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_owned(),
            users: ArcSwap::from_pointee(parse(text, path)?),
        })
    }

    /// Reads the file again and puts its users in force at once; connections already
    /// let in stay. On an error the users in force stay as they were.
    ///
    /// # Errors
    /// As [`PasswordFile::load`].
    pub fn reload(&self) -> Result<(), AuthFileError> {
        self.users.store(Arc::new(read(&self.path)?));
        Ok(())
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many users it has.
    pub fn len(&self) -> usize {
        self.users.load().hashes.len()
    }

    /// Whether it has no user (everyone who names a user is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Authenticator for PasswordFile {
    /// A client that names no user is let through: `allow_anonymous` has decided about
    /// it before. Anyone else needs their password, or gets 0x86 Bad User Name or
    /// Password (3.x: 4).
    fn authenticate<'a>(&'a self, credentials: &'a Credentials<'a>) -> Authenticating<'a> {
        let Some(username) = credentials.username else {
            return Box::pin(std::future::ready(Ok(())));
        };
        if credentials.username_from_certificate {
            // As Mosquitto with use_identity_as_username: the TLS handshake verified
            // the certificate that names the user; there is no password to check.
            return Box::pin(std::future::ready(Ok(())));
        }
        let users = self.users.load_full();
        let username = username.to_owned();
        let password = credentials.password.map(<[u8]>::to_vec);
        Box::pin(async move {
            let Ok(permit) = hashing().acquire().await else {
                return Err(ReasonCode::SERVER_UNAVAILABLE);
            };
            let verified = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                users.check(&username, password.as_deref())
            })
            .await;
            match verified {
                Ok(true) => Ok(()),
                // A verification that panicked fails closed.
                Ok(false) | Err(_) => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            }
        })
    }
}

/// Password verifications running at once, across every password file of the process:
/// one per core. Argon2id as Mosquitto 2.1 writes it takes 46 MiB each; a flood of
/// CONNECTs waits here, within its `connect_timeout`, rather than queueing blocking work.
fn hashing() -> &'static Semaphore {
    static HASHING: OnceLock<Semaphore> = OnceLock::new();
    HASHING.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(1, NonZero::get))
    })
}

fn read(path: &Path) -> Result<Users, AuthFileError> {
    let text = std::fs::read(path).map_err(|e| AuthFileError::io(path, &e))?;
    parse(&text, path)
}

fn parse(text: &[u8], path: &Path) -> Result<Users, AuthFileError> {
    let mut hashes = HashMap::new();
    let mut first_line = HashMap::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let bad = |reason: String| AuthFileError::at(path, n, reason);
        let line = std::str::from_utf8(line)
            .map_err(|_| bad("the line is not UTF-8".to_owned()))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(bad(
                "no `:` between the user name and the password hash".to_owned()
            ));
        };
        let (user, hash) = (user.trim(), hash.trim());
        if user.is_empty() {
            return Err(bad("the user name is empty".to_owned()));
        }
        if user.len() > MAX_USERNAME {
            return Err(bad(format!(
                "the user name is {} bytes, more than MQTT's {MAX_USERNAME}",
                user.len()
            )));
        }
        if hash.is_empty() {
            return Err(bad(format!(
                "no password hash for `{user}` (`mqtt-passwd FILE {user}` sets one)"
            )));
        }
        if hash.contains(':') {
            return Err(bad("more than one `:`".to_owned()));
        }
        let hash = PasswordHash::parse(hash).map_err(|e| bad(format!("user `{user}`: {e}")))?;
        if let Some(before) = first_line.insert(user.to_owned(), n) {
            return Err(bad(format!("user `{user}` is already on line {before}")));
        }
        hashes.insert(user.to_owned(), hash);
    }
    let decoy = decoy_for(&hashes).map_err(|e| AuthFileError::new(path, e.to_string()))?;
    Ok(Users { hashes, decoy })
}

/// A decoy with the kind and cost most users' hashes have (the default kind if none).
fn decoy_for(
    hashes: &HashMap<String, PasswordHash>,
) -> Result<PasswordHash, super::password::HashError> {
    let mut counts: HashMap<String, (usize, &PasswordHash)> = HashMap::new();
    for hash in hashes.values() {
        // The Debug form is the kind with its parameters, and no secret.
        let entry = counts.entry(format!("{hash:?}")).or_insert((0, hash));
        entry.0 += 1;
    }
    match counts.into_values().max_by_key(|(count, _)| *count) {
        Some((_, common)) => common.decoy(),
        None => PasswordHash::create(HashKind::default(), b"", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file: &PasswordFile, user: &str, password: &str) -> bool {
        file.users.load().check(user, Some(password.as_bytes()))
    }

    // Every user of the file Debian's mosquitto_passwd 2.0.11 wrote ($6$, $7$ with 101
    // and 1,000 iterations, UTF-8, -U).
    #[test]
    fn reads_debians_mosquitto_passwd() {
        let file = PasswordFile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/mosquitto_passwd-2.0.11.txt"
        ))
        .unwrap();
        assert_eq!(file.len(), 6);
        for (user, password) in [
            ("alice", "secret"),
            ("bob", "hunter2"),
            ("carol", "correct horse battery staple"),
            ("dave", "pässwörd"),
            ("erin", "plain text"),
            ("frank", "s3cr3t"),
        ] {
            assert!(check(&file, user, password), "{user}");
            assert!(!check(&file, user, "wrong"), "{user}");
        }
        assert!(!check(&file, "mallory", "secret"));
        // A known user without a password is refused.
        assert!(!file.users.load().check("alice", None));
        // The decoy is of the kind most users have: $7$ with 101 iterations.
        assert_eq!(
            format!("{:?}", file.users.load().decoy),
            "PasswordHash($7$, 101)"
        );
    }

    #[test]
    fn reads_argon2id_and_long_salts() {
        for (name, users) in [
            ("argon2id-reference.txt", 3),
            ("mosquitto-2.1-sha-forms.txt", 2),
        ] {
            let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
            let file = PasswordFile::load(&path).unwrap();
            assert_eq!(file.len(), users, "{name}");
            assert!(check(&file, "alice", "secret"), "{name}");
            assert!(check(&file, "bob", "hunter2"), "{name}");
            assert!(!check(&file, "bob", "secret"), "{name}");
        }
    }

    // An unknown user costs what a wrong password does: `Users::check` verifies it
    // against the decoy, which has the kind and cost (iterations, memory, lengths) of the
    // file's users, so the time of a refusal does not tell whether the user exists. The
    // work is compared, not the wall time, which a busy machine would blur.
    #[test]
    fn unknown_users_cost_what_wrong_passwords_do() {
        for (kind, iterations) in [
            (HashKind::Argon2id, None),
            (HashKind::Sha512Pbkdf2, Some(1_000)),
            (HashKind::Sha512, None),
        ] {
            let hash = PasswordHash::create(kind, b"pw", iterations).unwrap();
            let file = PasswordFile::parse(format!("alice:{hash}\n").as_bytes(), "pw").unwrap();
            let users = file.users.load();
            assert!(users.decoy.costs_as_much_as(&hash), "{kind:?}");
            assert!(!users.check("alice", Some(b"wrong")));
            assert!(!users.check("mallory", Some(b"wrong")));
            assert!(!users.check("mallory", None));
        }
    }

    #[test]
    fn comments_blank_lines_and_blanks_around_fields() {
        let hash = PasswordHash::create(HashKind::Sha512, b"pw", None).unwrap();
        let text = format!("# users\n\n   \n  alice : {hash}  \r\n\t# more\n");
        let file = PasswordFile::parse(text.as_bytes(), "pw").unwrap();
        assert_eq!(file.len(), 1);
        assert!(check(&file, "alice", "pw"));
    }

    #[test]
    fn an_empty_file_refuses_everyone() {
        let file = PasswordFile::parse(b"# nobody\n", "pw").unwrap();
        assert!(file.is_empty());
        assert!(!check(&file, "alice", ""));
        assert_eq!(file.users.load().decoy.kind(), HashKind::Argon2id);
    }

    #[test]
    fn malformed_lines_are_refused_with_file_line_and_reason() {
        let good = PasswordHash::create(HashKind::Sha512, b"pw", None).unwrap();
        let cases = [
            ("alice\n".to_owned(), 1, "no `:`"),
            (format!("# c\n:{good}\n"), 2, "user name is empty"),
            ("\n\nalice:\n".to_owned(), 3, "no password hash for `alice`"),
            (
                "alice:secret\n".to_owned(),
                1,
                "user `alice`: not a password hash",
            ),
            (format!("alice:{good}:x\n"), 1, "more than one `:`"),
            (
                format!("alice:{good}\nbob:{good}\nalice:{good}\n"),
                3,
                "already on line 1",
            ),
            ("bob:$5$abc$def\n".to_owned(), 1, "unknown hash type `$5$`"),
            (
                format!("{}:{good}\n", "u".repeat(70_000)),
                1,
                "more than MQTT's 65535",
            ),
        ];
        for (text, line, why) in cases {
            let err = PasswordFile::parse(text.as_bytes(), "/etc/mqtt/pw").unwrap_err();
            assert_eq!(err.line(), Some(line), "{text}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("/etc/mqtt/pw:{line}: ")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
        let err = PasswordFile::parse(b"ok:$6$x\n\xff\xfe:x\n", "pw").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
        let err = PasswordFile::parse(b"# \xff\n", "pw").unwrap_err();
        assert_eq!(err.to_string(), "pw:1: the line is not UTF-8");
        let err = PasswordFile::load("/nonexistent/pw").unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/pw: "), "{err}");
        assert_eq!(err.line(), None);
    }

    #[test]
    fn reload_swaps_the_users_or_keeps_them() {
        let dir = std::env::temp_dir().join(format!("mqtt-pw-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        let line = |user: &str| {
            format!(
                "{user}:{}\n",
                PasswordHash::create(HashKind::Sha512, b"pw", None).unwrap()
            )
        };
        std::fs::write(&path, line("alice")).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(check(&file, "alice", "pw"));
        std::fs::write(&path, line("bob")).unwrap();
        file.reload().unwrap();
        assert!(!check(&file, "alice", "pw"));
        assert!(check(&file, "bob", "pw"));
        std::fs::write(&path, "bob\n").unwrap();
        assert!(file.reload().is_err());
        assert!(check(&file, "bob", "pw"), "the users in force stay");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn authenticates_off_the_runtime() {
        let hash = PasswordHash::create(HashKind::Sha512Pbkdf2, b"pw", Some(10)).unwrap();
        let file = PasswordFile::parse(format!("alice:{hash}\n").as_bytes(), "pw").unwrap();
        let peer = "127.0.0.1:1".parse().unwrap();
        let ask = |user: Option<&'static str>, password: Option<&'static [u8]>| {
            let c = Credentials::new("c", user, password, peer);
            let file = &file;
            async move { file.authenticate(&c).await }
        };
        assert_eq!(ask(Some("alice"), Some(b"pw")).await, Ok(()));
        let bad = Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        assert_eq!(ask(Some("alice"), Some(b"no")).await, bad);
        assert_eq!(ask(Some("alice"), None).await, bad);
        assert_eq!(ask(Some("nobody"), Some(b"pw")).await, bad);
        // No user name: allow_anonymous decides, before the authenticator.
        assert_eq!(ask(None, None).await, Ok(()));
    }
}
