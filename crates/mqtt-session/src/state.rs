//! Exporting and restoring a session: a stable, versioned binary encoding of everything
//! a session must keep across connections, for persistence and for moving a session.
//!
//! ```text
//! magic "MQSS" · format u8 (= 1) · role u8 (0 client, 1 server) · protocol level u8
//! next packet id u16 · next message id u64
//! in-flight: count u32, then per entry: message id u64 · packet id u16 · phase u8
//!            (0 PUBACK, 1 PUBREC, 2 PUBCOMP) · message (phases 0 and 1)
//! queued:    count u32, then per entry: message id u64 · expiry (flag u8, ms left u64) · message
//! QoS 2 ids awaiting PUBREL: count u32, then u16 each
//! client:    client id (string) · had session u8
//! server:    client id (string) · established u8 · session expiry u32 ·
//!            will (flag u8, then delay u32 · message) · will due (flag u8, ms left u64) ·
//!            expires (flag u8, ms left u64) ·
//!            subscriptions: count u32, then filter (string) · options u8 · identifier u32 (0 none)
//! message:   length u32 · a PUBLISH packet in MQTT 5.0 encoding (packet id 1 for QoS 1/2)
//! string:    length u16 · UTF-8
//! ```
//! Integers are big-endian. Times are stored as milliseconds left, relative to the
//! `now` given to `export`, and rebased on the `now` given to `restore`, so a session
//! can move between processes whose clocks have different origins.

use alloc::{sync::Arc, vec::Vec};
use core::{fmt, num::NonZeroU16};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Decoder, Packet, PacketId, ProtocolVersion, QosPid, SubscriptionId,
    SubscriptionOptions, Will, WillProperties,
};

use crate::{
    client::{ClientOptions, ClientSession},
    flow::{Counters, Flow},
    message::{Limits, Message, MessageId},
    outbound::Awaiting,
    server::{ServerSession, SubscriptionRecord},
    time::{Duration, Instant},
};

const MAGIC: &[u8; 4] = b"MQSS";
const FORMAT: u8 = 1;
/// As `FORMAT`, with the messages kept elsewhere: in-flight entries (phases 0 and 1)
/// carry no message, and the queue is empty.
const FORMAT_DETACHED: u8 = 2;

/// Why exported session bytes could not be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// Not session state (wrong magic).
    NotSessionState,
    /// A format version this build does not read.
    UnsupportedFormat(u8),
    /// State of the other end (a client's given to a server, or the reverse).
    WrongRole,
    /// The bytes end early or hold an invalid value.
    Corrupt(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSessionState => f.write_str("not MQTT session state (bad magic)"),
            Self::UnsupportedFormat(v) => write!(f, "session state format {v} is not supported"),
            Self::WrongRole => f.write_str("session state of the other end"),
            Self::Corrupt(what) => write!(f, "corrupt session state: {what}"),
        }
    }
}

impl core::error::Error for StateError {}

// ---- writing ---------------------------------------------------------------------------

fn put_str(out: &mut BytesMut, s: &ByteStr) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_left(out: &mut BytesMut, at: Option<Instant>, now: Instant) {
    match at {
        Some(t) => {
            out.put_u8(1);
            out.put_u64(t.saturating_since(now).as_millis());
        }
        None => out.put_u8(0),
    }
}

fn put_message(out: &mut BytesMut, m: &Message) {
    let publish = m.to_publish(
        QosPid::new(m.qos, NonZeroU16::MIN),
        false,
        m.topic.clone(),
        None,
        true,
    );
    let packet = Packet::Publish(publish);
    let len = packet.encoded_len(ProtocolVersion::V5);
    out.put_u32(len as u32);
    // Every field was valid when the message was accepted, so encoding cannot fail;
    // should it, an empty record is written and restore reports it.
    let before = out.len();
    if packet.encode(ProtocolVersion::V5, out).is_err() {
        out.truncate(before);
    }
}

