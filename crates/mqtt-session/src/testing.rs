//! A two-ended harness: a [`ClientSession`] and a [`ServerSession`] joined by a link
//! that carries real encoded bytes through the codec, on virtual time.
//!
//! This is quinn-proto's `Pair` idea: no sockets, no sleeps, every step reproducible.
//! The link can be cut after any number of packets, to test what survives a lost
//! connection.

use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{ConnAckProperties, Decoder, Packet, ReasonCode};

use crate::{
    ClientOptions, ClientSession, Duration, Event, Instant, Limits, ProtocolError, ServerSession,
};

/// A client and a server session on one link.
#[derive(Debug)]
pub struct Pair {
    /// The client end.
    pub client: ClientSession,
    /// The server end.
    pub server: ServerSession,
    /// The current virtual time.
    pub now: Instant,
    /// Events the client reported, in order.
    pub client_events: Vec<Event>,
    /// Events the server reported, in order.
    pub server_events: Vec<Event>,
    /// Packets the client wrote onto the link, in order.
    pub client_sent: Vec<Packet>,
    /// Packets the server wrote onto the link, in order.
    pub server_sent: Vec<Packet>,
    /// A protocol error either end raised.
    pub error: Option<ProtocolError>,
    /// What the server announces in CONNACK beyond what the session fills in.
    pub connack_properties: ConnAckProperties,
    c2s: BytesMut,
    s2c: BytesMut,
    server_decoder: Decoder,
    client_decoder: Decoder,
    link_up: bool,
    server_attached: bool,
    closing: bool,
}

impl Pair {
    /// A pair with the client's `options` and the server's `limits`, not connected.
    pub fn new(options: ClientOptions, server_limits: Limits) -> Self {
        let version = options.version;
        let server = ServerSession::new(options.client_id.clone(), server_limits);
        Self {
            client: ClientSession::new(options),
            server,
            now: Instant::ZERO,
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_sent: Vec::new(),
            server_sent: Vec::new(),
            error: None,
            connack_properties: ConnAckProperties::default(),
            c2s: BytesMut::new(),
            s2c: BytesMut::new(),
            server_decoder: Decoder::new(),
            client_decoder: Decoder::with_version(version),
            link_up: false,
            server_attached: false,
            closing: false,
        }
    }

    /// Opens the link and lets the client connect; drives until quiet.
    pub fn connect(&mut self) {
        self.open();
        self.drive();
    }

    /// Opens the link and queues the client's CONNECT, without driving.
    pub fn open(&mut self) {
        self.link_up = true;
        self.server_attached = false;
        self.closing = false;
        self.c2s.clear();
        self.s2c.clear();
        self.server_decoder = Decoder::new();
        self.client_decoder = Decoder::with_version(self.client.options().version);
        self.client.connect(self.now);
    }

    /// Moves packets both ways until nothing moves.
    pub fn drive(&mut self) {
        self.drive_limited(usize::MAX);
    }

    /// Moves at most `budget` packets across the link (either way), then stops; returns
    /// how many moved. Packets written but not delivered stay on the link until the next
    /// drive, or are lost with [`Pair::cut`].
    pub fn drive_limited(&mut self, mut budget: usize) -> usize {
        let mut moved = 0;
        while self.link_up && budget > 0 {
            self.flush_transmits();
            let mut progress = false;
            if budget > 0 && self.deliver_to_server() {
                budget -= 1;
                moved += 1;
                progress = true;
            }
            self.flush_transmits();
            if budget > 0 && self.deliver_to_client() {
                budget -= 1;
                moved += 1;
                progress = true;
            }
            self.drain_events();
            if !progress {
                break;
            }
        }
        self.flush_transmits();
        self.drain_events();
        if self.closing && self.c2s.is_empty() && self.s2c.is_empty() {
            self.cut();
        }
        moved
    }

    /// Cuts the link: bytes in transit are lost, both ends learn the connection is gone.
    pub fn cut(&mut self) {
        self.link_up = false;
        self.server_attached = false;
        self.closing = false;
        self.c2s.clear();
        self.s2c.clear();
        self.client.connection_lost(self.now);
        self.server.connection_lost(self.now);
        self.drain_events();
    }

    /// Advances virtual time by `d`, fires both timers that are due, and drives.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.drive();
    }

    /// Advances time in steps of `step` until `total` has passed.
    pub fn advance_by_steps(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            let d = Duration::from_millis(
                step.as_millis()
                    .min(end.saturating_since(self.now).as_millis()),
            );
            self.advance(d);
        }
    }

    /// Takes the client's events so far.
    pub fn take_client_events(&mut self) -> Vec<Event> {
        core::mem::take(&mut self.client_events)
    }

    /// Takes the server's events so far.
    pub fn take_server_events(&mut self) -> Vec<Event> {
        core::mem::take(&mut self.server_events)
    }

    fn flush_transmits(&mut self) {
        if !self.link_up {
            return;
        }
        let (now, version) = (self.now, self.client.options().version);
        let client = core::iter::from_fn(|| self.client.poll_transmit(now));
        if !write_all(client, version, &mut self.c2s, &mut self.client_sent) {
            self.error = Some(encode_failure("client packet did not encode"));
        }
        let version = self.server.version();
        let server = core::iter::from_fn(|| self.server.poll_transmit(now));
        if !write_all(server, version, &mut self.s2c, &mut self.server_sent) {
            self.error = Some(encode_failure("server packet did not encode"));
        }
    }

    fn deliver_to_server(&mut self) -> bool {
        let packet = match self.server_decoder.decode(&mut self.c2s) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(e) => {
                self.error = Some(e.into());
                self.closing = true;
                return false;
            }
        };
        if !self.server_attached {
            if let Packet::Connect(connect) = &packet {
                self.server
                    .accept(self.now, connect, self.connack_properties.clone());
                self.server_attached = true;
            } else {
                self.closing = true;
            }
            return true;
        }
        if let Err(e) = self.server.handle_packet(self.now, packet) {
            self.error = Some(e);
            self.closing = true;
        }
        true
    }

    fn deliver_to_client(&mut self) -> bool {
        let packet = match self.client_decoder.decode(&mut self.s2c) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(e) => {
                self.error = Some(e.into());
                self.closing = true;
                return false;
            }
        };
        if let Err(e) = self.client.handle_packet(self.now, packet) {
            self.error = Some(e);
            self.closing = true;
        }
        true
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.client.poll_event() {
            if matches!(e, Event::Closed { .. } | Event::PeerDisconnected(_)) {
                self.closing = true;
            }
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            if matches!(e, Event::Closed { .. } | Event::PeerDisconnected(_)) {
                self.closing = true;
            }
            self.server_events.push(e);
        }
    }
}

/// Encodes `packets` onto a link direction and records them; false if one did not encode.
fn write_all(
    packets: impl Iterator<Item = Packet>,
    version: mqtt_codec::ProtocolVersion,
    wire: &mut BytesMut,
    sent: &mut Vec<Packet>,
) -> bool {
    let mut ok = true;
    for p in packets {
        ok &= p.encode(version, wire).is_ok();
        sent.push(p);
    }
    ok
}

fn encode_failure(what: &'static str) -> ProtocolError {
    ProtocolError {
        reason: ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
        rule: None,
        what,
    }
}
