"""Eclipse paho-mqtt (Python) over TLS and WebSocket against our broker.

    python3 transports.py TRANSPORT PORT [CA_FILE [PATH]]

TRANSPORT is tls, ws or wss. A subscriber and a publisher (3.1.1 and 5.0) connect over
it, the subscriber receives a QoS 1 message. Exits 0 when it does, 1 with a message
otherwise.
"""
import queue
import ssl
import sys

import paho.mqtt.client as mqtt

TRANSPORT = sys.argv[1]
PORT = int(sys.argv[2])
CA = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
PATH = sys.argv[4] if len(sys.argv) > 4 else "/mqtt"
WAIT = 10


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(cid, version):
    transport = "websockets" if TRANSPORT in ("ws", "wss") else "tcp"
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version, transport=transport
    )
    if transport == "websockets":
        c.ws_set_options(path=PATH)
    if TRANSPORT in ("tls", "wss"):
        # The test CA, and the host name checked (the certificate is for localhost).
        c.tls_set(ca_certs=CA, cert_reqs=ssl.CERT_REQUIRED)
    inbox = queue.Queue()
    connected = queue.Queue()
    c.on_message = lambda c, u, m: inbox.put(m)
    c.on_connect = lambda c, u, f, rc, p=None: connected.put(rc)
    c.on_subscribe = lambda c, u, mid, rcs, p=None: connected.put("subscribed")
    c.connect("localhost", PORT, keepalive=30)
    c.loop_start()
    try:
        rc = connected.get(timeout=WAIT)
    except queue.Empty:
        fail(f"{cid}: no CONNACK over {TRANSPORT}")
    if rc != 0 and getattr(rc, "is_failure", False):
        fail(f"{cid}: connect refused: {rc}")
    return c, inbox, connected


for version, name in ((mqtt.MQTTv311, "311"), (mqtt.MQTTv5, "5")):
    topic = f"paho/{TRANSPORT}/{name}"
    sub, inbox, events = client(f"paho-{TRANSPORT}-sub-{name}", version)
    sub.subscribe(topic, qos=1)
    try:
        events.get(timeout=WAIT)
    except queue.Empty:
        fail("no SUBACK")
    pub, _, _ = client(f"paho-{TRANSPORT}-pub-{name}", version)
    # A payload larger than one TLS record and than paho's WebSocket frames.
    payload = bytes(range(256)) * 100
    pub.publish(topic, payload, qos=1).wait_for_publish(timeout=WAIT)
    try:
        m = inbox.get(timeout=WAIT)
    except queue.Empty:
        fail(f"no message over {TRANSPORT} ({name})")
    if m.topic != topic or m.payload != payload:
        fail(f"wrong message: {m.topic} {len(m.payload)} bytes")
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
print(f"ok: {TRANSPORT}")
