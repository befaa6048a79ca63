//! Fuzzes the server end of a session with the packet sequences a client can send.
//!
//! The first byte sets up the connection: the version of the CONNECT the session
//! accepts (3.1, 3.1.1 or 5.0), Clean Start, and (5.0) whether the client announces a
//! small Receive Maximum and Topic Alias Maximum. The rest is a list of operations, one
//! byte each plus operands, interleaved as a broker would drive the session:
//!
//! - feed the next `n` bytes of the stream to the server's decoder, and hand every
//!   packet decoded to `handle_packet` (a decode or protocol error ends the connection);
//! - `deliver` a message (topic, QoS, expiry, User Properties from the operands);
//! - let virtual time pass and call `handle_timeout`;
//! - drain `poll_transmit`, answering `Subscribe` / `Unsubscribe` events with success
//!   codes, as the broker does;
//! - lose the connection, reconnect with the same CONNECT, shrink, or export and
//!   restore the session.
//!
//! Checks: no panic; every packet `poll_transmit` returns encodes in the connection's
//! version, within the client's Maximum Packet Size; restored state equals the state
//! exported.
#![no_main]

use std::{num::NonZeroU16, sync::Arc};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{ByteStr, Connect, Decoder, ProtocolVersion, QoS, ReasonCode};
use mqtt_session::{Duration, Event, Instant, Limits, Message, ServerSession};

const TOPICS: [&str; 4] = ["a", "a/b", "sensors/1/temp", "$SYS/x"];

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Harness {
    server: ServerSession,
    connect: Connect,
    decoder: Decoder,
    buf: BytesMut,
    now: Instant,
    connected: bool,
    limits: Arc<Limits>,
}

impl Harness {
    fn accept(&mut self) {
        self.server.accept(self.now, &self.connect, Default::default());
        self.decoder = Decoder::with_version(self.connect.version);
        self.decoder.set_max_packet_size(self.limits.max_packet_size);
        self.buf.clear();
        self.connected = true;
    }

    fn lose(&mut self) {
        self.server.connection_lost(self.now);
        self.connected = false;
    }

    fn feed(&mut self, bytes: &[u8]) {
        if !self.connected {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(packet)) => {
                    if self.server.handle_packet(self.now, packet).is_err() {
                        self.drain();
                        self.lose();
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    self.lose();
                    return;
                }
            }
        }
    }

    /// Every output, as a broker drains them; packets must encode.
    fn drain(&mut self) {
        let version = self.server.version();
        while let Some(packet) = self.server.poll_transmit(self.now) {
            let mut wire = BytesMut::new();
            let written = packet
                .encode(version, &mut wire)
                .unwrap_or_else(|e| panic!("{packet:?} does not encode in {version}: {e}"));
            assert_eq!(written, packet.encoded_len(version));
            if version.is_v5() {
                let max = self
                    .connect
                    .properties
                    .maximum_packet_size
                    .map_or(u32::MAX, |m| m.get());
                assert!(written as u64 <= u64::from(max), "{packet:?} over {max} bytes");
            }
        }
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Subscribe(s) => {
                    let codes = s
                        .subscriptions
                        .iter()
                        .map(|sub| ReasonCode(sub.options.qos as u8))
                        .collect();
                    self.server.suback(&s, codes);
                }
                Event::Unsubscribe(u) => {
                    let codes = if version.is_v5() {
                        vec![ReasonCode::SUCCESS; u.filters.len()]
                    } else {
                        Vec::new()
                    };
                    self.server.unsuback(&u, codes);
                }
                Event::Closed { .. } => self.connected = false,
                _ => {}
            }
        }
    }

    fn deliver(&mut self, input: &mut Input<'_>) {
        let (Some(a), Some(b)) = (input.byte(), input.byte()) else {
            return;
        };
        let topic = ByteStr::from_static(TOPICS[usize::from(a & 3)]);
        let qos = QoS::from_u8((a >> 2) % 3).unwrap_or(QoS::AtMostOnce);
        let payload = Bytes::copy_from_slice(input.bytes(usize::from(b & 0x3f)));
        let mut message = Message::new(topic, payload, qos);
        message.retain = a & 0x10 != 0;
        if a & 0x20 != 0 {
            message.properties.message_expiry_interval = Some(u32::from(b >> 6) + 1);
        }
        if a & 0x40 != 0 {
            message.properties.user_properties =
                std::iter::repeat_n((ByteStr::from_static("k"), ByteStr::new()), usize::from(b))
                    .collect();
        }
        let _ = self.server.deliver(self.now, message);
    }

    fn roundtrip_state(&mut self) {
        let exported = self.server.export(self.now);
        let restored = ServerSession::restore(Arc::clone(&self.limits), &exported, self.now)
            .expect("exported state restores");
        assert_eq!(restored.subscriptions(), self.server.subscriptions());
        assert_eq!(restored.export(self.now), exported);
        self.server = restored;
        self.connected = false;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(setup) = input.byte() else { return };
    let version = match setup & 3 {
        0 => ProtocolVersion::V3_1,
        1 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let mut connect = Connect::new(version, ByteStr::from_static("fuzz"));
    connect.clean_start = setup & 4 != 0;
    connect.keep_alive = u16::from(setup >> 6) * 10;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(600);
        if setup & 8 != 0 {
            connect.properties.receive_maximum = NonZeroU16::new(2);
            connect.properties.maximum_packet_size = std::num::NonZeroU32::new(256);
        }
        if setup & 16 != 0 {
            connect.properties.topic_alias_maximum = Some(2);
        }
    }
    let limits = Arc::new(Limits {
        receive_maximum: 4,
        topic_alias_maximum: 3,
        max_queued_messages: 16,
        max_queued_bytes: 64 * 1024,
        max_subscriptions: 8,
        max_packet_size: 64 * 1024,
        queue_qos0_offline: setup & 32 != 0,
        ..Limits::default()
    });
    let mut h = Harness {
        server: ServerSession::new(ByteStr::from_static("fuzz"), Arc::clone(&limits)),
        connect,
        decoder: Decoder::new(),
        buf: BytesMut::new(),
        now: Instant::ZERO,
        connected: false,
        limits,
    };
    h.accept();
    h.drain();
    while let Some(op) = input.byte() {
        match op % 8 {
            0 | 1 => {
                let n = usize::from(op >> 3) * 4 + 1;
                let bytes = input.bytes(n);
                h.feed(bytes);
            }
            2 => h.deliver(&mut input),
            3 => {
                h.now = h.now + Duration::from_millis(u64::from(op >> 3) * 1_000);
                h.server.handle_timeout(h.now);
            }
            4 => h.drain(),
            5 => {
                if h.connected {
                    h.lose();
                } else {
                    h.accept();
                }
            }
            6 => h.server.shrink_idle(),
            _ => h.roundtrip_state(),
        }
        h.drain();
    }
});
