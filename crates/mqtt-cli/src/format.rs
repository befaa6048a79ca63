//! Output of received messages: mosquitto_sub's `-F` format strings, `-v`, and JSON.

use std::{fmt::Write as _, time::SystemTime};

use mqtt_client::{Arrival, Message};

/// Formats `m`, which arrived as `arrival` says, with a mosquitto_sub `-F` format
/// string, at the current time; `pretty` is `--pretty` (for `%j` and `%J`).
///
/// `%` codes: `%t` topic, `%p` payload, `%q` QoS, `%r` retain flag, `%l` payload
/// length, `%m` message id (the packet identifier of a QoS 1 or 2 message, 0 for
/// QoS 0), `%x`/`%X` payload in hex, `%I` ISO-8601 time, `%U` Unix time with
/// nanoseconds, `%j`/`%J` JSON (see [`json`]; `%J` embeds a JSON payload), `%A` the topic
/// alias the message arrived with (5.0; blank when none), `%C` content type, `%D` correlation data, `%E` message
/// expiry, `%F` payload format, `%P` user properties, `%R` response topic, `%S`
/// subscription identifier, `%%`. As in mosquitto_sub, `%` may be followed by `-`
/// (left-align), `0` (zero-pad numbers), a field width and `.precision` (maximum
/// width of `%C %I %R %t`), e.g. `%-10t`, `%05l`, `%10.10t`.
///
/// `@` codes are strftime's `%` codes (`@Y-@m-@dT@H:@M:@S`, `@s`, `@z`, ...), plus
/// `@N` for nanoseconds and `@@` for `@`. Times are local (the zone of `TZ` or
/// `/etc/localtime`), as mosquitto_sub prints them.
///
/// Escapes: `\n`, `\t`, `\r`, `\v`, `\\`, `\0`, `\e`, `\a`.
pub fn format(fmt: &str, m: &Message, arrival: Arrival, pretty: bool) -> Result<Vec<u8>, NotJson> {
    format_at(fmt, m, arrival, pretty, SystemTime::now())
}

/// `%J` met a payload that is not JSON: mosquitto_sub prints this (after `Error: `) and
/// skips the message.
#[derive(Debug, thiserror::Error)]
#[error("Message payload is not valid JSON on topic {topic}.")]
pub struct NotJson {
    /// The message's topic.
    pub topic: String,
}

/// The width and flags of a `%` code.
#[derive(Clone, Copy, Debug)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    fn pad_char(self) -> u8 {
        if self.zero && !self.left { b'0' } else { b' ' }
    }

    /// A number, as printf's `%d`, `%-*d` and `%0*d`.
    fn int(self, out: &mut Vec<u8>, v: impl std::fmt::Display) {
        let s = v.to_string();
        let w = self.width;
        let text = if self.left {
            format!("{s:<w$}")
        } else if self.zero {
            format!("{s:0>w$}")
        } else {
            format!("{s:>w$}")
        };
        out.extend_from_slice(text.as_bytes());
    }

    /// A string, as printf's `%*.*s` (the precision cuts bytes, as C does).
    fn str(self, out: &mut Vec<u8>, s: &[u8]) {
        let s = match self.precision {
            Some(p) => s.get(..p.min(s.len())).unwrap_or(s),
            None => s,
        };
        let pad = self.width.saturating_sub(s.len());
        if !self.left {
            out.extend(std::iter::repeat_n(b' ', pad));
        }
        out.extend_from_slice(s);
        if self.left {
            out.extend(std::iter::repeat_n(b' ', pad));
        }
    }

    /// Nothing to print (an absent property): the field's width in padding.
    fn blank(self, out: &mut Vec<u8>, pad: u8) {
        out.extend(std::iter::repeat_n(pad, self.width));
    }

    /// The payload, raw or in hex, as mosquitto_sub's `write_payload`: a width also
    /// caps what is printed (for hex, at half the width in bytes).
    fn payload(self, out: &mut Vec<u8>, data: &[u8], hex_case: Option<bool>) {
        let (shown, padlen) = if self.width > 0 {
            let n = data.len().min(self.width);
            match hex_case {
                Some(_) => (n / 2, self.width - (n / 2) * 2),
                None => (n, self.width - n),
            }
        } else {
            (data.len(), 0)
        };
        let data = data.get(..shown).unwrap_or(data);
        if !self.left {
            out.extend(std::iter::repeat_n(self.pad_char_payload(), padlen));
        }
        match hex_case {
            None => out.extend_from_slice(data),
            Some(upper) => out.extend(hex(data, upper).bytes()),
        }
        if self.left {
            out.extend(std::iter::repeat_n(b' ', padlen));
        }
    }

    /// mosquitto pads the payload with `0` when asked, even raw.
    fn pad_char_payload(self) -> u8 {
        if self.zero { b'0' } else { b' ' }
    }
}

