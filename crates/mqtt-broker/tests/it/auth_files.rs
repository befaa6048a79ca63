//! Password and ACL files over real sockets, with peers nobody here wrote: password
//! files from Debian's `mosquitto_passwd` for `mosquitto_pub`, files from `mqtt-passwd`
//! for Debian's `mosquitto` broker, paho-mqtt against an ACL, and raw clients for the
//! reason codes of both protocol families, delivery filtering, wills, listeners and the
//! slow-down of repeated failures.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use bytes::Bytes;
use mqtt_broker::{
    Broker,
    auth::{
        Authenticator, Credentials, PasswordFile,
        password::{HashKind, PasswordHash},
    },
    config::Listener,
};
use mqtt_codec::{Packet, ProtocolVersion, QoS, QosPid, ReasonCode, SubscriptionOptions, Will};
use tokio::process::Command;

use crate::{
    WAIT, broker_with,
    spec::{Client, pid, publish, s, subscribe},
};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MQTT_PASSWD: &str = env!("CARGO_BIN_EXE_mqtt-passwd");
const MQTT_BROKER: &str = env!("CARGO_BIN_EXE_mqtt-broker");

/// A directory of the test's own, empty.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqtt-auth-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A program of Debian's Mosquitto packages, or a failure saying how to install it.
fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: install Debian's mosquitto and mosquitto-clients \
         (`cargo xtask ci` does, or `apt-get install mosquitto mosquitto-clients`)"
    );
}

/// Debian's `mosquitto_passwd` with `args`, which must succeed.
fn mosquitto_passwd(args: &[&str]) {
    require("/usr/bin/mosquitto_passwd");
    let out = std::process::Command::new("/usr/bin/mosquitto_passwd")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Our `mqtt-passwd` with `args` and `stdin`: exit code, standard output and error.
fn mqtt_passwd(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(MQTT_PASSWD)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A password file line: cheap PBKDF2, so that the tests spend no time hashing.
fn line(user: &str, password: &str) -> String {
    let hash = PasswordHash::create(HashKind::Sha512Pbkdf2, password.as_bytes(), Some(10));
    format!("{user}:{}\n", hash.unwrap())
}

/// A broker on loopback with `password_file` (anonymous clients refused) or none
/// (anonymous clients let in), and `acl_file`.
async fn broker_files(
    password_file: Option<&Path>,
    acl_file: Option<&Path>,
) -> (Broker, SocketAddr) {
    broker_with(|c| {
        c.auth.allow_anonymous = password_file.is_none();
        c.auth.password_file = password_file.map(Path::to_owned);
        c.auth.acl_file = acl_file.map(Path::to_owned);
    })
    .await
}

/// Connects as `user` with `password` (none if `None`).
async fn connect_as(
    addr: SocketAddr,
    v: ProtocolVersion,
    id: &str,
    user: Option<(&str, &str)>,
) -> (Client, ReasonCode) {
    let (c, ack) = Client::connect_with(addr, v, id, |c| {
        if let Some((u, p)) = user {
            c.username = Some(s(u));
            c.password = Some(Bytes::copy_from_slice(p.as_bytes()));
        }
    })
    .await;
    (c, ack.reason_code)
}

/// `mosquitto_pub` of one QoS 1 message as `user`: its exit code, which is the CONNACK
/// code when the broker refuses it.
async fn mosquitto_pub(port: u16, version: &str, user: Option<(&str, &str)>) -> i32 {
    require("/usr/bin/mosquitto_pub");
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-q", "1", "-t", "interop/auth", "-m", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((u, p)) = user {
        cmd.args(["-u", u, "-P", p]);
    }
    let status = tokio::time::timeout(WAIT, cmd.status())
        .await
        .expect("mosquitto_pub in time")
        .unwrap();
    status.code().unwrap_or(-1)
}

// A password file from Debian's mosquitto_passwd, in every form it writes ($7$ as its
// default, -I, -H sha512, -U), lets mosquitto_pub in with the right password; a wrong
// one or an unknown user gets 0x86 (3.1.1: 4), no user name 0x87 (3.1.1: 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_password_files_and_mosquitto_clients() {
    let d = dir("debian");
    let pw = d.join("passwd");
    let pws = pw.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", pws, "alice", "secret"]);
    mosquitto_passwd(&["-H", "sha512", "-b", pws, "bob", "hunter2"]);
    mosquitto_passwd(&["-I", "1000", "-b", pws, "carol", "correct horse"]);
    let plain = d.join("plain");
    std::fs::write(&plain, "dave:plain text\n").unwrap();
    mosquitto_passwd(&["-U", plain.to_str().unwrap()]);
    let upgraded = std::fs::read_to_string(&plain).unwrap();
    let mut text = std::fs::read_to_string(&pw).unwrap();
    text.push_str(&upgraded);
    std::fs::write(&pw, &text).unwrap();
    assert!(
        text.contains("bob:$6$") && text.contains("carol:$7$1000$"),
        "{text}"
    );

    let (broker, addr) = broker_files(Some(&pw), None).await;
    let port = addr.port();
    for (version, bad_password, not_authorized) in [("mqttv311", 4, 5), ("mqttv5", 0x86, 0x87)] {
        for user in [
            ("alice", "secret"),
            ("bob", "hunter2"),
            ("carol", "correct horse"),
            ("dave", "plain text"),
        ] {
            assert_eq!(
                mosquitto_pub(port, version, Some(user)).await,
                0,
                "{version} {user:?}"
            );
        }
        let wrong = mosquitto_pub(port, version, Some(("alice", "Secret"))).await;
        assert_eq!(wrong, bad_password, "{version}: wrong password");
        let unknown = mosquitto_pub(port, version, Some(("mallory", "secret"))).await;
        assert_eq!(unknown, bad_password, "{version}: unknown user");
        let anonymous = mosquitto_pub(port, version, None).await;
        assert_eq!(anonymous, not_authorized, "{version}: no user name");
    }

    // mosquitto_sub as bob receives what alice publishes.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args([
            "-u",
            "bob",
            "-P",
            "hunter2",
            "-t",
            "interop/auth",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mosquitto_pub(port, "mqttv5", Some(("alice", "secret"))).await,
        0
    );
    let out = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x");
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

