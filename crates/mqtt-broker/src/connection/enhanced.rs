//! MQTT 5.0 enhanced authentication (section 4.12) with SCRAM-SHA-256: the AUTH
//! exchange between CONNECT and CONNACK, and re-authentication on a connection.
//!
//! ```text
//! CONNECT (method, client-first) → AUTH 0x18 (server-first) → AUTH 0x18 (client-final)
//!   → CONNACK 0x00 (server-final)           re-authentication: AUTH 0x19 ... AUTH 0x00
//! ```
//! Failures, each logged with the peer address, counted against it (the failure
//! slow-down of `auth::failures`) and closing the connection:
//!
//! | what | before CONNACK | re-authentication |
//! |---|---|---|
//! | wrong password, unknown user (the same path: decoy keys) | CONNACK 0x86 | DISCONNECT 0x87 |
//! | malformed SCRAM data, a nonce that does not continue, too long | CONNACK 0x87 | DISCONNECT 0x87 |
//! | another method than CONNECT's | CONNACK 0x8C | DISCONNECT 0x8C |
//! | AUTH with a wrong reason code, another packet, AUTH without a method in CONNECT | CONNACK 0x82 | DISCONNECT 0x82 |
//! | no answer within `limits.connect_timeout` | CONNACK 0x87 | DISCONNECT 0x87 (at the next AUTH) |
//!
//! The broker's side costs a few HMACs on stored keys (no PBKDF2), so it runs in the
//! connection's task; every message is bounded by `mqtt_scram::MAX_MESSAGE_LEN`.

use std::{net::SocketAddr, sync::Arc};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use mqtt_codec::{Auth, ByteStr, Connect, Decoder, Packet, ReasonCode};
use mqtt_scram::{ClientFirst, ServerExchange};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout_at},
};
use tracing::info;

use crate::{sessions::SessionHandle, shared::Shared};

use super::handshake::read_packet;

/// What a connection's CONNECT established by enhanced authentication, kept with its
/// session while the connection lasts (`CellExtra::enhanced_auth`).
#[derive(Debug)]
pub(crate) struct EnhancedAuth {
    /// The Authentication Method of CONNECT: every AUTH must carry it.
    method: ByteStr,
    /// Who authenticated: a re-authentication must be the same user.
    user: Box<str>,
    /// The listener, whose credentials apply.
    listener: usize,
    /// The client's address, for the failure slow-down and the log line.
    peer: SocketAddr,
    /// A re-authentication under way: the exchange and when it started.
    pending: Option<(ServerExchange, Instant)>,
}

/// A CONNECT that authenticated with SCRAM: who, and the CONNACK's Authentication
/// Data (server-final).
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) user: Box<str>,
    pub(crate) method: ByteStr,
    pub(crate) server_final: Bytes,
}

impl Accepted {
    /// What the session keeps of it.
    pub(crate) fn state(&self, listener: usize, peer: SocketAddr) -> EnhancedAuth {
        EnhancedAuth {
            method: self.method.clone(),
            user: self.user.clone(),
            listener,
            peer,
            pending: None,
        }
    }
}

/// A refusal: the reason code, and why (for the log line).
type Refusal = (ReasonCode, String);

