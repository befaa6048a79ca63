//! SCRAM-SHA-256 credentials (`scram_file`): one `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! line per user (base64; PostgreSQL's form, as `mqtt-passwd --scram` writes it), `#`
//! comments and blank lines. A line that is not one of these refuses the whole file,
//! naming the line.
//!
//! The file holds no password, only what a server needs to check a SCRAM proof; with
//! it, though, someone could pose as this server to its clients: keep it private.
//! Checking a proof is a few HMACs on stored keys, cheap enough for the connection's
//! own task: no blocking thread is needed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use mqtt_scram::StoredKeys;

use super::AuthFileError;

/// The longest user name MQTT can carry.
const MAX_USERNAME: usize = 65_535;

/// The users of a SCRAM credential file.
#[derive(Debug)]
struct Users {
    keys: HashMap<String, Arc<StoredKeys>>,
    /// What made-up users' keys are derived from: a hash of the real users' server
    /// keys, so that an unknown user gets the same salt after a restart, as a real one
    /// does, and nobody without the file can compute it. `None` for a file without
    /// users (nobody to be told apart from): the process's random secret then.
    decoy_secret: Option<[u8; 32]>,
    /// The iteration count most users have: what a made-up user is said to have.
    decoy_iterations: u32,
}

/// SCRAM-SHA-256 credentials for MQTT 5.0 enhanced authentication, read from a file.
///
/// The users sit behind an [`ArcSwap`]: [`ScramFile::reload`] replaces them at once,
/// and an exchange under way finishes with the keys it started with.
#[derive(Debug)]
pub struct ScramFile {
    path: PathBuf,
    users: ArcSwap<Users>,
    /// What a made-up user's keys are derived from ([`StoredKeys::decoy`]) when the
    /// file has no user: random, for the life of the process.
    secret: [u8; 32],
}

impl ScramFile {
    /// Reads the file at `path`. Blocking: call it at start-up or on a blocking thread.
    ///
    /// # Errors
    /// The file cannot be read, or a line is malformed (the error names the line).
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| AuthFileError::new(path, format!("no random numbers from the OS: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            users: ArcSwap::from_pointee(read(path)?),
            secret,
        })
    }

    /// Reads the file again and replaces the users at once; on error the old users stay.
    /// Blocking, as [`ScramFile::load`].
    ///
    /// # Errors
    /// As [`ScramFile::load`].
    pub fn reload(&self) -> Result<(), AuthFileError> {
        self.users.store(Arc::new(read(&self.path)?));
        Ok(())
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `username`'s keys; for a user the file does not have, made-up keys that answer
    /// the same way and fail the proof (the second value is `false`).
    pub(crate) fn keys(&self, username: &str) -> (Arc<StoredKeys>, bool) {
        let users = self.users.load();
        match users.keys.get(username) {
            Some(keys) => (Arc::clone(keys), true),
            None => {
                let secret = users.decoy_secret.as_ref().unwrap_or(&self.secret);
                let keys = StoredKeys::decoy(secret, username, users.decoy_iterations);
                (Arc::new(keys), false)
            }
        }
    }
}

fn read(path: &Path) -> Result<Users, AuthFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthFileError::io(path, &e))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Users, AuthFileError> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, credential)) = line.split_once(':') else {
            return Err(AuthFileError::at(
                path,
                n,
                "expected user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".into(),
            ));
        };
        if user.is_empty() || user.len() > MAX_USERNAME {
            return Err(AuthFileError::at(
                path,
                n,
                "the user name is empty or too long".into(),
            ));
        }
        let credential =
            StoredKeys::parse(credential).map_err(|e| AuthFileError::at(path, n, e.to_string()))?;
        if keys.insert(user.to_owned(), Arc::new(credential)).is_some() {
            return Err(AuthFileError::at(
                path,
                n,
                format!("user {user:?} appears twice"),
            ));
        }
    }
    Ok(Users {
        decoy_secret: decoy_secret(&keys),
        decoy_iterations: most_common_iterations(&keys),
        keys,
    })
}

/// A hash of every user's name and server key, in name order; `None` without users.
fn decoy_secret(keys: &HashMap<String, Arc<StoredKeys>>) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    if keys.is_empty() {
        return None;
    }
    let mut users: Vec<_> = keys.iter().collect();
    users.sort_by(|a, b| a.0.cmp(b.0));
    let mut hash = Sha256::new();
    hash.update(b"mqtt-broker scram decoy\0");
    for (name, k) in users {
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update(k.server_key);
    }
    Some(hash.finalize().into())
}

/// The iteration count most users have (the default without users; the larger on a
/// tie, so the answer does not depend on the map's order).
fn most_common_iterations(keys: &HashMap<String, Arc<StoredKeys>>) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for k in keys.values() {
        *counts.entry(k.iterations).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(iterations, n)| (n, iterations))
        .map_or(mqtt_scram::DEFAULT_ITERATIONS, |(iterations, _)| iterations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_and_names_a_bad_line() {
        let keys = StoredKeys::derive(b"pencil", b"0123456789abcdef", 4096);
        let text = format!("# comment\n\nuser:{keys}\r\n");
        let users = parse(Path::new("scram"), &text).unwrap();
        assert_eq!(*users.keys["user"], keys);
        let bad = format!("user:{keys}\nother:SCRAM-SHA-256$4096:AAAA$x:y\n");
        let e = parse(Path::new("scram"), &bad).unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.reason().contains("StoredKey"), "{e}");
        let twice = format!("user:{keys}\nuser:{keys}\n");
        assert!(parse(Path::new("scram"), &twice).is_err());
        assert!(parse(Path::new("scram"), "nocolon\n").is_err());
    }

    #[test]
    fn an_unknown_user_gets_stable_decoy_keys() {
        let file = ScramFile {
            path: PathBuf::from("scram"),
            users: ArcSwap::from_pointee(parse(Path::new("scram"), "").unwrap()),
            secret: [7; 32],
        };
        let (a, known) = file.keys("nobody");
        assert!(!known);
        assert_eq!(a, file.keys("nobody").0);
        assert_ne!(a.salt, file.keys("somebody").0.salt);
        assert_eq!(a.iterations, mqtt_scram::DEFAULT_ITERATIONS);
    }

    // What tells a real user from an unknown one before the proof: the iteration count
    // and whether the salt survives a restart. An unknown user is said to have the
    // count most users have, and the same salt from another process reading the file.
    #[test]
    fn unknown_users_look_like_the_files_users_across_restarts() {
        let text = format!(
            "alice:{}\nbob:{}\ncarol:{}\n",
            StoredKeys::derive(b"a", b"salt-a-0123456789", 10_000),
            StoredKeys::derive(b"b", b"salt-b-0123456789", 10_000),
            StoredKeys::derive(b"c", b"salt-c-0123456789", 4096),
        );
        let load = |secret| ScramFile {
            path: PathBuf::from("scram"),
            users: ArcSwap::from_pointee(parse(Path::new("scram"), &text).unwrap()),
            secret,
        };
        let (first, second) = (load([1; 32]), load([2; 32]));
        let (nobody, known) = first.keys("nobody");
        assert!(!known);
        assert_eq!(nobody.iterations, 10_000);
        assert_eq!(nobody.salt, second.keys("nobody").0.salt);
        assert_eq!(first.keys("bob").0.iterations, 10_000);
    }
}