/// Parses the flags, width and precision after `%`.
fn spec(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Spec {
    let mut s = Spec {
        left: false,
        zero: false,
        width: 0,
        precision: None,
    };
    if chars.next_if_eq(&'-').is_some() {
        s.left = true;
    }
    if chars.next_if_eq(&'0').is_some() {
        s.zero = true;
    }
    while let Some(d) = chars.next_if(char::is_ascii_digit) {
        s.width = s
            .width
            .saturating_mul(10)
            .saturating_add(d as usize - '0' as usize)
            .min(MAX_WIDTH);
    }
    if chars.next_if_eq(&'.').is_some() {
        let mut p = 0usize;
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            p = p
                .saturating_mul(10)
                .saturating_add(d as usize - '0' as usize)
                .min(MAX_WIDTH);
        }
        s.precision = Some(p);
    }
    s
}

/// Field widths beyond this are cut to it, so a format string cannot ask for gigabytes.
const MAX_WIDTH: usize = 4096;

/// [`format()`] at time `now`, in the local time zone.
pub fn format_at(
    fmt: &str,
    m: &Message,
    arrival: Arrival,
    pretty: bool,
    now: SystemTime,
) -> Result<Vec<u8>, NotJson> {
    format_in(fmt, m, arrival, pretty, now, &Zone::local(now))
}

