//! SCRAM-SHA-256 (RFC 5802, RFC 7677): the messages of both sides of the exchange,
//! for MQTT 5.0 enhanced authentication (Authentication Method `SCRAM-SHA-256`).
//!
//! This layer builds and checks SCRAM messages and nothing else: it does no I/O, reads
//! no clock and draws no random numbers (nonces are passed in), so both the broker and
//! the client drive it over their own sockets. It is `#![no_std]` with `alloc`.
//!
//! # The exchange, as MQTT carries it
//! ```text
//! client                                   server
//! CONNECT  method, data = client-first  →
//!                                       ←  AUTH 0x18, data = server-first (nonce, salt, iterations)
//! AUTH 0x18, data = client-final (proof) →
//!                                       ←  CONNACK 0x00, data = server-final (server signature)
//! ```
//! Re-authentication runs the same three messages, starting with AUTH 0x19 and ending
//! with AUTH 0x00.
//!
//! - Server: [`ClientFirst::parse`] → look the user up → [`ServerExchange::start`]
//!   (server-first) → [`ServerExchange::finish`] (checks the proof, gives server-final).
//!   The server needs only [`StoredKeys`] (salt, iterations, StoredKey, ServerKey),
//!   never the password, and its steps are a few HMACs: cheap enough for an async task.
//! - Client: [`ClientExchange::new`] → [`ClientExchange::client_first`] →
//!   [`ClientExchange::server_first`] → [`salted_password`] (PBKDF2: **slow on
//!   purpose**, run it where blocking is allowed) → [`ClientExchange::client_final`] →
//!   [`ServerSignature::verify`] on server-final (mutual authentication).
//!
//! # What is not supported
//! - Channel binding (`p=` in the GS2 header): refused, as MQTT has no way to say which
//!   channel. `y` (client supports it, thinks the server does not) is accepted.
//! - An authorization identity (`a=`), and mandatory extensions (`m=`): refused.
//! - SASLprep (RFC 4013) is not applied: user names and passwords are used as their
//!   UTF-8 bytes. For ASCII passwords this is what SASLprep gives too.
//!
//! # Panics
//! Nothing here panics on what a peer sends: every message is parsed with bounds
//! ([`MAX_MESSAGE_LEN`], [`MAX_ITERATIONS`]) and every failure is an [`Error`].
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

extern crate alloc;

use alloc::{format, string::String, vec::Vec};
use core::fmt;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Authentication Method name, as MQTT's CONNECT and AUTH carry it.
pub const METHOD: &str = "SCRAM-SHA-256";

/// The iteration count new credentials get by default: RFC 7677's minimum, and what
/// PostgreSQL writes.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The fewest iterations a client accepts from a server, and a credential file may
/// hold: RFC 7677's minimum.
pub const MIN_ITERATIONS: u32 = 4096;

/// The most iterations a client accepts from a server: a hostile server could
/// otherwise keep a client computing for hours.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// The longest SCRAM message either side accepts, in bytes. Real ones are under 200.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The longest salt a credential may have, in bytes.
pub const MAX_SALT_LEN: usize = 64;

/// The length of SHA-256 output, of each key and of a proof.
pub const KEY_LEN: usize = 32;