/// The server's random part of a nonce: 18 bytes, base64 (24 characters).
fn server_nonce() -> Result<String, Refusal> {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| {
        (
            ReasonCode::UNSPECIFIED_ERROR,
            format!("no random numbers from the OS: {e}"),
        )
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn auth_packet(reason_code: ReasonCode, method: &ByteStr, data: Vec<u8>) -> Packet {
    let mut auth = Auth {
        reason_code,
        ..Auth::default()
    };
    auth.properties.authentication_method = Some(method.clone());
    auth.properties.authentication_data = Some(Bytes::from(data));
    Packet::from(auth)
}

/// What a SCRAM error is refused with: a wrong proof is a wrong password.
fn scram_refusal(e: &mqtt_scram::Error, connack: bool) -> Refusal {
    let code = match e {
        mqtt_scram::Error::InvalidProof if connack => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        _ => ReasonCode::NOT_AUTHORIZED,
    };
    (code, e.to_string())
}

/// Runs the SCRAM-SHA-256 exchange of a CONNECT that names the method, by the
/// connection's `deadline` (its connect timeout). `Err` carries the CONNACK reason code
/// to refuse with; the caller counts and logs the failure.
pub(crate) async fn scram_connect<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    connect: &Connect,
    listener: usize,
    deadline: Instant,
) -> Result<Accepted, Refusal> {
    let Some(credentials) = shared.scram(listener) else {
        return Err((
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "SCRAM-SHA-256 is not offered on this listener (no scram_file)".into(),
        ));
    };
    let properties = &connect.properties;
    let method = properties.authentication_method.clone().unwrap_or_default();
    let data = properties
        .authentication_data
        .as_deref()
        .unwrap_or_default();
    let first = ClientFirst::parse(data).map_err(|e| scram_refusal(&e, true))?;
    if let Some(name) = connect.username.as_deref() {
        if name != first.username {
            return Err((
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "the CONNECT's User Name is not the SCRAM user name".into(),
            ));
        }
    }
    let (keys, _known) = credentials.keys(&first.username);
    let (exchange, server_first) = ServerExchange::start(first, &keys, &server_nonce()?);
    // [MQTT-4.12.0-2]: more data is asked for with AUTH 0x18.
    let mut out = BytesMut::new();
    auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, &method, server_first)
        .encode(connect.version, &mut out)
        .map_err(|e| (ReasonCode::UNSPECIFIED_ERROR, e.to_string()))?;
    if !matches!(
        timeout_at(deadline, stream.write_all(&out)).await,
        Ok(Ok(()))
    ) {
        return Err((
            ReasonCode::UNSPECIFIED_ERROR,
            "the write failed or was not done within the connect timeout".into(),
        ));
    }
    let packet = match timeout_at(deadline, read_packet(stream, rbuf, decoder)).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => {
            return Err((
                ReasonCode::NOT_AUTHORIZED,
                "the client closed the connection during the exchange".into(),
            ));
        }
        Ok(Err(e)) => return Err((e.reason_code(), e.to_string())),
        Err(_) => {
            return Err((
                ReasonCode::NOT_AUTHORIZED,
                "no AUTH answer within the connect timeout (limits.connect_timeout)".into(),
            ));
        }
    };
    let auth = match packet {
        Packet::Auth(a) => a,
        other => {
            return Err((
                ReasonCode::PROTOCOL_ERROR,
                format!(
                    "{:?} instead of AUTH 0x18 during the exchange",
                    other.packet_type()
                ),
            ));
        }
    };
    if auth.properties.authentication_method.as_ref() != Some(&method) {
        return Err((
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "AUTH with an Authentication Method other than CONNECT's [MQTT-4.12.0-5]".into(),
        ));
    }
    if auth.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
        return Err((
            ReasonCode::PROTOCOL_ERROR,
            format!(
                "AUTH {} before CONNACK: only 0x18 (Continue authentication) answers a challenge [MQTT-4.12.0-3]",
                auth.reason_code
            ),
        ));
    }
    let data = auth
        .properties
        .authentication_data
        .as_deref()
        .unwrap_or_default();
    let server_final = exchange.finish(data).map_err(|e| scram_refusal(&e, true))?;
    Ok(Accepted {
        user: exchange.username().into(),
        method,
        server_final: Bytes::from(server_final),
    })
}

/// Logs an authentication failure and counts it against `peer`; returns how long the
/// answer should wait (see `auth::failures`).
pub(crate) fn failed(
    shared: &Shared,
    peer: SocketAddr,
    client: &str,
    user: &str,
    code: ReasonCode,
    why: &str,
) -> std::time::Duration {
    let wait = shared.auth_failures.failed(peer.ip(), Instant::now());
    info!(%peer, client = ?client, user = ?user, reason = %code, why, delay_ms = wait.as_millis() as u64, "authentication failed (SCRAM-SHA-256): connection refused");
    wait
}

