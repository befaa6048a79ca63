//! The admin API: refused without its token, clients listed, searched, shown and
//! kicked, retained messages listed by page and deleted.

use std::io::{Read, Write};

use super::{broker_with_http, http, mosquitto_pub};

const TOKEN: &str = "test-token-0123456789";

fn get(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, Some(TOKEN));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A raw MQTT 5.0 client: CONNECT (clean, keep-alive 60) and its CONNACK.
fn v5_client(addr: std::net::SocketAddr, id: &str) -> std::net::TcpStream {
    let mut s = super::tcp(addr);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    s.write_all(&packet).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(rest[1], 0, "accepted");
    s
}

#[test]
fn without_a_token_the_admin_api_is_off_and_metrics_stay_open() {
    let (_broker, addr) = broker_with_http("admin-off", None);
    let (status, body) = http(addr, "GET", "/api/v1/stats", Some("anything"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("set http.admin_token"), "{body}");
    assert_eq!(http(addr, "GET", "/metrics", None).0, 200);
}

#[test]
fn clients_listed_searched_shown_and_kicked() {
    let (broker, addr) = broker_with_http("admin-clients", Some(TOKEN));
    assert_eq!(http(addr, "GET", "/api/v1/stats", None).0, 401);
    assert_eq!(
        http(addr, "GET", "/api/v1/stats", Some("wrong-token-0123456789")).0,
        401
    );
    let stats = get(addr, "/api/v1/stats");
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));

    let mut clients: Vec<_> = ["c1", "c2", "c3", "other"]
        .iter()
        .map(|id| v5_client(broker.addr, id))
        .collect();
    let page = get(addr, "/api/v1/clients?search=c&limit=2");
    assert_eq!(page["total"], 3);
    let ids: Vec<&str> = page["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2"]);
    let page = get(addr, "/api/v1/clients?search=c&limit=2&offset=2");
    assert_eq!(page["clients"][0]["client_id"], "c3");
    assert_eq!(page["clients"][0]["protocol"], "5.0");
    assert_eq!(page["clients"][0]["connected"], true);
    assert_eq!(get(addr, "/api/v1/clients")["total"], 4);
    let (status, _) = http(addr, "GET", "/api/v1/clients?limit=100000", Some(TOKEN));
    assert_eq!(status, 400, "pages are bounded");

    // SUBSCRIBE from c1: packet id 1, `s/+` QoS 1, no properties.
    let c1 = clients.first_mut().unwrap();
    c1.write_all(&[0x82, 9, 0, 1, 0, 0, 3, b's', b'/', b'+', 1])
        .unwrap();
    let mut suback = [0u8; 6];
    c1.read_exact(&mut suback).unwrap();
    assert_eq!(suback[0], 0x90);
    let one = get(addr, "/api/v1/clients/c1");
    assert_eq!(one["subscriptions"][0]["filter"], "s/+");
    assert_eq!(one["subscriptions"][0]["qos"], 1);
    assert_eq!(
        http(addr, "GET", "/api/v1/clients/nobody", Some(TOKEN)).0,
        404
    );

    // Kicked: a 5.0 client reads DISCONNECT 0x98 (Administrative action).
    let (status, body) = http(addr, "POST", "/api/v1/clients/c2/kick", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let c2 = clients.get_mut(1).unwrap();
    let mut disconnect = [0u8; 3];
    c2.read_exact(&mut disconnect).unwrap();
    assert_eq!(&disconnect[..3], &[0xE0, disconnect[1], 0x98]);
    let line = broker.wait_for_all(&["disconnected", "client=c2"]);
    assert!(line.contains("kicked by an administrator"), "{line}");
    assert_eq!(
        http(addr, "POST", "/api/v1/clients/c2/kick", Some(TOKEN)).0,
        404
    );
}

#[test]
fn retained_messages_listed_by_page_and_deleted() {
    let (broker, addr) = broker_with_http("admin-retained", Some(TOKEN));
    let port = broker.port();
    for i in 0..5 {
        mosquitto_pub(
            &port,
            &["-t", &format!("r/{i}"), "-m", "kept", "-r", "-q", "1"],
        );
    }
    mosquitto_pub(&port, &["-t", "other/x", "-m", "kept", "-r"]);
    let page = get(addr, "/api/v1/retained?filter=r/%23&limit=3");
    assert_eq!(page["retained"].as_array().unwrap().len(), 3);
    assert_eq!(page["more"], true);
    let rest = get(addr, "/api/v1/retained?filter=r/%23&limit=3&offset=3");
    assert_eq!(rest["retained"].as_array().unwrap().len(), 2);
    assert_eq!(rest["more"], false);
    let all = get(addr, "/api/v1/retained?limit=1000");
    assert_eq!(all["retained"].as_array().unwrap().len(), 6, "{all}");
    assert_eq!(all["retained"][0]["payload_bytes"], 4);

    let (status, body) = http(addr, "DELETE", "/api/v1/retained?topic=r/3", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(addr, "DELETE", "/api/v1/retained?topic=r/3", Some(TOKEN)).0,
        404
    );
    assert_eq!(
        http(
            addr,
            "DELETE",
            "/api/v1/retained?topic=%24SYS/broker/uptime",
            Some(TOKEN)
        )
        .0,
        400
    );
    let left: Vec<String> = get(addr, "/api/v1/retained?filter=r/%23")["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["topic"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left.len(), 4);
    assert!(!left.contains(&"r/3".to_owned()));
    // A new subscriber no longer gets it.
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "r/3",
            "-W",
            "1",
            "-C",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
}
