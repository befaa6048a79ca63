//! MQTT 5.0 enhanced authentication ([MQTT-4.12]): the method's steps are the
//! application's, through [`Authenticator`]; the driver carries them in CONNECT and
//! AUTH packets.

use bytes::Bytes;

/// One side of an enhanced-authentication exchange (SCRAM, Kerberos, a token
/// challenge, ...); [`crate::Scram`] is one. The driver calls it never concurrently,
/// from its task, except [`challenge`](Self::challenge), which it runs on a blocking
/// thread (`tokio::task::spawn_blocking`) so that it may take its time (a key
/// derivation) without holding up the connection:
///
/// 1. [`start`](Self::start) before every CONNECT: the Authentication Data to send
///    with the [`method`](Self::method) (a SCRAM client-first message, say).
/// 2. [`challenge`](Self::challenge) for every AUTH 0x18 (Continue authentication)
///    from the server: the data of the client's AUTH 0x18 answer.
/// 3. [`success`](Self::success) with the data of the CONNACK that accepts the
///    connection, or of the AUTH 0x00 that ends a re-authentication: a chance to
///    check the server's proof (SCRAM server-final).
///
/// [`crate::Client::reauthenticate`] starts again at step 1, sending AUTH 0x19.
/// An error from any step ends the exchange: a connection attempt fails with
/// [`crate::ConnectError::Auth`]; a connection being re-authenticated is closed with
/// DISCONNECT 0x87 (Not authorized).
pub trait Authenticator: Send + 'static {
    /// The Authentication Method, the same for every step ([MQTT-4.12.0-5]).
    fn method(&self) -> &str;

    /// The Authentication Data for CONNECT, or for AUTH 0x19 when re-authenticating.
    fn start(&mut self) -> Result<Option<Bytes>, String>;

    /// The answer to the server's AUTH 0x18 carrying `data`.
    fn challenge(&mut self, data: Option<&[u8]>) -> Result<Option<Bytes>, String>;

    /// The exchange succeeded; `data` is the server's final Authentication Data. The
    /// default accepts it.
    fn success(&mut self, data: Option<&[u8]>) -> Result<(), String> {
        let _ = data;
        Ok(())
    }
}
