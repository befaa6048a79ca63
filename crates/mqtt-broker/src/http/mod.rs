//! The HTTP listener (`[http]`, off by default): `/metrics` for Prometheus
//! (`metrics`), the admin API under `/api/v1/` (`admin`, with a bearer token), and
//! the dashboard page (`/`, `dashboard`).
//!
//! HTTP/1.1 through hyper's server alone (decision 0018): one task per connection,
//! ended at shutdown. It runs beside the MQTT listeners and shares nothing with the
//! message path but the counters and the registry it reads.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod metrics;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinSet};
use tracing::{debug, warn};

use crate::shared::Shared;

/// HTTP connections open at once: past it a new one is closed as it is accepted. A
/// scraper, an operator's tools and a few dashboards need a handful; each dashboard
/// holds one open (its event stream).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a request's head may take to arrive, and how long a kept-alive connection
/// may wait for its next request, before the connection is closed.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a write of a response (or of the dashboard's event stream) may wait for the
/// client to make room, before the connection is closed.
const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// `[http]`: the HTTP listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where to listen, e.g. `"127.0.0.1:9090"`; none (the default) turns HTTP off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// The bearer token the admin API (`/api/v1/`) asks for; without one the admin API
    /// answers 403 to everything. `/metrics` and the dashboard page need none (the
    /// dashboard asks for the token to act).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

impl HttpConfig {
    /// Checks what types cannot.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err((
                "http.admin_token",
                "must be at least 16 characters (it guards kicking clients and deleting retained messages)",
            ));
        }
        Ok(())
    }
}

/// A response body: whole, or streamed (server-sent events).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Binds the HTTP listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP on `listener` until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let registry = Arc::new(metrics::registry(&shared));
    let mut connections = JoinSet::new();
    let shutdown = shared.shutting_down();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_HTTP_CONNECTIONS {
                        debug!(%peer, "HTTP: {MAX_HTTP_CONNECTIONS} connections open: closed");
                        continue;
                    }
                    let shared = Arc::clone(&shared);
                    let registry = Arc::clone(&registry);
                    let service = hyper::service::service_fn(move |req| {
                        let (shared, registry) = (Arc::clone(&shared), Arc::clone(&registry));
                        async move { Ok::<_, Infallible>(route(&shared, &registry, req, peer).await) }
                    });
                    connections.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(StallGuard::new(stream));
                        // Without a timer hyper enforces no header timeout at all.
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(io, service)
                            .await
                        {
                            debug!(%peer, error = %e, "HTTP connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    // Streams (server-sent events) would otherwise hold their connections open.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// An HTTP connection's socket whose writes wait at most [`WRITE_STALL`] for room: a
/// client that stops reading a response, or an event stream, ends its connection
/// instead of holding it, and its place among [`MAX_HTTP_CONNECTIONS`], for ever.
struct StallGuard {
    inner: tokio::net::TcpStream,
    /// Started when a write finds no room; cleared by any write that goes through.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(inner: tokio::net::TcpStream) -> Self {
        Self {
            inner,
            stalled: None,
        }
    }

    /// What a write's poll gave, with the stall bound applied.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::{future::Future, task::Poll};
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl tokio::io::AsyncRead for StallGuard {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallGuard {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Routes one request.
async fn route(
    shared: &Arc<Shared>,
    registry: &prometheus_client::registry::Registry,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    debug!(%peer, method = %req.method(), %path, "HTTP request");
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(registry),
        ),
        (_, p) if p.starts_with("/api/") => admin::handle(shared, req).await,
        (&Method::GET, "/" | "/dashboard" | "/dashboard/") => dashboard::page(),
        (&Method::GET, "/dashboard/events") => dashboard::events(shared, &req),
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    }
}

/// A whole response.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// An error, as JSON: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    match serde_json::to_vec(&serde_json::json!({ "error": message })) {
        Ok(body) => response(status, "application/json", body),
        Err(_) => response(status, "text/plain", message.to_owned()),
    }
}