/// The credential prefix of a stored entry (PostgreSQL's form).
const PREFIX: &str = "SCRAM-SHA-256$";

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM message or credential was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The message is not a SCRAM message of the expected kind: what is wrong.
    Malformed(&'static str),
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    TooLong(usize),
    /// A feature this implementation does not support (channel binding, an
    /// authorization identity, a mandatory extension).
    Unsupported(&'static str),
    /// The nonce does not continue the exchange's (a replayed or forged message).
    Nonce,
    /// The client's proof is wrong: wrong password, or unknown user.
    InvalidProof,
    /// The server's signature is wrong: the server does not know the password's keys.
    InvalidServerSignature,
    /// The server ended the exchange with an error (`e=` in server-final).
    ServerError(String),
    /// An iteration count outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    Iterations(u32),
    /// A stored credential that does not parse: what is wrong.
    Credential(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            Self::TooLong(n) => write!(
                f,
                "SCRAM message of {n} bytes, more than the {MAX_MESSAGE_LEN} accepted"
            ),
            Self::Unsupported(what) => write!(f, "SCRAM: {what} is not supported"),
            Self::Nonce => f.write_str("SCRAM: the nonce does not continue the exchange"),
            Self::InvalidProof => f.write_str("SCRAM: the client's proof is wrong"),
            Self::InvalidServerSignature => f.write_str(
                "SCRAM: the server's signature is wrong (it does not know the password)",
            ),
            Self::ServerError(e) => write!(f, "SCRAM: the server refused: {e}"),
            Self::Iterations(i) => write!(
                f,
                "SCRAM: {i} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            ),
            Self::Credential(what) => write!(f, "SCRAM credential: {what}"),
        }
    }
}

impl core::error::Error for Error {}

/// What the server stores for a user: salt, iteration count, StoredKey and ServerKey
/// (RFC 5802 section 3). The password cannot be recovered from it, but it lets whoever
/// holds it impersonate the *server*, so keep the file private.
///
/// Written and read in PostgreSQL's form (see [`StoredKeys::parse`]).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKeys {
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: [u8; KEY_LEN],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for StoredKeys {
    /// Leaves the keys out: a log line must not hold them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKeys")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl StoredKeys {
    /// The keys of `password` with `salt` and `iterations`. Runs PBKDF2: slow on
    /// purpose (milliseconds at 4096 iterations), so not on an async task.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        Self::from_salted_password(
            &salted_password(password, salt, iterations),
            salt,
            iterations,
        )
    }

    /// The keys of an already salted password (see [`salted_password`]).
    pub fn from_salted_password(salted: &[u8; KEY_LEN], salt: &[u8], iterations: u32) -> Self {
        let client_key = hmac(salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(salted, &[b"Server Key"]),
        }
    }

    /// Made-up keys for a user the server does not know, the same for every exchange
    /// with the same `secret` (random per server, kept for its life) and `username`:
    /// the server answers as it would for a real user (a stable salt, the default
    /// iteration count), and the proof then fails as a wrong password does. Without
    /// it, an unknown user would be told apart by a changing salt or an early refusal.
    pub fn decoy(secret: &[u8], username: &str) -> Self {
        let salt = hmac(secret, &[b"salt\0", username.as_bytes()]);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..16).unwrap_or(&salt).to_vec(),
            stored_key: hmac(secret, &[b"stored\0", username.as_bytes()]),
            server_key: hmac(secret, &[b"server\0", username.as_bytes()]),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64,
    /// PostgreSQL's `pg_authid.rolpassword` form).
    ///
    /// # Errors
    /// [`Error::Credential`] saying which part is wrong, or [`Error::Iterations`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or(Error::Credential("it does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(Error::Credential("no $ between salt and keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(Error::Credential("no : between iterations and salt"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| Error::Credential("the iteration count is not a number"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Error::Iterations(iterations));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| Error::Credential("the salt is not base64"))?;
        if salt.is_empty() || salt.len() > MAX_SALT_LEN {
            return Err(Error::Credential(
                "the salt is empty or longer than 64 bytes",
            ));
        }
        let (stored, server) = keys
            .split_once(':')
            .ok_or(Error::Credential("no : between StoredKey and ServerKey"))?;
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored)
                .ok_or(Error::Credential("StoredKey is not 32 bytes of base64"))?,
            server_key: key(server)
                .ok_or(Error::Credential("ServerKey is not 32 bytes of base64"))?,
        })
    }
}

impl fmt::Display for StoredKeys {
    /// The form [`StoredKeys::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// SaltedPassword = Hi(password, salt, iterations): PBKDF2-HMAC-SHA-256. Slow on
/// purpose; a client caches it per (salt, iterations).
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; KEY_LEN];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn key(b64: &str) -> Option<[u8; KEY_LEN]> {
    B64.decode(b64).ok()?.try_into().ok()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// A message as text, bounded.
fn text(data: &[u8]) -> Result<&str, Error> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(Error::TooLong(data.len()));
    }
    core::str::from_utf8(data).map_err(|_| Error::Malformed("not UTF-8"))
}

