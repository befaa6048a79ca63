//! Property tests: every valid packet survives encode → decode unchanged, in every
//! version; a stream of packets split at any byte decodes to the same packets; and no
//! byte string, random or a mutated valid packet, makes the decoder panic or read past
//! the packet it announces.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    AckProperties, Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Decoder, Disconnect, DisconnectProperties, FixedHeader, Packet, PacketId,
    PacketType, PayloadFormat, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperties, Will, WillProperties,
};
use proptest::{collection::vec, option, prelude::*};

// ---- strategies -----------------------------------------------------------------------

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

/// Any UTF-8 Encoded String: arbitrary characters except U+0000.
fn string() -> impl Strategy<Value = ByteStr> {
    "[^\u{0}]{0,12}".prop_map(|s| ByteStr::try_from(s).unwrap())
}

fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("a"),
        Just("bb"),
        Just(""),
        Just("$SYS"),
        Just("ü"),
        Just(" ")
    ]
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
        .prop_map(|t| ByteStr::try_from(t).unwrap())
}

fn plain_filter() -> impl Strategy<Value = String> {
    (vec(prop_oneof![level(), Just("+")], 1..5), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str(if f.is_empty() { "#" } else { "/#" });
        }
        if f.is_empty() { "#".to_owned() } else { f }
    })
}

fn filter(version: ProtocolVersion) -> impl Strategy<Value = (ByteStr, bool)> {
    (plain_filter(), any::<bool>(), "[a-z]{1,4}").prop_map(move |(f, share, group)| {
        if share && version.is_v5() {
            (
                ByteStr::try_from(format!("$share/{group}/{f}")).unwrap(),
                true,
            )
        } else {
            (ByteStr::try_from(f).unwrap(), false)
        }
    })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3).prop_map(|pairs| pairs.into_iter().collect())
}

fn sub_id() -> impl Strategy<Value = SubscriptionId> {
    prop_oneof![1..200u32, 1..=SubscriptionId::MAX].prop_map(|v| SubscriptionId::new(v).unwrap())
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)]
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).unwrap())
}

