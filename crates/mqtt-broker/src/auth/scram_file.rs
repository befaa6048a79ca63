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
}

/// SCRAM-SHA-256 credentials for MQTT 5.0 enhanced authentication, read from a file.
///
/// The users sit behind an [`ArcSwap`]: [`ScramFile::reload`] replaces them at once,
/// and an exchange under way finishes with the keys it started with.
#[derive(Debug)]
pub struct ScramFile {
    path: PathBuf,
    users: ArcSwap<Users>,
    /// What a made-up user's keys are derived from ([`StoredKeys::decoy`]): random,
    /// for the life of the process.
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
        match self.users.load().keys.get(username) {
            Some(keys) => (Arc::clone(keys), true),
            None => (Arc::new(StoredKeys::decoy(&self.secret, username)), false),
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
    Ok(Users { keys })
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
            users: ArcSwap::from_pointee(Users {
                keys: HashMap::new(),
            }),
            secret: [7; 32],
        };
        let (a, known) = file.keys("nobody");
        assert!(!known);
        assert_eq!(a, file.keys("nobody").0);
        assert_ne!(a.salt, file.keys("somebody").0.salt);
        assert_eq!(a.iterations, mqtt_scram::DEFAULT_ITERATIONS);
    }
}
