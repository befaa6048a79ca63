//! `mqtt-floor`: the floor that issue 18 measures our broker against, a trivial
//! single-threaded forwarder that parses MQTT frames by hand and copies them from
//! publishers to subscribers. It is a **benchmark baseline, not a broker**: what a
//! message costs when nothing but parsing and copying is done, so that `cargo xtask
//! bench` can say what a 16 KiB message costs relative to a 16 B one on the floor.
//!
//! `mqtt-floor --listen 127.0.0.1:1883`. One thread, one `mio` poll loop, nonblocking
//! sockets; each connection has one read buffer and one output buffer, flushed when the
//! socket is writable. It speaks as much MQTT 3.1.1 and 5.0 as `mqtt-bench` (and a
//! plain `mosquitto_pub`/`mosquitto_sub`) need:
//!
//! - CONNECT → CONNACK (always accepted, no session present), PINGREQ → PINGRESP,
//!   DISCONNECT closes;
//! - SUBSCRIBE → SUBACK granting the QoS asked; filters with `+` and `#`, and
//!   `$share/GROUP/FILTER` (each message to one member of the group, in turn);
//! - PUBLISH at QoS 0/1/2 from publishers (PUBACK, or PUBREC then PUBREL → PUBCOMP),
//!   forwarded to each matching subscription at the lower of the two QoS by copying the
//!   frame: only the first byte and the packet identifier are rewritten, unless the QoS
//!   or the protocol version differ (then the frame is rebuilt from its parts). The 5.0
//!   property block is passed through as it is;
//! - PUBACK/PUBREC/PUBCOMP from subscribers (PUBREC is answered with PUBREL).
//!
//! Not done, on purpose: persistence, sessions, retained messages, wills,
//! authentication, retries, keep-alive timeouts, UNSUBSCRIBE, topic aliases, flow
//! control (a subscriber's packet identifiers simply count up and wrap; nothing is kept
//! in flight), UTF-8 checks. The one limit is back-pressure: while more than
//! [`HIGH_WATER`] bytes wait to be written, nothing more is read. A frame that does not
//! parse (or any packet not listed above) closes its connection.

#![allow(clippy::print_stderr)] // errors go to stderr, as in every other tool

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::SocketAddr,
    process::ExitCode,
    time::Duration,
};

use mio::{
    Events, Interest, Poll, Token,
    net::{TcpListener, TcpStream},
};

/// The listener's token; connection `i` (its slot) is `Token(i + 1)`.
const LISTENER: Token = Token(0);

/// Bytes one read takes at most (a frame larger than this grows its buffer).
const READ_SIZE: usize = 64 * 1024;

/// The largest frame taken; a larger one closes its connection.
const MAX_FRAME: usize = 1 << 20;

/// While this many bytes wait in output buffers, nothing more is read: publishers are
/// pushed back instead of buffers growing without bound.
const HIGH_WATER: usize = 8 << 20;

/// Why a connection is closed: a malformed or unsupported frame, or DISCONNECT.
#[derive(Debug)]
struct Close;

/// One subscription: the connection's slot and the QoS granted.
#[derive(Debug, Clone, Copy)]
struct Sub {
    conn: usize,
    qos: u8,
}

/// A shared subscription group (`$share/name/filter`): each message to one member.
#[derive(Debug)]
struct Group {
    name: Vec<u8>,
    filter: Vec<u8>,
    members: Vec<Sub>,
    next: usize,
}

/// Every subscription: exact filters by topic, wildcard filters and groups in lists.
#[derive(Debug, Default)]
struct Subscriptions {
    exact: HashMap<Vec<u8>, Vec<Sub>>,
    wild: Vec<(Vec<u8>, Sub)>,
    groups: Vec<Group>,
}

impl Subscriptions {
    /// Subscribes (or re-subscribes) connection `sub.conn`; `group` is empty unless shared.
    fn add(&mut self, group: &[u8], filter: &[u8], sub: Sub) {
        self.remove(group, filter, sub.conn);
        if !group.is_empty() {
            match self
                .groups
                .iter_mut()
                .find(|g| g.name == group && g.filter == filter)
            {
                Some(g) => g.members.push(sub),
                None => self.groups.push(Group {
                    name: group.to_vec(),
                    filter: filter.to_vec(),
                    members: vec![sub],
                    next: 0,
                }),
            }
        } else if filter.iter().any(|&b| b == b'+' || b == b'#') {
            self.wild.push((filter.to_vec(), sub));
        } else {
            self.exact.entry(filter.to_vec()).or_default().push(sub);
        }
    }