/// A reason code drawn from those `packet` may carry in 5.0.
fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let valid: Vec<ReasonCode> = (0..=255u8)
        .map(ReasonCode)
        .filter(|c| c.is_valid_for(packet))
        .collect();
    proptest::sample::select(valid)
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(nz16()),
        option::of(nz32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of((string(), option::of(binary()))),
        user_properties(),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, auth, user)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                authentication_method: auth.as_ref().map(|(m, _)| m.clone()),
                authentication_data: auth.and_then(|(_, d)| d),
                user_properties: user,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(delay, pfi, mei, ct, rt, cd, user)| WillProperties {
            will_delay_interval: delay,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
        })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(move |(topic, payload, qos, retain, props)| Will {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 { props } else { WillProperties::default() },
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will),
        option::of(string()),
        option::of(binary()),
        connect_properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, props)| {
                // 3.1 and 3.1.1 allow a password only with a user name.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::from(Connect {
                    version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if v5 {
                        props
                    } else {
                        ConnectProperties::default()
                    },
                })
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let a = (
        option::of(any::<u32>()),
        option::of(nz16()),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        option::of(nz32()),
        option::of(string()),
        option::of(any::<u16>()),
        option::of(string()),
    );
    let b = (
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(string()),
        option::of(string()),
        option::of((string(), option::of(binary()))),
        user_properties(),
    );
    (a, b).prop_map(
        |((sei, rm, mq, ra, mps, aci, tam, rs), (wsa, sia, ssa, ska, ri, sr, auth, user))| {
            ConnAckProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_qos: mq,
                retain_available: ra,
                maximum_packet_size: mps,
                assigned_client_identifier: aci,
                topic_alias_maximum: tam,
                reason_string: rs,
                wildcard_subscription_available: wsa,
                subscription_identifiers_available: sia,
                shared_subscription_available: ssa,
                server_keep_alive: ska,
                response_information: ri,
                server_reference: sr,
                authentication_method: auth.as_ref().map(|(m, _)| m.clone()),
                authentication_data: auth.and_then(|(_, d)| d),
                user_properties: user,
            }
        },
    )
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if version.is_v5() {
        (
            any::<bool>(),
            reason(PacketType::ConnAck),
            connack_properties(),
        )
            .prop_map(|(sp, code, properties)| {
                Packet::from(ConnAck {
                    session_present: sp,
                    reason_code: code,
                    properties,
                })
            })
            .boxed()
    } else {
        // The 5.0 codes with an exact 3.1.1 return code.
        let codes = [0x00, 0x84, 0x85, 0x88, 0x86, 0x87].map(ReasonCode);
        // 3.1 has no Session Present (the byte is unused and sent as 0).
        let v3_1 = version == ProtocolVersion::V3_1;
        (any::<bool>(), proptest::sample::select(codes.to_vec()))
            .prop_map(move |(sp, code)| Packet::from(ConnAck::new(sp && !v3_1, code)))
            .boxed()
    }
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(topic_name()),
        option::of(binary()),
        vec(sub_id(), 0..3),
        option::of(string()),
        user_properties(),
    )
        .prop_map(|(pfi, mei, rt, cd, ids, ct, user)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: ids,
            content_type: ct,
            user_properties: user,
        })
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (
        qos(),
        packet_id(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        binary(),
        (option::of(nz16()), publish_properties()),
    )
        .prop_map(
            move |(qos, pid, dup, retain, topic, drop_topic, payload, (alias, props))| {
                let qos_pid = QosPid::new(qos, pid);
                let (topic_alias, properties) = if v5 {
                    (alias, props)
                } else {
                    (None, PublishProperties::default())
                };
                // 5.0 may leave the topic empty when a Topic Alias stands for it.
                let topic = if drop_topic && topic_alias.is_some() {
                    ByteStr::new()
                } else {
                    topic
                };
                Packet::from(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos_pid,
                    retain,
                    topic,
                    payload,
                    topic_alias,
                    properties: properties.into(),
                })
            },
        )
}

fn ack_properties(version: ProtocolVersion) -> BoxedStrategy<AckProperties> {
    if version.is_v5() {
        (option::of(string()), user_properties())
            .prop_map(|(reason_string, user_properties)| AckProperties {
                reason_string,
                user_properties,
            })
            .boxed()
    } else {
        Just(AckProperties::default()).boxed()
    }
}

fn ack_reason(version: ProtocolVersion, packet: PacketType) -> BoxedStrategy<ReasonCode> {
    if version.is_v5() {
        reason(packet).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    }
}

fn pub_acks(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let fields = |ty| {
        (
            packet_id(),
            ack_reason(version, ty),
            ack_properties(version),
        )
    };
    prop_oneof![
        fields(PacketType::PubAck).prop_map(|(packet_id, reason_code, properties)| PubAck {
            packet_id,
            reason_code,
            properties
        }
        .into()),
        fields(PacketType::PubRec).prop_map(|(packet_id, reason_code, properties)| PubRec {
            packet_id,
            reason_code,
            properties
        }
        .into()),
        fields(PacketType::PubRel).prop_map(|(packet_id, reason_code, properties)| PubRel {
            packet_id,
            reason_code,
            properties
        }
        .into()),
        fields(PacketType::PubComp).prop_map(|(packet_id, reason_code, properties)| PubComp {
            packet_id,
            reason_code,
            properties
        }
        .into()),
    ]
}

