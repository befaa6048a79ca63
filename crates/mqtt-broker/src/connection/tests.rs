//! The connection stages: what an idle connection holds, parking and waking, and the
//! requests a takeover makes stale.

use std::sync::Arc;

use mqtt_codec::{ByteStr, Decoder, Packet, ProtocolVersion};

use crate::{Config, shared::Shared};

/// A connection costs its task (tokio's header and trailer, about 100 bytes, plus the
/// future, padded to a multiple of 128 bytes: the future is the largest of its await
/// points plus what lives across them all, so every busy stage is boxed and only
/// `hibernate` stays inline) and its session. An idle TCP connection parks and has no
/// task; other streams hibernate in theirs. These bounds, taken on a TCP stream, keep
/// a change from quietly growing what every client costs. A future above about 408
/// bytes makes the task 640.
#[test]
fn what_an_idle_connection_holds_stays_small() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let shared = Arc::new(Shared::new(Config::default(), Default::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = || async { tokio::net::TcpStream::connect(addr).await.unwrap() };
        let mut conn = super::Conn {
            shared: shared.clone(),
            handle: shared.session(&ByteStr::from_static("probe")),
            generation: 0,
            version: ProtocolVersion::V3_1_1,
            stream: stream().await,
            decoder: Decoder::new(),
            slot: None,
        };
        let hibernating = super::hibernate(&mut conn, false);
        let hibernate = size_of_val(&hibernating);
        drop(hibernating);
        let serving = super::serve(
            shared.clone(),
            stream().await,
            super::Origin::tcp(&shared, addr),
        );
        let serve = size_of_val(&serving);
        drop(serving);
        #[cfg(unix)]
        {
            let socket = std::net::TcpStream::connect(addr).unwrap();
            let parked = crate::parking::Parking::parked(
                1,
                socket,
                0,
                ProtocolVersion::V3_1_1,
                Decoder::new(),
                None,
                None,
                false,
            );
            let resuming =
                super::resume::<tokio::net::TcpStream>(shared.clone(), conn.handle.clone(), parked);
            let resume = size_of_val(&resuming);
            // 408 before `resume` handed a taken-over connection to `live` instead of
            // keeping a place for it beside `live`'s (344 B), then 16 B more since
            // disconnections carry their reason (`End`). A revived connection is
            // active (its task holds buffers anyway); idle ones park.
            assert!(resume <= 360, "resume future: {resume} B");
        }
        let session = size_of::<mqtt_session::ServerSession>();
        assert!(hibernate <= 168, "hibernate future: {hibernate} B");
        // 304 before the connection held its place on its listener (`Conn::slot`,
        // for a listener's own `max_connections`), and its origin (transport, a
        // certificate's name) and listener index for per-listener authentication.
        // The task stays within tokio's 512-byte allocation (tests/memory.rs).
        assert!(serve <= 328, "serve future: {serve} B");
        // 144 before the connection's credentials could expire (a token's exp).
        assert!(session <= 152, "ServerSession: {session} B");
        let handle = size_of::<crate::sessions::SessionHandle>();
        assert!(handle <= 304, "SessionHandle: {handle} B");
    });
}

/// A connected client, speaking raw packets.
#[cfg(unix)]
struct Client {
    stream: tokio::net::TcpStream,
    decoder: Decoder,
    buf: bytes::BytesMut,
    version: ProtocolVersion,
}

#[cfg(unix)]
impl Client {
    /// Connects as `id` (Clean Session 0, keep-alive 60 s) and reads CONNACK.
    async fn connect(addr: std::net::SocketAddr, version: ProtocolVersion, id: &str) -> Self {
        let mut connect =
            mqtt_codec::Connect::new(version, ByteStr::try_from(id.to_owned()).unwrap());
        connect.clean_start = false;
        connect.keep_alive = 60;
        connect.properties.session_expiry_interval = Some(60);
        let mut client = Self {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            decoder: Decoder::with_version(version),
            buf: bytes::BytesMut::new(),
            version,
        };
        client.send(connect.into()).await;
        assert!(matches!(client.next().await, Some(Packet::ConnAck(_))));
        client
    }