/// [`format()`] at time `now` in `zone`.
fn format_in(
    fmt: &str,
    m: &Message,
    arrival: Arrival,
    pretty: bool,
    now: SystemTime,
    zone: &Zone,
) -> Result<Vec<u8>, NotJson> {
    let time = Civil::new(now, zone);
    let mut out = Vec::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let sp = spec(&mut chars);
                match chars.next() {
                    Some('t') => sp.str(&mut out, m.topic.as_bytes()),
                    Some('p') => sp.payload(&mut out, &m.payload, None),
                    Some('x') => sp.payload(&mut out, &m.payload, Some(false)),
                    Some('X') => sp.payload(&mut out, &m.payload, Some(true)),
                    Some('q') => push(&mut out, m.qos as u8),
                    Some('r') => push(&mut out, u8::from(m.retain)),
                    Some('l') => sp.int(&mut out, m.payload.len()),
                    Some('m') => sp.int(&mut out, arrival.packet_id.map_or(0, |id| id.get())),
                    Some('I') => sp.str(&mut out, time.iso8601().as_bytes()),
                    Some('U') => out.extend(unix(now).bytes()),
                    Some('j') => {
                        out.extend(json_in(m, arrival, Some((now, zone)), false, pretty)?.bytes());
                    }
                    Some('J') => {
                        out.extend(json_in(m, arrival, Some((now, zone)), true, pretty)?.bytes());
                    }
                    Some('A') => match arrival.topic_alias {
                        Some(a) => sp.int(&mut out, a.get()),
                        None => sp.blank(&mut out, sp.pad_char()),
                    },
                    Some('C') => match m.properties.content_type.as_deref() {
                        Some(ct) => sp.str(&mut out, ct.as_bytes()),
                        None => sp.blank(&mut out, b' '),
                    },
                    Some('D') => {
                        out.extend_from_slice(
                            m.properties.correlation_data.as_deref().unwrap_or(&[]),
                        );
                    }
                    Some('E') => match m.properties.message_expiry_interval {
                        Some(e) => sp.int(&mut out, e),
                        None => sp.blank(&mut out, sp.pad_char()),
                    },
                    Some('F') => match m.properties.payload_format_indicator {
                        Some(f) => sp.int(
                            &mut out,
                            u8::from(matches!(f, mqtt_client::codec::PayloadFormat::Utf8)),
                        ),
                        None => sp.blank(&mut out, sp.pad_char()),
                    },
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
                        if let Some(rt) = m.properties.response_topic.as_deref() {
                            sp.str(&mut out, rt.as_bytes());
                        }
                    }
                    Some('S') => match m.properties.subscription_identifiers.first() {
                        Some(id) => sp.int(&mut out, id.get()),
                        None => sp.blank(&mut out, sp.pad_char()),
                    },
                    Some('%') => out.push(b'%'),
                    // mosquitto_sub prints nothing for an unknown code.
                    Some(_) | None => {}
                }
            }
            '@' => match chars.next() {
                Some('@') => out.push(b'@'),
                Some('N') => out.extend(format!("{:09}", time.nanos).bytes()),
                Some(code) => time.strftime(code, &mut out),
                None => {}
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('r') => out.push(b'\r'),
                Some('v') => out.push(0x0b),
                Some('\\') => out.push(b'\\'),
                Some('0') => out.push(0),
                Some('e') => out.push(0x1b),
                Some('a') => out.push(0x07),
                // mosquitto_sub drops an unknown escape.
                Some(_) | None => {}
            },
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    Ok(out)
}

/// A time broken down in a zone, for `@` codes and ISO-8601.
#[derive(Clone, Debug)]
struct Civil {
    /// Seconds since the Unix epoch (UTC, as `@s` prints them).
    secs: u64,
    nanos: u32,
    /// The zone's offset from UTC in seconds, and its abbreviation (`@z`, `@Z`).
    offset: i32,
    abbreviation: String,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 0-based day of the year.
    yday: u32,
}

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A time zone at one instant: its offset from UTC and abbreviation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    offset: i32,
    abbreviation: String,
}

impl Zone {
    fn utc() -> Self {
        Self {
            offset: 0,
            abbreviation: "UTC".to_owned(),
        }
    }

    /// The system's zone (`TZ`, else `/etc/localtime`) at `t`, as mosquitto_sub's
    /// `localtime()`; UTC if it cannot be read.
    fn local(t: SystemTime) -> Self {
        let Ok(ts) = jiff::Timestamp::try_from(t) else {
            return Self::utc();
        };
        let tz = jiff::tz::TimeZone::system();
        let info = tz.to_offset_info(ts);
        Self {
            offset: info.offset().seconds(),
            abbreviation: info.abbreviation().to_owned(),
        }
    }

    /// `+hhmm`, as strftime's `%z`.
    fn numeric(&self) -> String {
        let sign = if self.offset < 0 { '-' } else { '+' };
        let a = self.offset.unsigned_abs();
        format!("{sign}{:02}{:02}", a / 3600, a % 3600 / 60)
    }
}

