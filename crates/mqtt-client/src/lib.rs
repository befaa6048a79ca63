//! An async MQTT 3.1/3.1.1/5.0 client on tokio.
//!
//! **Not built yet.** This crate is a placeholder so the workspace has its final shape;
//! the work is tracked in issue 6. It exports nothing.
