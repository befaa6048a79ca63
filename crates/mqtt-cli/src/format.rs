//! Output of received messages: mosquitto_sub's `-F` format strings, `-v`, and JSON.

use std::{fmt::Write as _, time::SystemTime};

use mqtt_client::Message;

/// Formats `m` with a mosquitto_sub `-F` format string: `%t` topic, `%p` payload,
/// `%q` QoS, `%r` retain flag, `%l` payload length, `%m` message id (always 0: the
/// client does not expose packet identifiers), `%x`/`%X` payload in hex, `%I` ISO-8601
/// time, `%U` Unix time with nanoseconds, `%j`/`%J` JSON (ISO-8601 / Unix time),
/// `%C` content type, `%D` correlation data, `%E` message expiry, `%F` payload format,
/// `%P` user properties, `%R` response topic, `%S` subscription identifier, `%%`, and
/// the escapes `\n`, `\t`, `\\`, `\0`, `\e`, `\a`.
pub fn format(fmt: &str, m: &Message) -> Vec<u8> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.extend_from_slice(m.topic.as_bytes()),
                Some('p') => out.extend_from_slice(&m.payload),
                Some('q') => push(&mut out, m.qos as u8),
                Some('r') => push(&mut out, u8::from(m.retain)),
                Some('l') => push(&mut out, m.payload.len()),
                Some('m') => push(&mut out, 0),
                Some('x') => out.extend(hex(&m.payload, false).bytes()),
                Some('X') => out.extend(hex(&m.payload, true).bytes()),
                Some('I') => out.extend(iso8601(now).bytes()),
                Some('U') => out.extend(unix(now).bytes()),
                Some('j') => out.extend(json(m, Some(now), false).bytes()),
                Some('J') => out.extend(json(m, Some(now), true).bytes()),
                Some('C') => out.extend(m.properties.content_type.as_deref().unwrap_or("").bytes()),
                Some('D') => {
                    out.extend_from_slice(m.properties.correlation_data.as_deref().unwrap_or(&[]));
                }
                Some('E') => {
                    if let Some(e) = m.properties.message_expiry_interval {
                        push(&mut out, e);
                    }
                }
                Some('F') => {
                    if let Some(f) = m.properties.payload_format_indicator {
                        push(
                            &mut out,
                            u8::from(matches!(f, mqtt_client::codec::PayloadFormat::Utf8)),
                        );
                    }
                }
                Some('P') => {
                    let props: Vec<String> = m
                        .properties
                        .user_properties
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    out.extend(props.join(" ").bytes());
                }
                Some('R') => {
                    out.extend(m.properties.response_topic.as_deref().unwrap_or("").bytes());
                }
                Some('S') => {
                    let ids: Vec<String> = m
                        .properties
                        .subscription_identifiers
                        .iter()
                        .map(|i| i.get().to_string())
                        .collect();
                    out.extend(ids.join(",").bytes());
                }
                Some('%') => out.push(b'%'),
                Some(other) => {
                    out.push(b'%');
                    out.extend(other.to_string().bytes());
                }
                None => out.push(b'%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('\\') => out.push(b'\\'),
                Some('0') => out.push(0),
                Some('e') => out.push(0x1b),
                Some('a') => out.push(0x07),
                Some(other) => {
                    out.push(b'\\');
                    out.extend(other.to_string().bytes());
                }
                None => out.push(b'\\'),
            },
            c => out.extend(c.to_string().bytes()),
        }
    }
    out
}

fn push(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    out.extend(v.to_string().bytes());
}

fn hex(data: &[u8], upper: bool) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        if upper {
            let _ = write!(s, "{b:02X}");
        } else {
            let _ = write!(s, "{b:02x}");
        }
    }
    s
}

fn unix(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// `2024-05-01T12:00:00.123456Z+0000`, as mosquitto_sub prints it.
fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The message as one JSON object, with mosquitto_sub's field names: `tst` (when
/// `time` is given), `topic`, `qos`, `retain`, `payloadlen`, `payload` (a string when
/// the payload is UTF-8, else hex in `payload_hex`), and 5.0 properties when present.
pub fn json(m: &Message, time: Option<SystemTime>, unix_time: bool) -> String {
    let mut s = String::from("{");
    if let Some(t) = time {
        if unix_time {
            let _ = write!(s, "\"tst\":{},", unix(t));
        } else {
            let _ = write!(s, "\"tst\":{},", json_str(&iso8601(t)));
        }
    }
    let _ = write!(
        s,
        "\"topic\":{},\"qos\":{},\"retain\":{},\"payloadlen\":{}",
        json_str(&m.topic),
        m.qos as u8,
        u8::from(m.retain),
        m.payload.len()
    );
    let p = &m.properties;
    if let Some(ct) = &p.content_type {
        let _ = write!(s, ",\"content-type\":{}", json_str(ct));
    }
    if let Some(rt) = &p.response_topic {
        let _ = write!(s, ",\"response-topic\":{}", json_str(rt));
    }
    if let Some(cd) = &p.correlation_data {
        let _ = write!(
            s,
            ",\"correlation-data\":{}",
            json_str(&String::from_utf8_lossy(cd))
        );
    }
    if let Some(e) = p.message_expiry_interval {
        let _ = write!(s, ",\"message-expiry-interval\":{e}");
    }
    if !p.user_properties.is_empty() {
        let props: Vec<String> = p
            .user_properties
            .iter()
            .map(|(k, v)| format!("{{{}:{}}}", json_str(k), json_str(v)))
            .collect();
        let _ = write!(s, ",\"user-properties\":[{}]", props.join(","));
    }
    match std::str::from_utf8(&m.payload) {
        Ok(text) => {
            let _ = write!(s, ",\"payload\":{}", json_str(text));
        }
        Err(_) => {
            let _ = write!(s, ",\"payload_hex\":\"{}\"", hex(&m.payload, false));
        }
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_client::{ByteStr, QoS};

    fn msg() -> Message {
        let mut m = Message::new(
            ByteStr::from_static("a/b"),
            "hi\"x".into(),
            QoS::AtLeastOnce,
        );
        m.retain = true;
        m
    }

    #[test]
    fn format_codes() {
        let out = format("%t|%p|%q|%r|%l|%m|%%|%x|\\t", &msg());
        assert_eq!(out, b"a/b|hi\"x|1|1|4|0|%|68692278|\t".as_slice());
        let j = String::from_utf8(format("%j", &msg())).unwrap();
        assert!(j.starts_with("{\"tst\":\""), "{j}");
        assert!(
            j.ends_with(r#""topic":"a/b","qos":1,"retain":1,"payloadlen":4,"payload":"hi\"x"}"#),
            "{j}"
        );
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.000000Z+0000");
    }
}
