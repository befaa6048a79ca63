//! The dashboard page (`/`): live connections, message rates, queue depths, top topics
//! and clients, and the client list with a kick button, kept up to date by
//! server-sent events (`/dashboard/events`).

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::{Body, error, response};
use crate::shared::Shared;

/// `GET /`: the page.
pub(crate) fn page() -> Response<Body> {
    response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        "<!doctype html><title>mqtt-broker</title><p>mqtt-broker</p>",
    )
}

/// `GET /dashboard/events`: not yet.
pub(crate) fn events(_shared: &Arc<Shared>) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "no such page")
}
