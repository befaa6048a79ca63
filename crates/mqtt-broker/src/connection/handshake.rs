//! CONNECT: read it, refuse what does not decode or is not allowed, authenticate, and
//! attach the session (taking it over from an older connection).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::BytesMut;
use mqtt_codec::{
    ByteStr, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Packet, ProtocolVersion,
    ReasonCode,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout_at},
};
use tracing::{debug, info, warn};

use crate::{
    sessions::{Principal, SessionHandle},
    shared::Shared,
};

use super::*;

/// Counts a socket in `Stats::handshaking` from its accept until CONNECT is through
/// (the TLS and WebSocket handshakes included), however that ends.
pub(crate) struct Handshaking(Arc<Shared>);

impl Handshaking {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.stats.handshaking.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.stats.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads CONNECT (refusing what does not decode) and attaches the session; `None` if the
/// connection ends here. Also returns the bytes read behind CONNECT. `listener` is the
/// index of the listener it came in on (its authentication settings apply).
pub(crate) async fn open<S: Duplex>(
    shared: Arc<Shared>,
    mut stream: S,
    origin: Origin,
) -> Option<(Conn<S>, BytesMut)> {
    let peer = origin.peer;
    let mut decoder = Decoder::new();
    decoder.set_max_packet_size(shared.config.limits.max_packet_size);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let connect = match timeout_at(
        origin.deadline,
        read_packet(&mut stream, &mut rbuf, &mut decoder),
    )
    .await
    {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(_)) => {
            debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(e)) => {
            refuse_undecodable(&mut stream, &e, peer).await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    // 5.0 enhanced authentication: the AUTH exchange runs before anything else is
    // decided, within the same connect timeout.
    let mut enhanced = None;
    let method = connect.properties.authentication_method.as_deref();
    if connect.version.is_v5() && method == Some(mqtt_scram::METHOD) {
        let listener = origin.transport.listener;
        match enhanced::scram_connect(
            &shared,
            &mut stream,
            &mut rbuf,
            &mut decoder,
            &connect,
            listener,
            origin.deadline,
        )
        .await
        {
            Ok(accepted) => enhanced = Some(accepted),
            Err((code, why)) => {
                let user = connect.username.as_deref().unwrap_or_default();
                let wait = enhanced::failed(&shared, peer, &connect.client_id, user, code, &why);
                tokio::time::sleep(wait).await;
                send_connack(&mut stream, connect.version, code).await;
                return None;
            }
        }
    }
    let (handle, generation, version) =
        attach(&shared, &mut stream, *connect, &origin, enhanced).await?;
    let Origin {
        handshaking, slot, ..
    } = origin;
    drop(handshaking);
    let conn = Conn {
        shared,
        handle,
        generation,
        version,
        stream,
        decoder,
        slot,
    };
    // Packets the client sent right behind CONNECT may already be in `rbuf`.
    Some((conn, rbuf))
}

/// Reads until one packet is decoded; `None` at end of stream.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decoder.decode(rbuf)? {
            return Ok(Some(p));
        }
        rbuf.reserve(READ_CHUNK);
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// A first packet that does not decode: answer with CONNACK where the spec asks for one.
pub(crate) async fn refuse_undecodable<W: AsyncWrite + Unpin>(
    wr: &mut W,
    e: &DecodeError,
    peer: SocketAddr,
) {
    debug!(%peer, error = %e, "invalid CONNECT");
    // [MQTT-3.1.2-2] in 3.1.1: an unsupported level gets return code 1, in the form
    // the client's own version reads (the codec knows which).
    let mut out = BytesMut::new();
    if let Some(version) = e.connack_version() {
        let ack = Packet::from(ConnAck::new(false, e.reason_code()));
        if ack.encode(version, &mut out).is_err() {
            out.clear();
        }
    }
    say_last(wr, &out).await;
}

/// A refusing CONNACK, then the end of the connection.
pub(crate) async fn send_connack<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    code: ReasonCode,
) {
    let mut out = BytesMut::new();
    if Packet::from(ConnAck::new(false, code))
        .encode(version, &mut out)
        .is_err()
    {
        out.clear();
    }
    say_last(wr, &out).await;
}

