//! WebSocket listeners (RFC 6455; MQTT's section 6): the HTTP upgrade, then a byte
//! stream of MQTT packets carried in binary frames.
//!
//! The upgrade request is read into a bounded buffer (`MAX_REQUEST`) and answered with
//! the subprotocol `mqtt` (or `mqttv3.1`) when the client offers it; a request for
//! another path is answered 404. The accept key is tungstenite's
//! (`derive_accept_key`).
//!
//! After it, [`WsStream`] is a thin frame layer of our own, holding no buffer: a read
//! fills the caller's buffer from the socket and unmasks the frames' payloads in place,
//! dropping their headers; a write sends one frame header and the caller's bytes with
//! one vectored write. So an MQTT packet may span frames and a frame may hold several
//! packets, and an idle connection keeps nothing but a few words of frame state (see
//! decision 0015: tokio-tungstenite keeps its read buffer and the largest message it
//! wrote for the life of the connection). A Ping is answered with a Pong, a Close with a
//! Close, and the connection ends after it; a text frame, an unmasked frame or a frame
//! or message longer than the limit (the largest MQTT packet plus `FRAME_SLACK`) is a
//! protocol error that closes it, with a Close frame saying why.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest upgrade request read, headers included.
const MAX_REQUEST: usize = 8 * 1024;
/// How much a WebSocket frame or message may exceed the largest MQTT packet: a frame may
/// hold several small packets beside a large one.
const FRAME_SLACK: u64 = 4 * 1024;
/// The largest frame written; a larger write goes out in several.
const MAX_FRAME_OUT: usize = 64 * 1024;

/// The longest frame or message accepted from a client whose packets are at most
/// `max_packet_size` bytes.
pub(crate) fn frame_limit(max_packet_size: u32) -> u64 {
    u64::from(max_packet_size) + FRAME_SLACK
}

/// Reads the upgrade request on `stream` and answers it: the stream, upgraded, or an
/// error after an HTTP error response.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    limit: u64,
) -> io::Result<WsStream<S>> {
    let mut buf = BytesMut::with_capacity(1024);
    let (len, answer) = loop {
        if buf.len() >= MAX_REQUEST {
            refuse(&mut stream, "431 Request Header Fields Too Large", "").await;
            return Err(invalid("upgrade request too long"));
        }
        buf.reserve(1024.min(MAX_REQUEST - buf.len()));
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => break (len, answer(&request, path)),
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                refuse(&mut stream, "400 Bad Request", "").await;
                return Err(invalid_owned(format!("upgrade request: {e}")));
            }
        }
    };
    let response = match answer {
        Ok(response) => response,
        Err((status, extra, why)) => {
            refuse(&mut stream, status, extra).await;
            return Err(invalid(why));
        }
    };
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // What the client sent behind its request (its first frames, if it did not wait).
    buf.advance(len);
    let early = if buf.is_empty() { BytesMut::new() } else { buf };
    Ok(WsStream {
        inner: stream,
        early,
        rx: Reader::default(),
        tx: Writer::default(),
        limit,
    })
}

