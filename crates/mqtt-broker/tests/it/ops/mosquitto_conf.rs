//! Mosquitto's configuration file, read as it is: Debian's stock file, a file with
//! every key that is mapped, keys refused with file, line and key, `--print-config`
//! and `--test-config`; and the broker serving Mosquitto's clients on what it read.

use std::{net::TcpListener, path::Path, process::Command};

use super::{BIN, Broker, mosquitto_pub, scratch, write_file};

const DEBIAN: &str = include_str!("fixtures/debian-mosquitto.conf");
const EVERY_KEY: &str = include_str!("fixtures/every-key.conf");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The printed TOML, read back as our own configuration.
fn reparsed(toml: &str) -> mqtt_broker::Config {
    mqtt_broker::Config::parse(toml, "printed").unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn debians_stock_file_names_what_is_missing_and_the_rest_maps() {
    // The package's file, when it is installed, is the fixture.
    if let Ok(installed) = std::fs::read_to_string("/etc/mosquitto/mosquitto.conf") {
        assert_eq!(installed, DEBIAN, "the fixture is Debian's stock file");
    }
    let dir = scratch("debian");
    // Debian's conf.d holds only a README, which include_dir skips (only *.conf files
    // are read). The whole file maps, persistence included (issue 16).
    let conf_d = dir.join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    std::fs::write(conf_d.join("README"), "not a configuration file\n").unwrap();
    let text: String = DEBIAN
        .lines()
        .map(|l| {
            format!(
                "{}\n",
                l.replace("/etc/mosquitto/conf.d", conf_d.to_str().unwrap())
            )
        })
        .collect();
    let conf = write_file(&dir, "stock.conf", &text);
    let (code, out, err) = run(&["-c", conf.to_str().unwrap(), "--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    let c = reparsed(&out);
    let binds: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
    assert_eq!(
        binds,
        ["127.0.0.1:1883", "[::1]:1883"],
        "Mosquitto 2's local-only mode"
    );
    assert!(c.auth.allow_anonymous);
    assert_eq!(
        c.process.pid_file.as_deref(),
        Some(Path::new("/run/mosquitto/mosquitto.pid"))
    );
    assert_eq!(c.log.dest, [mqtt_broker::logging::LogDest::File]);
    assert_eq!(
        c.log.file.as_deref(),
        Some(Path::new("/var/log/mosquitto/mosquitto.log"))
    );
    // `persistence true` with `persistence_location /var/lib/mosquitto/`: the disk
    // store, acknowledging after each commit, in that directory.
    assert_eq!(
        c.persistence.mode,
        mqtt_broker::config::PersistenceMode::Sync
    );
    assert!(
        c.persistence.path.starts_with("/var/lib/mosquitto"),
        "{:?}",
        c.persistence.path
    );
    let (code, _, err) = run(&["-c", conf.to_str().unwrap(), "--test-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("configuration OK"), "{err}");
}

#[test]
fn every_mapped_key_and_the_broker_serves_on_what_it_read() {
    let dir = scratch("every-key");
    let (port, port2) = (free_port(), free_port());
    let text = EVERY_KEY
        .replace("@DIR@", dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@PORT2@", &port2.to_string());
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    write_file(
        &dir.join("conf.d"),
        "10-keepalive.conf",
        "max_keepalive 600\n",
    );
    write_file(&dir.join("conf.d"), "notes.txt", "bogus_key 1\n");
    let conf = write_file(&dir, "mosquitto.conf", &text);

    let (code, out, err) = run(&["--mosquitto-conf", conf.to_str().unwrap(), "--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    let c = reparsed(&out);
    let binds: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
    assert_eq!(
        binds,
        [format!("127.0.0.1:{port}"), format!("127.0.0.1:{port2}")],
        "bind_address, and `localhost` with socket_domain ipv4"
    );
    let l = &c.limits;
    assert_eq!(
        l.max_connections, 75,
        "the listeners' max_connections added"
    );
    assert_eq!(l.max_queued_messages, 500);
    assert_eq!(l.max_queued_bytes, 1_048_576);
    assert_eq!(l.max_inflight, 10);
    assert_eq!(l.max_packet_size, 165_536, "the smaller of the two limits");
    assert_eq!(l.max_keep_alive, 600, "include_dir's file comes last");
    assert_eq!(l.persistent_client_expiration, 7 * 86_400);
    assert!(l.queue_qos0_messages);
    assert_eq!(l.topic_alias_maximum, 16);
    assert!(c.retain.enabled);
    assert_eq!(c.sys.interval, 1);
    assert!(c.auth.allow_anonymous && c.auth.allow_zero_length_client_id);
    assert_eq!(c.log.level, mqtt_broker::logging::LogLevel::Info);
    assert!(c.log.subscriptions && c.log.connections);

    // The broker runs on it: Mosquitto's clients connect, the log file and the pid
    // file are where the file says, and the pid file goes at exit.
    let broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    assert_eq!(broker.addr.port(), port);
    let pid_file = dir.join("mosquitto.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        broker.child.id().to_string()
    );
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port2.to_string(),
            "-t",
            "m/#",
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            "s1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_all(&["subscribe 'm/#' q0", "client=s1"]);
    mosquitto_pub(
        &port.to_string(),
        &["-t", "m/1", "-m", "through both listeners"],
    );
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through both listeners"
    );
    let (status, _) = broker.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap();
    assert!(
        log.contains("connected") && log.contains("client=s1"),
        "{log}"
    );
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

#[test]
fn keys_refused_name_file_line_and_key() {
    let dir = scratch("refused");
    for (line, says) in [
        (
            "cafile /etc/ca.pem",
            "listener: cafile: only with TLS: set certfile and keyfile too",
        ),
        (
            "ciphers ECDHE-RSA-AES256-GCM-SHA384",
            "not supported by mqtt-broker: choosing ciphers",
        ),
        (
            "tls_version tlsv1.1",
            "not supported by mqtt-broker: TLS before 1.2",
        ),
        (
            "log_dest topic",
            "not supported by mqtt-broker: logging to $SYS/broker/log",
        ),
        (
            "bridge_protocol_version mqttv311",
            "not supported by mqtt-broker: unknown key; remove the line",
        ),
    ] {
        let conf = write_file(
            &dir,
            "m.conf",
            &format!("# header\nallow_anonymous true\n{line}\n"),
        );
        let (code, _, err) = run(&["-c", conf.to_str().unwrap(), "--test-config"]);
        assert_eq!(code, Some(2), "{line}: {err}");
        let key = line.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("{}:3: {key}: {says}", conf.display())),
            "{line}: {err}"
        );
    }
}

// A Mosquitto user's password and ACL files, as `mosquitto_passwd` wrote them, named in
// mosquitto.conf with per_listener_settings: the broker started on that file lets the
// right password in, refuses a wrong one and an anonymous client, and applies the ACL.
#[test]
fn password_and_acl_files_from_mosquitto_conf() {
    let dir = scratch("conf-auth");
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b", passwd.to_str().unwrap(), "alice", "s3cret"])
        .output()
        .expect("mosquitto_passwd (Debian's mosquitto) is installed");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let acl = write_file(&dir, "acl", "user alice\ntopic write conf/ok/#\n");
    let port = free_port();
    let conf = write_file(
        &dir,
        "mosquitto.conf",
        &format!(
            "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous false\n\
             password_file {}\nacl_file {}\n",
            passwd.display(),
            acl.display()
        ),
    );
    let broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    let port = broker.addr.port().to_string();
    mosquitto_pub(
        &port,
        &["-u", "alice", "-P", "s3cret", "-t", "conf/ok/1", "-m", "x"],
    );
    let refused = |args: &[&str]| {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-t", "conf/ok/1", "-m", "x"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was let in");
    };
    refused(&["-u", "alice", "-P", "wrong"]);
    refused(&[]);
    // 5.0: the ACL refuses a PUBLISH outside alice's grant with 0x87, which
    // mosquitto_pub reports as a failure at QoS 1.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
        .args(["-u", "alice", "-P", "s3cret", "-t", "conf/other", "-m", "x"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not authorized") || said.contains("Not authorized"),
        "{said}"
    );
}

// A Mosquitto user's TLS listener, as mosquitto.conf says it (certfile, keyfile,
// cafile, tls_version), beside a WebSocket one: the broker started on that file serves
// mosquitto_pub over TLS, and refuses it without the CA.
#[test]
fn tls_and_websocket_listeners_from_mosquitto_conf() {
    let pki = crate::pki::Pki::new();
    let dir = scratch("conf-tls");
    let (tls_port, ws_port) = (free_port(), free_port());
    let conf = write_file(
        &dir,
        "mosquitto.conf",
        &format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\ncafile {}\ntls_version tlsv1.2\n\
             listener {ws_port} 127.0.0.1\nprotocol websockets\nallow_anonymous true\n",
            pki.cert.display(),
            pki.key.display(),
            pki.ca.display()
        ),
    );
    let (code, out, err) = run(&["-c", conf.to_str().unwrap(), "--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    let c = reparsed(&out);
    assert!(c.listeners[0].is_tls());
    assert_eq!(
        c.listeners[1].protocol,
        mqtt_broker::config::Protocol::WebSockets
    );
    let _broker = Broker::start(&["-c", conf.to_str().unwrap()]);
    let publish = |ca: bool| {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "localhost", "-p", &tls_port.to_string()]);
        if ca {
            cmd.arg("--cafile").arg(&pki.ca);
        } else {
            cmd.args(["--capath", "/nonexistent-ca-dir"]);
        }
        cmd.args(["-t", "conf/tls", "-m", "x", "-q", "1"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(publish(true), "mosquitto_pub over TLS with the CA");
    assert!(
        !publish(false),
        "a client that cannot verify the server gets nowhere"
    );
}