    async fn send(&mut self, packet: Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        packet.encode(self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Subscribes to `filter` (SUBACK read), then disconnects: the session keeps
    /// the subscription.
    async fn subscribe_and_leave(mut self, filter: &'static str, qos: mqtt_codec::QoS) {
        use mqtt_codec::{Disconnect, PacketId, ReasonCode, Subscribe};
        let subscribe = Subscribe::new(PacketId::MIN, ByteStr::from_static(filter), qos);
        self.send(subscribe.into()).await;
        assert!(matches!(self.next().await, Some(Packet::SubAck(_))));
        self.send(Disconnect::new(ReasonCode::SUCCESS).into()).await;
        assert!(self.next().await.is_none());
    }

    /// The next packet; `None` once the broker closes the connection.
    async fn next(&mut self) -> Option<Packet> {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("a packet or the end in time")
    }
}

/// Connections served on a loopback port, as the broker's accept loop serves them.
#[cfg(unix)]
async fn serving(config: Config) -> (Arc<Shared>, std::net::SocketAddr) {
    let shared = Arc::new(Shared::new(config, Default::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = Arc::clone(&shared);
    // The timers end hibernations (a new connection's grace, keep-alive) and run the
    // offline sessions' timers, as in the broker.
    tokio::spawn(crate::timers::run(Arc::clone(&shared)));
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let origin = super::Origin::tcp(&serving, peer);
            tokio::spawn(super::serve(Arc::clone(&serving), stream, origin));
        }
    });
    (shared, addr)
}

/// Waits until `id`'s connection is parked (or fails after 2 s).
#[cfg(unix)]
async fn parked(shared: &Shared, id: &'static str) {
    let handle = shared.session(&ByteStr::from_static(id));
    for _ in 0..200 {
        if handle.lock().is_parked() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{id} did not park");
}

/// An idle connection parks without a task right after CONNACK and comes back for
/// each thing that would have woken its task: a packet from its client, a message
/// routed to its session, a takeover, and shutdown.
#[cfg(unix)]
#[test]
fn a_parked_connection_wakes_for_its_socket_and_its_session() {
    use bytes::Bytes;
    use mqtt_codec::{Publish, QoS, ReasonCode};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (shared, addr) = serving(Config::default()).await;
        let v5 = ProtocolVersion::V5;

        // Its own socket: SUBSCRIBE is read and answered.
        let sub = Client::connect(addr, v5, "sub").await;
        parked(&shared, "sub").await;
        sub.subscribe_and_leave("t", QoS::AtMostOnce).await;
        // Back with the subscription kept, parked again at once.
        let mut sub = Client::connect(addr, v5, "sub").await;
        parked(&shared, "sub").await;

        // Its session: a message routed to it is written.
        let mut publ = Client::connect(addr, ProtocolVersion::V3_1_1, "pub").await;
        publ.send(Publish::new(ByteStr::from_static("t"), Bytes::from_static(b"hi")).into())
            .await;
        match sub.next().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hi"),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }

        // Its peer closing: the session learns that its connection is gone.
        let gone = Client::connect(addr, v5, "gone").await;
        parked(&shared, "gone").await;
        drop(gone);
        let handle = shared.session(&ByteStr::from_static("gone"));
        for _ in 0..200 {
            if !handle.lock().session.is_connected() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!handle.lock().session.is_connected(), "still connected");

        // A takeover: the parked connection says goodbye with 0x8E.
        let mut old = Client::connect(addr, v5, "twice").await;
        parked(&shared, "twice").await;
        let mut new = Client::connect(addr, v5, "twice").await;
        match old.next().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
            }
            other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
        }
        assert!(old.next().await.is_none());

        // Shutdown: the parked connection says goodbye with 0x8B.
        parked(&shared, "twice").await;
        shared.stop_connections();
        match new.next().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN);
            }
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }
    });
}

/// A new connection waits in its task for FIRST_INPUT_GRACE_MS after CONNACK, so that the
/// packets most clients send right away (SUBSCRIBE) are read at once rather than after
/// a park and a revival on another thread (which let a later PUBLISH from another client
/// overtake them: measured against the binary, 158 of 200 such races lost without the
/// grace, 51 with it). It parks once the grace has passed with nothing read.
#[cfg(unix)]
#[test]
fn a_new_connection_waits_for_its_first_packets_before_parking() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (shared, addr) = serving(Config::default()).await;
        for round in 0..5 {
            let id = ["new-0", "new-1", "new-2", "new-3", "new-4"][round];
            let _client = Client::connect(addr, ProtocolVersion::V3_1_1, id).await;
            let handle = shared.session(&ByteStr::from_static(id));
            tokio::time::sleep(std::time::Duration::from_millis(
                super::FIRST_INPUT_GRACE_MS / 5,
            ))
            .await;
            assert!(!handle.lock().is_parked(), "{id} parked within the grace");
            parked(&shared, id).await;
        }
    });
}

