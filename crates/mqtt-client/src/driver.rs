//! The I/O driver: a spawned task that owns the socket and the [`ClientSession`],
//! and runs the sans-IO loop: after every input or command, drain `poll_transmit`
//! (encode into the write buffer), then `poll_event`, then re-arm the timer from
//! `poll_timeout`.
//!
//! It reads from the socket only while there is room for what it reads: incoming
//! PUBLISH packets beyond the event queue wait, undecoded by the session (so not yet
//! acknowledged), in a small bounded buffer; when that is full it stops reading.
//! Writing never waits for the application: acknowledgements, pings and the
//! application's messages keep going out.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::Arc,
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use mqtt_codec::{Auth, ByteStr, ConnAck, Decoder, Disconnect, Packet, PacketId, ReasonCode};
use mqtt_session::{ClientSession, Event as SessionEvent, MessageId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    sync::{mpsc, oneshot},
    time::{Instant as TokioInstant, sleep_until, timeout},
};

use crate::{
    auth::Authenticator,
    client::{Command, DisconnectReason, Event, Responder},
    error::{ClientError, ConnectError},
    options::{ConnectOptions, PacketDirection},
    transport::{self, BoxIo},
};

/// Events the driver holds beyond the channel to the application.
const EVENTS_OUT_CAP: usize = 16;
/// State events (connected, reconnecting, ...) may exceed that by this much; more are dropped.
const STATE_EVENTS_SLACK: usize = 16;
/// Stop taking requests when this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Unwritten acknowledgements past which the driver stops reading (see
/// `Conn::answers_unwritten`). A server that keeps to our Receive Maximum makes at most
/// a few bytes of them per message in flight: 1 MiB is far beyond.
const ANSWERS_UNWRITTEN_MAX: usize = 1024 * 1024;
/// Read in chunks of this size.
const READ_CHUNK: usize = 16 * 1024;
/// How long to spend flushing the last packets of a connection that is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type FirstResult = oneshot::Sender<Result<Box<ConnAck>, ConnectError>>;

/// A SUBSCRIBE or UNSUBSCRIBE waiting for its answer. The session sends it again on the
/// next connection if the one it went out on is lost first.
struct Request<T> {
    done: Responder<T>,
}

/// Why an accepted connection ended.
enum Ended {
    Requested,
    Lost(DisconnectReason),
}

/// What woke the driver.
enum Wake {
    Read(io::Result<usize>),
    Write(io::Result<Option<usize>>),
    Command(Option<Box<Command>>),
    /// A command from the control channel (disconnect, re-authenticate), or its end:
    /// every handle was dropped.
    Control(Option<Box<Command>>),
    Timer,
    /// The authenticator answered a challenge on its blocking thread.
    Challenged(Result<Result<Option<Bytes>, String>, tokio::task::JoinError>),
    ConnackTimeout,
    EventsClosed,
    Nothing,
}

/// One network connection's state.
struct Conn {
    reader: ReadHalf<BoxIo>,
    writer: WriteHalf<BoxIo>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes of acknowledgements (answers to what the server sent) put in `wbuf`, less
    /// the bytes written since: past [`ANSWERS_UNWRITTEN_MAX`] the server takes none of
    /// what it makes us answer, and reading waits.
    answers_unwritten: usize,
    need_flush: bool,
    decoder: Decoder,
    /// Decoded PUBLISH packets not yet given to the session (no room for their events).
    held: VecDeque<(Packet, usize)>,
    /// Bytes of `held` as they came on the wire (properties included: a server that
    /// packs them into small messages does not get past the bound), each entry's beside
    /// it.
    held_bytes: usize,
    connected: bool,
    refused: Option<Box<ConnAck>>,
    peer_disconnect: Option<Disconnect>,
    /// Set when the connection must end: flush, then return this.
    end: Option<Result<Ended, ConnectError>>,
    close_deadline: Option<TokioInstant>,
    /// The authenticator's answer to a server AUTH 0x18, computed on a blocking thread
    /// (key derivation may take a while).
    challenge: Option<tokio::task::JoinHandle<Result<Option<Bytes>, String>>>,
}

