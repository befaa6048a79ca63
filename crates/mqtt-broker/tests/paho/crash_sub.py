"""The crash harness's subscriber (tests/it/crash.rs): Eclipse paho-mqtt, MQTT 3.1.1,
a persistent session (Clean Session 0) subscribed to FILTER at QoS 2, reconnecting
whenever the broker goes away, for as long as it runs.

    python3 crash_sub.py PORT CLIENT_ID FILTER [trace]

paho keeps a QoS 2 message it received until the PUBREL, across reconnections (it
hands it to the application then, once), and answers a PUBREL with PUBCOMP, so what
it prints is what an application sees. One line per event on stdout:

    CONNACK <session present 0|1> <reason>
    SUBACK
    MSG <topic> <payload> <qos> <dup 0|1>
    DISCONNECT <reason>
    LOG <paho's line about a PUBLISH, PUBREC, PUBREL or PUBCOMP> (with `trace`)
"""
import sys

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
CLIENT_ID = sys.argv[2]
FILTER = sys.argv[3]


def say(line):
    print(line, flush=True)


def on_connect(c, _userdata, flags, reason, _properties=None):
    say(f"CONNACK {int(flags.session_present)} {reason}")
    if not flags.session_present:
        # A first connection; on a later one the session (and its subscription) is
        # expected to be there, and the checker fails the run if it is not.
        c.subscribe(FILTER, qos=2)


def on_subscribe(_c, _userdata, _mid, _reasons, _properties=None):
    say("SUBACK")


def on_message(_c, _userdata, m):
    say(f"MSG {m.topic} {m.payload.decode(errors='replace')} {m.qos} {int(m.dup)}")


def on_log(_c, _userdata, _level, line):
    if line.startswith(("Received PUB", "Sending PUB")):
        say(f"LOG {line}")


def on_disconnect(_c, _userdata, _flags, reason, _properties=None):
    say(f"DISCONNECT {reason}")


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=CLIENT_ID,
    protocol=mqtt.MQTTv311,
    clean_session=False,
)
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_disconnect = on_disconnect
if len(sys.argv) > 4 and sys.argv[4] == "trace":
    c.on_log = on_log
c.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
c.max_inflight_messages_set(0)
c.connect_async("127.0.0.1", PORT, keepalive=30)
c.loop_forever(retry_first_connection=True)