    /// Removes connection `conn`'s subscription to `filter` (in `group`), if it has one.
    fn remove(&mut self, group: &[u8], filter: &[u8], conn: usize) {
        if !group.is_empty() {
            for g in &mut self.groups {
                if g.name == group && g.filter == filter {
                    g.members.retain(|s| s.conn != conn);
                }
            }
            self.groups.retain(|g| !g.members.is_empty());
        } else if let Some(subs) = self.exact.get_mut(filter) {
            subs.retain(|s| s.conn != conn);
            if subs.is_empty() {
                self.exact.remove(filter);
            }
        } else {
            self.wild.retain(|(f, s)| s.conn != conn || f != filter);
        }
    }

    /// Appends to `out` each (connection, QoS) that a message on `topic` at `qos` goes to.
    fn route(&mut self, topic: &[u8], qos: u8, out: &mut Vec<(usize, u8)>) {
        if let Some(subs) = self.exact.get(topic) {
            out.extend(subs.iter().map(|s| (s.conn, s.qos.min(qos))));
        }
        for (filter, s) in &self.wild {
            if matches(filter, topic) {
                out.push((s.conn, s.qos.min(qos)));
            }
        }
        for g in &mut self.groups {
            if matches(&g.filter, topic) {
                if let Some(s) = g.members.get(g.next % g.members.len().max(1)) {
                    out.push((s.conn, s.qos.min(qos)));
                }
                g.next = g.next.wrapping_add(1);
            }
        }
    }
}

/// Whether `filter` matches `topic`: level by level, `+` one level, `#` the rest
/// (including the parent level); wildcards first do not match `$` topics.
fn matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(fl), Some(tl)) if fl == b"+" || fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A filter's wildcards are whole levels, and `#` is the last.
fn valid_filter(filter: &[u8]) -> bool {
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let hash = level.contains(&b'#');
        if (hash && (level != b"#" || levels.peek().is_some()))
            || (level.contains(&b'+') && level != b"+")
        {
            return false;
        }
    }
    !filter.is_empty()
}

/// Splits `$share/GROUP/FILTER` into its group and filter; `(b"", filter)` otherwise.
fn split_share(filter: &[u8]) -> Result<(&[u8], &[u8]), Close> {
    let Some(rest) = filter.strip_prefix(b"$share/") else {
        return if valid_filter(filter) {
            Ok((b"", filter))
        } else {
            Err(Close)
        };
    };
    let slash = rest.iter().position(|&b| b == b'/').ok_or(Close)?;
    let (group, filter) = (&rest[..slash], &rest[slash + 1..]);
    if group.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') || !valid_filter(filter) {
        return Err(Close);
    }
    Ok((group, filter))
}

/// The big-endian two bytes at `at`.
fn u16_at(b: &[u8], at: usize) -> Result<u16, Close> {
    match b.get(at..at.wrapping_add(2)) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(Close),
    }
}

