//! Password hashes as Mosquitto writes them in a password file, after `user:`
//! (decision 0016). One module for the broker, which verifies them, and `mqtt-passwd`,
//! which writes them.
//!
//! | form | how Mosquitto makes it | written by |
//! |---|---|---|
//! | `$6$<salt>$<hash>` | `base64(SHA-512(password ‖ salt))`: one round, **not** crypt(3)'s sha512-crypt | `mosquitto_passwd -H sha512` (1.x' default) |
//! | `$7$<iterations>$<salt>$<hash>` | `base64(PBKDF2-HMAC-SHA512(password, salt, iterations, 64 bytes))` | `mosquitto_passwd` 2.0 (101 iterations), 2.1 `-H sha512-pbkdf2` (1,000) |
//! | `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` | libargon2's encoded form (base64 without padding) | `mosquitto_passwd` 2.1 (m=47104 KiB, t=1, p=1, 64-byte salt and hash) |
//!
//! Salts and hashes of `$6$` and `$7$` are standard base64 with padding; the salt is
//! 12 bytes (2.1 also writes and reads 64) and the hash 64 bytes, as Mosquitto requires
//! when it reads a file. What this module writes is what Debian's Mosquitto 2.0 reads
//! (12-byte salts), except argon2id, which only 2.1 reads.

use std::{fmt, str::FromStr};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// The length of a `$6$` / `$7$` hash (SHA-512's), which Mosquitto requires.
const SHA512_LEN: usize = 64;
/// The salt lengths Mosquitto reads in `$6$` and `$7$` (2.0: 12 only; 2.1: 12 or 64).
const SALT_LENS: [usize; 2] = [12, 64];
/// The salt length written for `$6$` and `$7$`: the one Mosquitto 2.0 reads too.
const SALT_LEN: usize = 12;
/// PBKDF2 iterations when none are asked for: Mosquitto 2.1's default (2.0 used 101).
pub const DEFAULT_ITERATIONS: u32 = 1000;
/// Argon2id parameters and lengths as Mosquitto 2.1 writes them: 46 MiB, one pass, one
/// lane (one of OWASP's recommended settings), 64-byte salt and hash.
const ARGON2_M_KIB: u32 = 47_104;
const ARGON2_T: u32 = 1;
const ARGON2_P: u32 = 1;
const ARGON2_SALT_LEN: usize = 64;
const ARGON2_HASH_LEN: usize = 64;

/// A kind of password hash, by the name `mosquitto_passwd -H` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HashKind {
    /// `$6$`: one round of salted SHA-512 (`-H sha512`). Fast, so weak against guessing:
    /// read for old files, written only on request.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 (`-H sha512-pbkdf2`).
    Sha512Pbkdf2,
    /// `$argon2id$` (`-H argon2id`): memory-hard; the default, as in Mosquitto 2.1.
    #[default]
    Argon2id,
}

impl HashKind {
    /// The name `-H` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha512 => "sha512",
            Self::Sha512Pbkdf2 => "sha512-pbkdf2",
            Self::Argon2id => "argon2id",
        }
    }
}

impl fmt::Display for HashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha512" => Ok(Self::Sha512),
            "sha512-pbkdf2" => Ok(Self::Sha512Pbkdf2),
            "argon2id" => Ok(Self::Argon2id),
            other => Err(format!(
                "unknown hash type '{other}': expected argon2id, sha512-pbkdf2 or sha512"
            )),
        }
    }
}

/// Why a string is not a password hash this broker reads, in words for a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashError(String);

impl HashError {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HashError {}

/// A password hash: parsed from a password file, or made from a password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    form: Form,
}

#[derive(Clone, PartialEq, Eq)]
enum Form {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Argon2id {
        version: argon2::Version,
        m_kib: u32,
        t: u32,
        p: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl fmt::Debug for PasswordHash {
    /// The kind and parameters only: a hash is a secret too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.form {
            Form::Sha512 { .. } => f.write_str("PasswordHash($6$)"),
            Form::Pbkdf2 { iterations, .. } => write!(f, "PasswordHash($7$, {iterations})"),
            Form::Argon2id { m_kib, t, p, .. } => {
                write!(f, "PasswordHash($argon2id$, m={m_kib},t={t},p={p})")
            }
        }
    }
}

