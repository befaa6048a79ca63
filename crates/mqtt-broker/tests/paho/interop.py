"""Eclipse paho-mqtt (Python) against our broker: one scenario per invocation.

    python3 interop.py PORT SCENARIO

Exits 0 when the scenario behaves as the spec says, 1 with a message otherwise.
"""
import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
PORT = int(sys.argv[1])
WAIT = 10


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(cid, version, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version, **kw)
    inbox = queue.Queue()
    connected = queue.Queue()
    c.on_message = lambda c, u, m: inbox.put(m)
    c.on_connect = lambda c, u, f, rc, p=None: connected.put(rc)
    return c, inbox, connected


def start(c, connected, **kw):
    c.connect(HOST, PORT, keepalive=30, **kw)
    c.loop_start()
    rc = connected.get(timeout=WAIT)
    if rc != 0 and getattr(rc, "is_failure", False):
        fail(f"connect refused: {rc}")


def get(inbox):
    try:
        return inbox.get(timeout=WAIT)
    except queue.Empty:
        fail("no message in time")


def pubsub(version):
    sub, inbox, conn = client("paho-sub", version)
    start(sub, conn)
    sub.subscribe("paho/#", qos=2)
    time.sleep(0.3)
    pub, _, pconn = client("paho-pub", version)
    start(pub, pconn)
    for qos in (0, 1, 2):
        info = pub.publish(f"paho/{qos}", f"q{qos}".encode(), qos=qos)
        info.wait_for_publish(WAIT)
        m = get(inbox)
        if (m.topic, m.payload, m.qos) != (f"paho/{qos}", f"q{qos}".encode(), qos):
            fail(f"got {m.topic} {m.payload} qos {m.qos}")


def v5_properties():
    sub, inbox, conn = client("paho5-sub", mqtt.MQTTv5)
    start(sub, conn)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 7
    sub.subscribe("rr/#", options=mqtt.SubscribeOptions(qos=1), properties=sp)
    time.sleep(0.3)
    pub, _, pconn = client("paho5-pub", mqtt.MQTTv5)
    start(pub, pconn)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "rr/reply"
    props.CorrelationData = b"abc"
    props.UserProperty = [("k1", "v1"), ("k0", "v0")]
    pub.publish("rr/request", b"?", qos=1, properties=props).wait_for_publish(WAIT)
    m = get(inbox)
    p = m.properties
    if p.ResponseTopic != "rr/reply" or p.CorrelationData != b"abc":
        fail(f"request/response properties lost: {p}")
    if p.UserProperty != [("k1", "v1"), ("k0", "v0")]:
        fail(f"user properties: {p.UserProperty}")
    if p.SubscriptionIdentifier != [7]:
        fail(f"subscription identifier: {p.SubscriptionIdentifier}")


def will(version):
    watcher, inbox, conn = client("paho-watch", version)
    start(watcher, conn)
    watcher.subscribe("wills/#", qos=1)
    time.sleep(0.3)
    dying, _, dconn = client("paho-dying", version)
    dying.will_set("wills/paho", b"bye", qos=1)
    start(dying, dconn)
    time.sleep(0.2)
    dying.loop_stop()
    dying.socket().close()  # no DISCONNECT
    m = get(inbox)
    if (m.topic, m.payload) != ("wills/paho", b"bye"):
        fail(f"will: {m.topic} {m.payload}")


def retained(version):
    pub, _, conn = client("paho-ret", version)
    start(pub, conn)
    pub.publish("ret/x", b"kept", qos=1, retain=True).wait_for_publish(WAIT)
    time.sleep(0.2)
    sub, inbox, sconn = client("paho-ret-sub", version)
    start(sub, sconn)
    sub.subscribe("ret/#", qos=1)
    m = get(inbox)
    if (m.topic, m.payload, m.retain) != ("ret/x", b"kept", True):
        fail(f"retained: {m.topic} {m.payload} {m.retain}")


def acl_v5():
    """Against the password and ACL files of auth_files.rs: alice (password `secret`)
    may read and write alice/#, read public/#, and nothing else."""
    c, inbox, conn = client("paho-acl", mqtt.MQTTv5)
    c.username_pw_set("alice", "secret")
    subacks = queue.Queue()
    c.on_subscribe = lambda c, u, mid, codes, p: subacks.put([x.value for x in codes])
    acks = queue.Queue()
    c.on_publish = lambda c, u, mid, rc, p: acks.put((mid, rc.value))
    start(c, conn)
    c.subscribe([("alice/#", 1), ("secret/#", 1), ("public/#", 0)])
    codes = subacks.get(timeout=WAIT)
    if codes != [1, 0x87, 0]:
        fail(f"SUBACK reason codes {codes}, expected [1, 0x87, 0]")
    # Refused PUBLISH: PUBACK 0x87 Not authorized; allowed: 0x00.
    for topic, expected in (("secret/x", 0x87), ("public/x", 0x87), ("alice/x", 0)):
        info = c.publish(topic, b"m", qos=1)
        mid, rc = acks.get(timeout=WAIT)
        if (mid, rc) != (info.mid, expected):
            fail(f"PUBACK for {topic}: {rc:#x}, expected {expected:#x}")
    m = get(inbox)
    if (m.topic, m.payload) != ("alice/x", b"m"):
        fail(f"alice got {m.topic} {m.payload}")
    # Wrong password: CONNACK 0x86 Bad User Name or Password.
    bad, _, bconn = client("paho-acl-bad", mqtt.MQTTv5)
    bad.username_pw_set("alice", "wrong")
    bad.connect(HOST, PORT, keepalive=30)
    bad.loop_start()
    rc = bconn.get(timeout=WAIT)
    if rc.value != 0x86:
        fail(f"wrong password: CONNACK {rc}, expected 0x86")
    bad.loop_stop()


SCENARIOS = {
    "acl-5": acl_v5,
    "pubsub-311": lambda: pubsub(mqtt.MQTTv311),
    "pubsub-31": lambda: pubsub(mqtt.MQTTv31),
    "pubsub-5": lambda: pubsub(mqtt.MQTTv5),
    "v5-properties": v5_properties,
    "will-311": lambda: will(mqtt.MQTTv311),
    "will-5": lambda: will(mqtt.MQTTv5),
    "retained-311": lambda: retained(mqtt.MQTTv311),
    "retained-5": lambda: retained(mqtt.MQTTv5),
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[2]]()
    print("ok")