/// A free port on loopback (for a Mosquitto broker, which cannot say which it took).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// What mqtt-passwd writes in the forms Mosquitto 2.0 reads ($7$, with -I, and $6$) lets
// mosquitto_pub into Debian's mosquitto broker; our broker reads all of it, argon2id
// (mqtt-passwd's default, which only Mosquitto 2.1 reads) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passwd_files_in_debians_mosquitto() {
    require("/usr/sbin/mosquitto");
    let d = dir("mosquitto");
    let pw = d.join("passwd");
    let pws = pw.to_str().unwrap();
    for args in [
        &["-c", "-H", "sha512-pbkdf2", "-b", pws, "alice", "secret"][..],
        &["-H", "sha512", "-b", pws, "bob", "hunter2"],
        &[
            "-H",
            "sha512-pbkdf2",
            "-I",
            "5000",
            "-b",
            pws,
            "carol",
            "späce pw",
        ],
    ] {
        let (code, _, err) = mqtt_passwd(args, "");
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // New files are the owner's alone; Mosquitto reads its files as the user
    // `mosquitto`, which an administrator gives them to. Here: readable by all.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pw).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = free_port();
    let conf = d.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npassword_file {pws}\nallow_anonymous false\n"),
    )
    .unwrap();
    let mut mosquitto = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < WAIT,
            "mosquitto did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for user in [
        ("alice", "secret"),
        ("bob", "hunter2"),
        ("carol", "späce pw"),
    ] {
        assert_eq!(
            mosquitto_pub(port, "mqttv311", Some(user)).await,
            0,
            "{user:?}"
        );
    }
    // Mosquitto 2.0 says 5 (not authorised) to a wrong password.
    assert_eq!(
        mosquitto_pub(port, "mqttv311", Some(("alice", "wrong"))).await,
        5
    );
    mosquitto.kill().await.unwrap();

    // Our broker reads the same file, and mqtt-passwd's default argon2id.
    let (code, _, err) = mqtt_passwd(&["-b", pws, "dave", "argon"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(&pw)
            .unwrap()
            .contains("dave:$argon2id$v=19$m=47104,t=1,p=1$")
    );
    let (broker, addr) = broker_files(Some(&pw), None).await;
    for (user, password) in [
        ("alice", "secret"),
        ("bob", "hunter2"),
        ("carol", "späce pw"),
        ("dave", "argon"),
    ] {
        let (_c, code) = connect_as(addr, V5, user, Some((user, password))).await;
        assert_eq!(code, ReasonCode::SUCCESS, "{user}");
    }
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// mqtt-passwd's flags, as mosquitto_passwd's: -c, -b, the prompt (read from standard
// input when it is not a terminal), -D, -U, -H, -I, and their errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passwd_flags() {
    let d = dir("flags");
    let pw = d.join("passwd");
    let pws = pw.to_str().unwrap();
    let check = |user: &'static str, password: &'static str| {
        let file = PasswordFile::load(&pw).unwrap();
        async move {
            let peer = "127.0.0.1:1".parse().unwrap();
            let c = Credentials::new("c", Some(user), Some(password.as_bytes()), peer);
            file.authenticate(&c).await.is_ok()
        }
    };
    let pbkdf2 = ["-H", "sha512-pbkdf2", "-I", "10"];
    let run = |extra: &[&str], stdin: &str| {
        let args: Vec<&str> = pbkdf2
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        mqtt_passwd(&args, stdin)
    };
    assert_eq!(run(&["-c", "-b", pws, "alice", "one"], "").0, 0);
    // The prompt, twice, answered from standard input.
    let (code, out, err) = run(&[pws, "bob"], "two\ntwo\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "Password: \nReenter password: \n");
    assert!(check("alice", "one").await && check("bob", "two").await);
    // A new password replaces the old one in place; comments and blank lines stay.
    let mut text = std::fs::read_to_string(&pw).unwrap();
    text.insert_str(0, "# users\n\n");
    std::fs::write(&pw, &text).unwrap();
    assert_eq!(run(&["-b", pws, "alice", "three"], "").0, 0);
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.starts_with("# users\n\nalice:$7$10$"), "{text}");
    assert_eq!(text.matches("alice:").count(), 1);
    assert!(check("alice", "three").await && !check("alice", "one").await);

    let (code, _, err) = run(&[pws, "carol"], "a\nb\n");
    assert_eq!((code, err.trim()), (1, "Error: Passwords do not match."));
    let (code, _, err) = run(&[pws, "carol"], "\n\n");
    assert_eq!((code, err.trim()), (1, "Error: Empty password."));
    assert!(!std::fs::read_to_string(&pw).unwrap().contains("carol"));

    assert_eq!(run(&["-D", pws, "bob"], "").0, 0);
    assert!(!check("bob", "two").await);
    let (code, _, err) = run(&["-D", pws, "nobody"], "");
    assert_eq!(
        (code, err.trim()),
        (1, "Warning: User nobody not found in password file.")
    );

    // -U hashes plain-text passwords and leaves hashes alone: twice changes nothing.
    let plain = d.join("plain");
    let hashed = line("erin", "already");
    std::fs::write(&plain, format!("# plain\nfrank:plain text\n{hashed}")).unwrap();
    let ps = plain.to_str().unwrap();
    assert_eq!(run(&["-U", ps], "").0, 0);
    let once = std::fs::read_to_string(&plain).unwrap();
    assert!(
        once.starts_with("# plain\nfrank:$7$10$") && once.ends_with(&hashed),
        "{once}"
    );
    assert_eq!(run(&["-U", ps], "").0, 0);
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), once);
    let file = PasswordFile::load(&plain).unwrap();
    let peer = "127.0.0.1:1".parse().unwrap();
    let c = Credentials::new("c", Some("frank"), Some(b"plain text"), peer);
    assert_eq!(file.authenticate(&c).await, Ok(()));

    for (args, error) in [
        (
            &["-c", "-D", pws, "x"][..],
            "Error: -c and -D cannot be used together.",
        ),
        (
            &["-b", "-D", pws, "x"],
            "Error: -b and -D cannot be used together.",
        ),
        (
            &["-c", "-U", pws],
            "Error: -c and -U cannot be used together.",
        ),
        (
            &["-H", "sha512-pbkdf2", "-I", "0", "-b", pws, "x", "y"],
            "Error: Number of iterations must be > 0.",
        ),
        (
            &["-I", "5", "-b", pws, "x", "y"],
            "Error: -I applies to -H sha512-pbkdf2 only",
        ),
        (
            &["-b", pws, "a:b", "y"],
            "Error: Username must not contain the ':' character.",
        ),
        (
            &["-b", pws, "a\tb", "y"],
            "Error: Username must not contain control characters.",
        ),
        (&["-b", pws, "x"], "Error: -b needs the password"),
        (
            &["-b", "/nonexistent/pw", "x", "y"],
            "Error: Unable to open password file /nonexistent/pw",
        ),
    ] {
        let (code, _, err) = mqtt_passwd(args, "");
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with(error), "{args:?}: {err}");
    }
    // An unknown hash is refused by the argument parser.
    let (code, _, err) = mqtt_passwd(&["-H", "md5", "-b", pws, "x", "y"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown hash type 'md5'"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

const ACL_PASSWORDS: &[(&str, &str)] = &[("alice", "secret"), ("admin", "admin"), ("bob", "bob")];

/// Files for the ACL tests: users `ACL_PASSWORDS`, and `acl`.
fn acl_files(name: &str, acl: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir(name);
    let pw = d.join("passwd");
    let text: String = ACL_PASSWORDS.iter().map(|(u, p)| line(u, p)).collect();
    std::fs::write(&pw, text).unwrap();
    let acl_path = d.join("acl");
    std::fs::write(&acl_path, acl).unwrap();
    (d, pw, acl_path)
}

// paho-mqtt (5.0) against an ACL file: SUBACK 0x87 for a filter it may not read,
// PUBACK 0x87 for a topic it may not write, 0x86 for a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_against_an_acl() {
    let (d, pw, acl) = acl_files(
        "paho",
        "user alice\ntopic readwrite alice/#\ntopic read public/#\n",
    );
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    crate::paho::run(addr.port(), "acl-5").await;
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

const ACL: &str = "\
# Nothing for anonymous clients.
user admin
topic readwrite #
user alice
topic readwrite alice/#
topic read sensors/#
topic deny sensors/secret/#
pattern read users/%u/inbox
pattern write devices/%c/state
";

// An ACL file decides SUBSCRIBE (5.0: 0x87; 3.1.1: 0x80), PUBLISH (5.0: PUBACK and
// PUBREC 0x87; 3.1.1: acknowledged and dropped), and every delivery, retained ones
// included: a subscription granted for some topics gets only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_decides_subscribe_publish_and_every_delivery() {
    let (d, pw, acl) = acl_files("acl", ACL);
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    let (mut admin, code) = connect_as(addr, V5, "admin", Some(("admin", "admin"))).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    for topic in ["sensors/r", "sensors/secret/r"] {
        let mut p = publish(topic, b"retained", QoS::AtLeastOnce, true);
        p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(1));
        admin.publish(p).await;
    }
    admin.sub("#", QoS::AtMostOnce).await;
    // The admin may read both retained messages.
    for _ in 0..2 {
        assert!(admin.recv_publish().await.retain);
    }
    for v in [V3, V5] {
        let id = format!("dev-{v}");
        let (mut alice, code) = connect_as(addr, v, &id, Some(("alice", "secret"))).await;
        assert_eq!(code, ReasonCode::SUCCESS);
        let q0 = SubscriptionOptions::new(QoS::AtMostOnce);
        let filters = [
            ("sensors/#", q0),
            ("secret/#", q0),
            ("sensors/secret/#", q0),
            ("users/alice/inbox", q0),
            ("users/bob/inbox", q0),
            ("$SYS/#", q0),
        ];
        let ack = alice.subscribe(subscribe(2, &filters)).await;
        let no = if v.is_v5() { 0x87 } else { 0x80 };
        assert_eq!(
            ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
            [0, no, no, 0, no, no],
            "{v}"
        );
        // Of the retained messages, the one alice may read.
        let p = alice.recv_publish().await;
        assert_eq!((p.topic.as_str(), p.retain), ("sensors/r", true), "{v}");
        alice.quiet().await;
        // Deliveries: only what she may read.
        for topic in [
            "sensors/a",
            "sensors/secret/x",
            "users/alice/inbox",
            "users/bob/inbox",
        ] {
            admin.publish0(topic, b"live", false).await;
        }
        for expected in ["sensors/a", "users/alice/inbox"] {
            let p = alice.recv_publish().await;
            assert_eq!(p.topic, expected, "{v}");
        }
        alice.quiet().await;
        // Seen by the admin's `#` too; drained.
        for _ in 0..4 {
            admin.recv_publish().await;
        }
        // PUBLISH where she may only read: refused, and nobody gets it.
        for (qos, n) in [(QoS::AtLeastOnce, 10), (QoS::ExactlyOnce, 11)] {
            let mut p = publish("sensors/a", b"forged", qos, false);
            p.qos_pid = QosPid::new(qos, pid(n));
            alice.send(p).await;
            let code = alice
                .find(|p| match p {
                    Packet::PubAck(a) => Some(a.reason_code),
                    Packet::PubRec(r) => Some(r.reason_code),
                    _ => None,
                })
                .await;
            if v.is_v5() {
                assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "{v} {qos:?}");
            } else {
                assert_eq!(code, ReasonCode::SUCCESS, "{v} {qos:?}");
                if qos == QoS::ExactlyOnce {
                    alice.send(mqtt_codec::PubRel::new(pid(n))).await;
                    alice
                        .find(|p| matches!(p, Packet::PubComp(_)).then_some(()))
                        .await;
                }
            }
        }
        // Where her client id lets her write.
        admin.quiet().await;
        alice
            .publish0(&format!("devices/{id}/state"), b"on", false)
            .await;
        let p = admin.recv_publish().await;
        assert_eq!(p.topic.as_str(), format!("devices/{id}/state"));
        admin.quiet().await;
    }
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// A shared subscription's messages go to the members who may read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_pass_over_members_who_may_not_read() {
    let (d, pw, acl) = acl_files("shared", ACL);
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    let (mut admin, _) = connect_as(addr, V5, "admin-member", Some(("admin", "admin"))).await;
    let (mut alice, _) = connect_as(addr, V5, "alice-member", Some(("alice", "secret"))).await;
    admin.sub("$share/g/sensors/#", QoS::AtMostOnce).await;
    alice.sub("$share/g/sensors/#", QoS::AtMostOnce).await;
    let (mut publisher, _) = connect_as(addr, V5, "publisher", Some(("admin", "admin"))).await;
    for _ in 0..4 {
        publisher.publish0("sensors/secret/x", b"s", false).await;
    }
    for _ in 0..4 {
        assert_eq!(admin.recv_publish().await.topic, "sensors/secret/x");
    }
    alice.quiet().await;
    for _ in 0..4 {
        publisher.publish0("sensors/a", b"a", false).await;
    }
    let mut got = 0;
    for member in [&mut admin, &mut alice] {
        while let Some(Some(p)) = member.next_within(Duration::from_millis(300)).await {
            assert_eq!(
                p,
                Packet::Publish(publish("sensors/a", b"a", QoS::AtMostOnce, false))
            );
            got += 1;
        }
    }
    assert_eq!(got, 4);
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