/// Writes `out` and closes, within [`DRAIN`](close::DRAIN) in all: a client that
/// does not read (its socket full, or a WebSocket or TLS layer with bytes of its own
/// still owed) cannot hold the connection, and its place among those handshaking, for
/// ever.
async fn say_last<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) {
    let _ = tokio::time::timeout(close::DRAIN, async {
        if !out.is_empty() {
            let _ = wr.write_all(out).await;
        }
        let _ = wr.shutdown().await;
    })
    .await;
}

/// On a listener whose passwords are JWTs: `None` for a client with neither user name
/// nor password (`allow_anonymous` decides), else the verdict, the token's claim made
/// the user name if it verifies. A refusal's reason is logged here; the caller logs
/// the refusal and slows repeated ones down as for a wrong password.
fn token_verdict(
    jwt: &crate::auth::Jwt,
    connect: &mut Connect,
    peer: std::net::SocketAddr,
    grants: &mut Option<crate::auth::jwt::TokenGrants>,
    valid_until: &mut Option<u64>,
) -> Option<crate::auth::AuthResult> {
    let Some(token) = connect.password.take() else {
        // Neither: an anonymous client, for allow_anonymous to decide.
        connect.username.as_ref()?;
        info!(%peer, client = ?connect.client_id, user = ?connect.username.as_deref().unwrap_or_default(), "JWT refused: no password (a token is expected)");
        return Some(Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
    };
    match jwt.verify(&token) {
        Ok(identity) => match ByteStr::try_from(identity.username) {
            Ok(name) => {
                connect.username = Some(name);
                *grants = identity.grants;
                *valid_until = identity.valid_until;
                Some(Ok(()))
            }
            Err(_) => Some(Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)),
        },
        Err(e) => {
            info!(%peer, client = ?connect.client_id, user = ?connect.username.as_deref().unwrap_or_default(), reason = %e, "JWT refused");
            Some(Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD))
        }
    }
}

/// The session time at which a token valid until `until` (seconds since the Unix epoch)
/// runs out, `now` being the session's present.
fn token_deadline(now: mqtt_session::Instant, until: u64) -> mqtt_session::Instant {
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now + mqtt_session::Duration::from_secs(until.saturating_sub(unix_now))
}

