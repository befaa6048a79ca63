"""The slow subscriber of issue 16's backlog run (tests/it/durable.rs): Eclipse
paho-mqtt, MQTT 3.1.1, a persistent session (Clean Session 0) subscribed to FILTER at
QoS 1, reading at most RATE messages a second for SLOW seconds after its SUBACK, then as
fast as it can, until it has TOTAL messages.

    python3 slow_sub.py PORT CLIENT_ID FILTER RATE SLOW TOTAL

paho acknowledges a QoS 1 message once `on_message` returns, and reads nothing while
it runs, so the broker sees a client that takes RATE messages a second. Payloads start
with the message's number (8 digits). One line per event on stdout:

    SUBACK
    AT <messages so far>                     (every 10,000)
    GAP <expected number> <received number>  (then exits 1)
    ALL <messages> <duplicates>              (then exits 0)
"""
import sys
import time

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
CLIENT_ID = sys.argv[2]
FILTER = sys.argv[3]
RATE = float(sys.argv[4])
SLOW = float(sys.argv[5])
TOTAL = int(sys.argv[6])

state = {"expected": 0, "duplicates": 0, "slow_until": None}


def say(line):
    print(line, flush=True)


def on_connect(c, _userdata, _flags, _reason, _properties=None):
    c.subscribe(FILTER, qos=1)


def on_subscribe(_c, _userdata, _mid, _reasons, _properties=None):
    if state["slow_until"] is None:
        state["slow_until"] = time.monotonic() + SLOW
    say("SUBACK")


def on_message(c, _userdata, m):
    n = int(m.payload[:8])
    if n < state["expected"]:
        # QoS 1: a message may come again (at least once), never out of order first.
        state["duplicates"] += 1
        return
    if n != state["expected"]:
        say(f"GAP {state['expected']} {n}")
        c.disconnect()
        sys.exit(1)
    state["expected"] = n + 1
    if state["expected"] % 10_000 == 0:
        say(f"AT {state['expected']}")
    if state["expected"] == TOTAL:
        say(f"ALL {state['expected']} {state['duplicates']}")
        c.disconnect()
        return
    if time.monotonic() < (state["slow_until"] or 0):
        time.sleep(1.0 / RATE)


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=CLIENT_ID,
    protocol=mqtt.MQTTv311,
    clean_session=False,
)
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.connect("127.0.0.1", PORT, keepalive=60)
c.loop_forever()
sys.exit(0 if state["expected"] == TOTAL else 1)