impl Civil {
    fn new(t: SystemTime, zone: &Zone) -> Self {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let local = i64::try_from(secs).unwrap_or(0) + i64::from(zone.offset);
        let days = local.div_euclid(86_400);
        let rem = local.rem_euclid(86_400);
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
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        // Day of the year from the month (March-based `doy` shifted to January).
        let yday = if month >= 3 {
            doy - 306 + 365 + i64::from(leap)
        } else {
            doy - 306
        };
        let small = |v: i64| u32::try_from(v).unwrap_or(0);
        Self {
            secs,
            nanos: d.subsec_nanos(),
            offset: zone.offset,
            abbreviation: zone.abbreviation.clone(),
            year,
            month: small(month),
            day: small(day),
            hour: small(rem / 3600),
            minute: small(rem % 3600 / 60),
            second: small(rem % 60),
            // 1970-01-01 was a Thursday.
            weekday: small((days + 4).rem_euclid(7)),
            yday: small(yday),
        }
    }
}

impl Civil {
    /// `%FT%T%z`, as mosquitto_sub's `%I`.
    fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.zone().numeric()
        )
    }

    fn zone(&self) -> Zone {
        Zone {
            offset: self.offset,
            abbreviation: self.abbreviation.clone(),
        }
    }

    fn day_name(&self) -> &'static str {
        DAYS.get(self.weekday as usize).copied().unwrap_or("")
    }

    fn month_name(&self) -> &'static str {
        MONTHS
            .get(self.month.saturating_sub(1) as usize)
            .copied()
            .unwrap_or("")
    }

    fn hour12(&self) -> u32 {
        match self.hour % 12 {
            0 => 12,
            h => h,
        }
    }

    /// One strftime conversion (C/POSIX locale, UTC). Unknown codes print as `%c`,
    /// as glibc's strftime does.
    fn strftime(&self, code: char, out: &mut Vec<u8>) {
        let s = match code {
            'a' => self.day_name().get(..3).unwrap_or("").to_owned(),
            'A' => self.day_name().to_owned(),
            'b' | 'h' => self.month_name().get(..3).unwrap_or("").to_owned(),
            'B' => self.month_name().to_owned(),
            'c' => {
                let mut v = Vec::new();
                for (i, c) in ['a', 'b', 'e', 'T', 'Y'].into_iter().enumerate() {
                    if i > 0 {
                        v.push(b' ');
                    }
                    self.strftime(c, &mut v);
                }
                String::from_utf8_lossy(&v).into_owned()
            }
            'C' => format!("{:02}", self.year.div_euclid(100)),
            'd' => format!("{:02}", self.day),
            'D' => format!(
                "{:02}/{:02}/{:02}",
                self.month,
                self.day,
                self.year.rem_euclid(100)
            ),
            'e' => format!("{:2}", self.day),
            'F' => format!("{:04}-{:02}-{:02}", self.year, self.month, self.day),
            'H' => format!("{:02}", self.hour),
            'I' => format!("{:02}", self.hour12()),
            'j' => format!("{:03}", self.yday + 1),
            'k' => format!("{:2}", self.hour),
            'l' => format!("{:2}", self.hour12()),
            'm' => format!("{:02}", self.month),
            'M' => format!("{:02}", self.minute),
            'n' => "\n".into(),
            'p' => if self.hour < 12 { "AM" } else { "PM" }.into(),
            'P' => if self.hour < 12 { "am" } else { "pm" }.into(),
            'r' => format!(
                "{:02}:{:02}:{:02} {}",
                self.hour12(),
                self.minute,
                self.second,
                if self.hour < 12 { "AM" } else { "PM" }
            ),
            'R' => format!("{:02}:{:02}", self.hour, self.minute),
            's' => self.secs.to_string(),
            'S' => format!("{:02}", self.second),
            't' => "\t".into(),
            'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
            'u' => (if self.weekday == 0 { 7 } else { self.weekday }).to_string(),
            'w' => self.weekday.to_string(),
            'y' => format!("{:02}", self.year.rem_euclid(100)),
            'Y' => self.year.to_string(),
            'z' => self.zone().numeric(),
            'Z' => self.abbreviation.clone(),
            '%' => "%".into(),
            other => format!("%{other}"),
        };
        out.extend_from_slice(s.as_bytes());
    }
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