impl PasswordHash {
    /// Parses the part of a password file's line after `user:`.
    ///
    /// # Errors
    /// If it is not one of the three forms, with parts Mosquitto would read.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let Some(rest) = s.strip_prefix('$') else {
            return Err(HashError::new(
                "not a password hash (a plain-text password? `mqtt-passwd -U FILE` hashes \
                 every password of a file)",
            ));
        };
        if let Some(rest) = rest.strip_prefix("6$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or_else(|| HashError::new("$6$ needs a salt and a hash: $6$SALT$HASH"))?;
            let (salt, hash) = sha_parts(salt, hash)?;
            return Ok(Self {
                form: Form::Sha512 { salt, hash },
            });
        }
        if let Some(rest) = rest.strip_prefix("7$") {
            let mut parts = rest.splitn(3, '$');
            let (Some(iterations), Some(salt), Some(hash)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(HashError::new(
                    "$7$ needs iterations, a salt and a hash: $7$ITERATIONS$SALT$HASH",
                ));
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| {
                    HashError::new(format!(
                        "$7$: the iterations `{iterations}` are not a number from 1 to {}",
                        u32::MAX
                    ))
                })?;
            let (salt, hash) = sha_parts(salt, hash)?;
            return Ok(Self {
                form: Form::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                },
            });
        }
        if let Some(rest) = rest.strip_prefix("argon2id$") {
            return parse_argon2id(rest);
        }
        let kind = rest.split('$').next().unwrap_or_default();
        Err(HashError::new(format!(
            "unknown hash type `${kind}$`: expected $6$, $7$ or $argon2id$"
        )))
    }

    /// A hash of `password` of `kind`, with a new random salt, as `mosquitto_passwd`
    /// makes it: `iterations` applies to [`HashKind::Sha512Pbkdf2`] only
    /// ([`DEFAULT_ITERATIONS`] if `None`).
    ///
    /// # Errors
    /// If the operating system has no random bytes to give, or `iterations` is 0.
    pub fn create(
        kind: HashKind,
        password: &[u8],
        iterations: Option<u32>,
    ) -> Result<Self, HashError> {
        let form = match kind {
            HashKind::Sha512 => Form::Sha512 {
                salt: random(SALT_LEN)?,
                hash: Vec::new(),
            },
            HashKind::Sha512Pbkdf2 => Form::Pbkdf2 {
                iterations: match iterations.unwrap_or(DEFAULT_ITERATIONS) {
                    0 => return Err(HashError::new("the iterations must be at least 1")),
                    n => n,
                },
                salt: random(SALT_LEN)?,
                hash: Vec::new(),
            },
            HashKind::Argon2id => Form::Argon2id {
                version: argon2::Version::V0x13,
                m_kib: ARGON2_M_KIB,
                t: ARGON2_T,
                p: ARGON2_P,
                salt: random(ARGON2_SALT_LEN)?,
                hash: vec![0; ARGON2_HASH_LEN],
            },
        };
        let mut made = Self { form };
        let digest = made.digest(password)?;
        match &mut made.form {
            Form::Sha512 { hash, .. } | Form::Pbkdf2 { hash, .. } | Form::Argon2id { hash, .. } => {
                *hash = digest;
            }
        }
        Ok(made)
    }

    /// A hash with this one's kind and parameters (iterations, memory, lengths), of a
    /// password nobody knows: verifying any password against it takes as long as
    /// against this one. What unknown users are checked against.
    ///
    /// # Errors
    /// As [`PasswordHash::create`].
    pub fn decoy(&self) -> Result<Self, HashError> {
        let mut form = self.form.clone();
        match &mut form {
            Form::Sha512 { salt, .. } | Form::Pbkdf2 { salt, .. } | Form::Argon2id { salt, .. } => {
                *salt = random(salt.len())?;
            }
        }
        let mut decoy = Self { form };
        let digest = decoy.digest(&random(16)?)?;
        match &mut decoy.form {
            Form::Sha512 { hash, .. } | Form::Pbkdf2 { hash, .. } | Form::Argon2id { hash, .. } => {
                *hash = digest;
            }
        }
        Ok(decoy)
    }

    /// Whether verifying against `other` does the same work as against this one: the
    /// same kind, parameters (iterations, memory, lanes, version) and salt and digest
    /// lengths. What makes a decoy cost what a real user's hash costs.
    #[cfg(test)]
    pub(crate) fn costs_as_much_as(&self, other: &Self) -> bool {
        match (&self.form, &other.form) {
            (Form::Sha512 { salt: s, hash: h }, Form::Sha512 { salt: s2, hash: h2 }) => {
                (s.len(), h.len()) == (s2.len(), h2.len())
            }
            (
                Form::Pbkdf2 {
                    iterations: i,
                    salt: s,
                    hash: h,
                },
                Form::Pbkdf2 {
                    iterations: i2,
                    salt: s2,
                    hash: h2,
                },
            ) => (i, s.len(), h.len()) == (i2, s2.len(), h2.len()),
            (
                Form::Argon2id {
                    version: v,
                    m_kib: m,
                    t,
                    p,
                    salt: s,
                    hash: h,
                },
                Form::Argon2id {
                    version: v2,
                    m_kib: m2,
                    t: t2,
                    p: p2,
                    salt: s2,
                    hash: h2,
                },
            ) => (v, m, t, p, s.len(), h.len()) == (v2, m2, t2, p2, s2.len(), h2.len()),
            _ => false,
        }
    }

    /// The kind of this hash.
    pub fn kind(&self) -> HashKind {
        match self.form {
            Form::Sha512 { .. } => HashKind::Sha512,
            Form::Pbkdf2 { .. } => HashKind::Sha512Pbkdf2,
            Form::Argon2id { .. } => HashKind::Argon2id,
        }
    }

    /// Whether `password` is the one hashed, compared in constant time. Takes as long
    /// as the hash's parameters say (argon2id as Mosquitto writes it: tens of
    /// milliseconds and 46 MiB): call it on a blocking thread.
    pub fn verify(&self, password: &[u8]) -> bool {
        let expected = match &self.form {
            Form::Sha512 { hash, .. } | Form::Pbkdf2 { hash, .. } | Form::Argon2id { hash, .. } => {
                hash
            }
        };
        self.digest(password)
            .is_ok_and(|got| bool::from(got.ct_eq(expected)))
    }

    /// The hash of `password` with this one's salt and parameters.
    fn digest(&self, password: &[u8]) -> Result<Vec<u8>, HashError> {
        match &self.form {
            Form::Sha512 { salt, .. } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                Ok(h.finalize().to_vec())
            }
            Form::Pbkdf2 {
                iterations, salt, ..
            } => {
                let mut out = vec![0; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                Ok(out)
            }
            Form::Argon2id {
                version,
                m_kib,
                t,
                p,
                salt,
                hash,
            } => {
                let params = argon2::Params::new(*m_kib, *t, *p, Some(hash.len()))
                    .map_err(|e| HashError::new(format!("argon2id: {e}")))?;
                let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, *version, params);
                let mut out = vec![0; hash.len()];
                argon
                    .hash_password_into(password, salt, &mut out)
                    .map_err(|e| HashError::new(format!("argon2id: {e}")))?;
                Ok(out)
            }
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The form a password file holds after `user:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.form {
            Form::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            Form::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            Form::Argon2id {
                version,
                m_kib,
                t,
                p,
                salt,
                hash,
            } => write!(
                f,
                "$argon2id$v={}$m={m_kib},t={t},p={p}${}${}",
                u32::from(*version),
                STANDARD_NO_PAD.encode(salt),
                STANDARD_NO_PAD.encode(hash)
            ),
        }
    }
}

/// The salt and hash of `$6$` and `$7$`, with the lengths Mosquitto reads.
fn sha_parts(salt: &str, hash: &str) -> Result<(Vec<u8>, Vec<u8>), HashError> {
    let salt = STANDARD
        .decode(salt)
        .map_err(|e| HashError::new(format!("the salt is not base64 ({e})")))?;
    if !SALT_LENS.contains(&salt.len()) {
        return Err(HashError::new(format!(
            "the salt is {} bytes: Mosquitto reads 12 (or, from 2.1, 64)",
            salt.len()
        )));
    }
    let hash = STANDARD
        .decode(hash)
        .map_err(|e| HashError::new(format!("the hash is not base64 ({e})")))?;
    if hash.len() != SHA512_LEN {
        return Err(HashError::new(format!(
            "the hash is {} bytes, not SHA-512's 64",
            hash.len()
        )));
    }
    Ok((salt, hash))
}

/// libargon2's encoded form after `$argon2id$`: `[v=19$]m=M,t=T,p=P$SALT$HASH`.
fn parse_argon2id(rest: &str) -> Result<PasswordHash, HashError> {
    let mut parts: Vec<&str> = rest.split('$').collect();
    // Without `v=`, libargon2 reads version 0x10.
    let mut version = argon2::Version::V0x10;
    if parts.first().is_some_and(|p| p.starts_with("v=")) {
        let v = parts.remove(0);
        version = match v {
            "v=19" => argon2::Version::V0x13,
            "v=16" => argon2::Version::V0x10,
            other => {
                return Err(HashError::new(format!(
                    "argon2id: unknown version `{other}` (expected v=19)"
                )));
            }
        };
    }
    let [params, salt, hash] = parts.as_slice() else {
        return Err(HashError::new(
            "argon2id needs parameters, a salt and a hash: $argon2id$v=19$m=M,t=T,p=P$SALT$HASH",
        ));
    };
    let (mut m, mut t, mut p) = (None, None, None);
    for param in params.split(',') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let slot = match key {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            other => {
                return Err(HashError::new(format!(
                    "argon2id: unknown parameter `{other}` (expected m, t and p)"
                )));
            }
        };
        *slot = Some(
            value
                .parse::<u32>()
                .map_err(|_| HashError::new(format!("argon2id: `{param}` is not a number")))?,
        );
    }
    let (Some(m_kib), Some(t), Some(p)) = (m, t, p) else {
        return Err(HashError::new("argon2id: m, t and p are all needed"));
    };
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|e| HashError::new(format!("argon2id: the salt is not base64 ({e})")))?;
    let hash = STANDARD_NO_PAD
        .decode(hash)
        .map_err(|e| HashError::new(format!("argon2id: the hash is not base64 ({e})")))?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(HashError::new(format!(
            "argon2id: the salt is {} bytes, fewer than {}",
            salt.len(),
            argon2::MIN_SALT_LEN
        )));
    }
    // Checks the parameters and the hash length as verification will use them.
    argon2::Params::new(m_kib, t, p, Some(hash.len()))
        .map_err(|e| HashError::new(format!("argon2id: {e}")))?;
    Ok(PasswordHash {
        form: Form::Argon2id {
            version,
            m_kib,
            t,
            p,
            salt,
            hash,
        },
    })
}

/// `len` random bytes from the operating system.
fn random(len: usize) -> Result<Vec<u8>, HashError> {
    let mut bytes = vec![0; len];
    getrandom::fill(&mut bytes)
        .map_err(|e| HashError::new(format!("no random bytes for a salt: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd` 2.0.11; see `tests/data/README.md`.
    const DEBIAN_SHA512: &str = "$6$mIuMgka7K59IEcFo$dglo1Vn5M+iOnQktBuvhhxCWaVGry43OJDnJYAUyGHzDA6HqfSeqz3nhUVChYKq7Kt2jcy4HcL9Uh42fxQSoZw==";
    const DEBIAN_PBKDF2_101: &str = "$7$101$R7dgi99OefZaJu/3$8M2QXvPC/N1jZiyl4BywciTG5bfXjCaweqyVWEDlhSpKV5t9w2/TOTDcf5bjdwTiufD1tkkTpAtHGYTmq8D6BQ==";

    #[test]
    fn debian_sha512_and_pbkdf2_verify() {
        for line in [DEBIAN_SHA512, DEBIAN_PBKDF2_101] {
            let h = PasswordHash::parse(line).unwrap();
            assert!(h.verify(b"secret"), "{line}");
            assert!(!h.verify(b"secret "), "{line}");
            assert!(!h.verify(b""), "{line}");
            // Written back exactly as read.
            assert_eq!(h.to_string(), line);
        }
        assert_eq!(
            PasswordHash::parse(DEBIAN_SHA512).unwrap().kind(),
            HashKind::Sha512
        );
    }

    #[test]
    fn every_kind_round_trips_and_verifies() {
        for kind in [HashKind::Sha512, HashKind::Sha512Pbkdf2, HashKind::Argon2id] {
            let h = PasswordHash::create(kind, "pässword".as_bytes(), None).unwrap();
            let text = h.to_string();
            let back = PasswordHash::parse(&text).unwrap();
            assert_eq!(back, h, "{text}");
            assert_eq!(back.kind(), kind);
            assert!(back.verify("pässword".as_bytes()), "{text}");
            assert!(!back.verify(b"password"), "{text}");
            let decoy = back.decoy().unwrap();
            assert_eq!(decoy.kind(), kind);
            assert!(!decoy.verify("pässword".as_bytes()));
        }
    }

    #[test]
    fn written_forms_are_mosquittos() {
        let sha = PasswordHash::create(HashKind::Sha512, b"x", None).unwrap();
        let s = sha.to_string();
        let parts: Vec<_> = s.split('$').collect();
        assert_eq!(parts[1], "6");
        assert_eq!(parts[2].len(), 16, "12 bytes of salt: {s}");
        assert_eq!(STANDARD.decode(parts[3]).unwrap().len(), 64);

        let pb = PasswordHash::create(HashKind::Sha512Pbkdf2, b"x", Some(20)).unwrap();
        assert!(pb.to_string().starts_with("$7$20$"), "{pb}");
        let pb = PasswordHash::create(HashKind::Sha512Pbkdf2, b"x", None).unwrap();
        assert!(pb.to_string().starts_with("$7$1000$"), "{pb}");

        let ar = PasswordHash::create(HashKind::Argon2id, b"x", None).unwrap();
        let s = ar.to_string();
        assert!(s.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"), "{s}");
        let parts: Vec<_> = s.split('$').collect();
        assert_eq!(STANDARD_NO_PAD.decode(parts[4]).unwrap().len(), 64);
        assert_eq!(STANDARD_NO_PAD.decode(parts[5]).unwrap().len(), 64);
    }

    /// `user:hash` lines of a file in `tests/data/` (see its README.md).
    fn fixture(text: &str) -> Vec<(&str, PasswordHash)> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (user, hash) = l.split_once(':').unwrap();
                (user, PasswordHash::parse(hash).unwrap())
            })
            .collect()
    }

    // libargon2's reference CLI, which Mosquitto 2.1 links, with Mosquitto 2.1's
    // parameters, a 64-byte salt, and other parameters and version 0x10.
    #[test]
    fn reference_argon2id_verifies() {
        let text = include_str!("../../tests/data/argon2id-reference.txt");
        let users = fixture(text);
        assert_eq!(users.len(), 3);
        for (user, hash) in users {
            let password = match user {
                "alice" => "secret",
                "bob" => "hunter2",
                _ => "correct horse battery staple",
            };
            assert_eq!(hash.kind(), HashKind::Argon2id);
            assert!(hash.verify(password.as_bytes()), "{user}");
            assert!(!hash.verify(b"Secret"), "{user}");
            assert!(
                text.contains(&hash.to_string()),
                "{user}: written back as read"
            );
        }
    }

    // Mosquitto 2.1's 64-byte salts in $6$ and $7$.
    #[test]
    fn long_salts_verify() {
        let users = fixture(include_str!("../../tests/data/mosquitto-2.1-sha-forms.txt"));
        assert_eq!(users[0].1.kind(), HashKind::Sha512Pbkdf2);
        assert!(users[0].1.verify(b"secret"));
        assert_eq!(users[1].1.kind(), HashKind::Sha512);
        assert!(users[1].1.verify(b"hunter2"));
        assert!(!users[1].1.verify(b"secret"));
    }

    #[test]
    fn malformed_hashes_say_why() {
        let cases = [
            ("secret", "plain-text"),
            ("$1$abc$def", "unknown hash type `$1$`"),
            (
                "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
                "unknown hash type",
            ),
            ("$6$onlysalt", "$6$ needs a salt and a hash"),
            ("$6$not base64!$AAAA", "salt is not base64"),
            ("$6$AAAA$AAAA", "salt is 3 bytes"),
            ("$6$mIuMgka7K59IEcFo$AAAA", "hash is 3 bytes"),
            ("$7$0$mIuMgka7K59IEcFo$AAAA", "iterations `0`"),
            ("$7$many$mIuMgka7K59IEcFo$AAAA", "iterations `many`"),
            ("$7$101$mIuMgka7K59IEcFo", "$7$ needs iterations"),
            (
                "$argon2id$v=19$m=47104,t=1$c2FsdHNhbHQ$aGFzaA",
                "m, t and p",
            ),
            (
                "$argon2id$v=19$m=47104,t=1,p=1,x=2$c2FsdHNhbHQ$aGFzaA",
                "unknown parameter `x`",
            ),
            (
                "$argon2id$v=20$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
                "unknown version",
            ),
            (
                "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNo",
                "salt is 4 bytes",
            ),
            (
                "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",
                "needs parameters, a salt and a hash",
            ),
        ];
        for (text, why) in cases {
            let err = PasswordHash::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn hash_kinds_by_name() {
        for kind in [HashKind::Sha512, HashKind::Sha512Pbkdf2, HashKind::Argon2id] {
            assert_eq!(kind.name().parse::<HashKind>().unwrap(), kind);
        }
        assert_eq!(HashKind::default(), HashKind::Argon2id);
        assert!("md5".parse::<HashKind>().is_err());
        assert!(PasswordHash::create(HashKind::Sha512Pbkdf2, b"x", Some(0)).is_err());
    }
}
