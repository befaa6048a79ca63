//! mqtt-pub, mqtt-sub and friends: MQTT command-line tools.
//!
//! **Not built yet.** This crate is a placeholder so the workspace has its final shape;
//! the work is tracked in issue 6. It exports nothing.