/// A nonce: printable ASCII without `,` (RFC 5802 `printable`), not empty.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `saslname` with `=2C` and `=3D` decoded; any other `=` is malformed.
fn unescape_name(s: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('=') {
        out.push_str(rest.get(..at).unwrap_or_default());
        let tail = rest.get(at..).unwrap_or_default();
        if let Some(t) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = t;
        } else {
            return Err(Error::Malformed(
                "a user name with = not followed by 2C or 3D",
            ));
        }
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(Error::Malformed("an empty user name"));
    }
    Ok(out)
}

fn escape_name(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// The client-first message as the server reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name (`n=`), unescaped.
    pub username: String,
    gs2_header: String,
    bare: String,
    nonce: String,
}

impl ClientFirst {
    /// Parses client-first: `n,,n=<user>,r=<nonce>` (GS2 header, then
    /// client-first-message-bare).
    ///
    /// # Errors
    /// [`Error::TooLong`], [`Error::Malformed`], or [`Error::Unsupported`] for channel
    /// binding, an authorization identity or a mandatory extension.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let s = text(data)?;
        let (cbind, rest) = s.split_once(',').ok_or(Error::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(Error::Unsupported("channel binding")),
            _ => {
                return Err(Error::Malformed(
                    "the GS2 header does not start with n, y or p=",
                ));
            }
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(Error::Malformed("the GS2 header has no second comma"))?;
        if !authzid.is_empty() {
            return Err(Error::Unsupported("an authorization identity (a=)"));
        }
        let mut fields = bare.split(',');
        let user = match fields.next() {
            Some(f) if f.starts_with("m=") => {
                return Err(Error::Unsupported("a mandatory extension (m=)"));
            }
            Some(f) => f
                .strip_prefix("n=")
                .ok_or(Error::Malformed("no user name (n=)"))?,
            None => return Err(Error::Malformed("no user name (n=)")),
        };
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(Error::Malformed("no nonce (r=)"))?;
        if !valid_nonce(nonce) {
            return Err(Error::Malformed(
                "the nonce is empty or not printable ASCII",
            ));
        }
        // Further (optional) extensions are ignored, as RFC 5802 allows.
        let gs2_len = cbind.len() + authzid.len() + 2;
        Ok(Self {
            username: unescape_name(user)?,
            gs2_header: s.get(..gs2_len).unwrap_or_default().into(),
            bare: bare.into(),
            nonce: nonce.into(),
        })
    }
}

/// The server's side of one exchange, between server-first and client-final.
#[derive(Clone)]
pub struct ServerExchange {
    username: String,
    gs2_header: String,
    /// client-first-message-bare "," server-first-message
    auth_prefix: String,
    nonce: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ServerExchange {
    /// Answers `first` for a user whose credential is `keys`; `server_nonce` is the
    /// server's random part of the nonce (printable ASCII without `,`: base64 of 18 or
    /// more random bytes). Returns the exchange and server-first.
    ///
    /// For an unknown user, pass keys made up from a server secret and the user name
    /// (the same salt every time): the answer looks like a real user's, and
    /// [`ServerExchange::finish`] then fails as for a wrong password.
    pub fn start(first: ClientFirst, keys: &StoredKeys, server_nonce: &str) -> (Self, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        let exchange = Self {
            auth_prefix: format!("{},{server_first}", first.bare),
            username: first.username,
            gs2_header: first.gs2_header,
            nonce,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
        };
        (exchange, server_first.into_bytes())
    }

    /// The user the exchange is for.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks client-final (`c=<GS2 header>,r=<nonce>,p=<proof>`); on success, returns
    /// server-final (`v=<server signature>`) for the client to check.
    ///
    /// # Errors
    /// [`Error::InvalidProof`] for a wrong password (or an unknown user),
    /// [`Error::Nonce`], [`Error::Malformed`], [`Error::TooLong`].
    pub fn finish(&self, client_final: &[u8]) -> Result<Vec<u8>, Error> {
        let s = text(client_final)?;
        let (without_proof, proof) = s
            .rsplit_once(",p=")
            .ok_or(Error::Malformed("no proof (p=) at the end"))?;
        let mut fields = without_proof.split(',');
        let cbind = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(Error::Malformed("no channel binding (c=)"))?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| Error::Malformed("the channel binding is not base64"))?;
        if cbind != self.gs2_header.as_bytes() {
            return Err(Error::Malformed(
                "the channel binding is not client-first's GS2 header",
            ));
        }
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(Error::Malformed("no nonce (r=)"))?;
        if nonce != self.nonce {
            return Err(Error::Nonce);
        }
        let proof = key(proof).ok_or(Error::Malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = [self.auth_prefix.as_bytes(), b",", without_proof.as_bytes()];
        let client_signature = hmac(&self.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        let stored: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.stored_key)) {
            return Err(Error::InvalidProof);
        }
        let server_signature = hmac(&self.server_key, &auth_message);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The client's side of one exchange.
#[derive(Clone, Debug)]
pub struct ClientExchange {
    bare: String,
    nonce: String,
}

/// server-first as the client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFirst {
    /// The salt to derive the password with.
    pub salt: Vec<u8>,
    /// The iteration count, within [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    pub iterations: u32,
    raw: String,
    nonce: String,
}

/// What server-final must carry, for [`ServerSignature::verify`].
#[derive(Clone)]
pub struct ServerSignature([u8; KEY_LEN]);

impl fmt::Debug for ServerSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSignature(..)")
    }
}

