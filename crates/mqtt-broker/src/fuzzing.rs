//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature). Not a stable
//! API, and not built without the feature.
//!
//! [`serve_bytes`] serves one connection exactly as the accept loop serves a TCP socket
//! (`connection::serve`, from CONNECT to close), but over an in-memory stream, so that
//! a fuzz target runs without sockets, on a current-thread runtime whose clock may be
//! paused.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Connect, Decoder, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use crate::{
    Auth, Config,
    connection::{self, Duplex},
    shared::Shared,
};

/// Room in each direction of an in-memory connection.
const PIPE: usize = 64 * 1024;

/// The peer address the broker sees.
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

/// How long a connection may take to end once its client has sent everything and
/// half-closed, and how long the well-behaved client may take. Virtual time when the
/// runtime's clock is paused, so these cost nothing.
const LIMIT: Duration = Duration::from_secs(600);

/// The topic the well-behaved client subscribes and publishes to.
const CHECK_TOPIC: &str = "fuzz/check";

/// Serves a connection whose client sends `input`, half-closes and reads until the
/// broker closes; then checks that a well-behaved client still connects, subscribes
/// and receives its own message from the same broker state.
///
/// The first byte of `input`, `mode`, says how the rest (the byte stream) is cut into
/// writes: `mode` 0 writes it whole; otherwise each write is 1 to `mode` bytes long,
/// the lengths drawn from an xorshift seeded with `mode`. A fresh broker state (default [`Config`], anonymous access)
/// serves each call.
///
/// # Panics
/// If the broker panics; if the connection does not end within ten (virtual) minutes
/// of its client's end of stream; if the well-behaved client's round trip fails.
///
/// # Cancel safety
/// Not cancel safe: dropping the future part-way drops the broker state with it.
pub async fn serve_bytes(input: &[u8]) {
    let shared = Arc::new(Shared::new(Config::default(), Auth::default().into()));
    let (mode, stream) = input.split_first().map_or((0, &[][..]), |(&m, s)| (m, s));

    let (client, server) = pipe();
    let (mut tx, mut rx) = client;
    let write = async move {
        for chunk in chunks(mode, stream) {
            if tx.write_all(chunk).await.is_err() {
                break;
            }
            // Let the broker read this write on its own before the next one.
            tokio::task::yield_now().await;
        }
        // Dropping the write side is the client's end of stream.
    };
    let read = async move {
        let mut sink = [0u8; 4096];
        while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let ended = tokio::time::timeout(LIMIT, async {
        tokio::join!(
            connection::serve(
                Arc::clone(&shared),
                server,
                connection::Origin::tcp(&shared, PEER)
            ),
            write,
            read
        )
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection did not end after its client's end of stream"
    );

    let version = if mode % 2 == 0 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    };
    let (client, server) = pipe();
    let check = async move {
        let ok = tokio::time::timeout(LIMIT, round_trip(client, version)).await;
        matches!(ok, Ok(Ok(true)))
    };
    let origin = connection::Origin::tcp(&shared, PEER);
    let ((), served) = tokio::join!(
        connection::serve(Arc::clone(&shared), server, origin),
        check
    );
    assert!(served, "the broker no longer serves a well-behaved client");
}

/// How [`serve_bytes`] cuts a stream into writes (`mode` 1: one byte at a time).
/// `tests/it/fuzz.rs` replays the seeds over TCP with a copy of this.
fn chunks(mode: u8, stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = stream;
    let mut state = u32::from(mode) | 0x100;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = if mode == 0 {
            rest.len()
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + state as usize % usize::from(mode)
        };
        let (head, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

/// A client's ends (write, read) and the server's stream of one in-memory connection.
fn pipe() -> ((DuplexStream, DuplexStream), Pipe) {
    let (client_tx, server_rx) = tokio::io::duplex(PIPE);
    let (server_tx, client_rx) = tokio::io::duplex(PIPE);
    (
        (client_tx, client_rx),
        Pipe {
            rx: server_rx,
            tx: server_tx,
        },
    )
}

/// A well-behaved client: CONNECT (Clean Start), SUBSCRIBE, PUBLISH to what it
/// subscribed to, and wait for its own message; then DISCONNECT. `Ok(true)` if all
/// went as it should.
async fn round_trip(
    (mut tx, mut rx): (DuplexStream, DuplexStream),
    version: ProtocolVersion,
) -> io::Result<bool> {
    let mut decoder = Decoder::with_version(version);
    let mut buf = BytesMut::new();
    let Ok(id) = ByteStr::try_from("fuzz-check".to_owned()) else {
        return Ok(false);
    };
    send(&mut tx, version, Connect::new(version, id).into()).await?;
    match next(&mut rx, &mut decoder, &mut buf).await? {
        Some(Packet::ConnAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => {}
        _ => return Ok(false),
    }
    let topic = ByteStr::from_static(CHECK_TOPIC);
    let subscribe = Subscribe::new(PacketId::MIN, topic.clone(), QoS::AtMostOnce);
    send(&mut tx, version, subscribe.into()).await?;
    if !matches!(
        next(&mut rx, &mut decoder, &mut buf).await?,
        Some(Packet::SubAck(_))
    ) {
        return Ok(false);
    }
    let payload = Bytes::from_static(b"alive");
    send(
        &mut tx,
        version,
        Publish::new(topic.clone(), payload.clone()).into(),
    )
    .await?;
    // Skip what else arrives (a retained message the fuzzed client left, say).
    loop {
        match next(&mut rx, &mut decoder, &mut buf).await? {
            Some(Packet::Publish(p)) if p.topic == topic && p.payload == payload => break,
            Some(_) => {}
            None => return Ok(false),
        }
    }
    send(
        &mut tx,
        version,
        Disconnect::new(ReasonCode::SUCCESS).into(),
    )
    .await?;
    Ok(true)
}

async fn send(tx: &mut DuplexStream, version: ProtocolVersion, packet: Packet) -> io::Result<()> {
    let mut out = BytesMut::new();
    packet
        .encode(version, &mut out)
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    tx.write_all(&out).await
}

/// The next packet from the broker; `None` once it closes the connection.
async fn next(
    rx: &mut DuplexStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> io::Result<Option<Packet>> {
    loop {
        if let Some(p) = decoder
            .decode(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            return Ok(Some(p));
        }
        if rx.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The server's end of an in-memory connection: it reads what the client wrote on one
/// pipe and writes to the client on another, so that its read and write sides borrow
/// apart, as a TCP stream's do.
struct Pipe {
    rx: DuplexStream,
    tx: DuplexStream,
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tx).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tx).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tx).poll_shutdown(cx)
    }
}

impl Duplex for Pipe {
    type Read<'a> = &'a mut DuplexStream;
    type Write<'a> = &'a mut DuplexStream;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        (&mut self.rx, &mut self.tx)
    }
}