/// `2024-05-01T12:00:00.123456Z+0000`, as mosquitto_sub prints `tst` in JSON: local
/// time, a `Z` and then the offset (sic).
fn iso8601(t: SystemTime, zone: &Zone) -> String {
    let c = Civil::new(t, zone);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z{}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1000,
        zone.numeric()
    )
}

/// A JSON value, as mosquitto_sub builds it with cJSON before printing.
#[derive(Clone, Debug)]
enum Json {
    Str(String),
    Num(u64),
    /// A payload that is JSON itself (`%J`).
    Value(serde_json::Value),
    Obj(Vec<(&'static str, Self)>),
    /// User properties: an object whose keys come from the message.
    Pairs(Vec<(String, String)>),
}

/// A string as cJSON escapes it: `"`, `\\`, `\b \f \n \r \t` by name, other control
/// characters as `\u00xx`; everything else as is.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
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
}

impl Json {
    /// Prints as cJSON does: `cJSON_PrintUnformatted`, or with `pretty`, `cJSON_Print`
    /// (a member per line, tab-indented, a tab after the colon).
    fn print(&self, out: &mut String, pretty: bool, depth: usize) {
        match self {
            Self::Str(s) => json_str(out, s),
            Self::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Self::Value(v) => print_value(out, v, pretty, depth),
            Self::Obj(members) => {
                let members = members.iter().map(|(k, v)| (*k, v));
                print_object(out, members, pretty, depth);
            }
            Self::Pairs(pairs) => {
                let values: Vec<Self> = pairs.iter().map(|(_, v)| Self::Str(v.clone())).collect();
                let members = pairs.iter().map(|(k, _)| k.as_str()).zip(values.iter());
                print_object(out, members, pretty, depth);
            }
        }
    }
}

fn print_object<'a>(
    out: &mut String,
    members: impl ExactSizeIterator<Item = (&'a str, &'a Json)>,
    pretty: bool,
    depth: usize,
) {
    let n = members.len();
    out.push('{');
    if pretty {
        out.push('\n');
    }
    for (i, (k, v)) in members.enumerate() {
        if pretty {
            out.extend(std::iter::repeat_n('\t', depth + 1));
        }
        json_str(out, k);
        out.push(':');
        if pretty {
            out.push('\t');
        }
        v.print(out, pretty, depth + 1);
        if i + 1 < n {
            out.push(',');
        }
        if pretty {
            out.push('\n');
        }
    }
    if pretty {
        out.extend(std::iter::repeat_n('\t', depth));
    }
    out.push('}');
}

/// The message as one JSON object, with mosquitto_sub's fields in its order: `tst`
/// (when `time` is given), `topic`, `qos`, `retain`, `payloadlen`, `mid` (QoS 1 and 2:
/// the packet identifier it arrived with), `properties` (5.0, when there are any:
/// `payload-format-indicator`, `message-expiry-interval`, `topic-alias`,
/// `response-topic`, `correlation-data`, `subscription-identifier`, `content-type`,
/// then `user-properties` as an object) and `payload`: a string when the payload is
/// UTF-8, else its bytes in hex in `payload_hex`. `pretty` prints it as mosquitto_sub
/// `--pretty` does.
///
/// mosquitto_sub lists properties in the order the PUBLISH carried them; ours are
/// decoded into fields, so they come in the order above (the order our encoder writes
/// them). mosquitto_sub writes a payload that is not UTF-8 as raw bytes, which is not
/// valid JSON; `payload_hex` is. With `json_payload` (`%J`) the payload must be JSON
/// and is embedded as a value, re-printed as cJSON prints it; [`NotJson`] otherwise.
pub fn json(
    m: &Message,
    arrival: Arrival,
    time: Option<SystemTime>,
    json_payload: bool,
    pretty: bool,
) -> Result<String, NotJson> {
    let zoned = time.map(|t| (t, Zone::local(t)));
    json_in(
        m,
        arrival,
        zoned.as_ref().map(|(t, z)| (*t, z)),
        json_payload,
        pretty,
    )
}

