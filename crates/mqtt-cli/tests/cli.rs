//! Scripted runs of mqtt-pub, mqtt-sub and mqtt-rr against Mosquitto and against our
//! own broker, compared with what mosquitto_pub, mosquitto_sub and mosquitto_rr print
//! for the same flags.

use std::{
    io::{Read, Write},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use mqtt_client::testing::Mosquitto;

const PUB: &str = env!("CARGO_BIN_EXE_mqtt-pub");
const SUB: &str = env!("CARGO_BIN_EXE_mqtt-sub");
const RR: &str = env!("CARGO_BIN_EXE_mqtt-rr");

/// A broker for the scripted runs: Debian's Mosquitto, or ours, in this process.
enum TestBroker {
    Mosquitto(Mosquitto),
    Ours {
        port: u16,
        broker: Option<mqtt_broker::Broker>,
        runtime: tokio::runtime::Runtime,
    },
}

impl TestBroker {
    fn ours() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = mqtt_broker::Config {
            listeners: vec![mqtt_broker::config::Listener {
                bind: "127.0.0.1:0".parse().unwrap(),
            }],
            ..mqtt_broker::Config::default()
        };
        let broker = runtime
            .block_on(mqtt_broker::Broker::start(config))
            .unwrap();
        let port = broker.local_addrs()[0].port();
        Self::Ours {
            port,
            broker: Some(broker),
            runtime,
        }
    }

    fn port(&self) -> u16 {
        match self {
            Self::Mosquitto(m) => m.port,
            Self::Ours { port, .. } => *port,
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Mosquitto(m) => m.url(),
            Self::Ours { port, .. } => format!("mqtt://127.0.0.1:{port}"),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Self::Ours {
            broker, runtime, ..
        } = self
        {
            if let Some(b) = broker.take() {
                runtime.block_on(b.shutdown());
            }
        }
    }
}

/// Mosquitto, then ours.
fn both() -> [TestBroker; 2] {
    [
        TestBroker::Mosquitto(Mosquitto::start()),
        TestBroker::ours(),
    ]
}

/// Waits for a child, killing it after `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "timed out; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sleep(Duration::from_millis(10));
    }
}

fn spawn(bin: &str, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin}: {e} (install mosquitto-clients for the mosquitto_* tools)")
        })
}