fn put_flow(
    out: &mut BytesMut,
    flow: &Flow,
    now: Instant,
    role: u8,
    left_out: &[PacketId],
    detached: bool,
) {
    out.put_slice(MAGIC);
    out.put_u8(if detached { FORMAT_DETACHED } else { FORMAT });
    out.put_u8(role);
    out.put_u8(flow.version.level());
    let counters = flow.counters();
    out.put_u16(counters.next_packet_id);
    out.put_u64(counters.next_message_id);
    let (inflight, queue, awaiting_pubrel) = match flow.traffic() {
        Some(t) => (
            t.outbox.inflight.iter(),
            t.outbox.queue.iter(),
            t.inbox.awaiting_pubrel.iter(),
        ),
        None => (Default::default(), Default::default(), Default::default()),
    };
    out.put_u32(inflight.len() as u32);
    for f in inflight {
        out.put_u64(f.id.0);
        out.put_u16(f.packet_id.get());
        out.put_u8(match f.phase {
            Awaiting::PubAck => 0,
            Awaiting::PubRec => 1,
            Awaiting::PubComp => 2,
        });
        if f.phase != Awaiting::PubComp && !detached {
            if let Some(m) = flow.traffic().and_then(|t| t.outbox.message(f.slot)) {
                put_message(out, &m);
            }
        }
    }
    if detached {
        out.put_u32(0);
    } else {
        out.put_u32(queue.len() as u32);
    }
    for q in queue.filter(|_| !detached) {
        out.put_u64(q.id.0);
        put_left(out, q.expires_at, now);
        if let Some(m) = flow.traffic().and_then(|t| t.outbox.message(Some(q.slot))) {
            put_message(out, &m);
        }
    }
    let kept = awaiting_pubrel.filter(|id| !left_out.contains(id));
    out.put_u32(kept.clone().count() as u32);
    for id in kept {
        out.put_u16(id.get());
    }
}

impl ClientSession {
    /// The session state, to persist or move; see the module docs for the format.
    pub fn export(&self, now: Instant) -> Bytes {
        let mut out = BytesMut::new();
        put_flow(&mut out, self.flow(), now, 0, &[], false);
        put_str(&mut out, &self.options().client_id);
        out.put_u8(1);
        out.freeze()
    }

    /// A session from exported state. `options` supplies what is not session state
    /// (credentials, will, limits); its client identifier is replaced by the stored one.
    pub fn restore(
        mut options: ClientOptions,
        state: &[u8],
        now: Instant,
    ) -> Result<Self, StateError> {
        let mut r = Reader(Bytes::copy_from_slice(state));
        let (version, flow) = read_flow(&mut r, 0, Arc::new(options.limits.clone()), now)?;
        options.version = version;
        options.client_id = r.string()?;
        let _had_session = r.u8()?;
        r.end()?;
        let mut session = Self::new(options);
        *session.flow_mut() = flow;
        session.mark_resumable();
        Ok(session)
    }
}

impl ServerSession {
    /// The session state, to persist or move; see the module docs for the format.
    pub fn export(&self, now: Instant) -> Bytes {
        self.export_leaving_out(now, &[])
    }

    /// As [`export`](Self::export), without the inbound QoS 2 packet identifiers in
    /// `left_out`: those of messages received but not yet handed on (a durable store
    /// keeps an identifier only with the copies of its message, or a PUBLISH sent
    /// again after a restart would be taken for a duplicate and its message lost).
    pub fn export_leaving_out(&self, now: Instant, left_out: &[PacketId]) -> Bytes {
        self.export_with(now, left_out, false)
    }

    /// As [`export_leaving_out`](Self::export_leaving_out), without the messages: the
    /// in-flight entries keep their message identifiers, packet identifiers and phases,
    /// the queue is left out (format 2). A store keeps the messages one record each
    /// ([`for_each_message`](Self::for_each_message)) and gives them back to
    /// [`restore_detached`](Self::restore_detached).
    pub fn export_detached(&self, now: Instant, left_out: &[PacketId]) -> Bytes {
        self.export_with(now, left_out, true)
    }

