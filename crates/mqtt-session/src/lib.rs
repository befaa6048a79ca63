//! MQTT QoS flows and session state as a sans-IO state machine.
//!
//! **Not built yet.** This crate is a placeholder so the workspace has its final shape;
//! the work is tracked in issue 4. It exports nothing.
#![cfg_attr(not(feature = "std"), no_std)]