/// [`json`] with the time in a given zone.
fn json_in(
    m: &Message,
    arrival: Arrival,
    time: Option<(SystemTime, &Zone)>,
    json_payload: bool,
    pretty: bool,
) -> Result<String, NotJson> {
    let mut root: Vec<(&'static str, Json)> = Vec::new();
    if let Some((t, zone)) = time {
        root.push(("tst", Json::Str(iso8601(t, zone))));
    }
    root.push(("topic", Json::Str(m.topic.to_string())));
    root.push(("qos", Json::Num(m.qos as u64)));
    root.push(("retain", Json::Num(u64::from(m.retain))));
    root.push(("payloadlen", Json::Num(m.payload.len() as u64)));
    if let Some(id) = arrival.packet_id {
        root.push(("mid", Json::Num(u64::from(id.get()))));
    }
    let p = &m.properties;
    let mut props: Vec<(&'static str, Json)> = Vec::new();
    if let Some(f) = p.payload_format_indicator {
        let utf8 = matches!(f, mqtt_client::codec::PayloadFormat::Utf8);
        props.push(("payload-format-indicator", Json::Num(u64::from(utf8))));
    }
    if let Some(e) = p.message_expiry_interval {
        props.push(("message-expiry-interval", Json::Num(u64::from(e))));
    }
    if let Some(a) = arrival.topic_alias {
        props.push(("topic-alias", Json::Num(u64::from(a.get()))));
    }
    if let Some(rt) = &p.response_topic {
        props.push(("response-topic", Json::Str(rt.to_string())));
    }
    if let Some(cd) = &p.correlation_data {
        let text = String::from_utf8_lossy(cd).into_owned();
        props.push(("correlation-data", Json::Str(text)));
    }
    for id in &p.subscription_identifiers {
        props.push(("subscription-identifier", Json::Num(u64::from(id.get()))));
    }
    if let Some(ct) = &p.content_type {
        props.push(("content-type", Json::Str(ct.to_string())));
    }
    if !p.user_properties.is_empty() {
        let pairs = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        props.push(("user-properties", Json::Pairs(pairs)));
    }
    if !props.is_empty() {
        root.push(("properties", Json::Obj(props)));
    }
    if json_payload {
        let value = serde_json::from_slice(&m.payload).map_err(|_| NotJson {
            topic: m.topic.to_string(),
        })?;
        root.push(("payload", Json::Value(value)));
    } else {
        match std::str::from_utf8(&m.payload) {
            Ok(text) => root.push(("payload", Json::Str(text.to_owned()))),
            Err(_) => root.push(("payload_hex", Json::Str(hex(&m.payload, false)))),
        }
    }
    let mut s = String::new();
    Json::Obj(root).print(&mut s, pretty, 0);
    Ok(s)
}

/// A parsed JSON value as cJSON prints it: objects as [`print_object`], arrays on one
/// line (`[1, 2]` when pretty, `[1,2]` when not), numbers as [`cjson_number`].
fn print_value(out: &mut String, v: &serde_json::Value, pretty: bool, depth: usize) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => cjson_number(out, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => json_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(if pretty { ", " } else { "," });
                }
                // cJSON counts an array as a level, for the objects inside it.
                print_value(out, item, pretty, depth + 1);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let members: Vec<(&str, Json)> = members
                .iter()
                .map(|(k, v)| (k.as_str(), Json::Value(v.clone())))
                .collect();
            print_object(out, members.iter().map(|(k, v)| (*k, v)), pretty, depth);
        }
    }
}

