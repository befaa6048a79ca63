//! The admin API under `/api/v1/`: JSON, behind the bearer token of
//! `http.admin_token` (refused without it). Described in `docs/admin-api.yaml`.
//!
//! - `GET /api/v1/stats`: the broker's counters;
//! - `GET /api/v1/clients?search=&connected=&offset=&limit=`: sessions, by client id;
//! - `GET /api/v1/clients/{id}`: one session and its subscriptions;
//! - `POST /api/v1/clients/{id}/kick`: disconnects the client (DISCONNECT 0x98
//!   Administrative action in 5.0), as the broker disconnects on a protocol error;
//! - `GET /api/v1/retained?filter=&offset=&limit=`: retained topics, paged;
//! - `DELETE /api/v1/retained?topic=`: deletes a retained message.
//!
//! Lists are walks of the registry or the retained store under their existing locks,
//! one session (or shard) at a time, and pages are bounded ([`MAX_PAGE`]).

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use mqtt_codec::{QoS, ReasonCode};
use mqtt_topics::TopicFilter;
use serde::Serialize;
use serde_json::json;

use super::{Body, error, json};
use crate::shared::Shared;

/// The most items one page may hold.
pub(crate) const MAX_PAGE: usize = 1000;
/// Items in a page when the request does not say.
const DEFAULT_PAGE: usize = 100;

/// Handles a request under `/api/`.
pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if let Err(refused) = authorize(shared, &req) {
        return refused;
    }
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let rest = path.strip_prefix("/api/v1").unwrap_or("");
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, "/stats") => json(StatusCode::OK, &stats(shared)),
        (&Method::GET, "/clients") => clients(shared, &query),
        (&Method::GET, "/retained") => retained(shared, &query),
        (&Method::DELETE, "/retained") => delete_retained(shared, &query),
        (_, p) if p.starts_with("/clients/") => {
            let rest = p.trim_start_matches("/clients/");
            match (&method, rest.strip_suffix("/kick")) {
                (&Method::POST, Some(id)) => kick(shared, &decode(id)),
                (&Method::GET, None) => client(shared, &decode(rest)),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (see docs/admin-api.yaml)",
        ),
    }
}

/// The bearer token: 403 when the admin API is off (no token configured), 401 when the
/// request does not carry it.
#[allow(clippy::result_large_err)]
fn authorize(shared: &Shared, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let Some(token) = shared.config.http.admin_token.as_deref() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the admin API is off: set http.admin_token",
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Ok(());
    }
    let mut refused = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <http.admin_token>)",
    );
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Err(refused)
}

/// Compares without returning early, so the time taken does not tell how much of a
/// guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A query string's parameters, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: &str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `offset` and `limit` (at most [`MAX_PAGE`]); `Err` says what is wrong.
    fn page(&self) -> Result<(usize, usize), String> {
        let number = |key: &str, default: usize| match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| format!("{key}: expected a number, got `{v}`")),
        };
        let offset = number("offset", 0)?;
        let limit = number("limit", DEFAULT_PAGE)?;
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit: 1 to {MAX_PAGE}"));
        }
        Ok((offset, limit))
    }
}