/// The answer of the challenge running, or never if none runs.
async fn challenged(
    challenge: &mut Option<tokio::task::JoinHandle<Result<Option<Bytes>, String>>>,
) -> Result<Result<Option<Bytes>, String>, tokio::task::JoinError> {
    match challenge {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

pub(crate) struct Driver {
    options: ConnectOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    session: ClientSession,
    origin: TokioInstant,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_open: bool,
    /// Disconnect and re-authenticate, taken even while requests wait (a full session
    /// queue stops the driver taking from `cmd_rx`); closed when every handle is gone.
    ctl_rx: mpsc::Receiver<Command>,
    ctl_open: bool,
    events_tx: mpsc::Sender<Event>,
    events_open: bool,
    events_out: VecDeque<Event>,
    publishes: HashMap<MessageId, Responder<ReasonCode>>,
    subscribes: HashMap<PacketId, Request<mqtt_codec::SubAck>>,
    unsubscribes: HashMap<PacketId, Request<mqtt_codec::UnsubAck>>,
    disconnect_waiters: Vec<oneshot::Sender<()>>,
    disconnect_requested: Option<Disconnect>,
    first: Option<FirstResult>,
    /// The caller of a re-authentication in progress.
    reauth: Option<Responder<()>>,
    rng: u64,
}

impl Driver {
    pub(crate) fn new(
        options: ConnectOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
        cmd_rx: mpsc::Receiver<Command>,
        ctl_rx: mpsc::Receiver<Command>,
        events_tx: mpsc::Sender<Event>,
        first: FirstResult,
    ) -> Self {
        let mut options = options;
        if let Some(a) = &options.authenticator {
            // Whatever `properties` said, the authenticator's method goes in CONNECT.
            options.session.properties.authentication_method =
                ByteStr::try_from(a.method.as_str()).ok();
        }
        let session = ClientSession::new(options.session.clone());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Self {
            options,
            tls,
            session,
            origin: TokioInstant::now(),
            cmd_rx,
            cmd_open: true,
            ctl_rx,
            ctl_open: true,
            events_tx,
            events_open: true,
            events_out: VecDeque::new(),
            publishes: HashMap::new(),
            subscribes: HashMap::new(),
            unsubscribes: HashMap::new(),
            disconnect_waiters: Vec::new(),
            disconnect_requested: None,
            first: Some(first),
            reauth: None,
            rng: seed | 1,
        }
    }

    fn now(&self) -> mqtt_session::Instant {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        mqtt_session::Instant::from_millis(ms)
    }

    fn to_tokio(&self, t: mqtt_session::Instant) -> TokioInstant {
        self.origin + Duration::from_millis(t.as_millis())
    }

    /// Nobody can use the driver any more.
    fn abandoned(&self) -> bool {
        !self.cmd_open && (!self.events_open || self.events_tx.is_closed())
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let result = match timeout(
                self.options.connect_timeout,
                transport::open(&self.options, self.tls.as_ref()),
            )
            .await
            {
                Ok(Ok(io)) => self.serve(io).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectError::Timeout(self.options.connect_timeout)),
            };
            let now = self.now();
            self.session.connection_lost(now);
            if let Some(done) = self.reauth.take() {
                let why = match &result {
                    Ok(Ended::Lost(reason)) => format!("the connection ended: {reason}"),
                    _ => "the connection ended".to_owned(),
                };
                let _ = done.send(Err(ClientError::Auth(why)));
            }
            self.drain_session_events_offline();
            if let Some(first) = self.first.take() {
                let err = match result {
                    Err(e) => e,
                    Ok(_) => ConnectError::Closed("the connection ended at once".into()),
                };
                let _ = first.send(Err(err));
                break;
            }
            match result {
                Ok(Ended::Requested) => {
                    self.push_state(Event::Disconnected {
                        reason: DisconnectReason::Requested,
                    });
                    break;
                }
                Ok(Ended::Lost(reason)) => {
                    tracing::debug!(%reason, "connection lost");
                    self.push_state(Event::Disconnected { reason });
                    attempt = 0;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reconnection failed");
                    self.push_state(Event::ConnectFailed {
                        error: e.to_string(),
                    });
                }
            }
            let r = &self.options.reconnect;
            if !r.enabled || self.abandoned() || self.disconnect_requested.is_some() {
                break;
            }
            attempt += 1;
            if r.max_attempts.is_some_and(|max| attempt > max) {
                break;
            }
            let delay = self.backoff(attempt);
            self.push_state(Event::Reconnecting { attempt, delay });
            if !self.wait(delay).await {
                break;
            }
        }
        self.shutdown().await;
    }

    /// Exponential backoff with jitter: uniform in [d/2, d], d = initial * 2^(attempt-1), capped.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let r = &self.options.reconnect;
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        let d = r.initial_delay.saturating_mul(factor).min(r.max_delay);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        let span = u64::try_from(d.saturating_sub(half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng % span.saturating_add(1))
    }

    /// Waits `delay` before reconnecting, still taking requests (queued in the session)
    /// and handing events to the application. False if the driver should stop.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = TokioInstant::now() + delay;
        loop {
            if self.abandoned() || self.disconnect_requested.is_some() {
                return false;
            }
            // With every handle gone, what is still queued is taken whatever the room.
            let accept = self.cmd_open
                && (self.session.pending_messages() < self.options.max_pending || !self.ctl_open);
            let wake = tokio::select! {
                () = sleep_until(deadline) => return true,
                permit = self.events_tx.reserve(), if !self.events_out.is_empty() => {
                    forward_event(permit, &mut self.events_out, &mut self.events_open);
                    Wake::Nothing
                }
                cmd = self.ctl_rx.recv(), if self.ctl_open => Wake::Control(cmd.map(Box::new)),
                cmd = self.cmd_rx.recv(), if accept => Wake::Command(cmd.map(Box::new)),
                () = self.events_tx.closed(), if self.events_open && !self.cmd_open => {
                    Wake::EventsClosed
                }
            };
            match wake {
                Wake::Command(Some(cmd)) => self.handle_command(*cmd),
                Wake::Control(Some(cmd)) => {
                    self.take_queued_commands();
                    self.handle_command(*cmd);
                }
                Wake::Command(None) => self.cmd_open = false,
                Wake::Control(None) => self.ctl_open = false,
                Wake::EventsClosed => self.events_open = false,
                _ => {}
            }
            // Offline: nothing to transmit, but events (drops) may have come.
            self.drain_session_events_offline();
        }
    }

    /// Takes the requests already queued, room or not, so that a disconnect or a
    /// re-authentication from the control channel comes after what was asked before
    /// it, as one queue would have it. Bounded by the request queue's capacity.
    fn take_queued_commands(&mut self) {
        while self.cmd_open {
            match self.cmd_rx.try_recv() {
                Ok(cmd) => self.handle_command(cmd),
                Err(_) => break,
            }
        }
    }

    fn push_state(&mut self, ev: Event) {
        if !self.events_open {
            return;
        }
        if self.events_out.len() < EVENTS_OUT_CAP + STATE_EVENTS_SLACK {
            self.events_out.push_back(ev);
        } else {
            tracing::warn!(
                ?ev,
                "the application is not reading events: state event dropped"
            );
        }
    }

    fn held_full(&self, c: &Conn) -> bool {
        c.held.len() >= self.options.max_held_messages
            || c.held_bytes >= self.options.max_held_bytes
    }

    fn room_for_messages(&self) -> bool {
        !self.events_open || self.events_out.len() < EVENTS_OUT_CAP
    }

    async fn serve(&mut self, io: BoxIo) -> Result<Ended, ConnectError> {
        let (reader, writer) = tokio::io::split(io);
        let mut decoder = Decoder::with_version(self.options.session.version);
        decoder.set_max_packet_size(self.options.session.limits.max_packet_size);
        let mut c = Conn {
            reader,
            writer,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            answers_unwritten: 0,
            need_flush: false,
            decoder,
            held: VecDeque::new(),
            held_bytes: 0,
            connected: false,
            refused: None,
            peer_disconnect: None,
            end: None,
            close_deadline: None,
            challenge: None,
        };
        let connack_deadline = TokioInstant::now() + self.options.connect_timeout;
        if self.options.authenticator.is_some() {
            let data = self
                .with_authenticator(|a| a.start())
                .map_err(ConnectError::Auth)?;
            self.session.set_authentication_data(data);
        }
        self.session.connect(self.now());
        loop {
            let now = self.now();
            if c.end.is_none() {
                self.process_input(&mut c, now);
            }
            self.flush_session(&mut c, now);
            if c.end.is_none() && self.abandoned() && c.connected {
                self.disconnect_requested = Some(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
            }
            if c.end.is_none() {
                if let Some(packet) = self.disconnect_requested.clone() {
                    if c.connected {
                        self.session.disconnect(packet);
                        self.flush_session(&mut c, now);
                    }
                    c.end = Some(Ok(Ended::Requested));
                }
            }
            if c.end.is_some() {
                let deadline = *c
                    .close_deadline
                    .get_or_insert_with(|| TokioInstant::now() + CLOSE_GRACE);
                if (c.wbuf.is_empty() && !c.need_flush) || TokioInstant::now() >= deadline {
                    let _ = timeout(Duration::from_millis(200), c.writer.shutdown()).await;
                    return c.end.take().unwrap_or(Ok(Ended::Requested));
                }
            }
            if c.rbuf.capacity() - c.rbuf.len() < READ_CHUNK / 4 {
                c.rbuf.reserve(READ_CHUNK);
            }
            // Nor while the server takes none of the answers its packets call for
            // (PUBCOMP, PUBACK): they would go into a buffer that only grows, and with
            // reading held the ping timeout ends the dead connection. Only answers
            // count: what the application sends is bounded by the request queue, and a
            // server streaming to us while our own writes wait must still be read (it
            // reads only once its writes are done).
            let can_read = c.end.is_none()
                && !self.held_full(&c)
                && c.answers_unwritten < ANSWERS_UNWRITTEN_MAX;
            let accept = c.end.is_none()
                && c.connected
                && self.cmd_open
                && (self.session.pending_messages() < self.options.max_pending || !self.ctl_open)
                && c.wbuf.len() < WRITE_HIGH_WATER;
            let control = c.end.is_none() && self.ctl_open;
            let has_write = !c.wbuf.is_empty() || c.need_flush;
            let timer = self.session.poll_timeout().map(|t| self.to_tokio(t));
            let close_deadline = c.close_deadline.unwrap_or(connack_deadline);
            let connecting = !c.connected && c.end.is_none();
            let ending = c.end.is_some();
            let timer_on = timer.is_some() && c.end.is_none();
            let challenging = c.challenge.is_some() && c.end.is_none();
            let Conn {
                reader,
                writer,
                rbuf,
                wbuf,
                challenge,
                ..
            } = &mut c;
            let wake = tokio::select! {
                r = reader.read_buf(rbuf), if can_read => Wake::Read(r),
                w = write_some(writer, wbuf), if has_write => Wake::Write(w),
                permit = self.events_tx.reserve(), if !self.events_out.is_empty() => {
                    forward_event(permit, &mut self.events_out, &mut self.events_open);
                    Wake::Nothing
                }
                cmd = self.ctl_rx.recv(), if control => Wake::Control(cmd.map(Box::new)),
                cmd = self.cmd_rx.recv(), if accept => Wake::Command(cmd.map(Box::new)),
                () = sleep_until(timer.unwrap_or(connack_deadline)), if timer_on => Wake::Timer,
                r = challenged(challenge), if challenging => Wake::Challenged(r),
                () = sleep_until(connack_deadline), if connecting => Wake::ConnackTimeout,
                () = sleep_until(close_deadline), if ending => Wake::Nothing,
                () = self.events_tx.closed(), if self.events_open && !self.cmd_open => {
                    Wake::EventsClosed
                }
            };
            match wake {
                Wake::Read(Ok(0)) => {
                    return self.lost(
                        &c,
                        DisconnectReason::Io("the server closed the connection".into()),
                    );
                }
                Wake::Read(Ok(_)) | Wake::Nothing => {}
                Wake::Read(Err(e)) | Wake::Write(Err(e)) => {
                    return self.lost(&c, DisconnectReason::Io(e.to_string()));
                }
                Wake::Write(Ok(Some(0))) => {
                    return self.lost(
                        &c,
                        DisconnectReason::Io("the connection accepts no more data".into()),
                    );
                }
                Wake::Write(Ok(Some(n))) => {
                    c.wbuf.advance(n);
                    c.answers_unwritten = c.answers_unwritten.saturating_sub(n);
                    c.need_flush = true;
                }
                Wake::Write(Ok(None)) => c.need_flush = false,
                Wake::Command(Some(cmd)) => self.handle_command(*cmd),
                Wake::Control(Some(cmd)) => {
                    self.take_queued_commands();
                    self.handle_command(*cmd);
                }
                Wake::Command(None) => self.cmd_open = false,
                Wake::Control(None) => self.ctl_open = false,
                Wake::Timer => self.session.handle_timeout(self.now()),
                Wake::Challenged(answer) => {
                    c.challenge = None;
                    let answer = answer
                        .map_err(|_| "the authenticator panicked".to_owned())
                        .and_then(|a| a)
                        .and_then(|next| {
                            self.session
                                .auth(ReasonCode::CONTINUE_AUTHENTICATION, next)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(why) = answer {
                        self.auth_failed(&mut c, why);
                    }
                    let now = self.now();
                    self.flush_session(&mut c, now);
                }
                Wake::ConnackTimeout => {
                    return Err(ConnectError::Timeout(self.options.connect_timeout));
                }
                Wake::EventsClosed => self.events_open = false,
            }
        }
    }

    /// The result for a connection that broke.
    fn lost(&self, c: &Conn, reason: DisconnectReason) -> Result<Ended, ConnectError> {
        if let Some(end) = &c.end {
            // Already ending for a better reason (server DISCONNECT, refusal).
            return match end {
                Ok(Ended::Requested) => Ok(Ended::Requested),
                Ok(Ended::Lost(r)) => Ok(Ended::Lost(r.clone())),
                Err(e) => Err(clone_connect_error(e)),
            };
        }
        if c.connected {
            Ok(Ended::Lost(reason))
        } else if let Some(ack) = &c.refused {
            Err(refused(ack))
        } else {
            Err(ConnectError::Closed(reason.to_string()))
        }
    }

    /// Decodes what was read and hands it to the session, as far as there is room.
    fn process_input(&mut self, c: &mut Conn, now: mqtt_session::Instant) {
        loop {
            while self.room_for_messages() {
                let Some((p, size)) = c.held.pop_front() else {
                    break;
                };
                c.held_bytes -= size;
                self.handle_packet(c, now, p);
                if c.end.is_some() {
                    return;
                }
            }
            if self.held_full(c) {
                return;
            }
            let unread = c.rbuf.len();
            let decoded = c.decoder.decode(&mut c.rbuf);
            let size = unread - c.rbuf.len();
            if let (Ok(Some(p)), Some(observer)) = (&decoded, &self.options.packet_observer) {
                (observer.0)(PacketDirection::Received, p);
            }
            match decoded {
                Ok(Some(p @ Packet::Publish(_)))
                    if !self.room_for_messages() || !c.held.is_empty() =>
                {
                    c.held_bytes += size;
                    c.held.push_back((p, size));
                }
                Ok(Some(p)) => {
                    self.handle_packet(c, now, p);
                    if c.end.is_some() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable packet from the server");
                    if self.options.session.version.is_v5() && c.connected {
                        let d = Packet::from(Disconnect::new(e.reason_code()));
                        let _ = d.encode(self.options.session.version, &mut c.wbuf);
                    }
                    let reason = DisconnectReason::Protocol(e.to_string());
                    c.end = Some(if c.connected {
                        Ok(Ended::Lost(reason))
                    } else {
                        Err(ConnectError::Closed(reason.to_string()))
                    });
                    return;
                }
            }
        }
    }

    fn handle_packet(&mut self, c: &mut Conn, now: mqtt_session::Instant, packet: Packet) {
        if let Err(e) = self.session.handle_packet(now, packet) {
            tracing::warn!(error = %e, "protocol error by the server");
            let reason = DisconnectReason::Protocol(e.to_string());
            c.end = Some(if c.connected {
                Ok(Ended::Lost(reason))
            } else {
                Err(ConnectError::Closed(reason.to_string()))
            });
        }
        self.flush_session(c, now);
    }

    /// Drains the session: packets into the write buffer, events to their owners.
    fn flush_session(&mut self, c: &mut Conn, now: mqtt_session::Instant) {
        let version = self.options.session.version;
        // Events may queue packets (AUTH answers), so go round until both are drained.
        loop {
            let mut busy = false;
            while let Some(packet) = self.session.poll_transmit(now) {
                busy = true;
                let before = c.wbuf.len();
                let encoded = packet.encode(version, &mut c.wbuf);
                if matches!(
                    packet,
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)
                ) {
                    c.answers_unwritten += c.wbuf.len() - before;
                }
                if let Err(e) = encoded {
                    tracing::error!(error = %e, packet = ?packet.packet_type(), "cannot encode a packet; not sent");
                } else if let Some(observer) = &self.options.packet_observer {
                    (observer.0)(PacketDirection::Sent, &packet);
                }
            }
            while let Some(ev) = self.session.poll_event() {
                busy = true;
                self.on_session_event(Some(c), ev);
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs a step of the application's authenticator.
    fn with_authenticator<T>(
        &self,
        step: impl FnOnce(&mut dyn Authenticator) -> Result<T, String>,
    ) -> Result<T, String> {
        let Some(a) = &self.options.authenticator else {
            return Err(
                "the server asked for enhanced authentication, but no authenticator is set".into(),
            );
        };
        let mut guard = a
            .inner
            .lock()
            .map_err(|_| "the authenticator panicked in an earlier step".to_owned())?;
        step(&mut *guard)
    }

    /// Authentication failed on a connection: before CONNACK the attempt fails; after
    /// it (re-authentication), DISCONNECT 0x87 and the connection closes
    /// ([MQTT-4.12.1-2]).
    fn auth_failed(&mut self, c: &mut Conn, why: String) {
        tracing::warn!(%why, "enhanced authentication failed");
        if let Some(done) = self.reauth.take() {
            let _ = done.send(Err(ClientError::Auth(why.clone())));
        }
        if c.end.is_some() {
            return;
        }
        if c.connected {
            self.session
                .disconnect(Disconnect::new(ReasonCode::NOT_AUTHORIZED));
            c.end = Some(Ok(Ended::Lost(DisconnectReason::Protocol(format!(
                "re-authentication failed: {why}"
            )))));
        } else {
            c.end = Some(Err(ConnectError::Auth(why)));
        }
    }

    /// A server AUTH: answer a challenge (0x18), or finish a re-authentication (0x00).
    fn on_auth(&mut self, c: &mut Conn, auth: Auth) {
        let data = auth.properties.authentication_data.as_deref();
        if c.challenge.is_some() {
            // The server went on before hearing our answer.
            if let Some(running) = c.challenge.take() {
                running.abort();
            }
            self.auth_failed(
                c,
                "the server sent AUTH before our answer to its challenge".into(),
            );
            return;
        }
        if auth.reason_code == ReasonCode::CONTINUE_AUTHENTICATION {
            // [MQTT-4.12.0-3]: the answer is AUTH 0x18 with the next data, worked out on
            // a blocking thread (a key derivation may take a while; see `Wake::Challenged`).
            let Some(inner) = self
                .options
                .authenticator
                .as_ref()
                .map(|a| Arc::clone(&a.inner))
            else {
                self.auth_failed(
                    c,
                    "the server asked for enhanced authentication, but no authenticator is set"
                        .into(),
                );
                return;
            };
            let data = auth.properties.authentication_data.clone();
            c.challenge = Some(tokio::task::spawn_blocking(move || {
                let mut guard = inner
                    .lock()
                    .map_err(|_| "the authenticator panicked in an earlier step".to_owned())?;
                guard.challenge(data.as_deref())
            }));
        } else if self.reauth.is_some() {
            match self.with_authenticator(|a| a.success(data)) {
                Ok(()) => {
                    if let Some(done) = self.reauth.take() {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(why) => self.auth_failed(c, why),
            }
        } else {
            tracing::warn!(reason = %auth.reason_code, "AUTH from the server outside an exchange; ignored");
        }
    }

    fn drain_session_events_offline(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            self.on_session_event(None, ev);
        }
    }

    fn on_session_event(&mut self, c: Option<&mut Conn>, ev: SessionEvent) {
        match ev {
            SessionEvent::Message(m, arrival) => {
                if self.events_open {
                    self.events_out.push_back(Event::Message(m, arrival));
                }
            }
            SessionEvent::Delivered { id, reason_code } => {
                if let Some(done) = self.publishes.remove(&id) {
                    let _ = done.send(if reason_code.is_error() {
                        Err(ClientError::Rejected(reason_code))
                    } else {
                        Ok(reason_code)
                    });
                }
            }
            SessionEvent::Dropped { id, reason } => {
                if let Some(done) = self.publishes.remove(&id) {
                    let _ = done.send(Err(ClientError::Dropped(reason)));
                }
            }
            SessionEvent::SubAck(ack) => {
                if let Some(r) = self.subscribes.remove(&ack.packet_id) {
                    let _ = r.done.send(Ok(*ack));
                }
            }
            SessionEvent::UnsubAck(ack) => {
                if let Some(r) = self.unsubscribes.remove(&ack.packet_id) {
                    let _ = r.done.send(Ok(*ack));
                }
            }
            SessionEvent::Connected(ack) => {
                let Some(c) = c else { return };
                if let Some(running) = c.challenge.take() {
                    // Accepted before our answer: the server did not check it.
                    running.abort();
                    c.connected = true;
                    let why = "the server accepted before our answer to its challenge".to_owned();
                    self.auth_failed(c, why.clone());
                    c.end = Some(Err(ConnectError::Auth(why)));
                    return;
                }
                if self.options.authenticator.is_some() {
                    let data = ack.properties.authentication_data.as_deref();
                    if let Err(why) = self.with_authenticator(|a| a.success(data)) {
                        // Accepted by the server but not by us: leave at once.
                        c.connected = true;
                        self.auth_failed(c, why.clone());
                        c.end = Some(Err(ConnectError::Auth(why)));
                        return;
                    }
                }
                c.connected = true;
                self.push_state(Event::Connected {
                    session_present: ack.session_present,
                    connack: ack.clone(),
                });
                if let Some(first) = self.first.take() {
                    if first.send(Ok(ack)).is_err() {
                        // `connect` was cancelled: nobody will ever use this client.
                        self.cmd_open = false;
                        self.events_open = false;
                        self.events_out.clear();
                    }
                }
            }
            SessionEvent::Refused(ack) => {
                if let Some(c) = c {
                    c.refused = Some(ack);
                }
            }
            SessionEvent::PeerDisconnected(d) => {
                if let Some(c) = c {
                    c.peer_disconnect = Some(*d);
                }
            }
            SessionEvent::Closed { reason } => {
                let Some(c) = c else { return };
                if c.end.is_some() {
                    return;
                }
                c.end = Some(if let Some(ack) = &c.refused {
                    Err(refused(ack))
                } else if let Some(d) = &c.peer_disconnect {
                    let reason = DisconnectReason::Server {
                        reason: d.reason_code,
                        reason_string: d.properties.reason_string.as_ref().map(ToString::to_string),
                    };
                    if c.connected {
                        Ok(Ended::Lost(reason))
                    } else {
                        Err(ConnectError::Closed(reason.to_string()))
                    }
                } else if reason == ReasonCode::KEEP_ALIVE_TIMEOUT {
                    Ok(Ended::Lost(DisconnectReason::KeepAliveTimeout))
                } else {
                    let reason = DisconnectReason::Protocol(reason.to_string());
                    if c.connected {
                        Ok(Ended::Lost(reason))
                    } else {
                        Err(ConnectError::Closed(reason.to_string()))
                    }
                });
            }
            SessionEvent::Auth(auth) => {
                if let Some(c) = c {
                    self.on_auth(c, *auth);
                }
            }
            other => tracing::debug!(?other, "unexpected session event"),
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Publish { message, done } => {
                let qos = message.qos;
                match self.session.publish(now, message) {
                    Ok(id) => {
                        if qos == mqtt_codec::QoS::AtMostOnce {
                            let _ = done.send(Ok(ReasonCode::SUCCESS));
                        } else {
                            self.publishes.insert(id, done);
                        }
                    }
                    Err(refused) => {
                        let _ = done.send(Err(ClientError::Dropped(refused.reason)));
                    }
                }
            }
            Command::Subscribe {
                subscriptions,
                properties,
                done,
            } => match self.session.subscribe(subscriptions, properties) {
                Some(id) => {
                    self.subscribes.insert(id, Request { done });
                }
                None => {
                    let _ = done.send(Err(ClientError::NoPacketId));
                }
            },
            Command::Unsubscribe {
                filters,
                properties,
                done,
            } => match self.session.unsubscribe(filters, properties) {
                Some(id) => {
                    self.unsubscribes.insert(id, Request { done });
                }
                None => {
                    let _ = done.send(Err(ClientError::NoPacketId));
                }
            },
            Command::Disconnect { packet, done } => {
                self.disconnect_waiters.push(done);
                self.disconnect_requested.get_or_insert(packet);
            }
            Command::Reauthenticate { done } => {
                if self.reauth.is_some() {
                    let _ = done.send(Err(ClientError::Auth(
                        "a re-authentication is already running".into(),
                    )));
                    return;
                }
                if !self.session.is_connected() {
                    let _ = done.send(Err(ClientError::Auth("not connected".into())));
                    return;
                }
                let started = self
                    .with_authenticator(|a| a.start())
                    .map_err(|e| {
                        if self.options.authenticator.is_none() {
                            "no authenticator is set".to_owned()
                        } else {
                            e
                        }
                    })
                    .and_then(|data| {
                        self.session
                            .auth(ReasonCode::REAUTHENTICATE, data)
                            .map_err(|e| e.to_string())
                    });
                match started {
                    Ok(()) => self.reauth = Some(done),
                    Err(why) => {
                        let _ = done.send(Err(ClientError::Auth(why)));
                    }
                }
            }
        }
    }

    /// The driver stops: fail what is outstanding, hand the remaining events over.
    async fn shutdown(mut self) {
        for (_, done) in self.publishes.drain() {
            let _ = done.send(Err(ClientError::Closed));
        }
        for (_, r) in self.subscribes.drain() {
            let _ = r.done.send(Err(ClientError::Closed));
        }
        for (_, r) in self.unsubscribes.drain() {
            let _ = r.done.send(Err(ClientError::Closed));
        }
        for done in self.disconnect_waiters.drain(..) {
            let _ = done.send(());
        }
        if let Some(done) = self.reauth.take() {
            let _ = done.send(Err(ClientError::Closed));
        }
        // Refuse requests from now on, but answer those already queued.
        self.cmd_rx.close();
        self.ctl_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv().or_else(|_| self.ctl_rx.try_recv()) {
            match cmd {
                Command::Publish { done, .. } => {
                    let _ = done.send(Err(ClientError::Closed));
                }
                Command::Subscribe { done, .. } => {
                    let _ = done.send(Err(ClientError::Closed));
                }
                Command::Unsubscribe { done, .. } => {
                    let _ = done.send(Err(ClientError::Closed));
                }
                Command::Disconnect { done, .. } => {
                    let _ = done.send(());
                }
                Command::Reauthenticate { done } => {
                    let _ = done.send(Err(ClientError::Closed));
                }
            }
        }
        if self.events_open {
            for ev in self.events_out.drain(..) {
                if self.events_tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn write_some(writer: &mut WriteHalf<BoxIo>, buf: &[u8]) -> io::Result<Option<usize>> {
    if buf.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write(buf).await.map(Some)
    }
}

fn refused(ack: &ConnAck) -> ConnectError {
    ConnectError::Refused {
        reason: ack.reason_code,
        reason_string: ack
            .properties
            .reason_string
            .as_ref()
            .map(ToString::to_string),
    }
}

fn clone_connect_error(e: &ConnectError) -> ConnectError {
    match e {
        ConnectError::Refused {
            reason,
            reason_string,
        } => ConnectError::Refused {
            reason: *reason,
            reason_string: reason_string.clone(),
        },
        ConnectError::Timeout(d) => ConnectError::Timeout(*d),
        other => ConnectError::Closed(other.to_string()),
    }
}

/// Hands the oldest queued event to the application through a reserved channel slot; a
/// closed channel means nobody listens any more, so the queue is dropped.
fn forward_event(
    permit: Result<mpsc::Permit<'_, Event>, mpsc::error::SendError<()>>,
    events_out: &mut VecDeque<Event>,
    events_open: &mut bool,
) {
    match permit {
        Ok(p) => {
            if let Some(ev) = events_out.pop_front() {
                p.send(ev);
            }
        }
        Err(_) => {
            *events_open = false;
            events_out.clear();
        }
    }
}
