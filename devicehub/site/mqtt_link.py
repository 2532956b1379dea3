"""The collector's MQTT 5 connection, with manual acknowledgement (paho-mqtt 2.x).

Why paho and not aiomqtt: aiomqtt 2.x acknowledges a QoS 1 message as soon as it is
received and has no public way to defer the PUBACK; paho-mqtt 2.x (which aiomqtt wraps)
has ``Client(manual_ack=True)`` and ``client.ack(mid, qos)``, its public API for exactly
this (docs/decisions/0002-collector-manual-ack.md). paho runs its own network thread
(``loop_start``); messages go to ``on_message`` there and are acknowledged from the
writer thread once committed.

A message id (``mid``) is only meaningful on the connection that delivered it: every
(re)connect starts a new *generation*, and an ack for a message of an older generation
is never sent (the broker redelivers it on the resumed session; the rows are idempotent).
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from devicehub.mqtt.envelope import new_ulid
from devicehub.site.config import SiteConfig

log = logging.getLogger(__name__)

#: what the collector takes, under each room's root
QOS1_SUFFIXES = ("status", "devices/+/state", "session", "sessions/+/events", "alarms")
TELEMETRY_SUFFIX = "devices/+/telemetry"


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received: float  # time.time() at arrival
    rows: Any = None  # what it writes (the collector parses on arrival)
    ts: Any = None  # its envelope's ts


def subscriptions(config: SiteConfig) -> list[tuple[str, int]]:
    out = []
    for site in config.sites:
        for room in config.rooms:
            root = f"devicehub/v1/{site}/{room}"
            for suffix in QOS1_SUFFIXES:
                out.append((f"$share/{config.group}/{root}/{suffix}", 1))
            out.append((f"$share/{config.group}/{root}/{TELEMETRY_SUFFIX}", 0))
    return out


class MqttLink:
    def __init__(self, config: SiteConfig, on_message: Callable[[Incoming], None]) -> None:
        self.config = config
        self.on_message = on_message
        self.client_id = config.mqtt_client_id
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        m = config.mqtt
        if m.username is not None:
            c.username_pw_set(m.username, m.resolved_password())
        if m.tls is not None:
            ctx = ssl.create_default_context(cafile=str(m.tls.ca_file) if m.tls.ca_file else None)
            if m.tls.cert_file:
                ctx.load_cert_chain(str(m.tls.cert_file), str(m.tls.key_file) if m.tls.key_file else None)
            c.tls_set_context(ctx)
        c.reconnect_delay_set(0.1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c
        self._lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()
        #: set once the broker acknowledged the subscriptions (of any connection)
        self.subscribed = threading.Event()
        self.connects = 0
        self._replies: dict[bytes, tuple[threading.Event, list[Any]]] = {}
        self._n = itertools.count(1)

    # ---- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        self.client.connect_async(self.config.mqtt.host, self.config.mqtt.port, self.config.mqtt.keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """A normal DISCONNECT: the broker keeps the session (and what was not acknowledged)."""
        with self._lock:
            self.generation += 1  # nothing acknowledged from here on
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
        with self._lock:
            self.generation += 1
        self.connects += 1
        subs = [(t, SubscribeOptions(qos=q)) for t, q in subscriptions(self.config)]
        subs.append((f"devicehub/v1/+/+/reply/{self.client_id}/#", SubscribeOptions(qos=1)))
        client.subscribe(subs)
        log.info("MQTT connected as %s (session present: %s)", self.client_id, flags.session_present)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("subscriptions refused by the broker: %s", failed)
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            self.generation += 1
        self.connected.clear()
        log.warning("MQTT disconnected: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if "/reply/" in topic:
            self._reply(msg)
            return
        self.on_message(Incoming(topic, msg.payload, msg.mid, msg.qos, self.generation, time.time()))

    # ---- acknowledgement -------------------------------------------------------------
    def ack(self, items: list[Incoming]) -> int:
        """PUBACK the QoS 1 messages among ``items`` that came on the live connection."""
        sent = 0
        with self._lock:
            gen = self.generation
            for it in items:
                if it.qos == 1 and it.generation == gen:
                    self.client.ack(it.mid, it.qos)
                    sent += 1
        return sent

    # ---- requests to a hub -------------------------------------------------------------
    def _reply(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos == 1:
            self.client.ack(msg.mid, msg.qos)  # a reply is acted on at once; a lost one is asked again
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = None
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is None and isinstance(body, dict) and isinstance(body.get("correlation_id"), str):
            corr = body["correlation_id"].encode()  # a link that dropped the MQTT 5 properties
        waiter = self._replies.get(bytes(corr)) if corr is not None else None
        if waiter is None:
            return
        waiter[1].append(body)
        waiter[0].set()

    def request(self, site: str, room: str, verb: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send ``verb`` to a room's hub and wait for its reply (None: no reply in time)."""
        root = f"devicehub/v1/{site}/{room}"
        corr = new_ulid().encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{root}/reply/{self.client_id}/{next(self._n)}"
        props.CorrelationData = corr
        evt, box = threading.Event(), []
        self._replies[corr] = (evt, box)
        try:
            # the reply path twice: as MQTT 5 properties (which win) and in the payload, for a
            # bridge or broker on the way that speaks MQTT 3.1.1
            payload = json.dumps({"request_id": new_ulid(), **body, "reply_to": props.ResponseTopic,
                                  "correlation_id": corr.decode()})
            self.client.publish(f"{root}/cmd/{verb}", payload, qos=1, properties=props)
            if not evt.wait(timeout) or not box or not isinstance(box[0], dict):
                return None
            return box[0]
        finally:
            self._replies.pop(corr, None)
