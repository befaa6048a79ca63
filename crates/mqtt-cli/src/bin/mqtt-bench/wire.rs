//! The generator's side of the wire: MQTT 3.1.1 over a plain TCP socket, straight on
//! mqtt-codec, with batched reads and writes. The client library would measure itself
//! (a channel hop and a task per message); a load generator must cost the broker's
//! peer as little as possible.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::{Buf, BufMut, BytesMut};
use mqtt_codec::{
    ByteStr, Connect, DecodeError, Decoder, Packet, PacketId, ProtocolVersion, QoS, ReasonCode,
    Subscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

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

/// One generated MQTT connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) out: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) version: ProtocolVersion,
    /// How much room a read makes in `rbuf`.
    chunk: usize,
}

impl Conn {
    /// Connects (from `source` if given), sends CONNECT and waits for a successful CONNACK.
    pub(crate) async fn connect(
        broker: SocketAddr,
        source: Option<IpAddr>,
        client_id: &str,
        keep_alive: u16,
        read_buffer: usize,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let socket = if broker.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(WireError::io("socket"))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(WireError::io("bind to the source address"))?;
        }
        let stream = socket
            .connect(broker)
            .await
            .map_err(WireError::io("connect"))?;
        stream.set_nodelay(true).map_err(WireError::io("nodelay"))?;
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
        conn.send(&Packet::from(connect)).await?;
        match timeout(HANDSHAKE_TIMEOUT, conn.next_packet())
            .await
            .map_err(|_| WireError::Timeout("CONNECT"))??
        {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => Ok(conn),
            Packet::ConnAck(ack) => Err(WireError::Refused(format!(
                "connection refused: {}",
                ack.reason_code
            ))),
            other => Err(WireError::Unexpected(format!("{other:?} before CONNACK"))),
        }
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
            self.stream
                .write_all(&self.out)
                .await
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
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(WireError::Closed),
            Ok(n) => Ok(n),
            Err(e) => Err(WireError::Io {
                what: "read",
                source: e,
            }),
        }
    }

    /// Reads what the socket has without waiting: `Ok(0)` when nothing is there.
    pub(crate) fn try_read(&mut self) -> Result<usize, WireError> {
        if self.rbuf.capacity() - self.rbuf.len() < self.chunk / 4 {
            self.rbuf.reserve(self.chunk);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
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
        let _ = self.stream.shutdown().await;
    }
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