/// A number as cJSON prints it (every JSON number is a double there): an integer that
/// fits an `int` as one, otherwise `%1.15g`, or `%1.17g` when 15 digits do not give
/// the same double back.
fn cjson_number(out: &mut String, d: f64) {
    if !d.is_finite() {
        out.push_str("null");
    } else if d.fract() == 0.0 && d >= f64::from(i32::MIN) && d <= f64::from(i32::MAX) {
        let _ = write!(out, "{}", d as i64);
    } else {
        let short = format_g(d, 15);
        if short.parse::<f64>().ok() == Some(d) {
            out.push_str(&short);
        } else {
            out.push_str(&format_g(d, 17));
        }
    }
}

/// C's `%1.<precision>g`: fixed or scientific notation by the exponent, trailing zeros
/// removed, a signed exponent of at least two digits.
fn format_g(d: f64, precision: usize) -> String {
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // The exponent after rounding to `precision` significant digits.
    let sci = format!("{:.*e}", precision.saturating_sub(1), d);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if exp < -4 || exp >= precision as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{d:.decimals$}"))
    }
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

    pub(super) fn arrival(packet_id: u16, alias: u16) -> Arrival {
        Arrival {
            packet_id: std::num::NonZeroU16::new(packet_id),
            topic_alias: std::num::NonZeroU16::new(alias),
        }
    }

    #[test]
    fn format_codes() {
        let out = format(
            "%t|%p|%q|%r|%l|%m|%%|%x|%A|%03A|\\t",
            &msg(),
            arrival(0, 0),
            false,
        )
        .unwrap();
        assert_eq!(out, b"a/b|hi\"x|1|1|4|0|%|68692278||000|\t".as_slice());
        let out = format("%m|%05m|%A|%-3A|", &msg(), arrival(513, 7), false).unwrap();
        assert_eq!(out, b"513|00513|7|7  |".as_slice());
        let j = String::from_utf8(format("%j", &msg(), arrival(9, 0), false).unwrap()).unwrap();
        assert!(j.starts_with("{\"tst\":\""), "{j}");
        assert!(
            j.ends_with(
                r#""topic":"a/b","qos":1,"retain":1,"payloadlen":4,"mid":9,"payload":"hi\"x"}"#
            ),
            "{j}"
        );
    }

    // cJSON_Print's layout, as mosquitto_sub --pretty prints it.
    #[test]
    fn pretty_json() {
        let mut m = msg();
        m.properties.content_type = Some(ByteStr::from_static("text"));
        m.properties.user_properties.push("k", "v\u{8}").unwrap();
        let j = json(&m, arrival(2, 3), None, false, true).unwrap();
        assert_eq!(
            j,
            "{\n\t\"topic\":\t\"a/b\",\n\t\"qos\":\t1,\n\t\"retain\":\t1,\n\t\"payloadlen\":\t4,\n\
             \t\"mid\":\t2,\n\t\"properties\":\t{\n\t\t\"topic-alias\":\t3,\n\
             \t\t\"content-type\":\t\"text\",\n\t\t\"user-properties\":\t{\n\
             \t\t\t\"k\":\t\"v\\b\"\n\t\t}\n\t},\n\t\"payload\":\t\"hi\\\"x\"\n}"
        );
        let flat = json(&m, arrival(2, 3), None, false, false).unwrap();
        assert_eq!(
            flat,
            r#"{"topic":"a/b","qos":1,"retain":1,"payloadlen":4,"mid":2,"properties":{"topic-alias":3,"content-type":"text","user-properties":{"k":"v\b"}},"payload":"hi\"x"}"#
        );
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(iso8601(t, &Zone::utc()), "2023-11-14T22:13:20.000000Z+0000");
    }
}

#[cfg(test)]
mod widths_and_dates {
    use super::tests::arrival;
    use super::*;
    use mqtt_client::{ByteStr, QoS};

    fn at(fmt: &str, payload: &'static str, secs: u64, nanos: u32) -> String {
        let m = Message::new(ByteStr::from_static("a/b"), payload.into(), QoS::AtMostOnce);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
        String::from_utf8(format_in(fmt, &m, Arrival::default(), false, t, &Zone::utc()).unwrap())
            .unwrap()
    }