/// A Variable Byte Integer at the start of `b`: its value and its length in bytes.
fn varint(b: &[u8]) -> Result<(usize, usize), Close> {
    let mut value = 0;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(Close)
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// How much of a frame is at the start of `b`: `Ok(Some((header, total)))` once the
/// fixed header is in (the frame is whole when `b` holds `total` bytes), `Ok(None)`
/// before.
fn frame_len(b: &[u8]) -> Result<Option<(usize, usize)>, Close> {
    let len_bytes = b.get(1..).unwrap_or_default();
    match varint(len_bytes) {
        Ok((len, n)) if 1 + n + len <= MAX_FRAME => Ok(Some((1 + n, 1 + n + len))),
        Ok(_) => Err(Close),
        // Four bytes with their continuation bit set: malformed. Fewer: more to come.
        Err(Close) if len_bytes.len() >= 4 => Err(Close),
        Err(Close) => Ok(None),
    }
}

/// The protocol level of a CONNECT: `true` for 5.0, `false` for 3.1.1.
fn parse_connect(body: &[u8]) -> Result<bool, Close> {
    // Protocol name, level, flags, keep-alive: 10 bytes at least.
    if body.len() < 10 || body.get(..6) != Some(b"\0\x04MQTT") {
        return Err(Close);
    }
    match body.get(6) {
        Some(4) => Ok(false),
        Some(5) => Ok(true),
        _ => Err(Close),
    }
}

/// A PUBLISH received, as slices of its frame.
#[derive(Debug)]
struct Publish<'a> {
    frame: &'a [u8],
    qos: u8,
    v5: bool,
    topic: &'a [u8],
    /// Where the packet identifier is in `frame` (QoS 1 and 2).
    id_at: usize,
    id: u16,
    /// 5.0: the property block with its length; empty in 3.1.1.
    props: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Publish<'a> {
    fn parse(frame: &'a [u8], header: usize, v5: bool) -> Result<Self, Close> {
        let qos = frame.first().map_or(3, |b| (b >> 1) & 3);
        let body = frame.get(header..).ok_or(Close)?;
        let topic_len = usize::from(u16_at(body, 0)?);
        let topic = body.get(2..2 + topic_len).ok_or(Close)?;
        if topic.is_empty() || topic.iter().any(|&b| b == b'+' || b == b'#') || qos == 3 {
            return Err(Close);
        }
        let mut at = 2 + topic_len;
        let id_at = header + at;
        let mut id = 0;
        if qos > 0 {
            id = u16_at(body, at)?;
            if id == 0 {
                return Err(Close);
            }
            at += 2;
        }
        let mut props: &[u8] = &[];
        if v5 {
            let (len, n) = varint(body.get(at..).ok_or(Close)?)?;
            props = body.get(at..at + n + len).ok_or(Close)?;
            at += n + len;
        }
        let payload = body.get(at..).ok_or(Close)?;
        Ok(Self {
            frame,
            qos,
            v5,
            topic,
            id_at,
            id,
            props,
            payload,
        })
    }

    /// Appends the frame to deliver at `qos` with packet identifier `id` to a
    /// connection of protocol 5.0 (`v5`) or 3.1.1.
    fn write(&self, out: &mut Vec<u8>, qos: u8, id: u16, v5: bool) {
        let first = 0x30 | (qos << 1); // DUP and RETAIN cleared: a new, live delivery
        if v5 == self.v5 && qos == self.qos {
            // The same layout: copy, then rewrite the first byte and the identifier.
            let at = out.len();
            out.extend_from_slice(self.frame);
            if let Some(b) = out.get_mut(at) {
                *b = first;
            }
            if qos > 0 {
                if let Some(b) = out.get_mut(at + self.id_at..at + self.id_at + 2) {
                    b.copy_from_slice(&id.to_be_bytes());
                }
            }
            return;
        }
        let props: &[u8] = match (self.v5, v5) {
            (_, false) => &[],
            (true, true) => self.props,
            (false, true) => &[0],
        };
        let id_len = if qos > 0 { 2 } else { 0 };
        out.push(first);
        put_varint(
            out,
            2 + self.topic.len() + id_len + props.len() + self.payload.len(),
        );
        out.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(self.topic);
        if qos > 0 {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(props);
        out.extend_from_slice(self.payload);
    }
}

/// One client connection.
#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    /// Bytes read and not yet taken as frames are `rbuf[..filled]`.
    rbuf: Vec<u8>,
    filled: usize,
    /// Bytes to write are `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// The protocol, once CONNECT came: 5.0 or 3.1.1.
    v5: Option<bool>,
    /// The last packet identifier used towards this connection.
    next_id: u16,
    /// Readiness (edge-triggered): reads and writes are tried until they would block.
    readable: bool,
    writable: bool,
    /// Listed in [`Floor::to_write`].
    dirty: bool,
    /// (group, filter) of each subscription, to remove them when the connection closes.
    subs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The forwarder: a listener, the connections (slots), the subscriptions.
#[derive(Debug)]
struct Floor {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    subs: Subscriptions,
    /// Bytes waiting in all output buffers.
    queued: usize,
    /// Connections that may have more to read, and with output to flush.
    to_read: Vec<usize>,
    to_write: Vec<usize>,
    /// Scratch list of a message's deliveries.
    targets: Vec<(usize, u8)>,
}

impl Floor {
    fn bind(addr: SocketAddr) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            subs: Subscriptions::default(),
            queued: 0,
            to_read: Vec::new(),
            to_write: Vec::new(),
            targets: Vec::new(),
        })
    }

    /// The poll loop: wait for readiness (or not, while reads are pending and output
    /// is below the high-water mark), read once from each readable connection and
    /// handle its frames, then flush every output buffer that can be.
    fn run(&mut self) -> io::Error {
        let mut events = Events::with_capacity(1024);
        loop {
            let busy = !self.to_read.is_empty() && self.queued < HIGH_WATER;
            match self.poll.poll(&mut events, busy.then_some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return e,
            }
            for ev in &events {
                if ev.token() == LISTENER {
                    self.accept();
                    continue;
                }
                let i = ev.token().0 - 1;
                let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
                    continue;
                };
                if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !c.readable {
                    c.readable = true;
                    self.to_read.push(i);
                }
                if ev.is_writable() || ev.is_write_closed() {
                    c.writable = true;
                }
            }
            let mut list = std::mem::take(&mut self.to_read);
            list.retain(|&i| self.queued >= HIGH_WATER || self.read(i));
            self.to_read = list;
            let mut list = std::mem::take(&mut self.to_write);
            list.retain(|&i| self.flush(i));
            self.to_write = list;
        }
    }

    fn accept(&mut self) {
        loop {
            let mut sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("mqtt-floor: accept: {e}");
                    return;
                }
            };
            let _ = sock.set_nodelay(true);
            let i = self.free.pop().unwrap_or(self.conns.len());
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut sock, Token(i + 1), interest)
                .is_err()
            {
                if i < self.conns.len() {
                    self.free.push(i);
                }
                continue;
            }
            let conn = Conn {
                sock,
                rbuf: Vec::new(),
                filled: 0,
                out: Vec::new(),
                sent: 0,
                v5: None,
                next_id: 0,
                readable: false,
                writable: true,
                dirty: false,
                subs: Vec::new(),
            };
            match self.conns.get_mut(i) {
                Some(slot) => *slot = Some(conn),
                None => self.conns.push(Some(conn)),
            }
        }
    }

    fn close(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        for (group, filter) in &c.subs {
            self.subs.remove(group, filter, i);
        }
        self.queued -= c.out.len() - c.sent;
        self.to_read.retain(|&j| j != i);
        self.to_write.retain(|&j| j != i);
        self.free.push(i);
    }

    /// One read from connection `i`, and its whole frames handled; whether it may have
    /// more to read.
    fn read(&mut self, i: usize) -> bool {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return false;
        };
        if !c.readable {
            return false;
        }
        // Allocated at the first read; a frame larger than it grows it (`frames`), so
        // there is always room after the bytes kept.
        if c.rbuf.len() < READ_SIZE {
            c.rbuf.resize(READ_SIZE, 0);
        }
        let room = c.rbuf.len() - c.filled;
        match c.sock.read(c.rbuf.get_mut(c.filled..).unwrap_or_default()) {
            Ok(0) => {
                self.close(i);
                return false;
            }
            // A short read emptied the socket: the next data brings a new event (Linux,
            // edge-triggered), so no read is spent on learning that it would block.
            Ok(n) => {
                c.filled += n;
                c.readable = n == room;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => {
                self.close(i);
                return false;
            }
        }
        let more = c.readable;
        if self.frames(i).is_err() {
            self.close(i);
            return false;
        }
        more
    }

    /// Handles the whole frames in connection `i`'s read buffer.
    fn frames(&mut self, i: usize) -> Result<(), Close> {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut c.rbuf);
        let filled = c.filled;
        let mut pos = 0;
        let mut need = 0;
        let mut result = Ok(());
        while let Some(b) = buf.get(pos..filled).filter(|b| !b.is_empty()) {
            match frame_len(b) {
                Ok(Some((header, total))) if total <= b.len() => {
                    result = self.handle(i, &b[..total], header);
                    if result.is_err() {
                        break;
                    }
                    pos += total;
                }
                Ok(Some((_, total))) => {
                    need = total;
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            buf.copy_within(pos..filled, 0);
            c.filled = filled - pos;
            if need > buf.len() {
                buf.resize(need, 0);
            }
            c.rbuf = buf;
        }
        result
    }

    /// Appends `bytes` to connection `i`'s output.
    fn send(&mut self, i: usize, bytes: &[u8]) {
        if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            c.out.extend_from_slice(bytes);
            self.queued += bytes.len();
            if !c.dirty {
                c.dirty = true;
                self.to_write.push(i);
            }
        }
    }

    /// One frame from connection `i`.
    fn handle(&mut self, i: usize, frame: &[u8], header: usize) -> Result<(), Close> {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return Ok(());
        };
        let first = frame.first().copied().unwrap_or_default();
        let body = frame.get(header..).unwrap_or_default();
        let Some(v5) = c.v5 else {
            if first != 0x10 {
                return Err(Close);
            }
            let v5 = parse_connect(body)?;
            c.v5 = Some(v5);
            // Accepted, no session present; 5.0 adds an empty property list.
            self.send(
                i,
                if v5 {
                    &[0x20, 3, 0, 0, 0]
                } else {
                    &[0x20, 2, 0, 0]
                },
            );
            return Ok(());
        };
        match first {
            0x30..=0x3f => self.publish(i, Publish::parse(frame, header, v5)?),
            // PUBACK, PUBCOMP from a subscriber: nothing is kept in flight.
            0x40 | 0x70 => u16_at(body, 0).map(drop),
            // PUBREC from a subscriber: release.
            0x50 => {
                let [hi, lo] = u16_at(body, 0)?.to_be_bytes();
                self.send(i, &[0x62, 2, hi, lo]);
                Ok(())
            }
            // PUBREL from a publisher: complete.
            0x62 => {
                let [hi, lo] = u16_at(body, 0)?.to_be_bytes();
                self.send(i, &[0x70, 2, hi, lo]);
                Ok(())
            }
            0x82 => self.subscribe(i, body, v5),
            0xc0 if body.is_empty() => {
                self.send(i, &[0xd0, 0]);
                Ok(())
            }
            // DISCONNECT, and everything not handled.
            _ => Err(Close),
        }
    }

    fn publish(&mut self, i: usize, p: Publish<'_>) -> Result<(), Close> {
        let mut targets = std::mem::take(&mut self.targets);
        self.subs.route(p.topic, p.qos, &mut targets);
        for &(j, qos) in &targets {
            let Some(c) = self.conns.get_mut(j).and_then(Option::as_mut) else {
                continue;
            };
            let before = c.out.len();
            let id = if qos > 0 {
                c.next_id = c.next_id.wrapping_add(1).max(1);
                c.next_id
            } else {
                0
            };
            p.write(&mut c.out, qos, id, c.v5 == Some(true));
            self.queued += c.out.len() - before;
            if !c.dirty {
                c.dirty = true;
                self.to_write.push(j);
            }
        }
        targets.clear();
        self.targets = targets;
        let [hi, lo] = p.id.to_be_bytes();
        match p.qos {
            1 => self.send(i, &[0x40, 2, hi, lo]),
            2 => self.send(i, &[0x50, 2, hi, lo]),
            _ => {}
        }
        Ok(())
    }

    fn subscribe(&mut self, i: usize, body: &[u8], v5: bool) -> Result<(), Close> {
        let id = u16_at(body, 0)?;
        let mut at = 2;
        if v5 {
            let (len, n) = varint(body.get(at..).ok_or(Close)?)?;
            at += n + len;
        }
        let mut ack = vec![0x90];
        let mut codes = Vec::new();
        while at < body.len() {
            let len = usize::from(u16_at(body, at)?);
            let filter = body.get(at + 2..at + 2 + len).ok_or(Close)?;
            let qos = body.get(at + 2 + len).ok_or(Close)? & 3;
            at += 3 + len;
            let (group, filter) = split_share(filter)?;
            if qos == 3 {
                return Err(Close);
            }
            self.subs.add(group, filter, Sub { conn: i, qos });
            if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
                let key = (group.to_vec(), filter.to_vec());
                if !c.subs.contains(&key) {
                    c.subs.push(key);
                }
            }
            codes.push(qos);
        }
        if id == 0 || codes.is_empty() {
            return Err(Close);
        }
        put_varint(&mut ack, 2 + usize::from(v5) + codes.len());
        ack.extend_from_slice(&id.to_be_bytes());
        if v5 {
            ack.push(0);
        }
        ack.extend_from_slice(&codes);
        self.send(i, &ack);
        Ok(())
    }

    /// Writes what connection `i` has to write, as far as the socket takes it; whether
    /// some is left.
    fn flush(&mut self, i: usize) -> bool {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return false;
        };
        if !c.writable {
            return true;
        }
        let mut failed = false;
        while c.sent < c.out.len() {
            let left = c.out.len() - c.sent;
            match c.sock.write(c.out.get(c.sent..).unwrap_or_default()) {
                Ok(n) if n > 0 => {
                    c.sent += n;
                    self.queued -= n;
                    // A short write filled the socket: the next event says when it
                    // has room (as for reads).
                    if n < left {
                        c.writable = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close(i);
            return false;
        }
        if c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
            c.dirty = false;
            return false;
        }
        if c.sent > c.out.len() / 2 {
            c.out.drain(..c.sent);
            c.sent = 0;
        }
        true
    }
}