/// `mosquitto_sub` resuming the session `id` as `user` (Clean Session 0; in 5.0 with a
/// Session Expiry Interval) on `sensors/#` at QoS 1: the lines it prints within 2 s.
async fn mosquitto_sub_resuming(port: u16, version: &str, id: &str, user: &str) -> Vec<String> {
    let (_, password) = ACL_PASSWORDS.iter().find(|(u, _)| *u == user).unwrap();
    let mut sub = crate::mosquitto_sub(port, version);
    sub.args(["-i", id, "-c", "-u", user, "-P", password])
        .args(["-t", "sensors/#", "-q", "1", "-v", "-W", "2"]);
    if version == "mqttv5" {
        sub.args(["-x", "300"]);
    }
    let out = sub.output().await.unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A CONNECT that resumes a persistent session as `user` (of `ACL_PASSWORDS`).
fn keep(user: &'static str) -> impl FnOnce(&mut mqtt_codec::Connect) {
    move |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c.username = Some(s(user));
        let (_, password) = ACL_PASSWORDS.iter().find(|(u, _)| *u == user).unwrap();
        c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    }
}

// A session resumed by another user (or by the same one after the rules changed) gets
// only the waiting messages that user may read, as Mosquitto checks a durable client's
// queue when it reconnects: queued while it was away (mosquitto_sub resumes it), and
// in flight to the connection it takes over (resent only if readable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_gets_only_what_its_new_user_may_read() {
    let (d, pw, acl) = acl_files("resumed", ACL);
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    let (mut admin, _) = connect_as(addr, V5, "publisher", Some(("admin", "admin"))).await;
    for (v, version) in [(V3, "mqttv311"), (V5, "mqttv5")] {
        let id = format!("handover-{v}");
        // Offline: the admin's session queues what alice may read and what she may not.
        let (mut c, _) = Client::connect_with(addr, v, &id, keep("admin")).await;
        c.sub("sensors/#", QoS::AtLeastOnce).await;
        c.drop_connection();
        for topic in ["sensors/a", "sensors/secret/x", "sensors/b"] {
            let mut p = publish(topic, b"queued", QoS::AtLeastOnce, false);
            p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(1));
            admin.publish(p).await;
        }
        let got = mosquitto_sub_resuming(addr.port(), version, &id, "alice").await;
        assert_eq!(got, ["sensors/a queued", "sensors/b queued"], "{v}");
        // In flight: delivered to the admin's connection, unacknowledged, then taken
        // over. A QoS 1 message is dropped; a QoS 2 one gets PUBREL, not its PUBLISH,
        // which releases the identifier a client may hold for it.
        let (mut c, _) = Client::connect_with(addr, v, &id, keep("admin")).await;
        c.sub("sensors/#", QoS::ExactlyOnce).await;
        for (topic, qos) in [
            ("sensors/secret/y", QoS::AtLeastOnce),
            ("sensors/secret/z", QoS::ExactlyOnce),
            ("sensors/c", QoS::AtLeastOnce),
        ] {
            let mut p = publish(topic, b"in flight", qos, false);
            p.qos_pid = QosPid::new(qos, pid(2));
            admin.publish(p).await;
        }
        let mut z = None;
        for topic in ["sensors/secret/y", "sensors/secret/z", "sensors/c"] {
            let p = c.recv_publish().await;
            assert_eq!(p.topic, topic, "{v}");
            z = z.or(p
                .qos_pid
                .packet_id()
                .filter(|_| p.qos_pid.qos() == QoS::ExactlyOnce));
        }
        let (mut alice, ack) = Client::connect_with(addr, v, &id, keep("alice")).await;
        assert!(ack.session_present, "{v}");
        match alice.recv().await {
            Packet::PubRel(r) => {
                assert_eq!(Some(r.packet_id), z, "{v}");
                alice.send(mqtt_codec::PubComp::new(r.packet_id)).await;
            }
            other => panic!("{v}: expected PUBREL for sensors/secret/z, got {other:?}"),
        }
        let p = alice.recv_publish().await;
        assert_eq!((p.topic.as_str(), p.dup), ("sensors/c", true), "{v}");
        alice.ack(&p).await;
        alice.quiet().await;
        // The admin, resuming, may read everything again: nothing was left behind.
        alice.drop_connection();
        let (mut c, _) = Client::connect_with(addr, v, &id, keep("admin")).await;
        c.quiet().await;
    }
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// A shared subscription's message that the resuming client may not read goes to
// another member of the group instead of being lost to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_shared_message_goes_to_another_member() {
    let (d, pw, acl) = acl_files("resumed-shared", ACL);
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    let (mut admin, _) = connect_as(addr, V5, "publisher", Some(("admin", "admin"))).await;
    let (mut held, _) = Client::connect_with(addr, V5, "g-held", keep("admin")).await;
    held.sub("$share/g/sensors/#", QoS::AtLeastOnce).await;
    let mut p = publish("sensors/secret/z", b"shared", QoS::AtLeastOnce, false);
    p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(1));
    admin.publish(p).await;
    // Delivered to the only member, and not acknowledged.
    assert_eq!(held.recv_publish().await.topic, "sensors/secret/z");
    let (mut other, _) = connect_as(addr, V5, "g-other", Some(("admin", "admin"))).await;
    other.sub("$share/g/sensors/#", QoS::AtLeastOnce).await;
    other.quiet().await;
    // Alice takes the session over: not for her, so for the other member.
    let (mut alice, ack) = Client::connect_with(addr, V5, "g-held", keep("alice")).await;
    assert!(ack.session_present);
    let p = other.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("sensors/secret/z", &b"shared"[..])
    );
    other.ack(&p).await;
    alice.quiet().await;
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// The same for a backlog kept on disk (more waiting than `limits.max_queued_messages`
// holds in memory): what is read back for a client that may not read it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_sessions_backlog_on_disk_is_checked_too() {
    let (d, pw, acl) = acl_files("paged", ACL);
    let store = d.join("store.redb");
    let (broker, addr) = broker_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(pw);
        c.auth.acl_file = Some(acl);
        c.persistence.mode = mqtt_broker::config::PersistenceMode::Sync;
        c.persistence.path = store;
        c.limits.max_queued_messages = 10;
    })
    .await;
    let (mut c, _) = Client::connect_with(addr, V5, "paged", keep("admin")).await;
    c.sub("sensors/#", QoS::AtLeastOnce).await;
    c.drop_connection();
    let (mut admin, _) = connect_as(addr, V5, "publisher", Some(("admin", "admin"))).await;
    let topic = |i: usize| {
        if i % 2 == 0 {
            format!("sensors/a/{i}")
        } else {
            format!("sensors/secret/{i}")
        }
    };
    for i in 0..60 {
        let mut p = publish(&topic(i), b"backlog", QoS::AtLeastOnce, false);
        p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(1));
        admin.publish(p).await;
    }
    let (mut alice, ack) = Client::connect_with(addr, V5, "paged", keep("alice")).await;
    assert!(ack.session_present);
    for i in (0..60).step_by(2) {
        let p = alice.recv_publish().await;
        assert_eq!(p.topic.as_str(), topic(i));
        alice.ack(&p).await;
    }
    alice.quiet().await;
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// A will is checked against the ACL at CONNECT: refused (5.0: 0x87; 3.1.1: 5) where
// its client may not write; allowed, it is published to those who may read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_checked() {
    let (d, pw, acl) = acl_files(
        "will",
        "user bob\ntopic readwrite bob/#\nuser admin\ntopic read #\n",
    );
    let (broker, addr) = broker_files(Some(&pw), Some(&acl)).await;
    let (mut watcher, _) = connect_as(addr, V5, "watcher", Some(("admin", "admin"))).await;
    watcher.sub("#", QoS::AtMostOnce).await;
    let will = |topic: &str| Will {
        topic: s(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    for v in [V3, V5] {
        let (_c, ack) = Client::connect_with(addr, v, &format!("bob-{v}"), |c| {
            c.username = Some(s("bob"));
            c.password = Some(Bytes::from_static(b"bob"));
            c.will = Some(will("alice/will"));
        })
        .await;
        // 0x87 on the wire in 5.0; 3.1.1's return code 5, which the codec reads as 0x87.
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED, "{v}");
        let (c, ack) = Client::connect_with(addr, v, &format!("bob-{v}"), |c| {
            c.username = Some(s("bob"));
            c.password = Some(Bytes::from_static(b"bob"));
            c.will = Some(will("bob/will"));
        })
        .await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{v}");
        c.drop_connection();
        let p = watcher.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("bob/will", &b"gone"[..])
        );
    }
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// Repeated failures from one address wait longer and longer for their CONNACK (none,
// 100 ms, 200 ms, 400 ms...); a right password is not slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_down() {
    let (d, pw, _) = acl_files("slow", "");
    let (broker, addr) = broker_files(Some(&pw), None).await;
    let mut took = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let (_c, code) = connect_as(addr, V5, "guess", Some(("alice", "guess"))).await;
        took.push(started.elapsed());
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    let ms: Vec<u128> = took.iter().map(Duration::as_millis).collect();
    assert!(ms[1] >= 100 && ms[2] >= 200 && ms[3] >= 400, "{ms:?}");
    assert!(ms[3] >= ms[0] + 300, "{ms:?}");
    let started = Instant::now();
    let (_c, code) = connect_as(addr, V5, "right", Some(("alice", "secret"))).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// Each listener's own allow_anonymous, password_file and acl_file override [auth]'s
