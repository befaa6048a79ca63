//! Reading files again without a restart: the password file under the running binary
//! (SIGHUP, and a change found on disk by itself), a bad file refused with the old one
//! kept, and a TLS listener's certificate replaced under connections that stay up.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use mqtt_broker::{
    Auth,
    auth::password::{HashKind, PasswordHash},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    WAIT,
    ops::{Broker, scratch, write_file},
    pki::{Pki, broker_on, mqtt_connect, tls_listener},
};

/// A password file line, with cheap PBKDF2.
fn line(user: &str, password: &str) -> String {
    let hash = PasswordHash::create(HashKind::Sha512Pbkdf2, password.as_bytes(), Some(10));
    format!("{user}:{}\n", hash.unwrap())
}

/// CONNECT 3.1.1 (clean, keep-alive 60) as `id` with a user name and password.
fn connect_packet(id: &str, user: &str, password: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [id.as_bytes(), user.as_bytes(), password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// Connects as `user` with `password`: the stream and the CONNACK's return code.
pub(crate) fn connect_as(
    addr: SocketAddr,
    id: &str,
    user: &str,
    password: &[u8],
) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(id, user, password)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[..3], &[0x20, 2, 0], "CONNACK");
    (s, ack[3])
}

/// Whether the connection still answers a PINGREQ.
fn pings(s: &mut TcpStream) -> bool {
    let mut resp = [0u8; 2];
    s.write_all(&[0xC0, 0]).is_ok() && s.read_exact(&mut resp).is_ok() && resp == [0xD0, 0]
}

/// How many lines of `log` contain `needle`.
fn count(broker: &Broker, needle: &str) -> usize {
    broker.log().matches(needle).count()
}

/// Waits (10 s at most) until `needle` is in the log `n` times.
fn wait_count(broker: &Broker, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(broker, needle) < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not {n} times in the log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// The binary running with a password file: SIGHUP puts a rewritten file in force (the
// old password refused, the new one let in) while a client connected before stays
// connected; a bad file is refused naming its line, and the old one stays; a change on
// disk is found without a signal. Several rounds, so that a reload works again and again.
#[test]
fn sighup_and_a_change_on_disk_reload_the_password_file() {
    let dir = scratch("reload-passwords");
    let passwd = write_file(&dir, "passwd", &line("alice", "pw0"));
    let conf = write_file(
        &dir,
        "broker.toml",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
            passwd.display()
        ),
    );
    let broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    let (mut before, code) = connect_as(broker.addr, "before", "alice", b"pw0");
    assert_eq!(code, 0);
    let reloaded = format!("password_file {}: reloaded", passwd.display());
    for round in 1..=3 {
        let (old, new) = (format!("pw{}", round - 1), format!("pw{round}"));
        std::fs::write(&passwd, line("alice", &new)).unwrap();
        broker.signal("HUP");
        // The signal, or the look at the file every 2 s, whichever comes first.
        wait_count(&broker, &reloaded, round);
        assert_eq!(
            connect_as(broker.addr, "old", "alice", old.as_bytes()).1,
            4,
            "round {round}: the old password is refused"
        );
        assert_eq!(
            connect_as(broker.addr, "new", "alice", new.as_bytes()).1,
            0,
            "round {round}: the new password is let in"
        );
        assert!(
            pings(&mut before),
            "round {round}: the old connection stays"
        );
    }

    // A bad file: refused with its line and reason, and the passwords in force stay.
    std::fs::write(&passwd, format!("{}alice has no colon\n", line("bob", "x"))).unwrap();
    broker.signal("HUP");
    let refused = broker.wait_for_all(&["not reloaded", &format!("{}:2:", passwd.display())]);
    assert!(refused.contains("no `:`"), "{refused}");
    assert_eq!(connect_as(broker.addr, "still", "alice", b"pw3").1, 0);
    assert_eq!(connect_as(broker.addr, "bob", "bob", b"x").1, 4);
    // Reported once, not at every look at an unchanged file.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(count(&broker, "not reloaded"), 1, "{}", broker.log());

    // No signal: the change on disk is found within a few seconds.
    let n = count(&broker, &reloaded);
    std::fs::write(&passwd, line("alice", "polled")).unwrap();
    wait_count(&broker, &reloaded, n + 1);
    assert_eq!(connect_as(broker.addr, "polled", "alice", b"polled").1, 0);
    assert!(pings(&mut before));
    let (status, _) = broker.stop();
    assert!(status.success());
}

/// The certificate the server shows to a new TLS connection (DER), and the connection.
async fn tls_peer(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, leaf)
}

async fn tls_pings(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    let mut resp = [0u8; 2];
    stream.write_all(&[0xC0, 0]).await.is_ok()
        && stream.flush().await.is_ok()
        && tokio::time::timeout(WAIT, stream.read_exact(&mut resp))
            .await
            .is_ok_and(|r| r.is_ok())
        && resp == [0xD0, 0]
}

// A TLS listener's certificate and key replaced: after a reload a new connection is
// shown the new certificate (its own DER and serial number), the connection made before
// still works; a certificate file that does not read is refused and the one in force
// stays; a change on disk is found without being asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_tls_certificate_serves_new_connections_and_old_ones_stay() {
    let _timing = crate::TIMING.read().await;
    let pki = Pki::new();
    let (broker, addrs) = broker_on(
        vec![tls_listener(&pki.cert, &pki.key)],
        Auth::default(),
        |_| {},
    )
    .await;
    let client = pki.client_config(None, &[&rustls::version::TLS13], &[]);
    let (mut old, first) = tls_peer(addrs[0], client.clone()).await;
    assert_eq!(mqtt_connect(&mut old, "old").await.unwrap(), 0);
    let mut last_good = first.clone();
    for serial in [4242u64, 4343, 4444] {
        let (cert, key, der) = pki.server_pem(serial);
        std::fs::write(&pki.key, key).unwrap();
        std::fs::write(&pki.cert, cert).unwrap();
        let done = broker.reload_files().await;
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].error, None, "{done:?}");
        let (mut new, shown) = tls_peer(addrs[0], client.clone()).await;
        assert_ne!(shown, first);
        assert_eq!(shown, der, "serial {serial}: the new certificate is shown");
        assert!(
            shown.windows(2).any(|w| w == (serial as u16).to_be_bytes()),
            "its serial number is in it"
        );
        assert_eq!(mqtt_connect(&mut new, "new").await.unwrap(), 0);
        assert!(tls_pings(&mut old).await, "the older connection stays up");
        last_good = shown;
    }
    std::fs::write(&pki.cert, "not a certificate\n").unwrap();
    let done = broker.reload_files().await;
    let error = done[0].error.clone().expect("a bad file is refused");
    assert!(
        error.contains("certfile") && error.contains(pki.cert.to_str().unwrap()),
        "{error}"
    );
    let (_, shown) = tls_peer(addrs[0], client.clone()).await;
    assert_eq!(shown, last_good, "the last good certificate stays in force");

    // Without being asked: the look at the files every 2 s finds the change.
    let (cert, key, der) = pki.server_pem(4646);
    std::fs::write(&pki.key, key).unwrap();
    std::fs::write(&pki.cert, cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = tls_peer(addrs[0], client.clone()).await;
        if shown == der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change on disk was not found"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tls_pings(&mut old).await);
    broker.shutdown().await;
}