type Refusal = (&'static str, &'static str, &'static str);

/// The 101 response to a valid upgrade request for `path`, or the status to refuse with,
/// an extra header and why.
fn answer(request: &httparse::Request<'_, '_>, path: &str) -> Result<String, Refusal> {
    let bad = |why| ("400 Bad Request", "", why);
    if request.method != Some("GET") || request.version != Some(1) {
        return Err(bad("not an HTTP/1.1 GET"));
    }
    let asked = request.path.unwrap_or("").split('?').next().unwrap_or("");
    if asked != path {
        return Err(("404 Not Found", "", "another path than the listener's"));
    }
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    if !values("upgrade").any(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(bad("no Upgrade: websocket"));
    }
    if !values("connection").any(|v| v.eq_ignore_ascii_case("upgrade")) {
        return Err(bad("no Connection: Upgrade"));
    }
    if !values("sec-websocket-version").any(|v| v == "13") {
        return Err((
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "not WebSocket version 13",
        ));
    }
    let Some(key) = values("sec-websocket-key").next().filter(|k| k.len() == 24) else {
        return Err(bad("no valid Sec-WebSocket-Key"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // [MQTT-6.0.0-3]: the client includes "mqtt" in its subprotocols; MQTT 3.1 clients
    // used "mqttv3.1". A client that offers neither (or none) is answered without one.
    let offered: Vec<&str> = values("sec-websocket-protocol").collect();
    let protocol = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.contains(p))
        .map_or(String::new(), |p| {
            format!("Sec-WebSocket-Protocol: {p}\r\n")
        });
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    ))
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, extra: &str) {
    let response =
        format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn invalid_owned(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455, section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;

/// An upgraded WebSocket connection as a byte stream of MQTT (see the module).
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    inner: S,
    /// Bytes read with the upgrade request, taken before the socket's.
    early: BytesMut,
    rx: Reader,
    tx: Writer,
    /// The longest frame or message accepted.
    limit: u64,
}

/// The read side's frame state.
#[derive(Debug, Default)]
struct Reader {
    /// A frame header's bytes so far.
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current data frame still to come, its mask, and where in
    /// the mask the next byte is.
    left: u64,
    mask: [u8; 4],
    mask_at: usize,
    /// The data message so far (its frames up to FIN), and whether one is open.
    message: u64,
    in_message: bool,
    /// A control frame whose payload is being read.
    control: Option<Box<ControlIn>>,
    /// A Close came: nothing more is read.
    closed: bool,
}

#[derive(Debug)]
struct ControlIn {
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    /// Payload bytes read so far.
    have: usize,
    data: [u8; 125],
}

/// The write side's frame state.
#[derive(Debug, Default)]
struct Writer {
    /// The header of the data frame being written, and how much of it is out.
    head: [u8; 10],
    head_len: usize,
    head_sent: usize,
    /// Payload bytes of that frame still to write.
    left: usize,
    /// A control frame (Pong, Close) to send between data frames.
    control: Option<Box<ControlOut>>,
    /// A Close to send once the part-written control frame before it is out: a frame
    /// begun is finished, never overwritten.
    close_after: Option<u16>,
    close_sent: bool,
}

#[derive(Debug)]
struct ControlOut {
    bytes: [u8; 127],
    len: usize,
    sent: usize,
    close: bool,
}

impl Writer {
    /// No data frame is part-written.
    fn between_frames(&self) -> bool {
        self.left == 0 && self.head_sent == self.head_len
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        if self.close_sent || self.control.as_ref().is_some_and(|c| c.close) {
            // Nothing goes after a Close.
            return;
        }
        if self.control.as_ref().is_some_and(|c| c.sent > 0) {
            // A Pong part-written is finished first. A Ping behind it goes unanswered
            // (RFC 6455 5.5.3 lets an endpoint answer only some of a burst of Pings);
            // a Close follows it.
            if opcode == OP_CLOSE {
                let code = match payload {
                    [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                    _ => CLOSE_NORMAL,
                };
                self.close_after.get_or_insert(code);
            }
            return;
        }
        let mut bytes = [0u8; 127];
        let len = payload.len().min(125);
        bytes[0] = 0x80 | opcode;
        bytes[1] = len as u8;
        for (to, from) in bytes.iter_mut().skip(2).zip(payload.iter().take(len)) {
            *to = *from;
        }
        self.control = Some(Box::new(ControlOut {
            bytes,
            len: 2 + len,
            sent: 0,
            close: opcode == OP_CLOSE,
        }));
    }

    fn queue_close(&mut self, code: u16) {
        self.queue_control(OP_CLOSE, &code.to_be_bytes());
    }

    /// Starts a data frame of `len` bytes.
    fn start(&mut self, len: usize) {
        let mut head = [0u8; 10];
        head[0] = 0x80 | OP_BINARY;
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            for (to, from) in head.iter_mut().skip(2).zip(short.to_be_bytes()) {
                *to = from;
            }
            4
        } else {
            head[1] = 127;
            for (to, from) in head.iter_mut().skip(2).zip((len as u64).to_be_bytes()) {
                *to = from;
            }
            10
        };
        *self = Self {
            head,
            head_len,
            head_sent: 0,
            left: len,
            control: self.control.take(),
            close_after: self.close_after,
            close_sent: self.close_sent,
        };
    }
}

impl<S> WsStream<S> {
    /// A stream whose frames start at the next byte (a connection back from parking).
    pub(crate) fn resumed(inner: S, limit: u64) -> Self {
        Self {
            inner,
            early: BytesMut::new(),
            rx: Reader::default(),
            tx: Writer::default(),
            limit,
        }
    }

    /// Between frames both ways, owing nothing and holding nothing: all the frame
    /// state is its defaults, so the socket alone can stand for it (parking).
    pub(crate) fn at_rest(&self) -> bool {
        let rx = &self.rx;
        self.early.is_empty()
            && rx.head_len == 0
            && rx.left == 0
            && rx.control.is_none()
            && !rx.in_message
            && !rx.closed
            && self.tx.between_frames()
            && self.tx.control.is_none()
            && self.tx.close_after.is_none()
            && !self.tx.close_sent
    }

    /// The longest frame or message it accepts.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The stream under the frames.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Sends the pending control frame, if any, when no data frame is part-written.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.tx.between_frames() {
            return Poll::Ready(Ok(()));
        }
        while let Some(control) = &mut self.tx.control {
            let rest = control
                .bytes
                .get(control.sent..control.len)
                .unwrap_or_default();
            if rest.is_empty() {
                self.tx.close_sent |= control.close;
                self.tx.control = None;
                if let Some(code) = self.tx.close_after.take() {
                    self.tx.queue_close(code);
                    continue;
                }
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            control.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl Reader {
    /// Turns the raw bytes in `raw` into payload, in place: returns how many payload
    /// bytes now start `raw`. Control frames are acted on through `tx`.
    fn decode(&mut self, raw: &mut [u8], limit: u64, tx: &mut Writer) -> io::Result<usize> {
        let mut at = 0;
        let mut out = 0;
        while at < raw.len() && !self.closed {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(raw.len() - at);
                raw.copy_within(at..at + n, out);
                if let Some(payload) = raw.get_mut(out..out + n) {
                    for b in payload {
                        *b ^= self.mask.get(self.mask_at).copied().unwrap_or(0);
                        self.mask_at = (self.mask_at + 1) & 3;
                    }
                }
                at += n;
                out += n;
                self.left -= n as u64;
                continue;
            }
            if let Some(control) = &mut self.control {
                let have = control.have;
                let take = (control.len - have).min(raw.len() - at);
                for (i, b) in raw.iter().skip(at).take(take).enumerate() {
                    if let Some(slot) = control.data.get_mut(have + i) {
                        *slot = b ^ control.mask.get((have + i) & 3).copied().unwrap_or(0);
                    }
                }
                at += take;
                control.have += take;
                if control.have == control.len {
                    if let Some(control) = self.control.take() {
                        self.on_control(control.opcode, control.data.get(..control.len), tx);
                    }
                }
                continue;
            }
            let Some(&byte) = raw.get(at) else { break };
            at += 1;
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = byte;
            }
            self.head_len += 1;
            let Some(head) = parse_head(self.head.get(..self.head_len).unwrap_or_default()) else {
                continue;
            };
            self.head_len = 0;
            if let Err((code, why)) = self.on_head(head, limit, tx) {
                tx.queue_close(code);
                self.closed = true;
                return Err(invalid(why));
            }
        }
        Ok(out)
    }

    /// A frame header read: checks it and sets up for its payload.
    fn on_head(
        &mut self,
        head: Head,
        limit: u64,
        tx: &mut Writer,
    ) -> Result<(), (u16, &'static str)> {
        if head.rsv != 0 {
            return Err((CLOSE_PROTOCOL_ERROR, "WebSocket: reserved bits set"));
        }
        let Some(mask) = head.mask else {
            // RFC 6455 section 5.1: a server closes on an unmasked frame from a client.
            return Err((
                CLOSE_PROTOCOL_ERROR,
                "WebSocket: unmasked frame from a client",
            ));
        };
        match head.opcode {
            OP_BINARY | OP_CONTINUATION => {
                if (head.opcode == OP_BINARY) == self.in_message {
                    return Err((CLOSE_PROTOCOL_ERROR, "WebSocket: frames out of order"));
                }
                self.message = if head.opcode == OP_BINARY {
                    head.len
                } else {
                    self.message.saturating_add(head.len)
                };
                if head.len > limit || self.message > limit {
                    return Err((CLOSE_TOO_BIG, "WebSocket: frame or message too long"));
                }
                self.in_message = !head.fin;
                self.left = head.len;
                self.mask = mask;
                self.mask_at = 0;
                Ok(())
            }
            // [MQTT-6.0.0-1]: MQTT travels in binary frames; any other data frame closes
            // the connection.
            OP_TEXT => Err((CLOSE_UNSUPPORTED_DATA, "WebSocket: a text frame")),
            OP_CLOSE | OP_PING | OP_PONG => {
                if !head.fin || head.len > 125 {
                    return Err((
                        CLOSE_PROTOCOL_ERROR,
                        "WebSocket: control frame fragmented or long",
                    ));
                }
                if head.len == 0 {
                    self.on_control(head.opcode, Some(&[]), tx);
                } else {
                    self.control = Some(Box::new(ControlIn {
                        opcode: head.opcode,
                        mask,
                        len: head.len as usize,
                        have: 0,
                        data: [0; 125],
                    }));
                }
                Ok(())
            }
            _ => Err((CLOSE_PROTOCOL_ERROR, "WebSocket: unknown opcode")),
        }
    }

    fn on_control(&mut self, opcode: u8, payload: Option<&[u8]>, tx: &mut Writer) {
        let payload = payload.unwrap_or_default();
        match opcode {
            OP_PING => tx.queue_control(OP_PONG, payload),
            OP_CLOSE => {
                // Echo the client's status code, and read nothing more.
                let code = match payload {
                    [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                    _ => CLOSE_NORMAL,
                };
                tx.queue_close(code);
                self.closed = true;
            }
            _ => {}
        }
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// A whole frame header from the start of `bytes`, or `None` if more is needed (the
/// caller feeds it one byte at a time, so `bytes` is never longer than a header).
fn parse_head(bytes: &[u8]) -> Option<Head> {
    let (&first, rest) = bytes.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let masked = second & 0x80 != 0;
    let (len, rest) = match second & 0x7F {
        126 => {
            let (ext, rest) = rest.split_first_chunk::<2>()?;
            (u64::from(u16::from_be_bytes(*ext)), rest)
        }
        127 => {
            let (ext, rest) = rest.split_first_chunk::<8>()?;
            // The most significant bit must be 0; a length that large is refused by the
            // limit anyway.
            (u64::from_be_bytes(*ext), rest)
        }
        short => (u64::from(short), rest),
    };
    let mask = if masked {
        Some(*rest.first_chunk::<4>()?)
    } else {
        None
    };
    Some(Head {
        fin: first & 0x80 != 0,
        rsv: first & 0x70,
        opcode: first & 0x0F,
        mask,
        len,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // A Pong or Close owed goes out as soon as no data frame is part-written.
            // While one is being written and the socket takes no more, no more frames
            // are read: a client that sends Pings and reads nothing gets no further
            // than one Pong into a full socket, and its input waits (keep-alive ends
            // it), rather than have each of its Pings answered for as long as it keeps
            // the socket full. After the client's Close, the end of the stream is
            // reported at once all the same.
            match this.poll_control(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.tx.control.is_some() && !this.rx.closed => {
                    return Poll::Pending;
                }
                _ => {}
            }
            if this.rx.closed || buf.remaining() == 0 {
                // After a Close: the end of the stream.
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            if this.early.is_empty() {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == start {
                    return Poll::Ready(Ok(()));
                }
            } else {
                let n = this.early.len().min(buf.remaining());
                buf.put_slice(this.early.get(..n).unwrap_or_default());
                this.early.advance(n);
                if this.early.is_empty() {
                    this.early = BytesMut::new();
                }
            }
            let end = buf.filled().len();
            let raw = buf.filled_mut().get_mut(start..end).unwrap_or_default();
            let payload = this.rx.decode(raw, this.limit, &mut this.tx);
            let payload = match payload {
                Ok(n) => n,
                Err(e) => {
                    buf.set_filled(start);
                    // Say why before the connection ends (best effort).
                    let _ = this.poll_control(cx);
                    return Poll::Ready(Err(e));
                }
            };
            buf.set_filled(start + payload);
            if payload > 0 {
                return Poll::Ready(Ok(()));
            }
            // Only headers or control frames: read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.tx.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.tx.between_frames() {
            ready!(this.poll_control(cx))?;
            this.tx.start(buf.len().min(MAX_FRAME_OUT));
        }
        loop {
            let payload = buf.get(..this.tx.left.min(buf.len())).unwrap_or_default();
            let head = this
                .tx
                .head
                .get(this.tx.head_sent..this.tx.head_len)
                .unwrap_or_default();
            let n = if head.is_empty() {
                ready!(Pin::new(&mut this.inner).poll_write(cx, payload))?
            } else {
                let slices = [io::IoSlice::new(head), io::IoSlice::new(payload)];
                ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(head.len());
            this.tx.head_sent += from_head;
            let from_payload = n - from_head;
            if from_payload > 0 {
                this.tx.left -= from_payload;
                return Poll::Ready(Ok(from_payload));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tx.close_sent {
            // After a Pong owed, or in its place if it is not begun (nothing is queued
            // after a Close already owed).
            this.tx.queue_close(CLOSE_NORMAL);
        }
        ready!(this.poll_control(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Decodes `wire` fed in pieces of `step` bytes: the payload, the control frames
    /// queued, and the error if any.
    fn decode_all(wire: &[u8], step: usize, limit: u64) -> (Vec<u8>, Writer, Option<io::Error>) {
        let mut rx = Reader::default();
        let mut tx = Writer::default();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            let mut raw = piece.to_vec();
            match rx.decode(&mut raw, limit, &mut tx) {
                Ok(n) => out.extend_from_slice(&raw[..n]),
                Err(e) => return (out, tx, Some(e)),
            }
        }
        (out, tx, None)
    }

    #[test]
    fn payloads_across_frames_and_pieces() {
        let mut wire = frame(0x02, b"hello ", [1, 2, 3, 4]); // binary, not FIN
        wire.extend(frame(0x89, b"ping!", [9, 9, 9, 9])); // a ping between fragments
        wire.extend(frame(0x80, b"world", [5, 6, 7, 8])); // continuation, FIN
        wire.extend(frame(0x82, &[7u8; 300], [0xAA, 0xBB, 0xCC, 0xDD])); // 16-bit length
        wire.extend(frame(0x82, b"", [0; 4]));
        let mut expected = b"hello world".to_vec();
        expected.extend_from_slice(&[7u8; 300]);
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (out, tx, err) = decode_all(&wire, step, 1000);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(out, expected, "step {step}");
            let pong = tx.control.expect("a pong is owed");
            assert_eq!(&pong.bytes[..pong.len], b"\x8A\x05ping!");
        }
    }

    #[test]
    fn close_is_answered_and_ends_reading() {
        let mut wire = frame(0x82, b"ab", [1, 1, 1, 1]);
        wire.extend(frame(0x88, &1001u16.to_be_bytes(), [3, 3, 3, 3]));
        wire.extend(frame(0x82, b"after", [1, 1, 1, 1]));
        let (out, tx, err) = decode_all(&wire, 5, 100);
        assert!(err.is_none());
        assert_eq!(out, b"ab");
        let close = tx.control.expect("a close is owed");
        assert_eq!(&close.bytes[..close.len], b"\x88\x02\x03\xE9");
    }

    #[test]
    fn protocol_errors_close_with_a_reason() {
        let cases: [(Vec<u8>, u16); 7] = [
            (frame(0x81, b"text", [1, 2, 3, 4]), CLOSE_UNSUPPORTED_DATA),
            (vec![0x82, 0x02, b'a', b'b'], CLOSE_PROTOCOL_ERROR), // unmasked
            (frame(0x80, b"x", [0; 4]), CLOSE_PROTOCOL_ERROR),    // continuation first
            (frame(0xC2, b"x", [0; 4]), CLOSE_PROTOCOL_ERROR),    // RSV1
            (frame(0x09, b"x", [0; 4]), CLOSE_PROTOCOL_ERROR),    // fragmented ping
            (frame(0x83, b"x", [0; 4]), CLOSE_PROTOCOL_ERROR),    // reserved opcode
            (frame(0x82, &[0; 101], [0; 4]), CLOSE_TOO_BIG),
        ];
        for (wire, code) in cases {
            let (_, tx, err) = decode_all(&wire, 1, 100);
            assert!(err.is_some(), "{wire:?}");
            let close = tx.control.expect("a close is owed");
            assert_eq!(
                close.bytes[..4],
                [0x88, 0x02, (code >> 8) as u8, code as u8]
            );
        }
        // A message over the limit across fragments.
        let mut wire = frame(0x02, &[0; 60], [0; 4]);
        wire.extend(frame(0x80, &[0; 60], [0; 4]));
        assert!(decode_all(&wire, 9, 100).2.is_some());
        // A 64-bit length.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(decode_all(&huge, 3, 100).2.is_some());
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x9E3779B9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let mut wire: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = wire.first_mut() {
                // Mostly plausible first bytes.
                *first = [0x82, 0x02, 0x80, 0x89, 0x88, *first][(next() % 6) as usize];
            }
            let step = 1 + (next() % 8) as usize;
            let (out, _, _) = decode_all(&wire, step, 40);
            assert!(out.len() <= wire.len());
        }
    }

    #[test]
    fn frame_headers_written() {
        let mut w = Writer::default();
        w.start(5);
        assert_eq!(&w.head[..w.head_len], &[0x82, 5]);
        w.start(300);
        assert_eq!(&w.head[..w.head_len], &[0x82, 126, 1, 44]);
        w.start(70_000);
        assert_eq!(
            &w.head[..w.head_len],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[tokio::test]
    async fn upgrade_and_round_trip() {
        let (client, server) = tokio::io::duplex(4096);
        let serving = tokio::spawn(async move {
            let mut ws = accept(server, "/mqtt", 1000).await.unwrap();
            let mut got = [0u8; 5];
            ws.read_exact(&mut got).await.unwrap();
            ws.write_all(&got).await.unwrap();
            ws.flush().await.unwrap();
            // The client's Close ends the stream.
            let mut rest = Vec::new();
            ws.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            ws.shutdown().await.unwrap();
        });
        let mut client = client;
        let mut request = b"GET /mqtt?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\
            Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n"
            .to_vec();
        // The first frame right behind the request, in the same write.
        request.extend(frame(0x82, b"hello", [1, 2, 3, 4]));
        client.write_all(&request).await.unwrap();
        // Byte by byte: the echo may follow the response at once.
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            response.push(client.read_u8().await.unwrap());
        }
        let response = String::from_utf8_lossy(&response).into_owned();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(
            response.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
            "{response}"
        );
        let mut echo = [0u8; 7];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x82\x05hello");
        client
            .write_all(&frame(0x88, &1000u16.to_be_bytes(), [0; 4]))
            .await
            .unwrap();
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xE8]);
        serving.await.unwrap();
    }

    /// A client that sends Pings and reads nothing gets one Pong at a time: until it is
    /// out, nothing more is read (and so no more Pongs are owed).
    #[tokio::test]
    async fn reading_waits_for_an_owed_pong() {
        let (client, server) = tokio::io::duplex(64);
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let mut ws = WsStream::resumed(server, 1000);
        let mut wire = frame(0x89, &[0x55; 125], [1, 2, 3, 4]);
        wire.extend(frame(0x89, &[0x66; 125], [1, 2, 3, 4]));
        wire.extend(frame(0x82, b"data", [5, 6, 7, 8]));
        let writing = tokio::spawn(async move {
            client_wr.write_all(&wire).await.unwrap();
            client_wr
        });
        let mut got = [0u8; 4];
        // The first Pong (127 bytes) does not fit in the 64 the pipe holds.
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            ws.read_exact(&mut got),
        )
        .await;
        assert!(read.is_err(), "read on while a Pong was owed");
        assert!(ws.tx.control.as_ref().is_some_and(|c| c.sent > 0));
        // The client reads now.
        let reading = tokio::spawn(async move {
            let mut pongs = vec![0u8; 2 * 127];
            client_rd.read_exact(&mut pongs).await.unwrap();
            pongs
        });
        ws.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"data");
        let pongs = reading.await.unwrap();
        drop(writing.await.unwrap());
        assert_eq!(&pongs[..2], &[0x8A, 125]);
        assert!(pongs[2..127].iter().all(|&b| b == 0x55));
        assert_eq!(&pongs[127..129], &[0x8A, 125]);
        assert!(pongs[129..].iter().all(|&b| b == 0x66));
    }

    /// The client's Close ends the stream at once, even while the Close echoed to it
    /// cannot all be written yet.
    #[tokio::test]
    async fn a_close_ends_reading_though_its_echo_waits() {
        let (client, server) = tokio::io::duplex(2);
        let (_client_rd, mut client_wr) = tokio::io::split(client);
        let mut ws = WsStream::resumed(server, 1000);
        // Written as the broker reads (the pipe holds 2 bytes).
        let writing = tokio::spawn(async move {
            client_wr
                .write_all(&frame(0x88, &1000u16.to_be_bytes(), [1, 2, 3, 4]))
                .await
                .unwrap();
            client_wr
        });
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            ws.read_to_end(&mut rest),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        assert!(ws.tx.control.is_some(), "the echo is still owed");
        drop(writing.await.unwrap());
    }

    /// A control frame part-written is finished before anything else: a Pong queued
    /// behind it is dropped, a Close follows it.
    #[tokio::test]
    async fn a_control_frame_begun_is_finished_first() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut ws = WsStream::resumed(server, 1000);
        ws.tx.queue_control(OP_PONG, b"first");
        if let Some(c) = ws.tx.control.as_mut() {
            c.sent = 3;
        }
        ws.tx.queue_control(OP_PONG, b"second");
        ws.tx.queue_close(1001);
        ws.flush().await.unwrap();
        drop(ws);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        // What was left of the first Pong (its 3 first bytes counted as out), then the
        // Close.
        assert_eq!(rest, b"irst\x88\x02\x03\xE9");
    }

    #[tokio::test]
    async fn wrong_path_and_bad_requests_are_refused() {
        for (request, status) in [
            (
                "GET /other HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                "404",
            ),
            ("GET /mqtt HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
            (
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
                "426",
            ),
            ("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", "400"),
        ] {
            let (mut client, server) = tokio::io::duplex(4096);
            let serving = tokio::spawn(async move { accept(server, "/mqtt", 1000).await.is_err() });
            client.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            client.read_to_string(&mut response).await.unwrap();
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}")),
                "{response}"
            );
            assert!(serving.await.unwrap());
        }
        // An endless request is cut off.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move { accept(server, "/mqtt", 1000).await.is_err() });
        let mut long = b"GET /mqtt HTTP/1.1\r\n".to_vec();
        long.extend(std::iter::repeat_n(b"X-A: b\r\n".iter().copied(), 2000).flatten());
        let _ = client.write_all(&long).await;
        assert!(serving.await.unwrap());
    }
}
