//! Back-pressure: bounded queues in both directions, and no deadlock when the task
//! that reads messages also publishes.

use std::time::Duration;

use mqtt_client::{ProtocolVersion, QoS, TryPublishError, testing::Mosquitto, testing::Proxy};

use crate::{T, connect, next_message, opts};

/// With no acknowledgements coming back, the in-flight window and the request queue
/// fill: `try_publish` hands the message back and `publish` waits; when the acks flow
/// again everything completes.
#[tokio::test]
async fn full_window_makes_publish_wait_and_try_publish_fail() {
    let (_broker, proxy, c, _conn) = stalled_small_window("bp").await;
    let mut deliveries = Vec::new();
    let mut full = None;
    for i in 0..100 {
        let m = mqtt_client::message("bp", format!("{i}"), QoS::AtLeastOnce, false).unwrap();
        match c.try_publish(m) {
            Ok(d) => deliveries.push(d),
            Err(TryPublishError::Full(m)) => {
                full = Some(*m);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        // Let the driver take what it can.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let returned = full.expect("the queue never filled");
    assert!(
        deliveries.len() <= 4 + 2 + 1,
        "bounded: {} accepted",
        deliveries.len()
    );
    // publish waits while the window is full.
    let blocked = tokio::time::timeout(
        Duration::from_millis(200),
        c.publish_message(returned.clone()),
    )
    .await;
    assert!(blocked.is_err(), "publish should wait");
    proxy.stall_downstream(false);
    for d in deliveries {
        tokio::time::timeout(T, d).await.unwrap().unwrap();
    }
    tokio::time::timeout(T, c.publish_message(returned))
        .await
        .unwrap()
        .unwrap();
}

/// The rumqttc trap: the task that reads messages publishes (and awaits the PUBACK)
/// for each one while a flood comes in. It must not deadlock.
#[tokio::test]
async fn publishing_from_the_reading_task_does_not_deadlock() {
    let broker = Mosquitto::start();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (c, mut conn) = connect(
            opts(&broker.url(), version, "echo")
                .event_capacity(4)
                .request_capacity(1),
        )
        .await;
        c.subscribe("in", QoS::AtLeastOnce).await.unwrap();
        let (flood, _fconn) = connect(opts(&broker.url(), version, "flood")).await;
        let n = 300;
        let flooder = tokio::spawn(async move {
            for i in 0..n {
                flood
                    .publish("in", format!("{i}"), QoS::AtLeastOnce, false)
                    .await
                    .unwrap();
            }
            flood
        });
        // Read nothing for a while: the driver must stop reading but keep working.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let echo = async {
            for _ in 0..n {
                let m = next_message(&mut conn).await;
                c.publish("out", m.payload, QoS::AtLeastOnce, false)
                    .await
                    .unwrap();
            }
        };
        tokio::time::timeout(T, echo).await.expect("deadlock");
        let flood = tokio::time::timeout(T, flooder).await.unwrap().unwrap();
        flood.disconnect().await.unwrap();
        c.disconnect().await.unwrap();
    }
}

/// A consumer that never reads does not stop the client from publishing (within the
/// read-ahead bound), and past the bound the driver stops reading instead of buffering.
#[tokio::test]
async fn a_consumer_that_never_reads_does_not_stop_publishing() {
    let broker = Mosquitto::start();
    let (c, _conn) =
        connect(opts(&broker.url(), ProtocolVersion::V5, "deaf").event_capacity(2)).await;
    c.subscribe("noise", QoS::AtMostOnce).await.unwrap();
    let (flood, _fconn) = connect(opts(&broker.url(), ProtocolVersion::V5, "noisy")).await;
    for i in 0..2000 {
        flood
            .publish("noise", vec![b'x'; 512 + i % 7], QoS::AtMostOnce, false)
            .await
            .unwrap();
    }
    for _ in 0..20 {
        tokio::time::timeout(T, c.publish("own", "x", QoS::ExactlyOnce, false))
            .await
            .expect("publishing stalled")
            .unwrap();
    }
}

/// A server that sends packets the client must answer (PUBREL, each answered PUBCOMP)
/// and reads nothing: the client stops reading once its unwritten answers pass its
/// write buffer's bound, instead of buffering them for as long as the server sends.
/// The server's writes then stall well before 32 MiB of PUBREL (which, answered in
/// full, would be 32 MiB buffered in the client).
#[tokio::test]
async fn a_server_that_reads_nothing_cannot_grow_the_write_buffer() {
    use mqtt_codec::{Packet, PacketId, PubRel};
    use tokio::io::AsyncWriteExt;

    let (listener, options) = raw_server("reads-nothing", None);
    let server = tokio::spawn(async move {
        let mut s = raw_accept(&listener).await;
        // 64 KiB of PUBREL a write, never reading the PUBCOMPs.
        let mut chunk = bytes::BytesMut::new();
        for id in 1..=16_384u16 {
            Packet::from(PubRel::new(PacketId::new(id).unwrap()))
                .encode(ProtocolVersion::V3_1_1, &mut chunk)
                .unwrap();
        }
        let mut sent = 0usize;
        while sent < 32 << 20 {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        (sent, s)
    });
    let (_client, _connection) = connect(options).await;
    let (sent, _s) = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the server's writes end")
        .unwrap();
    assert!(sent < 32 << 20, "the client read all {sent} bytes");
}

/// With the queue full (no acknowledgements coming back), disconnect still goes
/// through at once: it does not wait behind the requests the driver cannot take.
/// Requests queued before it are taken first and answered.
#[tokio::test]
async fn disconnect_goes_through_a_full_queue() {
    let (_broker, _proxy, c, _conn) = stalled_small_window("bp-disconnect").await;
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let m = mqtt_client::message("bp", format!("{i}"), QoS::AtLeastOnce, false).unwrap();
        match c.try_publish(m) {
            Ok(d) => deliveries.push(d),
            Err(TryPublishError::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::timeout(Duration::from_secs(3), c.disconnect())
        .await
        .expect("disconnect went through the full queue")
        .unwrap();
    // Every request got an answer (delivered before, or refused with the end).
    for d in deliveries {
        let _ = tokio::time::timeout(T, d).await.expect("answered");
    }
}

/// The client's own large writes do not stop it reading: a server that writes a long
/// stream before it reads again (as a broker writing a backlog does) finishes, then
/// gets the client's 8 MiB message (more than the sockets buffer). Stopping reads on
/// the write buffer's size alone deadlocked both ends.
#[tokio::test]
async fn a_large_write_does_not_stop_reading_a_server_that_streams() {
    use mqtt_codec::{ByteStr, Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A small receive buffer on the server's side: the client's message waits in its
    // own write buffer while the server does not read.
    let (listener, options) = raw_server("large-write", Some(4096));
    let server = tokio::spawn(async move {
        let mut s = raw_accept(&listener).await;
        // Give the client time to queue its large message.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // 32 MiB of QoS 0 PUBLISH, 64 KiB a write, reading nothing meanwhile.
        let mut chunk = bytes::BytesMut::new();
        while chunk.len() < 64 * 1024 {
            let p = Publish::new(ByteStr::from_static("feed"), vec![1u8; 1000].into());
            Packet::from(p)
                .encode(ProtocolVersion::V3_1_1, &mut chunk)
                .unwrap();
        }
        for _ in 0..512 {
            tokio::time::timeout(Duration::from_secs(10), s.write_all(&chunk))
                .await
                .expect("the client reads while its own write waits")
                .unwrap();
        }
        // Then read: the client's message comes through.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < 8 << 20 {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the client's write comes")
                .unwrap();
            assert!(n > 0, "closed");
            got += n;
        }
        s
    });
    let (client, mut connection) = connect(options).await;
    let big = mqtt_client::message("big", vec![2u8; 8 << 20], QoS::AtMostOnce, false).unwrap();
    let sending = tokio::spawn(async move {
        let _ = client.publish_message(big).await;
        client
    });
    let reading = tokio::spawn(async move {
        while tokio::time::timeout(Duration::from_secs(30), connection.next_event())
            .await
            .ok()
            .flatten()
            .is_some()
        {}
    });
    let _s = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("no deadlock")
        .unwrap();
    reading.abort();
    drop(sending);
}

/// A server played by hand on a free loopback port (with `receive_buffer` set on its
/// sockets, if given), and options for a 3.1.1 client `id` that does not reconnect.
fn raw_server(
    id: &str,
    receive_buffer: Option<u32>,
) -> (tokio::net::TcpListener, mqtt_client::ConnectOptions) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = mqtt_client::ConnectOptions::new("127.0.0.1", port)
        .version(ProtocolVersion::V3_1_1)
        .client_id(id)
        .reconnect(mqtt_client::ReconnectOptions {
            enabled: false,
            ..mqtt_client::ReconnectOptions::default()
        });
    (listener, options)
}

/// Accepts the client, takes its CONNECT and accepts it: the socket, from then on.
async fn raw_accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    use mqtt_codec::{ConnAck, Packet, ReasonCode};
    let (s, _) = listener.accept().await.unwrap();
    let mut peer = mqtt_client::testing::RawPeer::new(s, ProtocolVersion::V3_1_1);
    let Packet::Connect(_) = peer.recv().await else {
        panic!("expected CONNECT")
    };
    peer.send(ConnAck::new(false, ReasonCode::SUCCESS)).await;
    peer.into_inner()
}

/// A 5.0 client `id` of Mosquitto through a proxy, with a window of 4 messages in
/// flight, 4 pending and 2 requests queued, whose acknowledgements the proxy now holds
/// back (`stall_downstream`).
async fn stalled_small_window(
    id: &str,
) -> (
    Mosquitto,
    Proxy,
    mqtt_client::Client,
    mqtt_client::Connection,
) {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr()).await;
    let mut o = opts(&proxy.url(), ProtocolVersion::V5, id)
        .request_capacity(2)
        .max_pending(4);
    o.limits_mut().max_inflight = 4;
    let (c, conn) = connect(o).await;
    proxy.stall_downstream(true);
    (broker, proxy, c, conn)
}
