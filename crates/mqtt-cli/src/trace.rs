//! `-d`: a packet trace in the words libmosquitto logs for mosquitto_pub, mosquitto_sub
//! and mosquitto_rr (`Client ID sending CONNECT`, `Client ID received PUBLISH (d0, q1,
//! r0, m1, 'topic', ... (5 bytes))`, ...), printed on stdout as they print it.

use std::io::Write;

use mqtt_client::{
    PacketDirection, ProtocolVersion, QoS,
    codec::{Packet, PacketId, RetainHandling},
};

fn mid(id: Option<PacketId>) -> u16 {
    id.map_or(0, PacketId::get)
}

fn qos(q: QoS) -> u8 {
    q as u8
}

/// The trace lines for one packet (several for SUBSCRIBE and UNSUBSCRIBE: one per
/// topic, as libmosquitto logs them).
pub fn lines(
    id: &str,
    version: ProtocolVersion,
    direction: PacketDirection,
    packet: &Packet,
) -> Vec<String> {
    let sent = direction == PacketDirection::Sent;
    let one = |what: String| {
        let verb = if sent { "sending" } else { "received" };
        vec![format!("Client {id} {verb} {what}")]
    };
    match packet {
        Packet::Connect(_) => one("CONNECT".into()),
        Packet::ConnAck(ack) => {
            let code = if version.is_v5() {
                ack.reason_code.0
            } else {
                mqtt_client::ConnAck::v3_return_code(ack.reason_code)
            };
            one(format!("CONNACK ({code})"))
        }
        Packet::Publish(p) => one(format!(
            "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            qos(p.qos_pid.qos()),
            u8::from(p.retain),
            mid(p.qos_pid.packet_id()),
            p.topic.as_str(),
            p.payload.len()
        )),
        Packet::PubAck(a) if sent => one(format!(
            "PUBACK (m{}, rc{})",
            a.packet_id.get(),
            a.reason_code.0
        )),
        Packet::PubAck(a) => one(format!(
            "PUBACK (Mid: {}, RC:{})",
            a.packet_id.get(),
            a.reason_code.0
        )),
        Packet::PubRec(a) if sent => one(format!(
            "PUBREC (m{}, rc{})",
            a.packet_id.get(),
            a.reason_code.0
        )),
        Packet::PubRec(a) => one(format!("PUBREC (Mid: {})", a.packet_id.get())),
        Packet::PubRel(a) if sent => one(format!("PUBREL (m{})", a.packet_id.get())),
        Packet::PubRel(a) => one(format!("PUBREL (Mid: {})", a.packet_id.get())),
        Packet::PubComp(a) if sent => one(format!("PUBCOMP (m{})", a.packet_id.get())),
        Packet::PubComp(a) => one(format!(
            "PUBCOMP (Mid: {}, RC:{})",
            a.packet_id.get(),
            a.reason_code.0
        )),
        Packet::Subscribe(s) => s
            .subscriptions
            .iter()
            .map(|sub| {
                let o = &sub.options;
                // The option bits above the QoS, as libmosquitto prints them.
                let rh: u8 = match o.retain_handling {
                    RetainHandling::SendAtSubscribe => 0,
                    RetainHandling::SendIfNew => 1,
                    RetainHandling::DoNotSend => 2,
                };
                let options =
                    u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | rh << 4;
                format!(
                    "Client {id} sending SUBSCRIBE (Mid: {}, Topic: {}, QoS: {}, Options: 0x{options:02x})",
                    s.packet_id.get(),
                    sub.filter.as_str(),
                    qos(o.qos)
                )
            })
            .collect(),
        Packet::SubAck(_) => one("SUBACK".into()),
        Packet::Unsubscribe(u) => u
            .filters
            .iter()
            .map(|f| {
                format!(
                    "Client {id} sending UNSUBSCRIBE (Mid: {}, Topic: {})",
                    u.packet_id.get(),
                    f.as_str()
                )
            })
            .collect(),
        Packet::UnsubAck(_) => one("UNSUBACK".into()),
        Packet::PingReq => one("PINGREQ".into()),
        Packet::PingResp => one("PINGRESP".into()),
        Packet::Disconnect(_) if sent => one("DISCONNECT".into()),
        // libmosquitto leaves out the client here.
        Packet::Disconnect(d) => vec![format!("Received DISCONNECT ({})", d.reason_code.0)],
        Packet::Auth(a) if sent => one(format!("AUTH ({})", a.reason_code.0)),
        Packet::Auth(a) => one(format!("AUTH ({})", a.reason_code.0)),
    }
}

/// Prints the trace of one packet on stdout. A closed stdout is not an error here:
/// the tool notices it when it prints a message.
pub fn print(id: &str, version: ProtocolVersion, direction: PacketDirection, packet: &Packet) {
    let mut out = std::io::stdout().lock();
    for line in lines(id, version, direction, packet) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Turns the trace on for `options`, a client called `id` speaking `version`.
pub fn enable(
    options: mqtt_client::ConnectOptions,
    id: &str,
    version: ProtocolVersion,
) -> mqtt_client::ConnectOptions {
    let id = id.to_owned();
    options.on_packet(move |direction, packet| print(&id, version, direction, packet))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_client::codec::{PubAck, Publish, QosPid};

    #[test]
    fn publish_and_puback_in_libmosquitto_words() {
        let id = PacketId::new(7).unwrap();
        let mut p = Publish::new(
            mqtt_client::ByteStr::try_from("a/b").unwrap(),
            bytes::Bytes::from_static(b"hello"),
        );
        p.qos_pid = QosPid::AtLeastOnce(id);
        let p = Packet::Publish(p);
        let v = ProtocolVersion::V3_1_1;
        assert_eq!(
            lines("c", v, PacketDirection::Received, &p),
            ["Client c received PUBLISH (d0, q1, r0, m7, 'a/b', ... (5 bytes))"]
        );
        let ack = Packet::PubAck(PubAck::new(id));
        assert_eq!(
            lines("c", v, PacketDirection::Sent, &ack),
            ["Client c sending PUBACK (m7, rc0)"]
        );
        assert_eq!(
            lines("c", v, PacketDirection::Received, &ack),
            ["Client c received PUBACK (Mid: 7, RC:0)"]
        );
    }
}