    /// Every message the session holds, in flight (awaiting PUBACK or PUBREC) then
    /// queued, in order: its message identifier, its expiry (queued ones) and the message.
    pub fn for_each_message(&self, mut f: impl FnMut(MessageId, Option<Instant>, Message)) {
        let Some(t) = self.flow().traffic() else {
            return;
        };
        for e in t.outbox.inflight.iter() {
            if e.phase != Awaiting::PubComp {
                if let Some(m) = t.outbox.message(e.slot) {
                    f(e.id, None, m);
                }
            }
        }
        for q in t.outbox.queue.iter() {
            if let Some(m) = t.outbox.message(Some(q.slot)) {
                f(q.id, q.expires_at, m);
            }
        }
    }

    fn export_with(&self, now: Instant, left_out: &[PacketId], detached: bool) -> Bytes {
        let mut out = BytesMut::new();
        put_flow(&mut out, self.flow(), now, 1, left_out, detached);
        let s = self.export_fields();
        put_str(&mut out, s.client_id);
        out.put_u8(u8::from(s.established));
        out.put_u32(s.session_expiry);
        match s.will {
            Some(will) => {
                out.put_u8(1);
                out.put_u32(will.properties.will_delay_interval.unwrap_or(0));
                put_message(&mut out, &will_message(will));
            }
            None => out.put_u8(0),
        }
        put_left(&mut out, s.will_due, now);
        put_left(&mut out, s.expires_at, now);
        out.put_u32(s.subscriptions.len() as u32);
        for sub in s.subscriptions {
            put_str(&mut out, &sub.filter);
            out.put_u8(sub.options.to_byte());
            out.put_u32(sub.identifier.map_or(0, SubscriptionId::get));
        }
        out.freeze()
    }

    /// A session from exported state, with `limits` (which may be shared, as for
    /// [`ServerSession::new`]) for its future connections. A
    /// session exported while connected comes back disconnected; call
    /// [`ServerSession::connection_lost`] semantics are not re-applied (its timers are
    /// those stored).
    pub fn restore(
        limits: impl Into<Arc<Limits>>,
        state: &[u8],
        now: Instant,
    ) -> Result<Self, StateError> {
        let limits = limits.into();
        let mut r = Reader(Bytes::copy_from_slice(state));
        let (_version, flow) = read_flow(&mut r, 1, Arc::clone(&limits), now)?;
        let client_id = r.string()?;
        let established = r.u8()? != 0;
        let session_expiry = r.u32()?;
        let will = read_will(&mut r)?;
        let will_due = r.left(now)?;
        let expires_at = r.left(now)?;
        let count = r.u32()?;
        let mut subscriptions = Vec::new();
        for _ in 0..count {
            let filter = r.string()?;
            let options = SubscriptionOptions::from_byte(r.u8()?)
                .ok_or(StateError::Corrupt("subscription options"))?;
            let identifier = SubscriptionId::new(r.u32()?);
            subscriptions.push(SubscriptionRecord {
                filter,
                options,
                identifier,
            });
        }
        r.end()?;
        let mut session = Self::new(client_id, limits);
        *session.flow_mut() = flow;
        session.import_fields(
            established,
            session_expiry,
            will,
            will_due,
            expires_at,
            subscriptions,
        );
        Ok(session)
    }
}

impl ServerSession {
    /// Puts the messages of exported `state` (as [`export`](Self::export) wrote it) into
    /// this session, made with [`restored`](Self::restored) from a record of its
    /// subscriptions and expiry: its queued messages, its QoS 1/2 messages in flight with
    /// their packet identifiers and phases, the QoS 2 packet identifiers awaiting PUBREL,
    /// the packet identifier counter, and its will. Client identifier, expiry and
    /// subscriptions stay this session's. Times in `state` are rebased on `now`.
    ///
    /// # Errors
    /// As [`restore`](Self::restore), if `state` is not a server session's exported
    /// state; the session is then left as it was.
    pub fn restore_messages(&mut self, state: &[u8], now: Instant) -> Result<(), StateError> {
        let limits = Arc::clone(&self.flow().limits);
        let mut saved = Self::restore(limits, state, now)?;
        let version = self.flow().version;
        let fields = saved.export_fields();
        let (will, will_due) = (fields.will.cloned(), fields.will_due);
        core::mem::swap(self.flow_mut(), saved.flow_mut());
        // The version is the record's (the same, as both were written together).
        self.flow_mut().version = version;
        self.set_will(will, will_due);
        Ok(())
    }
}