fn subscription(version: ProtocolVersion) -> impl Strategy<Value = Subscription> {
    let v5 = version.is_v5();
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (filter(version), qos(), any::<bool>(), any::<bool>(), rh).prop_map(
        move |((filter, shared), qos, no_local, rap, retain_handling)| {
            let options = if v5 {
                // [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
                SubscriptionOptions {
                    qos,
                    no_local: no_local && !shared,
                    retain_as_published: rap,
                    retain_handling,
                }
            } else {
                SubscriptionOptions::new(qos)
            };
            Subscription { filter, options }
        },
    )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let props = (option::of(sub_id()), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties {
            subscription_identifier,
            user_properties,
        },
    );
    (packet_id(), vec(subscription(version), 1..4), props).prop_map(
        move |(packet_id, subscriptions, props)| {
            let properties = if version.is_v5() {
                props
            } else {
                SubscribeProperties::default()
            };
            Subscribe {
                packet_id,
                subscriptions,
                properties,
            }
            .into()
        },
    )
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if version.is_v5() {
        reason(PacketType::SubAck).boxed()
    } else {
        proptest::sample::select(vec![0x00, 0x01, 0x02, 0x80])
            .prop_map(ReasonCode)
            .boxed()
    };
    (packet_id(), vec(code, 0..4), ack_properties(version)).prop_map(
        |(packet_id, reason_codes, properties)| {
            SubAck {
                packet_id,
                reason_codes,
                properties,
            }
            .into()
        },
    )
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let user = if version.is_v5() {
        user_properties().boxed()
    } else {
        Just(UserProperties::new()).boxed()
    };
    (
        packet_id(),
        vec(filter(version).prop_map(|(f, _)| f), 1..4),
        user,
    )
        .prop_map(|(packet_id, filters, user_properties)| {
            Unsubscribe {
                packet_id,
                filters,
                properties: UnsubscribeProperties { user_properties },
            }
            .into()
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version.is_v5() {
        vec(reason(PacketType::UnsubAck), 0..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), codes, ack_properties(version)).prop_map(
        |(packet_id, reason_codes, properties)| {
            UnsubAck {
                packet_id,
                reason_codes,
                properties,
            }
            .into()
        },
    )
}

fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return Just(Packet::from(Disconnect::default())).boxed();
    }
    let props = (
        option::of(any::<u32>()),
        option::of(string()),
        option::of(string()),
        user_properties(),
    )
        .prop_map(|(sei, rs, sr, user)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            server_reference: sr,
            user_properties: user,
        });
    (reason(PacketType::Disconnect), props)
        .prop_map(|(reason_code, properties)| {
            Disconnect {
                reason_code,
                properties,
            }
            .into()
        })
        .boxed()
}

fn auth() -> impl Strategy<Value = Packet> {
    // 3.15.2.2.2: every AUTH but the all-default one carries an Authentication Method.
    let props = (
        string(),
        option::of(binary()),
        option::of(string()),
        user_properties(),
    )
        .prop_map(|(method, data, rs, user)| AuthProperties {
            authentication_method: Some(method),
            authentication_data: data,
            reason_string: rs,
            user_properties: user,
        });
    prop_oneof![
        Just(Packet::from(Auth::default())),
        (reason(PacketType::Auth), props).prop_map(|(reason_code, properties)| Auth {
            reason_code,
            properties
        }
        .into()),
    ]
}

