//! Tests only: `mqtt-client` against `mqtt-broker` over loopback sockets (see `tests/`).
