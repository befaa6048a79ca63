//! PUBLISH and wills: authorized, retained and routed; the acknowledgement says what
//! became of the message.

use std::sync::atomic::Ordering;

use mqtt_codec::ReasonCode;
use mqtt_session::Message;
use tracing::debug;

use crate::{
    sessions::{Principal, SessionHandle},
    shared::Shared,
};

/// A PUBLISH from the client `principal` (see `SessionCell::principal`), taken by its
/// session: authorized, retained and routed here. Returns the reason code of its acknowledgement (5.0 PUBACK / PUBREC; 3.x
/// clients are acknowledged regardless, see `ServerSession::settle_publish`): 0x87 if
/// refused, 0x80 if the store failed to keep it as the retained message, which is then
/// neither retained nor routed, 0x10 if nobody subscribes.
pub(crate) fn publish(
    shared: &Shared,
    from: &SessionHandle,
    principal: Option<&Principal>,
    message: Message,
    routes: &mut crate::router::Routes,
    now: mqtt_session::Instant,
) -> ReasonCode {
    // `$SYS/` is the broker's own (topics beginning with `$` are the server's, section
    // 4.7.2): a client may not publish there, nor forge its statistics for others.
    let client = Principal::client(principal, &from.client_id);
    if crate::sys::is_sys_topic(&message.topic)
        || !client.token_allows_publish(&message.topic)
        || !shared
            .authorizer(client.listener)
            .may_publish(&client, &message.topic)
    {
        shared.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
        debug!(client = %from.client_id, topic = %message.topic, "PUBLISH not authorized");
        return ReasonCode::NOT_AUTHORIZED;
    }
    if message.retain && shared.retain(&message).is_err() {
        shared.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
        return ReasonCode::UNSPECIFIED_ERROR;
    }
    if shared.fan_out(from.key, message, routes, now) == 0 {
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    } else {
        ReasonCode::SUCCESS
    }
}

/// The application message a will publishes ([MQTT-3.1.2-14], [MQTT-3.1.2-15] in 5.0:
/// retained as the will asked), with its properties in order ([MQTT-3.1.3-10]).
pub(crate) fn will_message(will: mqtt_codec::Will) -> Message {
    let p = will.properties;
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: mqtt_codec::PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..Default::default()
        }
        .into(),
    }
}