/// Any valid packet of `version` (CONNECT carries `version` itself).
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version),
        pub_acks(version),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    if version.is_v5() {
        prop_oneof![10 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn version_and_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    let written = packet
        .encode(version, &mut buf)
        .expect("a valid packet encodes");
    assert_eq!(written, buf.len());
    assert_eq!(written, packet.encoded_len(version));
    buf
}

// ---- properties -----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// decode(encode(p)) == p, consuming exactly the encoded bytes.
    #[test]
    fn decode_inverts_encode((version, packet) in version_and_packet()) {
        let mut buf = encode(&packet, version);
        let decoded = Decoder::with_version(version).decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(packet));
        prop_assert!(buf.is_empty());
    }

    /// A PUBLISH encodes to the same bytes as its borrowed parts (`PublishRef`, which
    /// servers encode a message from for many connections), and to as many as both say.
    #[test]
    fn borrowed_publish_encodes_alike(
        (version, packet) in version().prop_flat_map(|v| (Just(v), publish(v)))
    ) {
        let Packet::Publish(publish) = &packet else {
            unreachable!("the strategy makes PUBLISH packets");
        };
        let owned = encode(&packet, version);
        let mut borrowed = BytesMut::new();
        let written = publish.borrowed().encode(version, &mut borrowed).unwrap();
        prop_assert_eq!(&borrowed[..], &owned[..]);
        prop_assert_eq!(written, owned.len());
        prop_assert_eq!(publish.borrowed().encoded_len(version), owned.len());
        // The head and then the payload, as a vectored write sends them.
        let mut head = BytesMut::new();
        let total = publish.borrowed().encode_head(version, &mut head).unwrap();
        head.extend_from_slice(&publish.payload);
        prop_assert_eq!(&head[..], &owned[..]);
        prop_assert_eq!(total, owned.len());
    }

    /// A stream of packets fed in two arbitrary pieces, then one byte at a time, decodes
    /// to the same packets, and a partial packet is never consumed.
    #[test]
    fn stream_split_anywhere(
        (version, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..6))),
        split in any::<prop::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            wire.extend_from_slice(&encode(p, version));
        }
        let wire = wire.freeze();

        // Two pieces.
        let at = split.index(wire.len() + 1);
        let mut decoder = Decoder::with_version(version);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut out = Vec::new();
        while let Some(p) = decoder.decode(&mut buf).unwrap() {
            out.push(p);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(p) = decoder.decode(&mut buf).unwrap() {
            out.push(p);
        }
        prop_assert_eq!(&out, &packets);
        prop_assert!(buf.is_empty());

        // One byte at a time.
        let mut decoder = Decoder::with_version(version);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &byte in wire.iter() {
            buf.extend_from_slice(&[byte]);
            let before = buf.len();
            match decoder.decode(&mut buf).unwrap() {
                Some(p) => out.push(p),
                None => prop_assert_eq!(buf.len(), before, "a partial packet was consumed"),
            }
        }
        prop_assert_eq!(&out, &packets);
    }

    /// Arbitrary bytes never panic, and a decoded packet consumed exactly the size its
    /// fixed header announced; whatever decodes re-encodes to a packet that decodes the same.
    #[test]
    fn arbitrary_bytes(version in version(), data in vec(any::<u8>(), 0..64)) {
        check_arbitrary(version, &data)?;
    }

    /// Valid packets with a few bytes overwritten: mostly invalid, near the valid ones.
    #[test]
    fn mutated_packets(
        (version, packet) in version_and_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut data = encode(&packet, version).to_vec();
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        check_arbitrary(version, &data)?;
    }
}

fn check_arbitrary(version: ProtocolVersion, data: &[u8]) -> Result<(), TestCaseError> {
    for mut decoder in [Decoder::new(), Decoder::with_version(version)] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            let announced = FixedHeader::parse(&buf)
                .ok()
                .flatten()
                .map(|h| h.packet_len());
            match decoder.decode(&mut buf) {
                Ok(Some(p)) => {
                    let consumed = (before - buf.len()) as u64;
                    prop_assert_eq!(Some(consumed), announced);
                    let v = match &p {
                        Packet::Connect(c) => c.version,
                        _ => decoder.version().unwrap(),
                    };
                    let mut again = encode(&p, v);
                    let redecoded = Decoder::with_version(v).decode(&mut again).unwrap();
                    prop_assert_eq!(redecoded, Some(p));
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(e) => {
                    // Never more than the announced packet is consumed.
                    let consumed = (before - buf.len()) as u64;
                    prop_assert!(consumed == 0 || Some(consumed) == announced);
                    // Every error names a reason code of the failure range.
                    prop_assert!(e.reason_code().is_error());
                    break;
                }
            }
        }
    }
    Ok(())
}