fn run(bin: &str, args: &[&str]) -> Output {
    let mut c = spawn(bin, args);
    drop(c.stdin.take());
    wait(c, Duration::from_secs(10))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs our subscriber and mosquitto_sub with the same flags while `publish` runs,
/// and returns both outputs.
fn both_subscribers(port: &str, flags: &[&str], publish: impl FnOnce()) -> (Output, Output) {
    let mut args = vec!["-p", port];
    args.extend_from_slice(flags);
    let ours = spawn(SUB, &args);
    let theirs = spawn("mosquitto_sub", &args);
    // Both subscribed: wait for them to show up.
    sleep(Duration::from_millis(400));
    publish();
    (
        wait(ours, Duration::from_secs(10)),
        wait(theirs, Duration::from_secs(10)),
    )
}

#[test]
fn help_is_covered() {
    for (bin, flags) in [
        (
            PUB,
            &[
                "-h",
                "-p",
                "-t",
                "-m",
                "-f",
                "-l",
                "-n",
                "-s",
                "-q",
                "-r",
                "-i",
                "-I",
                "-k",
                "-u",
                "-P",
                "-c",
                "-x",
                "-V",
                "-d",
                "-D",
                "-L",
                "--will-topic",
                "--will-payload",
                "--will-qos",
                "--will-retain",
                "--cafile",
                "--capath",
                "--cert",
                "--key",
                "--insecure",
                "--repeat",
                "--repeat-delay",
            ][..],
        ),
        (
            SUB,
            &[
                "-t",
                "-v",
                "-C",
                "-W",
                "-R",
                "-N",
                "-T",
                "-F",
                "-U",
                "-E",
                "--retained-only",
                "--remove-retained",
                "--unsubscribe",
                "--json",
            ][..],
        ),
        (RR, &["-t", "-e", "-m", "-W"][..]),
    ] {
        let o = run(bin, &["--help"]);
        assert!(o.status.success(), "{bin}");
        let help = stdout(&o);
        for f in flags {
            assert!(help.contains(f), "{bin} --help lacks {f}:\n{help}");
        }
    }
}

#[test]
fn pub_and_sub_print_what_mosquitto_prints() {
    for broker in both() {
        let port = broker.port().to_string();
        let p = port.as_str();
        // Our publisher, every QoS and a null message; both subscribers, -v.
        let (ours, theirs) =
            both_subscribers(p, &["-t", "cmp/#", "-v", "-C", "4", "-q", "2"], || {
                for (qos, args) in [
                    ("0", &["-m", "zero"][..]),
                    ("1", &["-m", "one"]),
                    ("2", &["-m", "two"]),
                    ("1", &["-n"]),
                ] {
                    let mut a = vec!["-p", p, "-t", "cmp/x", "-q", qos];
                    a.extend_from_slice(args);
                    let o = run(PUB, &a);
                    assert!(o.status.success(), "{}", stderr(&o));
                }
            });
        assert!(ours.status.success(), "{}", stderr(&ours));
        assert_eq!(
            stdout(&ours),
            "cmp/x zero\ncmp/x one\ncmp/x two\ncmp/x (null)\n"
        );
        assert_eq!(stdout(&ours), stdout(&theirs));

        // mosquitto_pub as the publisher, a format string, 5.0, -N.
        let fmt = "%t|%p|%q|%r|%l|%x\\n";
        let (ours, theirs) = both_subscribers(
            p,
            &[
                "-t", "fmt/#", "-C", "2", "-q", "1", "-F", fmt, "-V", "5", "-N",
            ],
            || {
                for payload in ["héllo", "x y"] {
                    let o = run(
                        "mosquitto_pub",
                        &["-p", p, "-t", "fmt/a", "-q", "1", "-m", payload],
                    );
                    assert!(o.status.success());
                }
            },
        );
        assert_eq!(stdout(&ours), stdout(&theirs));
        assert!(
            stdout(&ours).starts_with("fmt/a|héllo|1|0|6|68c3a96c6c6f\n"),
            "{}",
            stdout(&ours)
        );

        // -l: one message per line of stdin; -T filters out.
        let (ours, theirs) =
            both_subscribers(p, &["-t", "lines/#", "-T", "lines/skip", "-C", "3"], || {
                let o = run(PUB, &["-p", p, "-t", "lines/skip", "-m", "hidden"]);
                assert!(o.status.success());
                let mut c = spawn(PUB, &["-p", p, "-t", "lines/a", "-l", "-q", "1"]);
                c.stdin.take().unwrap().write_all(b"l1\nl2\nl3\n").unwrap();
                let o = wait(c, Duration::from_secs(10));
                assert!(o.status.success(), "{}", stderr(&o));
            });
        assert_eq!(stdout(&ours), "l1\nl2\nl3\n");
        assert_eq!(stdout(&ours), stdout(&theirs));
    }
}

#[test]
fn retained_messages_and_their_removal() {
    for broker in both() {
        let port = broker.port().to_string();
        let p = port.as_str();
        for t in ["ret/a", "ret/b"] {
            assert!(
                run(PUB, &["-p", p, "-t", t, "-m", t, "-r", "-q", "1"])
                    .status
                    .success()
            );
        }
        // Retained messages arrive at once; -R hides them; --retained-only stops at the
        // first fresh message.
        // The spec orders nothing across topics: compare the lines as sets.
        let sorted = |o: &Output| {
            let mut lines: Vec<String> = stdout(o).lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        let o = run(SUB, &["-p", p, "-t", "ret/#", "-v", "-C", "2"]);
        let theirs = run("mosquitto_sub", &["-p", p, "-t", "ret/#", "-v", "-C", "2"]);
        assert_eq!(sorted(&o), ["ret/a ret/a", "ret/b ret/b"]);
        assert_eq!(sorted(&o), sorted(&theirs));
        let o = run(SUB, &["-p", p, "-t", "ret/#", "-R", "-W", "1"]);
        assert_eq!(o.status.code(), Some(27));
        assert_eq!(stdout(&o), "");
        // --remove-retained clears them.
        let o = run(
            SUB,
            &["-p", p, "-t", "ret/#", "--remove-retained", "-W", "1"],
        );
        assert_eq!(o.status.code(), Some(27), "{}", stderr(&o));
        let o = run("mosquitto_sub", &["-p", p, "-t", "ret/#", "-W", "1"]);
        assert_eq!(stdout(&o), "", "retained messages are gone");
    }
}

#[test]
fn exit_codes_and_errors_a_person_understands() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let p = port.as_str();
    // -W with nothing received: "Timed out", 27, as mosquitto_sub.
    let ours = run(SUB, &["-p", p, "-t", "none", "-W", "1"]);
    let theirs = run("mosquitto_sub", &["-p", p, "-t", "none", "-W", "1"]);
    assert_eq!(ours.status.code(), Some(27));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(stderr(&ours).contains("Timed out"));
    // Missing message, wildcard topic: exit 1 as mosquitto_pub, with its words.
    for args in [&["-t", "a"][..], &["-t", "a/#", "-m", "x"]] {
        let mut a = vec!["-p", p];
        a.extend_from_slice(args);
        let ours = run(PUB, &a);
        let theirs = run("mosquitto_pub", &a);
        assert_eq!(ours.status.code(), Some(1));
        assert_eq!(ours.status.code(), theirs.status.code());
        let first_line = stderr(&theirs).lines().next().unwrap_or("").to_owned();
        assert_eq!(
            stderr(&ours).trim(),
            first_line,
            "same message as mosquitto_pub"
        );
    }
    // A bad flag value is a usage error.
    let o = run(PUB, &["-p", p, "-t", "a", "-m", "x", "-q", "3"]);
    assert_eq!(o.status.code(), Some(2));
    // Refused: the reason in words.
    let closed = Mosquitto::start_with(&[], "allow_anonymous false\n");
    let cp = closed.port.to_string();
    for v in ["31", "311", "5"] {
        let o = run(PUB, &["-p", &cp, "-t", "a", "-m", "x", "-V", v]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o).trim(),
            "Error: Connection refused: not authorised",
            "-V {v}"
        );
    }
    // Nobody listening.
    let o = run(PUB, &["-p", "1", "-t", "a", "-m", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Connection refused"), "{}", stderr(&o));
}

#[test]
fn url_credentials_will_and_properties() {
    for broker in both() {
        let port = broker.port().to_string();
        let p = port.as_str();
        // -L with the topic in the path; 5.0 user property shown with %P.
        let (ours, theirs) = both_subscribers(
            p,
            &["-t", "url/#", "-C", "1", "-V", "5", "-F", "%t %p %P"],
            || {
                let url = format!("mqtt://someone:pw@127.0.0.1:{p}/url/t");
                let o = run(
                    PUB,
                    &[
                        "-L",
                        &url,
                        "-m",
                        "via-url",
                        "-V",
                        "5",
                        "-D",
                        "publish",
                        "user-property",
                        "k",
                        "v",
                    ],
                );
                assert!(o.status.success(), "{}", stderr(&o));
            },
        );
        assert_eq!(stdout(&ours), "url/t via-url k:v\n");
        assert_eq!(stdout(&ours), stdout(&theirs));
        // --json.
        let (ours, _) = both_subscribers(p, &["-t", "j", "-C", "1", "--json"], || {
            assert!(
                run(PUB, &["-p", p, "-t", "j", "-m", "a\"b"])
                    .status
                    .success()
            );
        });
        assert_eq!(
            stdout(&ours),
            "{\"topic\":\"j\",\"qos\":0,\"retain\":0,\"payloadlen\":3,\"payload\":\"a\\\"b\"}\n"
        );
        // A will, published when the subscriber holding it is killed.
        let mut watcher = spawn(SUB, &["-p", p, "-t", "will/#", "-C", "1", "-v"]);
        sleep(Duration::from_millis(300));
        let mut mortal = spawn(
            SUB,
            &[
                "-p",
                p,
                "-t",
                "x",
                "--will-topic",
                "will/x",
                "--will-payload",
                "bye",
                "-k",
                "5",
            ],
        );
        sleep(Duration::from_millis(300));
        mortal.kill().unwrap();
        let _ = mortal.wait();
        let mut out = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while watcher.try_wait().unwrap().is_none() && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let _ = watcher.kill();
        watcher
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "will/x bye\n");
    }
}

#[test]
fn request_response_like_mosquitto_rr() {
    for broker in both() {
        let port = broker.port().to_string();
        let p = port.as_str();
        // A responder: answers each request on its response topic with its correlation data.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = broker.url();
        let responder = std::thread::spawn(move || {
            rt.block_on(async move {
                let o = mqtt_client::ConnectOptions::from_url(&url)
                    .unwrap()
                    .version(mqtt_client::ProtocolVersion::V5);
                let (c, mut conn) = mqtt_client::connect(o).await.unwrap();
                c.subscribe("svc/req", mqtt_client::QoS::AtLeastOnce)
                    .await
                    .unwrap();
                for _ in 0..2 {
                    let m = tokio::time::timeout(Duration::from_secs(10), conn.next_message())
                        .await
                        .unwrap()
                        .unwrap();
                    let mut reply = mqtt_client::message(
                        m.properties.response_topic.as_deref().unwrap(),
                        format!("pong:{}", String::from_utf8_lossy(&m.payload)),
                        mqtt_client::QoS::AtLeastOnce,
                        false,
                    )
                    .unwrap();
                    reply.properties.correlation_data = m.properties.correlation_data.clone();
                    c.publish_message(reply).await.unwrap();
                }
            });
        });
        sleep(Duration::from_millis(300));
        let args = [
            "-p", p, "-t", "svc/req", "-e", "svc/resp", "-m", "ping", "-q", "1",
        ];
        let ours = run(RR, &args);
        assert!(ours.status.success(), "{}", stderr(&ours));
        assert_eq!(stdout(&ours), "pong:ping\n");
        let theirs = run("mosquitto_rr", &args);
        assert_eq!(stdout(&ours), stdout(&theirs));
        responder.join().unwrap();
        // Nobody answers: timeout, 27.
        let o = run(
            RR,
            &["-p", p, "-t", "nobody", "-e", "r", "-m", "x", "-W", "1"],
        );
        assert_eq!(o.status.code(), Some(27));
    }
}
