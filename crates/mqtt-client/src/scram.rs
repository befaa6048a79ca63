//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as an [`Authenticator`]: MQTT 5.0 enhanced
//! authentication with a user name and password, checking the server's proof too.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use mqtt_scram::{ClientExchange, KEY_LEN, ServerSignature};

use crate::auth::Authenticator;

/// Authenticates with SCRAM-SHA-256: the password never crosses the connection, and
/// the connection is accepted only if the server proves it holds the password's keys
/// (mutual authentication: a server that does not is refused with
/// [`crate::ConnectError::Auth`]).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtt_client::{ConnectOptions, ProtocolVersion, Scram};
///
/// let options = ConnectOptions::new("localhost", 1883)
///     .version(ProtocolVersion::V5)
///     .authenticator(Scram::new("alice", "secret"));
/// let (client, _connection) = mqtt_client::connect(options).await?;
/// client.reauthenticate().await?;
/// # Ok(()) }
/// ```
///
/// The key derivation (PBKDF2 with the server's iteration count, 4096 or more) runs
/// in [`Authenticator::challenge`], which the driver calls on a blocking thread; its
/// result is kept for the salt and count it was made with, so reconnections and
/// [`crate::Client::reauthenticate`] cost a few HMACs. User name and password are used
/// as their UTF-8 bytes (no SASLprep).
pub struct Scram {
    username: String,
    password: String,
    /// The exchange under way.
    exchange: Option<ClientExchange>,
    /// What server-final must carry.
    expected: Option<ServerSignature>,
    /// The last derived key: salt, iterations, SaltedPassword.
    salted: Option<(Vec<u8>, u32, [u8; KEY_LEN])>,
}

impl fmt::Debug for Scram {
    /// Leaves the password and keys out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scram")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Scram {
    /// SCRAM-SHA-256 as `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            exchange: None,
            expected: None,
            salted: None,
        }
    }
}

impl Authenticator for Scram {
    fn method(&self) -> &str {
        mqtt_scram::METHOD
    }

    /// client-first, with a fresh random nonce.
    fn start(&mut self) -> Result<Option<Bytes>, String> {
        let mut nonce = [0u8; 18];
        getrandom::fill(&mut nonce)
            .map_err(|e| format!("SCRAM: no random numbers from the OS: {e}"))?;
        let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
        let exchange = ClientExchange::new(&self.username, &nonce);
        let first = exchange.client_first();
        self.exchange = Some(exchange);
        self.expected = None;
        Ok(Some(Bytes::from(first)))
    }

    /// server-first in, client-final out (deriving the key if salt or count changed).
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String> {
        let exchange = self
            .exchange
            .take()
            .ok_or("SCRAM: a second challenge from the server")?;
        let first = exchange
            .server_first(data.unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let salted = match &self.salted {
            Some((salt, iterations, key))
                if *salt == first.salt && *iterations == first.iterations =>
            {
                *key
            }
            _ => {
                let key = mqtt_scram::salted_password(
                    self.password.as_bytes(),
                    &first.salt,
                    first.iterations,
                );
                self.salted = Some((first.salt.clone(), first.iterations, key));
                key
            }
        };
        let (last, expected) = exchange.client_final(&first, &salted);
        self.expected = Some(expected);
        Ok(Some(Bytes::from(last)))
    }

    /// Checks server-final: the server's signature proves it knows the keys.
    fn success(&mut self, data: Option<&[u8]>) -> Result<(), String> {
        self.exchange = None;
        let expected = self
            .expected
            .take()
            .ok_or("SCRAM: the server accepted before the exchange finished")?;
        let data = data.ok_or("SCRAM: the server sent no signature (server-final)")?;
        expected.verify(data).map_err(|e| e.to_string())
    }
}
