//! Fuzzes a broker connection with the bytes a client can send.
//!
//! Each input is served by a fresh broker state over an in-memory stream, exactly as the
//! accept loop serves a TCP socket (`mqtt_broker::fuzzing::serve_bytes`): the first byte
//! says how the rest is cut into writes (whole, one byte at a time, or runs of 1 to `n`
//! bytes), the rest is the byte stream; then the client half-closes and reads until the
//! broker closes. The runtime's clock is paused, so timeouts (CONNECT, keep-alive,
//! write) pass at once when nothing else can run.
//!
//! Checks: no panic; the connection ends after its client's end of stream; a
//! well-behaved client then connects, subscribes and receives its own message from the
//! same broker state.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(mqtt_broker::fuzzing::serve_bytes(data));
});