/// A subscriber that has not acknowledged a full in-flight window has nothing to
/// send until it does: it parks, and its acknowledgement revives it for the next
/// message.
#[cfg(unix)]
#[test]
fn a_connection_parks_behind_a_full_window() {
    use bytes::Bytes;
    use mqtt_codec::{PacketId, PubAck, Publish, QoS, QosPid};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config::default();
        config.limits.max_inflight = 1;
        let (shared, addr) = serving(config).await;
        let v311 = ProtocolVersion::V3_1_1;
        let sub = Client::connect(addr, v311, "slow").await;
        sub.subscribe_and_leave("w", QoS::AtLeastOnce).await;
        // Two messages wait in the offline session.
        let mut publ = Client::connect(addr, v311, "pub").await;
        for (n, payload) in [(1, "one"), (2, "two")] {
            let mut p = Publish::new(
                ByteStr::from_static("w"),
                Bytes::from_static(payload.as_bytes()),
            );
            p.qos_pid = QosPid::new(QoS::AtLeastOnce, PacketId::new(n).unwrap());
            publ.send(p.into()).await;
            assert!(matches!(publ.next().await, Some(Packet::PubAck(_))));
        }
        // Back: the first is sent, the second waits behind the window of one.
        let mut sub = Client::connect(addr, v311, "slow").await;
        let Some(Packet::Publish(first)) = sub.next().await else {
            panic!("the first message");
        };
        assert_eq!(&first.payload[..], b"one");
        parked(&shared, "slow").await;
        // The acknowledgement revives it, and the second message follows.
        sub.send(PubAck::new(first.qos_pid.packet_id().unwrap()).into())
            .await;
        match sub.next().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"two"),
            other => panic!("expected the second message, got {other:?}"),
        }
    });
}

/// A SUBSCRIBE or UNSUBSCRIBE that a connection polled just before another one took
/// its session over changes nothing: not the index, not the session, and no
/// acknowledgement is queued for the new connection. The same requests from the
/// session's own connection do.
#[test]
fn requests_polled_before_a_takeover_change_nothing() {
    use mqtt_codec::{Connect, PacketId, QoS, Subscribe, Unsubscribe};
    use mqtt_topics::{Matches, TopicName};

    let v = ProtocolVersion::V3_1_1;
    let shared = Arc::new(Shared::new(Config::default(), Default::default()));
    let handle = shared.session(&ByteStr::from_static("c"));
    let now = shared.now();
    let current = {
        let mut cell = handle.lock();
        cell.generation += 2;
        let connect = Connect::new(v, ByteStr::from_static("c"));
        cell.session.accept(now, &connect, Default::default());
        cell.generation
    };
    let stale = current - 1;
    let subscribed = || {
        let mut m = Matches::new();
        shared.index.matches(TopicName::new("t/x").unwrap(), &mut m);
        m.subscription_count()
    };
    let acks = || {
        let mut cell = handle.lock();
        std::iter::from_fn(|| cell.session.poll_transmit(now))
            .filter(|p| matches!(p, Packet::SubAck(_) | Packet::UnsubAck(_)))
            .count()
    };
    let sub = Subscribe::new(PacketId::MIN, ByteStr::from_static("t/#"), QoS::AtLeastOnce);
    let unsub = Unsubscribe {
        packet_id: PacketId::MIN,
        filters: vec![ByteStr::from_static("t/#")],
        properties: Default::default(),
    };
    let mut backlog = std::collections::VecDeque::new();

    super::subscribe(&shared, &handle, stale, v, &sub, &mut backlog);
    assert_eq!((subscribed(), acks()), (0, 0), "a stale SUBSCRIBE");
    super::subscribe(&shared, &handle, current, v, &sub, &mut backlog);
    assert_eq!(
        (subscribed(), acks()),
        (1, 1),
        "the connection's own SUBSCRIBE"
    );
    super::unsubscribe(&shared, &handle, stale, v, &unsub, &mut backlog);
    assert_eq!((subscribed(), acks()), (1, 0), "a stale UNSUBSCRIBE");
    super::unsubscribe(&shared, &handle, current, v, &unsub, &mut backlog);
    assert_eq!(
        (subscribed(), acks()),
        (0, 1),
        "the connection's own UNSUBSCRIBE"
    );
}