/// A client's AUTH on an accepted connection: a re-authentication (0x19), or its
/// answer (0x18). Queues the broker's AUTH in the session, or closes the connection
/// (DISCONNECT, [MQTT-4.12.1-2]).
pub(crate) fn reauthenticate(
    shared: &Arc<Shared>,
    handle: &SessionHandle,
    generation: u64,
    auth: Auth,
) {
    let mut cell = handle.lock();
    if cell.generation != generation {
        return;
    }
    let state = cell
        .extra
        .as_deref_mut()
        .and_then(|x| x.enhanced_auth.as_deref_mut());
    let peer = state.as_ref().map(|s| s.peer);
    let result = step(shared, state, &auth);
    match result {
        Ok(reply) => cell.session.send_auth(reply),
        Err((code, why, count)) => {
            if count {
                let user = cell
                    .principal
                    .as_ref()
                    .and_then(|p| p.username.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(peer) = peer {
                    failed(shared, peer, &handle.client_id, &user, code, &why);
                } else {
                    info!(client = %handle.client_id, user = ?user, reason = %code, why, "re-authentication failed (SCRAM-SHA-256)");
                }
            }
            if let Some(x) = cell
                .extra
                .as_deref_mut()
                .and_then(|x| x.enhanced_auth.as_deref_mut())
            {
                x.pending = None;
            }
            cell.session.disconnect_explained(code, &why);
            cell.set_close_why(why.into());
        }
    }
}

/// One step of a re-authentication: the AUTH to send, or the DISCONNECT reason code,
/// why, and whether it counts as an authentication failure.
fn step(
    shared: &Shared,
    state: Option<&mut EnhancedAuth>,
    auth: &Auth,
) -> Result<Auth, (ReasonCode, String, bool)> {
    let Some(state) = state else {
        return Err((
            ReasonCode::PROTOCOL_ERROR,
            "AUTH although CONNECT had no Authentication Method [MQTT-4.12.0-7]".into(),
            false,
        ));
    };
    if auth.properties.authentication_method.as_ref() != Some(&state.method) {
        return Err((
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "AUTH with an Authentication Method other than CONNECT's [MQTT-4.12.1-1]".into(),
            true,
        ));
    }
    let refuse = |e: mqtt_scram::Error| {
        let (code, why) = scram_refusal(&e, false);
        (code, why, true)
    };
    let data = auth
        .properties
        .authentication_data
        .as_deref()
        .unwrap_or_default();
    let reply = |reason_code, data: Vec<u8>| {
        let mut a = Auth {
            reason_code,
            ..Auth::default()
        };
        a.properties.authentication_method = Some(state.method.clone());
        a.properties.authentication_data = Some(Bytes::from(data));
        a
    };
    match auth.reason_code {
        ReasonCode::REAUTHENTICATE => {
            if state.pending.is_some() {
                return Err((
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH 0x19 while a re-authentication is under way".into(),
                    true,
                ));
            }
            let Some(credentials) = shared.scram(state.listener) else {
                return Err((
                    ReasonCode::NOT_AUTHORIZED,
                    "the listener no longer offers SCRAM-SHA-256".into(),
                    true,
                ));
            };
            let first = ClientFirst::parse(data).map_err(refuse)?;
            if *first.username != *state.user {
                return Err((
                    ReasonCode::NOT_AUTHORIZED,
                    "re-authentication as another user".into(),
                    true,
                ));
            }
            let (keys, _) = credentials.keys(&first.username);
            let nonce = server_nonce().map_err(|(code, why)| (code, why, false))?;
            let (exchange, server_first) = ServerExchange::start(first, &keys, &nonce);
            state.pending = Some((exchange, Instant::now()));
            Ok(reply(ReasonCode::CONTINUE_AUTHENTICATION, server_first))
        }
        ReasonCode::CONTINUE_AUTHENTICATION => {
            let Some((exchange, started)) = state.pending.take() else {
                return Err((
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH 0x18 without a re-authentication under way".into(),
                    true,
                ));
            };
            if started.elapsed() > shared.live.connect_timeout() {
                return Err((
                    ReasonCode::NOT_AUTHORIZED,
                    "the re-authentication's answer came after the connect timeout (limits.connect_timeout)".into(),
                    true,
                ));
            }
            let server_final = exchange.finish(data).map_err(refuse)?;
            Ok(reply(ReasonCode::SUCCESS, server_final))
        }
        other => Err((
            ReasonCode::PROTOCOL_ERROR,
            format!("AUTH {other} from a client (it may send 0x18 and 0x19 only)"),
            false,
        )),
    }
}