const USAGE: &str = "usage: mqtt-floor [--listen ADDR]   (default 127.0.0.1:1883)\n\n\
    The benchmark floor of issue 18: a single-threaded MQTT 3.1.1/5.0 forwarder that \
    parses and copies frames. Not a broker: no sessions, persistence, retained messages \
    or authentication.";

fn main() -> ExitCode {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 1883));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next(),
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => other.strip_prefix("--listen=").map(str::to_owned),
        };
        match value.map(|v| v.parse()) {
            Some(Ok(a)) => addr = a,
            _ => {
                eprintln!("mqtt-floor: bad argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match Floor::bind(addr) {
        Ok(mut floor) => {
            let e = floor.run();
            eprintln!("mqtt-floor: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mqtt-floor: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches(b"bench/fan-in/#", b"bench/fan-in/3"));
        assert!(matches(b"bench/fan-in/#", b"bench/fan-in"));
        assert!(matches(b"a/+/c", b"a/b/c"));
        assert!(!matches(b"a/+/c", b"a/b/d"));
        assert!(!matches(b"a/+", b"a/b/c"));
        assert!(!matches(b"#", b"$SYS/x"));
        assert!(valid_filter(b"a/+/#"));
        assert!(!valid_filter(b"a/b#"));
        assert!(!valid_filter(b"a/#/b"));
        assert!(!valid_filter(b"a+/b"));
        assert!(matches!(
            split_share(b"$share/g/bench/#"),
            Ok((b"g", b"bench/#"))
        ));
        assert!(split_share(b"$share//x").is_err());
    }

    #[test]
    fn frames_are_measured_or_refused() {
        assert!(matches!(frame_len(&[0x30]), Ok(None)));
        assert!(matches!(frame_len(&[0x30, 0x80]), Ok(None)));
        assert!(matches!(frame_len(&[0x30, 5]), Ok(Some((2, 7)))));
        assert!(matches!(frame_len(&[0x30, 0x80, 0x01]), Ok(Some((3, 131)))));
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f]).is_err()); // over MAX_FRAME
    }

    #[test]
    fn publish_is_copied_or_rebuilt() {
        // 3.1.1 QoS 1, topic "a/b", id 7, payload "xy".
        let frame = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'x', b'y'];
        let p = Publish::parse(&frame, 2, false)
            .map_err(|_| "parse")
            .unwrap();
        let mut out = Vec::new();
        p.write(&mut out, 1, 0x0102, false);
        assert_eq!(out, [0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'x', b'y']);
        out.clear();
        p.write(&mut out, 0, 0, false);
        assert_eq!(out, [0x30, 7, 0, 3, b'a', b'/', b'b', b'x', b'y']);
        out.clear();
        p.write(&mut out, 0, 0, true);
        assert_eq!(out, [0x30, 8, 0, 3, b'a', b'/', b'b', 0, b'x', b'y']);
        // Truncated and QoS 3 frames are refused, not a panic.
        for bad in [
            &frame[..5],
            &[0x36, 3, 0, 1, b'a'][..],
            &[0x32, 4, 0, 1, b'a', 0][..],
        ] {
            assert!(Publish::parse(bad, 2, false).is_err());
        }
    }
}