/// A WebSocket connection on TCP parks between frames like a TCP one, and comes back
/// as WebSocket: for a packet from its client (in a frame), a WebSocket Ping, and a
/// message routed to it.
#[cfg(unix)]
#[test]
fn a_websocket_connection_parks_between_frames() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// A masked frame with a zero mask: the payload as it is.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }
    /// Opens a WebSocket and connects as `wsp1` (Clean Session 0).
    async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let mut connect = vec![0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 4];
        connect.extend_from_slice(b"wsp1");
        s.write_all(&frame(0x82, &connect)).await.unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], &[0x82, 4, 0x20, 2]);
        s
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut listener = crate::config::Listener::new("127.0.0.1:0".parse().unwrap());
        listener.protocol = crate::config::Protocol::WebSockets;
        let config = Config {
            listeners: vec![listener],
            ..Config::default()
        };
        let broker = crate::Broker::start(config).await.unwrap();
        let shared = Arc::clone(&broker.shared);
        let addr = broker.local_addrs()[0];
        // A subscription the session keeps (SUBSCRIBE, then DISCONNECT).
        let mut s = connect(addr).await;
        s.write_all(&frame(0x82, &[0x82, 6, 0, 1, 0, 1, b't', 0]))
            .await
            .unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x82, 5, 0x90, 3, 0, 1, 0]);
        s.write_all(&frame(0x82, &[0xE0, 0])).await.unwrap();
        drop(s);
        let mut s = connect(addr).await;
        parked(&shared, "wsp1").await;
        // A WebSocket Ping: a Pong (a connection woken by one alone stays awake for
        // IDLE_SHRINK, as before parking: nothing came for the session).
        s.write_all(&frame(0x89, b"hi")).await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x8A, 2, b'h', b'i']);
        // A packet in a frame: PINGREQ, answered, and parked again at once.
        s.write_all(&frame(0x82, &[0xC0, 0])).await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x82, 2, 0xD0, 0]);
        parked(&shared, "wsp1").await;
        // A message routed to it while parked.
        let message = mqtt_session::Message::new(
            ByteStr::from_static("t"),
            bytes::Bytes::from_static(b"x"),
            mqtt_codec::QoS::AtMostOnce,
        );
        let mut routes = crate::router::Routes::default();
        assert_eq!(shared.route(0, message, &mut routes, shared.now()), 1);
        let mut got = [0u8; 8];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x82, 6, 0x30, 4, 0, 1, b't', b'x']);
        broker.shutdown().await;
    });
}

/// Takes at most `step` bytes per write, across the slices of a vectored one.
struct Trickle {
    taken: Vec<u8>,
    step: usize,
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.step);
        self.taken.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(self.step - n);
            self.taken.extend_from_slice(&buf[..take]);
            n += take;
            if n == self.step {
                break;
            }
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

// Large payloads are not copied into the write buffer but written from where they are,
// between the packets around them; whatever the writer takes per call, the bytes that
// arrive are the packets, in order, in both protocol families, and as they are without
// vectored writes.
#[test]
fn large_payloads_go_out_uncopied_and_in_order() {
    use bytes::Bytes;
    use mqtt_codec::{PacketId, Publish, QoS, QosPid};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let large = |fill: u8, qos_pid: QosPid| {
        let mut p = Publish::new(
            ByteStr::from_static("a/b"),
            Bytes::from(vec![fill; super::WRITE_COPY_MAX + usize::from(fill)]),
        );
        p.qos_pid = qos_pid;
        Packet::Publish(p)
    };
    let small = |text: &'static str| {
        Packet::Publish(Publish::new(
            ByteStr::from_static("c"),
            Bytes::from_static(text.as_bytes()),
        ))
    };
    let id = PacketId::new(7).unwrap();
    let packets = vec![
        large(1, QosPid::AtMostOnce),
        small("between"),
        large(2, QosPid::new(QoS::AtLeastOnce, id)),
        large(3, QosPid::AtMostOnce),
        small("after"),
    ];
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut copied = bytes::BytesMut::new();
        for p in &packets {
            p.encode(version, &mut copied).unwrap();
        }
        for step in [1, 7, 4096, 1 << 20] {
            for vectored in [true, false] {
                let mut out = super::Outgoing::default();
                for p in &packets {
                    out.push(p, version, vectored).unwrap();
                }
                assert_eq!(out.len(), copied.len());
                if vectored {
                    assert!(
                        out.buf.len() < 100,
                        "the large payloads stay where they are"
                    );
                }
                let mut wr = Trickle {
                    taken: Vec::new(),
                    step,
                };
                rt.block_on(out.write_or_stall(&mut wr, std::time::Duration::from_secs(5)))
                    .unwrap();
                assert_eq!(wr.taken, copied[..], "{version:?}, {step} bytes a write");
            }
        }
    }
}
