//! The generator's side of the wire: MQTT straight on mqtt-codec, over the stream
//! [`Dialer::open`] opens (TCP, TLS or WebSocket), with batched reads and writes. The client library would measure itself
//! (a channel hop and a task per message); a load generator must cost the broker's
//! peer as little as possible.

use std::{
    fmt,
    future::Future,
    io,
    net::IpAddr,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf, BufMut, BytesMut};
use mqtt_client::BoxIo;
use mqtt_codec::{
    ByteStr, Connect, DecodeError, Decoder, Packet, PacketId, ProtocolVersion, QoS, ReasonCode,
    Subscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::target::Dialer;

/// The protocol the latency scenario speaks (the others choose with `-V`).
pub(crate) const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;

/// How long the CONNECT and SUBSCRIBE handshakes may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Read buffer of a busy connection: one read takes many packets.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// What went wrong on one generated connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// Connecting, reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The broker sent bytes that do not decode.
    #[error("the broker sent a malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// The broker sent a packet that does not fit the exchange.
    #[error("unexpected packet from the broker: {0}")]
    Unexpected(String),
    /// The broker refused the connection or the subscription.
    #[error("{0}")]
    Refused(String),
    /// The TLS or WebSocket layer could not be set up.
    #[error("{0}")]
    Transport(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// A handshake took longer than its timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl WireError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

/// The byte stream of one generated connection.
pub(crate) enum Stream {
    /// Plain TCP: the concrete type, for reads that do not wait.
    Tcp(TcpStream),
    /// TLS and/or WebSocket, boxed once per connection.
    Layered(BoxIo),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Self::Layered(_) => f.write_str("Layered"),
        }
    }
}

/// One generated MQTT connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) rbuf: BytesMut,
    pub(crate) out: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) version: ProtocolVersion,
    /// How much room a read makes in `rbuf`.
    chunk: usize,
}

impl Conn {
    /// Opens a stream (from `source` if given), sends CONNECT with the dialer's user
    /// name and password, and waits for a successful CONNACK.
    pub(crate) async fn connect(
        dialer: &Dialer,
        source: Option<IpAddr>,
        client_id: &str,
        keep_alive: u16,
        read_buffer: usize,
        version: ProtocolVersion,
        persistent: bool,
    ) -> Result<Self, WireError> {
        let stream = match timeout(HANDSHAKE_TIMEOUT, dialer.open(source)).await {
            Ok(r) => r?,
            Err(_) => return Err(WireError::Timeout("connecting")),
        };
        let mut decoder = Decoder::new();
        decoder.set_version(version);
        let mut conn = Self {
            stream,
            rbuf: BytesMut::with_capacity(read_buffer),
            out: BytesMut::new(),
            decoder,
            version,
            chunk: read_buffer.max(64),
        };
        let id = ByteStr::try_from(client_id)
            .map_err(|e| WireError::Refused(format!("client identifier {client_id:?}: {e}")))?;
        let mut connect = Connect::new(version, id);
        connect.keep_alive = keep_alive;
        if persistent {
            // A session that outlives the connection (3.1.1 Clean Session 0; 5.0 Clean
            // Start 0 and an hour's Session Expiry Interval).
            connect.clean_start = false;
            if version.is_v5() {
                connect.properties.session_expiry_interval = Some(3600);
            }
        }
        connect.username.clone_from(&dialer.username);
        connect.password.clone_from(&dialer.password);
        conn.send(&Packet::from(connect)).await?;
        match timeout(HANDSHAKE_TIMEOUT, conn.next_packet())
            .await
            .map_err(|_| WireError::Timeout("CONNECT"))??
        {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => Ok(conn),
            Packet::ConnAck(ack) => Err(refused(ack.reason_code, dialer)),
            other => Err(WireError::Unexpected(format!("{other:?} before CONNACK"))),
        }
    }

    /// The stream, what was read and not decoded yet, and the decoder: for a caller
    /// that goes on with the connection its own way (the latency scenario).
    pub(crate) fn into_parts(self) -> (Stream, BytesMut, Decoder) {
        (self.stream, self.rbuf, self.decoder)
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK granting it.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), WireError> {
        let topic = ByteStr::try_from(filter)
            .map_err(|e| WireError::Refused(format!("filter {filter:?}: {e}")))?;
        let sub = Subscribe::new(PacketId::MIN, topic, qos);
        self.send(&Packet::from(sub)).await?;
        match timeout(HANDSHAKE_TIMEOUT, self.next_packet())
            .await
            .map_err(|_| WireError::Timeout("SUBSCRIBE"))??
        {
            Packet::SubAck(ack) => match ack.reason_codes.first() {
                Some(code) if u8::from(*code) == qos as u8 => Ok(()),
                code => Err(WireError::Refused(format!(
                    "subscription to {filter:?} at QoS {} answered with {code:?}",
                    qos as u8
                ))),
            },
            other => Err(WireError::Unexpected(format!("{other:?} before SUBACK"))),
        }
    }