impl ServerSession {
    /// The identifiers of the messages in flight (awaiting PUBACK or PUBREC) that
    /// `state`, as [`export_detached`](Self::export_detached) wrote it, names: the
    /// messages [`restore_detached`](Self::restore_detached) must be given, whatever
    /// else of the session's messages its caller leaves out.
    ///
    /// # Errors
    /// If `state` is not a detached server session state.
    pub fn detached_inflight(state: &[u8]) -> Result<Vec<MessageId>, StateError> {
        let mut r = Reader(Bytes::copy_from_slice(state));
        if &r.bytes(4)?[..] != MAGIC {
            return Err(StateError::NotSessionState);
        }
        let format = r.u8()?;
        if format != FORMAT_DETACHED {
            return Err(StateError::UnsupportedFormat(format));
        }
        if r.u8()? != 1 {
            return Err(StateError::WrongRole);
        }
        let _version = r.u8()?;
        let _next_packet_id = r.u16()?;
        let _next_message_id = r.u64()?;
        let count = r.u32()?;
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = MessageId(r.u64()?);
            let _packet_id = r.u16()?;
            if r.u8()? != 2 {
                // Awaiting PUBACK or PUBREC: the message is held (after PUBREC, only
                // the identifier).
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// As [`restore_messages`](Self::restore_messages), from `state` as
    /// [`export_detached`](Self::export_detached) wrote it and the messages it held,
    /// by message identifier with their expiry (rebased by the caller): those in
    /// flight go back to their entries, the others are queued in identifier order.
    ///
    /// # Errors
    /// As [`restore`](Self::restore); and if an in-flight entry's message is missing.
    /// The session is then left as it was.
    pub fn restore_detached(
        &mut self,
        state: &[u8],
        now: Instant,
        messages: impl IntoIterator<Item = (MessageId, Option<Instant>, Message)>,
    ) -> Result<(), StateError> {
        let mut by_id: alloc::collections::BTreeMap<u64, (Option<Instant>, Message)> = messages
            .into_iter()
            .map(|(id, at, m)| (id.0, (at, m)))
            .collect();
        let limits = Arc::clone(&self.flow().limits);
        let mut r = Reader(Bytes::copy_from_slice(state));
        let (_, mut flow) = read_flow_with(&mut r, 1, limits, now, Some(&mut by_id))?;
        // The server fields: only the will is taken (the record has the rest).
        let _client_id = r.string()?;
        let _established = r.u8()?;
        let _session_expiry = r.u32()?;
        let will = read_will(&mut r)?;
        let will_due = r.left(now)?;
        let version = self.flow().version;
        core::mem::swap(self.flow_mut(), &mut flow);
        self.flow_mut().version = version;
        self.set_will(will, will_due);
        Ok(())
    }
}

fn will_message(will: &Will) -> Message {
    let p = &will.properties;
    Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        properties: mqtt_codec::PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..Default::default()
        }
        .into(),
    }
}

/// The server-only fields, borrowed for export.
pub(crate) struct ServerFields<'a> {
    pub(crate) client_id: &'a ByteStr,
    pub(crate) established: bool,
    pub(crate) session_expiry: u32,
    pub(crate) will: Option<&'a Will>,
    pub(crate) will_due: Option<Instant>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) subscriptions: crate::server::Subscriptions<'a>,
}

