//! The mqtt-broker server: listeners, routing, retained messages, wills, auth, persistence.
//!
//! **Not built yet.** This crate is a placeholder so the workspace has its final shape;
//! the work is tracked in issue 5. It exports nothing.