// for the clients that connect on it (Mosquitto's per_listener_settings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_override_the_auth_settings() {
    let (d, pw, _) = acl_files("listeners", "");
    let guest_acl = d.join("guest.acl");
    std::fs::write(&guest_acl, "topic read public/#\n").unwrap();
    let (broker, _) = broker_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(pw.clone());
        let mut guests = Listener::new("127.0.0.1:0".parse().unwrap());
        guests.allow_anonymous = Some(true);
        guests.acl_file = Some(guest_acl.clone());
        c.listeners.push(guests);
    })
    .await;
    let (members, guests) = (broker.local_addrs()[0], broker.local_addrs()[1]);
    let (_c, code) = connect_as(members, V5, "anon-member", None).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    let (mut guest, code) = connect_as(guests, V5, "anon-guest", None).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let ack = guest
        .subscribe(subscribe(
            1,
            &[
                ("public/#", SubscriptionOptions::new(QoS::AtMostOnce)),
                ("private/#", SubscriptionOptions::new(QoS::AtMostOnce)),
            ],
        ))
        .await;
    assert_eq!(
        ack.reason_codes.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 0x87]
    );
    let mut p = publish("public/x", b"from a guest", QoS::AtLeastOnce, false);
    p.qos_pid = QosPid::new(QoS::AtLeastOnce, pid(2));
    guest.send(p).await;
    let code = guest
        .find(|p| match p {
            Packet::PubAck(a) => Some(a.reason_code),
            _ => None,
        })
        .await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    // A member (no ACL on that listener) may publish anything; the guest reads it.
    let (mut member, code) = connect_as(members, V5, "member", Some(("bob", "bob"))).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    member.publish0("public/x", b"news", false).await;
    member.publish0("private/x", b"memo", false).await;
    let p = guest.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("public/x", &b"news"[..])
    );
    guest.quiet().await;
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}