impl ServerSignature {
    /// Checks server-final: `v=<signature>` must be this signature (compared in
    /// constant time).
    ///
    /// # Errors
    /// [`Error::InvalidServerSignature`], [`Error::ServerError`] for `e=...`,
    /// [`Error::Malformed`], [`Error::TooLong`].
    pub fn verify(&self, server_final: &[u8]) -> Result<(), Error> {
        let s = text(server_final)?;
        if let Some(e) = s.strip_prefix("e=") {
            return Err(Error::ServerError(e.into()));
        }
        let v = s
            .split(',')
            .next()
            .and_then(|f| f.strip_prefix("v="))
            .ok_or(Error::Malformed("no server signature (v=)"))?;
        let v = key(v).ok_or(Error::Malformed(
            "the server signature is not 32 bytes of base64",
        ))?;
        if bool::from(v.ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(Error::InvalidServerSignature)
        }
    }
}

impl ClientExchange {
    /// Starts an exchange for `username` with `client_nonce` (printable ASCII without
    /// `,`: base64 of 18 or more random bytes).
    pub fn new(username: &str, client_nonce: &str) -> Self {
        Self {
            bare: format!("n={},r={client_nonce}", escape_name(username)),
            nonce: client_nonce.into(),
        }
    }

    /// client-first: `n,,n=<user>,r=<nonce>` (no channel binding).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.bare).into_bytes()
    }

    /// Reads server-first: `r=<nonce>,s=<salt>,i=<iterations>`.
    ///
    /// # Errors
    /// [`Error::Nonce`] if the nonce does not extend ours, [`Error::Iterations`],
    /// [`Error::Malformed`], [`Error::Unsupported`] for a mandatory extension,
    /// [`Error::TooLong`].
    pub fn server_first(&self, data: &[u8]) -> Result<ServerFirst, Error> {
        let s = text(data)?;
        let mut fields = s.split(',');
        let nonce = match fields.next() {
            Some(f) if f.starts_with("m=") => {
                return Err(Error::Unsupported("a mandatory extension (m=)"));
            }
            Some(f) => f
                .strip_prefix("r=")
                .ok_or(Error::Malformed("no nonce (r=)"))?,
            None => return Err(Error::Malformed("no nonce (r=)")),
        };
        if !valid_nonce(nonce) || nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce)
        {
            return Err(Error::Nonce);
        }
        let salt = fields
            .next()
            .and_then(|f| f.strip_prefix("s="))
            .ok_or(Error::Malformed("no salt (s=)"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| Error::Malformed("the salt is not base64"))?;
        if salt.is_empty() || salt.len() > MAX_SALT_LEN {
            return Err(Error::Malformed(
                "the salt is empty or longer than 64 bytes",
            ));
        }
        let iterations: u32 = fields
            .next()
            .and_then(|f| f.strip_prefix("i="))
            .ok_or(Error::Malformed("no iteration count (i=)"))?
            .parse()
            .map_err(|_| Error::Malformed("the iteration count is not a number"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Error::Iterations(iterations));
        }
        Ok(ServerFirst {
            salt,
            iterations,
            raw: s.into(),
            nonce: nonce.into(),
        })
    }

    /// client-final for `server_first`, proving knowledge of the password whose
    /// [`salted_password`] is `salted`; and the signature server-final must carry.
    pub fn client_final(
        &self,
        server_first: &ServerFirst,
        salted: &[u8; KEY_LEN],
    ) -> (Vec<u8>, ServerSignature) {
        // "biws" is base64("n,,"): the GS2 header of client_first.
        let without_proof = format!("c=biws,r={}", server_first.nonce);
        let auth_message = [
            self.bare.as_bytes(),
            b",",
            server_first.raw.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_key = hmac(salted, &[b"Client Key"]);
        let stored_key: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        let client_signature = hmac(&stored_key, &auth_message);
        let proof = xor(&client_key, &client_signature);
        let server_key = hmac(salted, &[b"Server Key"]);
        let server_signature = hmac(&server_key, &auth_message);
        (
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
            ServerSignature(server_signature),
        )
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;

    // RFC 7677 section 3.
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn keys() -> StoredKeys {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        StoredKeys::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_client_side() {
        let c = ClientExchange::new("user", NONCE);
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let first = c.server_first(SERVER_FIRST).unwrap();
        let salted = salted_password(b"pencil", &first.salt, first.iterations);
        let (last, signature) = c.client_final(&first, &salted);
        assert_eq!(last, CLIENT_FINAL);
        signature.verify(SERVER_FINAL).unwrap();
        let mut wrong = SERVER_FINAL.to_vec();
        wrong[3] ^= 1;
        assert_eq!(
            signature.verify(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(Error::InvalidServerSignature)
        );
        assert!(signature.verify(&wrong).is_err());
        assert_eq!(
            signature.verify(b"e=invalid-proof"),
            Err(Error::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn rfc7677_server_side() {
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let (exchange, server_first) = ServerExchange::start(first, &keys(), SERVER_NONCE);
        assert_eq!(server_first, SERVER_FIRST);
        assert_eq!(exchange.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
        // One bit of the proof wrong.
        let mut wrong = CLIENT_FINAL.to_vec();
        let at = wrong.len() - 5;
        wrong[at] = if wrong[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(exchange.finish(&wrong), Err(Error::InvalidProof));
        // Another nonce.
        assert_eq!(
            exchange.finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqOX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            ),
            Err(Error::Nonce)
        );
    }

    #[test]
    fn stored_keys_round_trip_in_postgresql_form() {
        let k = keys();
        let line = k.to_string();
        assert!(
            line.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{line}"
        );
        assert_eq!(StoredKeys::parse(&line).unwrap(), k);
        for bad in [
            "",
            "SCRAM-SHA-1$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$10:W22ZaJ0SNY7soEsUEjb6gQ==$x:y",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
        ] {
            assert!(StoredKeys::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_names_are_escaped_and_unescaped() {
        let c = ClientExchange::new("a,b=c", "nonce");
        let first = ClientFirst::parse(&c.client_first()).unwrap();
        assert_eq!(first.username, "a,b=c");
        assert!(ClientFirst::parse(b"n,,n=a=2Db,r=x").is_err());
    }

    #[test]
    fn client_first_refusals() {
        for (bad, why) in [
            (&b"p=tls-unique,,n=u,r=x"[..], "channel binding"),
            (b"n,a=admin,n=u,r=x", "authorization"),
            (b"n,,m=ext,n=u,r=x", "mandatory"),
            (b"n,,n=u", "nonce"),
            (b"n,,n=,r=x", "empty"),
            (b"x,,n=u,r=x", "GS2"),
            (b"\xff\xfe", "UTF-8"),
            (b"garbage", "GS2"),
        ] {
            let e = ClientFirst::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e} for {bad:?}");
        }
        let long = [b'a'; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            ClientFirst::parse(&long),
            Err(Error::TooLong(MAX_MESSAGE_LEN + 1))
        );
        assert!(ClientFirst::parse(b"y,,n=u,r=x").is_ok());
    }

    #[test]
    fn server_first_refusals() {
        let c = ClientExchange::new("user", NONCE);
        for bad in [
            &b"r=someoneelse,s=AAAA,i=4096"[..],
            b"r=rOprNGfwEbeRWgbNEkqO,s=AAAA,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=1",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=4294967295",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA",
            b"m=x,r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=4096",
        ] {
            assert!(c.server_first(bad).is_err(), "{bad:?}");
        }
    }
}