    /// Encodes `packet` and writes it at once.
    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), WireError> {
        self.queue(packet);
        self.flush().await
    }

    /// Encodes `packet` into the write buffer, for the next flush.
    pub(crate) fn queue(&mut self, packet: &Packet) {
        encode(packet, self.version, &mut self.out);
    }

    /// Writes what is buffered in `out`.
    pub(crate) async fn flush(&mut self) -> Result<(), WireError> {
        if !self.out.is_empty() {
            match &mut self.stream {
                Stream::Tcp(s) => s.write_all(&self.out).await,
                // TLS and WebSocket buffer: flush, or the bytes may not leave.
                Stream::Layered(s) => match s.write_all(&self.out).await {
                    Ok(()) => s.flush().await,
                    Err(e) => Err(e),
                },
            }
            .map_err(WireError::io("write"))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads until one whole packet is in; errors when the broker closes.
    pub(crate) async fn next_packet(&mut self) -> Result<Packet, WireError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(p);
            }
            self.read().await?;
        }
    }

    /// One read into the buffer; errors when the broker closes.
    pub(crate) async fn read(&mut self) -> Result<usize, WireError> {
        if self.rbuf.capacity() - self.rbuf.len() < self.chunk / 4 {
            self.rbuf.reserve(self.chunk);
        }
        let read = match &mut self.stream {
            Stream::Tcp(s) => s.read_buf(&mut self.rbuf).await,
            Stream::Layered(s) => s.read_buf(&mut self.rbuf).await,
        };
        match read {
            Ok(0) => Err(WireError::Closed),
            Ok(n) => Ok(n),
            Err(e) => Err(WireError::Io {
                what: "read",
                source: e,
            }),
        }
    }

    /// Reads what the stream has without waiting: `Ok(0)` when nothing is there.
    pub(crate) fn try_read(&mut self) -> Result<usize, WireError> {
        if self.rbuf.capacity() - self.rbuf.len() < self.chunk / 4 {
            self.rbuf.reserve(self.chunk);
        }
        let read = match &mut self.stream {
            Stream::Tcp(s) => s.try_read_buf(&mut self.rbuf),
            // One poll of a read, with a waker that does nothing: whoever waits on the
            // stream next polls it again with its own. Dropping a pending `read_buf`
            // loses nothing.
            Stream::Layered(s) => {
                let read = pin!(s.read_buf(&mut self.rbuf));
                match read.poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        };
        match read {
            Ok(0) => Err(WireError::Closed),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(WireError::Io {
                what: "read",
                source: e,
            }),
        }
    }

    /// The next packet already buffered, if a whole one is.
    pub(crate) fn buffered_packet(&mut self) -> Result<Option<Packet>, WireError> {
        Ok(self.decoder.decode(&mut self.rbuf)?)
    }

    /// Sends DISCONNECT and closes, ignoring errors: the run is over.
    pub(crate) async fn close(mut self) {
        self.queue(&Packet::Disconnect(Default::default()));
        let _ = self.flush().await;
        let _ = match &mut self.stream {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Layered(s) => s.shutdown().await,
        };
    }
}

/// The error for a refused CONNECT, in mosquitto's words, with a hint when the
/// credentials are the likely cause.
fn refused(code: ReasonCode, dialer: &Dialer) -> WireError {
    let text = mqtt_client::refusal_text(code);
    let hint = match code {
        ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::NOT_AUTHORIZED => {
            if dialer.username.is_some() || dialer.password.is_some() {
                " (check the user name and password, -u and -P)"
            } else {
                " (the broker may want a user name and password: -u and -P)"
            }
        }
        _ => "",
    };
    WireError::Refused(format!("the broker refused the connection: {text}{hint}"))
}

/// Encodes a packet the generator built itself: those always encode.
pub(crate) fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    // Every packet here is built from validated parts, so this cannot fail; a failure
    // would show as a missing message in the delivery check, not pass silently.
    let _ = packet.encode(version, out);
}

/// The 16-byte header every generated payload starts with: who sent it, its sequence
/// number, and when it was sent (nanoseconds since the generator's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) publisher: u32,
    pub(crate) seq: u32,
    pub(crate) sent_ns: u64,
}

impl Stamp {
    /// Bytes of the header; payloads are at least this long.
    pub(crate) const LEN: usize = 16;

    /// Writes the header and pads to `size` bytes.
    pub(crate) fn write(&self, size: usize, out: &mut BytesMut) {
        out.put_u32(self.publisher);
        out.put_u32(self.seq);
        out.put_u64(self.sent_ns);
        out.put_bytes(b'.', size.saturating_sub(Self::LEN));
    }

    /// Reads the header of a received payload.
    pub(crate) fn read(mut payload: &[u8]) -> Option<Self> {
        if payload.len() < Self::LEN {
            return None;
        }
        Some(Self {
            publisher: payload.get_u32(),
            seq: payload.get_u32(),
            sent_ns: payload.get_u64(),
        })
    }
}