    #[test]
    fn strftime_codes() {
        // 2024-02-29 (a leap day, a Thursday) 13:05:09.000000042 UTC.
        let t = 1_709_211_909;
        assert_eq!(
            at(
                "@Y-@m-@dT@H:@M:@S.@N @s @@ @j @a @b @A @B @e @I@p @y @u @w @F @T @z @Z",
                "",
                t,
                42
            ),
            "2024-02-29T13:05:09.000000042 1709211909 @ 060 Thu Feb Thursday February 29 01PM 24 4 4 2024-02-29 13:05:09 +0000 UTC"
        );
        // 2024-12-31, the last day of a leap year.
        assert_eq!(at("@j", "", 1_735_603_200, 0), "366");
    }

    #[test]
    fn flags_and_widths() {
        assert_eq!(at("[%10t]", "", 0, 0), "[       a/b]");
        assert_eq!(at("[%-10t]", "", 0, 0), "[a/b       ]");
        assert_eq!(at("[%.1t]", "", 0, 0), "[a]");
        assert_eq!(at("[%5.2t]", "", 0, 0), "[   a/]");
        assert_eq!(at("[%05l]", "hello", 0, 0), "[00005]");
        assert_eq!(at("[%-5l]", "hello", 0, 0), "[5    ]");
        assert_eq!(at("[%3p]", "hello", 0, 0), "[hel]");
        assert_eq!(at("[%8p]", "hello", 0, 0), "[   hello]");
        assert_eq!(at("[%-8p]", "hello", 0, 0), "[hello   ]");
        assert_eq!(at("[%4E]", "", 0, 0), "[    ]");
        assert_eq!(at("[%04E]", "", 0, 0), "[0000]");
        assert_eq!(at("[%I]", "", 0, 0), "[1970-01-01T00:00:00+0000]");
    }

    // %J embeds a JSON payload as cJSON re-prints it (numbers as doubles, keys in
    // order), and refuses one that is not JSON, as mosquitto_sub does.
    #[test]
    fn json_payload() {
        let mut m = Message::new(ByteStr::from_static("a/b"), "hi".into(), QoS::AtMostOnce);
        m.payload = r#"{"b": [1, 2.5, 1e21, 0.1, -3, 12345678901, {"z": []}], "a": {}}"#.into();
        let flat = json(&m, arrival(0, 0), None, true, false).unwrap();
        assert!(
            flat.ends_with(r#""payload":{"b":[1,2.5,1e+21,0.1,-3,12345678901,{"z":[]}],"a":{}}}"#),
            "{flat}"
        );
        let pretty = json(&m, arrival(0, 0), None, true, true).unwrap();
        assert!(
            pretty.ends_with(
                "\t\"payload\":\t{\n\t\t\"b\":\t[1, 2.5, 1e+21, 0.1, -3, 12345678901, {\n\
                 \t\t\t\t\"z\":\t[]\n\t\t\t}],\n\t\t\"a\":\t{\n\t\t}\n\t}\n}"
            ),
            "{pretty}"
        );
        m.payload = "not json".into();
        let err = json(&m, arrival(0, 0), None, true, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Message payload is not valid JSON on topic a/b."
        );
    }

    #[test]
    fn numbers_as_c_prints_them() {
        let g = |d: f64| {
            let mut s = String::new();
            cjson_number(&mut s, d);
            s
        };
        assert_eq!(g(3.0), "3");
        assert_eq!(g(0.1), "0.1");
        assert_eq!(g(1e21), "1e+21");
        assert_eq!(g(1.5e-7), "1.5e-07");
        assert_eq!(g(12345678901.0), "12345678901");
        assert_eq!(g(2f64.powi(53)), "9007199254740992");
        assert_eq!(g(1.0 / 3.0), "0.33333333333333331");
    }
}