// A malformed password or ACL file refuses the start, naming the file, the line and
// the reason: from the library and from the binary (exit code 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_files_refuse_the_start() {
    let d = dir("malformed");
    let pw = d.join("passwd");
    std::fs::write(&pw, format!("{}alice:secret\n", line("bob", "x"))).unwrap();
    let acl = d.join("acl");
    std::fs::write(&acl, "user alice\ntopic sometimes a/b\n").unwrap();
    let start = |password_file: Option<PathBuf>, acl_file: Option<PathBuf>| {
        let mut config = mqtt_broker::Config {
            listeners: vec![Listener::new("127.0.0.1:0".parse().unwrap())],
            ..Default::default()
        };
        config.auth.password_file = password_file;
        config.auth.acl_file = acl_file;
        Broker::start(config)
    };
    let err = start(Some(pw.clone()), None).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        err.to_string().starts_with(&format!(
            "{}:2: user `alice`: not a password hash",
            pw.display()
        )),
        "{err}"
    );
    let err = start(None, Some(acl.clone())).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: unknown access `sometimes`", acl.display())),
        "{err}"
    );
    // A listener's own file too.
    let mut config = mqtt_broker::Config::default();
    let mut l = Listener::new("127.0.0.1:0".parse().unwrap());
    l.acl_file = Some(acl.clone());
    config.listeners = vec![l];
    assert!(Broker::start(config).await.is_err());

    let toml = d.join("broker.toml");
    std::fs::write(
        &toml,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let out = Command::new(MQTT_BROKER)
        .arg("-c")
        .arg(&toml)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: user `alice`", pw.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

// A failed authentication is logged at info level with the peer address, the client
// id, the user name and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged() {
    let (d, pw, _) = acl_files("log", "");
    let toml = d.join("broker.toml");
    std::fs::write(
        &toml,
        format!(
            "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut broker = Command::new(MQTT_BROKER)
        .arg("-c")
        .arg(&toml)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < WAIT,
            "the broker did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (c, code) = connect_as(addr, V3, "logged-client", Some(("alice", "nope"))).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let local = c.local_addr();
    let (_c, code) = connect_as(addr, V3, "anonymous-client", None).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    broker.start_kill().unwrap();
    let out = broker.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let failed = log
        .lines()
        .find(|l| l.contains("authentication failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{log}"));
    for part in [
        " INFO ",
        &format!("peer={local}"),
        "client=\"logged-client\"",
        "user=\"alice\"",
        "Bad User Name or Password",
    ] {
        assert!(failed.contains(part), "{part} not in: {failed}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("client=\"anonymous-client\"")
                && l.contains("allow_anonymous = false")),
        "{log}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

// With a password file, allow_anonymous = false works (it was refused while there was
// no password backend): users get in, anonymous clients do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_anonymous_false_with_a_password_file() {
    let (d, pw, _) = acl_files("anonymous", "");
    let (broker, addr) = broker_files(Some(&pw), None).await;
    for v in [V3, V5] {
        let (_c, code) = connect_as(addr, v, "nobody", None).await;
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "{v}");
        let (_c, code) = connect_as(addr, v, "alice", Some(("alice", "secret"))).await;
        assert_eq!(code, ReasonCode::SUCCESS, "{v}");
    }
    broker.shutdown().await;
    std::fs::remove_dir_all(&d).unwrap();
}