/// Percent-decoding (`+` stays `+`: it is a topic wildcard, not a space).
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/v1/stats`.
pub(crate) fn stats(shared: &Shared) -> serde_json::Value {
    let s = &shared.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let qos = |cs: &[std::sync::atomic::AtomicU64; 3]| {
        let by: serde_json::Map<String, serde_json::Value> = ["0", "1", "2"]
            .into_iter()
            .zip(cs)
            .map(|(q, c)| (q.to_owned(), load(c).into()))
            .collect();
        serde_json::Value::Object(by)
    };
    let connected = s.connected.load(Ordering::Relaxed);
    let sessions = shared.session_count();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.origin.elapsed().as_secs(),
        "connections": connected,
        "connections_max": s.max_connected.load(Ordering::Relaxed),
        "connections_accepted": load(&s.connections_total),
        "connections_refused": load(&s.connections_refused),
        "sessions": sessions,
        "sessions_offline": sessions.saturating_sub(connected),
        "subscriptions": shared.index.len(),
        "retained_messages": shared.retained_count(),
        "retained_bytes": shared.retained_bytes(),
        "queued_bytes": shared.queued_total.load(Ordering::Relaxed),
        "packets": { "received": load(&s.messages_received), "sent": load(&s.messages_sent) },
        "bytes": { "received": load(&s.bytes_received), "sent": load(&s.bytes_sent) },
        "publish": {
            "received": qos(&s.publish_received_qos),
            "sent": qos(&s.publish_sent_qos),
            "refused": load(&s.publish_refused),
        },
        "dropped": {
            "total": load(&s.publish_dropped),
            "queue_full": load(&s.dropped_queue_full),
            "memory_budget": load(&s.dropped_memory_budget),
            "offline": load(&s.dropped_offline),
        },
    })
}

/// One session in a list.
#[derive(Debug, Serialize)]
pub(crate) struct ClientSummary {
    pub(crate) client_id: String,
    pub(crate) connected: bool,
    pub(crate) protocol: &'static str,
    pub(crate) subscriptions: usize,
    /// Messages queued and in flight.
    pub(crate) pending_messages: usize,
    /// Bytes queued (not in flight).
    pub(crate) queued_bytes: usize,
}

fn protocol(v: mqtt_codec::ProtocolVersion) -> &'static str {
    match v {
        mqtt_codec::ProtocolVersion::V3_1 => "3.1",
        mqtt_codec::ProtocolVersion::V3_1_1 => "3.1.1",
        mqtt_codec::ProtocolVersion::V5 => "5.0",
    }
}

/// Sessions whose client id contains `search`, connected or not as `connected` says,
/// in client id order: the page from `offset`, and how many match in all.
pub(crate) fn list_clients(
    shared: &Shared,
    search: &str,
    connected: Option<bool>,
    offset: usize,
    limit: usize,
) -> (usize, Vec<ClientSummary>) {
    let mut handles: Vec<_> = shared
        .handles()
        .into_iter()
        .filter(|h| h.client_id.contains(search))
        .collect();
    handles.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    let mut total = 0;
    let mut page = Vec::new();
    for handle in handles {
        let cell = handle.lock();
        if cell.gone {
            continue;
        }
        let is_connected = cell.session.is_connected();
        if connected.is_some_and(|c| c != is_connected) {
            continue;
        }
        total += 1;
        if total > offset && page.len() < limit {
            page.push(ClientSummary {
                client_id: handle.client_id.to_string(),
                connected: is_connected,
                protocol: protocol(cell.session.version()),
                subscriptions: cell.session.subscription_count(),
                pending_messages: cell.session.pending_messages(),
                queued_bytes: cell.session.queued_bytes(),
            });
        }
    }
    (total, page)
}

/// `GET /api/v1/clients`.
fn clients(shared: &Shared, query: &Query) -> Response<Body> {
    let (offset, limit) = match query.page() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let connected = match query.get("connected") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("connected: expected true or false, got `{v}`"),
            );
        }
    };
    let search = query.get("search").unwrap_or("");
    let (total, page) = list_clients(shared, search, connected, offset, limit);
    json(
        StatusCode::OK,
        &json!({ "total": total, "offset": offset, "limit": limit, "clients": page }),
    )
}

/// `GET /api/v1/clients/{id}`.
fn client(shared: &Shared, id: &str) -> Response<Body> {
    let Some(handle) = shared.existing_session(id) else {
        return error(StatusCode::NOT_FOUND, "no session with this client id");
    };
    let cell = handle.lock();
    let now = shared.now();
    let s = &cell.session;
    let subscriptions: Vec<_> = s
        .subscriptions()
        .iter()
        .map(|r| {
            json!({
                "filter": r.filter.as_str(),
                "qos": r.options.qos as u8,
                "no_local": r.options.no_local,
                "retain_as_published": r.options.retain_as_published,
                "retain_handling": r.options.retain_handling as u8,
                "identifier": r.identifier.map(|i| i.get()),
            })
        })
        .collect();
    let body = json!({
        "client_id": handle.client_id.as_str(),
        "connected": s.is_connected(),
        "protocol": protocol(s.version()),
        "session_expiry_interval": s.session_expiry(),
        "expires_in_seconds": s.expires_at().map(|at| at.saturating_since(now).as_secs_ceil()),
        "queued_messages": s.queued_messages(),
        "queued_bytes": s.queued_bytes(),
        "pending_messages": s.pending_messages(),
        "inflight_window": s.inflight_window(),
        "subscriptions": subscriptions,
    });
    drop(cell);
    json(StatusCode::OK, &body)
}

/// `POST /api/v1/clients/{id}/kick`.
fn kick(shared: &Shared, id: &str) -> Response<Body> {
    if shared.kick(id) {
        tracing::info!(client = %id, "kicked through the admin API");
        json(StatusCode::OK, &json!({ "kicked": id }))
    } else {
        error(
            StatusCode::NOT_FOUND,
            "no connected client with this client id",
        )
    }
}

/// One retained message in a list.
#[derive(Debug, Serialize)]
pub(crate) struct RetainedSummary {
    pub(crate) topic: String,
    pub(crate) qos: u8,
    pub(crate) payload_bytes: usize,
}

/// Retained topics matching `filter`, the page from `offset`; and whether more follow.
pub(crate) fn list_retained(
    shared: &Shared,
    filter: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<RetainedSummary>, bool), String> {
    let parsed = TopicFilter::new(filter).map_err(|e| format!("filter: {e}"))?;
    let mut seen = 0;
    let mut page = Vec::new();
    for shard in shared.retained_shards(filter) {
        let Some(store) = shared.retained_shard_read(shard) else {
            continue;
        };
        for found in store.matching(parsed) {
            seen += 1;
            if seen <= offset {
                continue;
            }
            if page.len() == limit {
                return Ok((page, true));
            }
            let m = &found.value().message;
            page.push(RetainedSummary {
                topic: found.topic(),
                qos: m.qos as u8,
                payload_bytes: m.payload.len(),
            });
        }
    }
    Ok((page, false))
}

/// `GET /api/v1/retained`.
fn retained(shared: &Shared, query: &Query) -> Response<Body> {
    let (offset, limit) = match query.page() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let filter = query.get("filter").unwrap_or("#");
    match list_retained(shared, filter, offset, limit) {
        Ok((page, more)) => json(
            StatusCode::OK,
            &json!({ "filter": filter, "offset": offset, "limit": limit, "more": more, "retained": page }),
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// `DELETE /api/v1/retained?topic=`: as a retained PUBLISH with an empty payload would,
/// without routing anything.
fn delete_retained(shared: &Shared, query: &Query) -> Response<Body> {
    let Some(topic) = query.get("topic").filter(|t| !t.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "topic: missing");
    };
    if crate::sys::is_sys_topic(topic) {
        return error(StatusCode::BAD_REQUEST, "$SYS topics are the broker's own");
    }
    let Ok(name) = mqtt_codec::ByteStr::try_from(topic.to_owned()) else {
        return error(StatusCode::BAD_REQUEST, "topic: not a topic name");
    };
    if mqtt_topics::TopicName::new(&name).is_err() {
        return error(StatusCode::BAD_REQUEST, "topic: not a topic name");
    }
    if !shared.has_retained(&name) {
        return error(StatusCode::NOT_FOUND, "no retained message on this topic");
    }
    let empty = mqtt_session::Message::new(name, Bytes::new(), QoS::AtMostOnce);
    match shared.retain(&empty) {
        Ok(()) => {
            tracing::info!(%topic, "retained message deleted through the admin API");
            json(StatusCode::OK, &json!({ "deleted": topic }))
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the store failed: {e}"),
        ),
    }
}

impl Shared {
    /// Disconnects the client of `client_id` as the broker does on a protocol error:
    /// the session queues DISCONNECT 0x98 (Administrative action; 3.x clients are just
    /// closed) and its connection is woken to write it and close. False if no client
    /// of that id is connected.
    pub(crate) fn kick(&self, client_id: &str) -> bool {
        let Some(handle) = self.existing_session(client_id) else {
            return false;
        };
        let mut cell = handle.lock();
        if cell.gone || !cell.session.is_connected() {
            return false;
        }
        cell.session.disconnect_explained(
            ReasonCode::ADMINISTRATIVE_ACTION,
            "disconnected by an administrator",
        );
        self.wake_locked(&handle, cell);
        true
    }

    /// Whether a retained message is stored on `topic`.
    pub(crate) fn has_retained(&self, topic: &str) -> bool {
        let Ok(name) = mqtt_topics::TopicName::new(topic) else {
            return false;
        };
        self.retained_shard_read(crate::retained::retained_shard(topic))
            .is_some_and(|store| store.get(name).is_some())
    }
}