// ---- reading ---------------------------------------------------------------------------

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), StateError> {
        if self.0.len() < n {
            Err(StateError::Corrupt("ends early"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, StateError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<ByteStr, StateError> {
        let len = usize::from(self.u16()?);
        ByteStr::from_bytes(self.bytes(len)?).map_err(|_| StateError::Corrupt("string"))
    }
    fn packet_id(&mut self) -> Result<PacketId, StateError> {
        PacketId::new(self.u16()?).ok_or(StateError::Corrupt("packet id 0"))
    }
    fn left(&mut self, now: Instant) -> Result<Option<Instant>, StateError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(now + Duration::from_millis(self.u64()?)),
        })
    }
    fn message(&mut self) -> Result<Message, StateError> {
        let len = self.u32()? as usize;
        let mut buf = BytesMut::from(&self.bytes(len)?[..]);
        match Decoder::with_version(ProtocolVersion::V5).decode(&mut buf) {
            Ok(Some(Packet::Publish(p))) if buf.is_empty() => Ok(Message::from_publish(p)),
            _ => Err(StateError::Corrupt("message")),
        }
    }
    fn end(&self) -> Result<(), StateError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StateError::Corrupt("trailing bytes"))
        }
    }
}

fn read_flow(
    r: &mut Reader,
    role: u8,
    limits: Arc<Limits>,
    now: Instant,
) -> Result<(ProtocolVersion, Flow), StateError> {
    read_flow_with(r, role, limits, now, None)
}

/// Reads a flow; `detached` holds the messages of a format 2 one, by message id, and
/// takes what it uses (the rest is queued after it, in order).
fn read_flow_with(
    r: &mut Reader,
    role: u8,
    limits: Arc<Limits>,
    now: Instant,
    mut detached: Option<&mut alloc::collections::BTreeMap<u64, (Option<Instant>, Message)>>,
) -> Result<(ProtocolVersion, Flow), StateError> {
    if &r.bytes(4)?[..] != MAGIC {
        return Err(StateError::NotSessionState);
    }
    let format = r.u8()?;
    match (format, &detached) {
        (FORMAT, None) | (FORMAT_DETACHED, Some(_)) => {}
        _ => return Err(StateError::UnsupportedFormat(format)),
    }
    if r.u8()? != role {
        return Err(StateError::WrongRole);
    }
    let version = match r.u8()? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err(StateError::Corrupt("protocol level")),
    };
    let mut flow = Flow::new(version, limits);
    flow.set_counters(Counters {
        next_packet_id: r.u16()?,
        next_message_id: r.u64()?,
    });
    let count = r.u32()?;
    for _ in 0..count {
        let id = MessageId(r.u64()?);
        let packet_id = r.packet_id()?;
        let phase = match r.u8()? {
            0 => Awaiting::PubAck,
            1 => Awaiting::PubRec,
            2 => Awaiting::PubComp,
            _ => return Err(StateError::Corrupt("in-flight phase")),
        };
        let message = match (phase, detached.as_deref_mut()) {
            (Awaiting::PubComp, _) => None,
            (_, None) => Some(r.message()?),
            (_, Some(messages)) => Some(
                messages
                    .remove(&id.0)
                    .ok_or(StateError::Corrupt("in-flight message missing"))?
                    .1,
            ),
        };
        flow.traffic_mut()
            .outbox
            .push_inflight(id, packet_id, phase, message);
    }
    let count = r.u32()?;
    for _ in 0..count {
        let id = MessageId(r.u64()?);
        let expires_at = r.left(now)?;
        let message = r.message()?;
        flow.traffic_mut()
            .outbox
            .push_queued(id, message, expires_at, false);
    }
    if let Some(messages) = detached {
        for (id, (expires_at, message)) in core::mem::take(messages) {
            flow.traffic_mut()
                .outbox
                .push_queued(MessageId(id), message, expires_at, false);
        }
    }
    let count = r.u32()?;
    for _ in 0..count {
        let id = r.packet_id()?;
        flow.traffic_mut().inbox.awaiting_pubrel.insert(id);
    }
    Ok((version, flow))
}

/// A will as the state holds it: a flag, then its delay and its message.
fn read_will(r: &mut Reader) -> Result<Option<Will>, StateError> {
    if r.u8()? == 0 {
        return Ok(None);
    }
    let delay = r.u32()?;
    let m = r.message()?;
    let p = m.properties.into_inner();
    Ok(Some(Will {
        topic: m.topic,
        payload: m.payload,
        qos: m.qos,
        retain: m.retain,
        properties: WillProperties {
            will_delay_interval: Some(delay),
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        },
    }))
}