/// Checks CONNECT, authenticates it by `listener`'s settings (by `deadline`), finds or
/// creates the session, takes it over, accepts the connection.
pub(crate) async fn attach<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wr: &mut W,
    mut connect: Connect,
    origin: &Origin,
    enhanced: Option<enhanced::Accepted>,
) -> Option<(Arc<SessionHandle>, u64, ProtocolVersion)> {
    let peer = origin.peer;
    let version = connect.version;
    let mut properties = ConnAckProperties::default();
    if connect.client_id.is_empty() {
        // [MQTT-3.1.3-8] (3.1.1): an empty id needs Clean Session; 3.1 needs an id.
        if version == ProtocolVersion::V3_1
            || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
            || !shared.config.auth.allow_zero_length_client_id
        {
            send_connack(wr, version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).await;
            return None;
        }
        connect.client_id = shared.assign_client_id();
        if version.is_v5() {
            // [MQTT-3.2.2-16]
            properties.assigned_client_identifier = Some(connect.client_id.clone());
        }
    }
    if origin.certificate_is_username {
        // As Mosquitto: the client certificate names the user, and what CONNECT says
        // instead is set aside. No certificate (an optional one), no user.
        connect.password = None;
        connect.username = origin
            .identity
            .as_ref()
            .and_then(|name| ByteStr::try_from(name.clone()).ok());
        if connect.username.is_none() {
            info!(%peer, "connection refused: no client certificate to name the user");
            send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
    }
    let (listener, deadline) = (origin.transport.listener, origin.deadline);
    if let Some(accepted) = &enhanced {
        if origin.certificate_is_username && connect.username.as_deref() != Some(&*accepted.user) {
            // The certificate names the user here: SCRAM may confirm it, not replace it.
            info!(%peer, client = ?connect.client_id, user = ?accepted.user, "connection refused: the SCRAM user is not the one the client certificate names (use_identity_as_username)");
            send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
        // SCRAM named and authenticated the user; a password in CONNECT is set aside.
        connect.username = ByteStr::try_from(&*accepted.user).ok();
        connect.password = None;
        properties.authentication_method = Some(accepted.method.clone());
        properties.authentication_data = Some(accepted.server_final.clone());
    }
    // JWT as the password: the token, verified inline (microseconds), names the user,
    // and decides instead of the authenticator. SCRAM, when it ran, decided already.
    let mut grants = None;
    // When the token runs out (Unix seconds): the connection is closed then.
    let mut token_valid_until = None;
    let token_verdict = match shared.jwt(listener) {
        Some(jwt) if enhanced.is_none() && !origin.certificate_is_username => {
            token_verdict(jwt, &mut connect, peer, &mut grants, &mut token_valid_until)
        }
        _ => None,
    };
    // The user name and client id as logged: client input, quoted and escaped.
    let user = connect.username.as_deref().unwrap_or_default();
    if connect.username.is_none() && !shared.allows_anonymous(listener) {
        info!(%peer, client = ?connect.client_id, "connection refused: no user name, and this listener does not allow anonymous clients (allow_anonymous = false)");
        send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
        return None;
    }
    let mut credentials = crate::auth::Credentials::new(
        &connect.client_id,
        connect.username.as_deref(),
        connect.password.as_deref(),
        peer,
    );
    credentials.listener = listener;
    credentials.transport = origin.transport;
    credentials.username_from_certificate = origin.certificate_is_username;
    let verdict = match token_verdict {
        Some(verdict) => verdict,
        // Authenticated by the AUTH exchange already.
        None if enhanced.is_some() => Ok(()),
        None => {
            let authenticating = shared.authenticator(listener).authenticate(&credentials);
            let Ok(verdict) = timeout_at(deadline, authenticating).await else {
                // Too many CONNECTs waiting for a password hash: this one's time is up.
                info!(%peer, client = ?connect.client_id, user = ?user, "connection refused: not authenticated within the connect timeout (limits.connect_timeout), the broker is busy");
                send_connack(wr, version, ReasonCode::SERVER_BUSY).await;
                return None;
            };
            verdict
        }
    };
    if let Err(code) = verdict {
        // Repeated failures from one address wait longer and longer for their answer.
        let wait = shared.auth_failures.failed(peer.ip(), Instant::now());
        info!(%peer, client = ?connect.client_id, user = ?user, reason = %code, delay_ms = wait.as_millis() as u64, "authentication failed: connection refused");
        tokio::time::sleep(wait).await;
        send_connack(wr, version, code).await;
        return None;
    }
    // Authorization follows who the client is, as authenticated.
    let principal = Principal::of(connect.username.as_deref(), listener, grants);
    if let Some(will) = &connect.will {
        // A will may not publish to `$SYS/` either (topics beginning with `$` are the
        // server's, section 4.7.2), nor anywhere the client may not publish: refused as
        // a PUBLISH there would be.
        let client = Principal::client(principal.as_deref(), &connect.client_id);
        if crate::sys::is_sys_topic(&will.topic)
            || !client.token_allows_publish(&will.topic)
            || !shared
                .authorizer(listener)
                .may_publish(&client, &will.topic)
        {
            info!(%peer, client = ?connect.client_id, user = ?user, topic = ?will.topic, "connection refused: the will's topic is not authorized");
            send_connack(wr, version, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
    }
    if version.is_v5() && connect.properties.authentication_method.is_some() && enhanced.is_none() {
        // [MQTT-4.12.0-1] (5.0): SCRAM-SHA-256 (above) is the one method supported.
        send_connack(wr, version, ReasonCode::BAD_AUTHENTICATION_METHOD).await;
        return None;
    }
    if version.is_v5()
        && !shared.config.retain.enabled
        && connect.will.as_ref().is_some_and(|w| w.retain)
    {
        // [MQTT-3.2.2-13] (5.0): a retained will needs retained messages.
        send_connack(wr, version, ReasonCode::RETAIN_NOT_SUPPORTED).await;
        return None;
    }
    let limits = &shared.live;
    if connect.client_id.len() > limits.max_client_id_len() {
        debug!(%peer, len = connect.client_id.len(), "client identifier too long (limits.max_client_id_len)");
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        send_connack(wr, version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).await;
        return None;
    }
    if shared.session_count() >= limits.max_sessions()
        && shared.existing_session(&connect.client_id).is_none()
    {
        warn!(%peer, client = %connect.client_id, "limits.max_sessions reached: connection refused");
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        send_connack(wr, version, ReasonCode::QUOTA_EXCEEDED).await;
        return None;
    }
    let connected = shared.stats.connected.fetch_add(1, Ordering::Relaxed) + 1;
    if connected > limits.max_connections() {
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        send_connack(wr, version, ReasonCode::SERVER_BUSY).await;
        return None;
    }
    shared
        .stats
        .max_connected
        .fetch_max(connected, Ordering::Relaxed);
    shared
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    if !shared.config.retain.enabled {
        properties.retain_available = Some(false);
    }

    // What outlives this packet gets its own memory: slices of the read buffer would keep
    // the whole buffer alive for as long as the session lives.
    crate::owned::own_connect(&mut connect);
    let_the_old_connection_finish(shared, &connect.client_id).await;
    let now = shared.now();
    // Shared-subscription messages the resumed session may no longer have.
    let mut orphans = Vec::new();
    let (handle, generation, stale_filters, old_version, resumed) = loop {
        let handle = shared.session(&connect.client_id);
        let mut cell = handle.lock();
        if cell.gone {
            // It expired and left the registry since the lookup: the next one makes a
            // new session.
            continue;
        }
        // [MQTT-3.1.4-3]: a second connection with the same id takes the session over.
        let taking_over = cell.session.is_connected();
        // A session without a connection has its timers in the timer service: this
        // connection stops them ([MQTT-3.1.2-8]: a delayed will with them).
        shared.timers.cancel_offline(&cell, handle.key);
        cell.generation += 1;
        // The old connection, if parked, is revived to say goodbye.
        #[cfg(unix)]
        let old = cell.take_parked();
        cell.restore_encoded(now);
        cell.session.connection_lost(now);
        // A session that is not resumed (Clean Start, or one that could not outlive its
        // connection: [MQTT-3.1.2-6], 5.0 section 3.1.2.11.2) starts empty: its old
        // filters leave the index.
        let resumed = cell.session.would_resume(now, &connect);
        let stale: Vec<_> = if !resumed {
            cell.session
                .subscriptions()
                .iter()
                .map(|r| r.filter.clone())
                .collect()
        } else {
            Vec::new()
        };
        let old_version = cell.session.version();
        if resumed && shared.filters_delivery {
            // What waits in a resumed session was routed for the connection that had it
            // then: this client may not read all of it (another user, or rules changed
            // since), so each message is checked again, as Mosquitto checks a durable
            // client's queue when it reconnects; before `accept`, which resends what
            // is in flight.
            let refused = cell.session.drop_messages_where(|m| {
                !shared.may_receive(&connect.client_id, principal.as_deref(), &m.topic)
            });
            if !refused.is_empty() {
                // Those from shared subscriptions go to other members of their groups.
                orphans = cell.take_shared_of(&refused);
                let dropped = refused.len() - orphans.len();
                shared
                    .stats
                    .publish_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                info!(client = %connect.client_id, %peer, user = ?connect.username, dropped, to_other_members = orphans.len(), "messages waiting in the resumed session not sent: this client may not read them");
            }
        }
        // Messages the connection taken over read but did not route yet were its
        // client's to publish: another client (user, listener or token) does not route
        // them with its own rights. Unacknowledged, they are sent again by their
        // publisher if it resumes the session. Those kept (the same client) are routed
        // by this connection, with no acknowledgement on it (`connection_lost`).
        if cell.principal != principal {
            let dropped = cell.session.forget_received();
            if dropped > 0 {
                close::forget_released_unrouted(&mut cell);
                debug!(client = %connect.client_id, %peer, dropped, "messages the previous connection read and did not route were dropped: another client resumed the session");
            }
        }
        cell.session.accept(now, &connect, properties);
        cell.session
            .set_credentials_expiry(token_valid_until.map(|until| token_deadline(now, until)));
        cell.principal.clone_from(&principal);
        // What a re-authentication on this connection must match (none: AUTH is a
        // protocol error).
        let state = enhanced.as_ref().map(|a| Box::new(a.state(listener, peer)));
        if state.is_some() || cell.extra.is_some() {
            cell.extra_mut().enhanced_auth = state;
            cell.shrink_extra();
        }
        shared.account(&mut cell);
        // A new session replaces the old one's record, or removes it if it ends with
        // its connection; a resumed one's is brought up to date.
        if !resumed {
            shared.forget_paged(&mut cell);
        }
        shared.record_session_and_messages(&handle, &mut cell, !resumed);
        if taking_over {
            debug!(client = %connect.client_id, %peer, "session taken over");
        }
        let generation = cell.generation;
        drop(cell);
        #[cfg(unix)]
        if let Some(old) = old {
            shared.revive(&handle, old);
        }
        break (handle, generation, stale, old_version, resumed);
    };
    if !stale_filters.is_empty() {
        shared.unsubscribe_all(&handle, stale_filters.iter(), old_version);
    }
    if !resumed {
        // The old session ended (5.0 section 4.8.2): the QoS 1 messages it had from
        // shared subscriptions and never acknowledged go to other members.
        shared.redistribute_shared(&handle);
    }
    shared.redistribute(&handle, orphans);
    handle.notify.notify_waiters();
    log_connect(shared, &connect, peer);
    Some((handle, generation, version))
}

/// The connection's log line, with what Mosquitto's shows: client identifier, address,
/// protocol, clean flag, keep-alive, user name (`info`, or `debug` with
/// `log.connections = false`).
fn log_connect(shared: &Shared, connect: &Connect, peer: SocketAddr) {
    macro_rules! line {
        ($level:ident) => {
            $level!(
                client = %connect.client_id,
                %peer,
                protocol = %connect.version,
                clean = connect.clean_start,
                keep_alive = connect.keep_alive,
                user = connect.username.as_deref().unwrap_or(""),
                "connected"
            )
        };
    }
    if shared.live.log_connections() {
        line!(info);
    } else {
        line!(debug);
    }
}

/// How long a new connection waits, at most, for the old connection of its Client
/// Identifier to act on what it has already received, and in what steps.
const OLD_CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_millis(50);
const OLD_CONNECTION_STEP: std::time::Duration = std::time::Duration::from_millis(1);

/// What the old connection of a Client Identifier already received takes effect before a
/// new connection takes the session: a client that sends DISCONNECT (perhaps with a
/// Session Expiry of 0, [MQTT-3.14.4-3]), closes and reconnects at once must find its
/// old connection gone, its will discarded and its session ended as it asked, not taken
/// over. The old connection's task reads those bytes as soon as it runs; this gives it
/// up to `OLD_CONNECTION_GRACE` to do so. A live old client (a real takeover) delays
/// the new one by that much.
async fn let_the_old_connection_finish(shared: &Shared, client_id: &str) {
    let Some(handle) = shared.existing_session(client_id) else {
        return;
    };
    let deadline = Instant::now() + OLD_CONNECTION_GRACE;
    while handle.lock().session.is_connected() && Instant::now() < deadline {
        tokio::time::sleep(OLD_CONNECTION_STEP).await;
    }
}
