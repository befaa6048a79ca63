//! The dashboard page (`/`): live connections, message rates, queue depths, top topics
//! and clients, and the client list with a kick button, kept up to date by
//! server-sent events (`/dashboard/events`, one JSON snapshot a second).
//!
//! The page is one file (`dashboard.html`, no script from elsewhere); its charts are
//! SVG drawn by its own script. The client list and the kick button use the admin API
//! with the token typed into the page. The events need that token too when one is
//! configured (`?token=`: an `EventSource` cannot send headers).
//!
//! Top topics are sampled only while a dashboard watches: the routing tasks then count
//! each message's topic into a small map (skipped when another task holds it), and
//! check a relaxed flag once per batch otherwise.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming, SizeHint},
    header,
};
use serde_json::json;

use super::{Body, admin::Query, error, response};
use crate::shared::Shared;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// Topics counted between two snapshots, at most (new ones beyond are not counted).
const MAX_TOPICS: usize = 10_000;

/// How many top topics and clients a snapshot lists.
const TOP: usize = 10;

/// Event streams open at once, at most: a quarter of the HTTP listener's connections
/// (`super::MAX_HTTP_CONNECTIONS`), so that dashboards never take the places of the
/// scraper and the admin API.
pub(crate) const MAX_WATCHING: usize = 16;

/// Topic sampling for the dashboards watching.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Dashboards connected to `/dashboard/events`.
    watching: AtomicUsize,
    /// Messages per topic since the last snapshot.
    topics: Mutex<HashMap<String, u64>>,
    /// The last snapshot and when it was taken: dashboards watching together share
    /// one a second (and one walk of the sessions).
    last: Mutex<Option<(tokio::time::Instant, Bytes)>>,
}

impl Watch {
    /// Whether any dashboard watches (read once per batch by the routing tasks).
    pub(crate) fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed) > 0
    }

    /// Counts a message on `topic`, unless another task is counting.
    pub(crate) fn sample(&self, topic: &str) {
        if let Ok(mut topics) = self.topics.try_lock() {
            if let Some(n) = topics.get_mut(topic) {
                *n += 1;
            } else if topics.len() < MAX_TOPICS {
                topics.insert(topic.to_owned(), 1);
            }
        }
    }

    /// The event for a tick at `now`: the last snapshot if it is recent, a new one
    /// otherwise.
    fn event(&self, shared: &Shared, now: tokio::time::Instant) -> Bytes {
        let mut last = match self.last.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if let Some((at, event)) = &*last {
            if now.saturating_duration_since(*at) < Duration::from_millis(900) {
                return event.clone();
            }
        }
        let event = Bytes::from(format!("data: {}\n\n", snapshot(shared)));
        *last = Some((now, event.clone()));
        event
    }

    /// The busiest topics since the last call, and starts counting again.
    fn take_top(&self) -> Vec<(String, u64)> {
        let taken = match self.topics.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let mut top: Vec<(String, u64)> = taken.into_iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP);
        top
    }
}

/// `GET /`: the page.
pub(crate) fn page() -> Response<Body> {
    response(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/events`: a snapshot every second, as server-sent events.
pub(crate) fn events(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    if let Some(token) = shared.config.http.admin_token.as_deref() {
        let query = Query::parse(req.uri().query().unwrap_or(""));
        let given = query.get("token").unwrap_or("");
        if !super::admin::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "the dashboard's events need the admin token (?token=)",
            );
        }
    }
    if shared.dashboard.watching.fetch_add(1, Ordering::Relaxed) >= MAX_WATCHING {
        shared.dashboard.watching.fetch_sub(1, Ordering::Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboards are watching: at most 16 at once",
        );
    }
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = Events {
        shared: Arc::clone(shared),
        interval,
    };
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The event stream's body: a snapshot at each tick, until shutdown or the client
/// leaves (then it is dropped, and no longer counted as watching).
#[derive(Debug)]
struct Events {
    shared: Arc<Shared>,
    interval: tokio::time::Interval,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.shared
            .dashboard
            .watching
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.shared.is_shutting_down() {
            return Poll::Ready(None);
        }
        match self.interval.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(now) => {
                let event = self.shared.dashboard.event(&self.shared, now);
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Upper bounds of the queue depth chart's bars, in messages.
const DEPTHS: [usize; 6] = [0, 10, 100, 1_000, 10_000, usize::MAX];

/// What the page shows, now: the broker's counters (rates are the page's differences),
/// sessions by queue depth, the sessions holding most, the busiest topics.
fn snapshot(shared: &Shared) -> serde_json::Value {
    let mut depths = [0u64; DEPTHS.len()];
    let mut top_clients: Vec<(usize, usize, String)> = Vec::new();
    for handle in shared.handles() {
        let (pending, bytes) = {
            let cell = handle.lock();
            (cell.session.pending_messages(), cell.session.queued_bytes())
        };
        if let Some(i) = DEPTHS.iter().position(|&b| pending <= b) {
            if let Some(d) = depths.get_mut(i) {
                *d += 1;
            }
        }
        if pending > 0 {
            top_clients.push((pending, bytes, handle.client_id.to_string()));
            if top_clients.len() > 4 * TOP {
                top_clients.sort_unstable_by(|a, b| b.cmp(a));
                top_clients.truncate(TOP);
            }
        }
    }
    top_clients.sort_unstable_by(|a, b| b.cmp(a));
    top_clients.truncate(TOP);
    let labels = ["0", "1-10", "11-100", "101-1k", "1k-10k", ">10k"];
    let depth: Vec<_> = labels
        .iter()
        .zip(depths)
        .map(|(l, n)| json!({ "le": l, "sessions": n }))
        .collect();
    let top_clients: Vec<_> = top_clients
        .into_iter()
        .map(|(pending, bytes, id)| json!({ "client_id": id, "pending": pending, "queued_bytes": bytes }))
        .collect();
    let top_topics: Vec<_> = shared
        .dashboard
        .take_top()
        .into_iter()
        .map(|(topic, n)| json!({ "topic": topic, "messages": n }))
        .collect();
    let mut stats = super::admin::stats(shared);
    if let Some(o) = stats.as_object_mut() {
        o.insert("depth".into(), depth.into());
        o.insert("top_clients".into(), top_clients.into());
        o.insert("top_topics".into(), top_topics.into());
        o.insert(
            "admin_api".into(),
            shared.config.http.admin_token.is_some().into(),
        );
    }
    stats
}
