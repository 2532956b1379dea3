"""The publishing side of the MQTT front end: the bus mapped to topics and envelopes,
every QoS 1 message given its seq as it enters the outbox, the outbox replayed and then
published live with several publishes in flight, and telemetry (QoS 0, never queued,
thinned to the newest reading per device). A part of
:class:`devicehub.mqtt.frontend.MqttFrontend`."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime
from typing import Any

import aiomqtt

from devicehub.bus import HubMessage
from devicehub.mqtt.envelope import dumps, mark_historical, rfc3339, utcnow

#: the front end's logger: its messages keep the name they had before this split
log = logging.getLogger("devicehub.mqtt.frontend")

#: the telemetry publisher's entry in the in-flight table (outbox entries use their id)
TELEMETRY_KEY = "telemetry"


def _sanitize(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, times RFC 3339, the rest str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def _encode(env: dict[str, Any]) -> bytes:
    try:
        return dumps(env)
    except (TypeError, ValueError):
        return dumps(_sanitize(env))



class FrontendPublishing:
    """The publishing methods of :class:`devicehub.mqtt.frontend.MqttFrontend` (its
    attributes are set by the front end's ``__init__``)."""

    # ---- publishing the outbox -----------------------------------------------------------
    async def _publish_outbox(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        snapshot = self.outbox.last_id  # what is there now is replayed as historical
        birth = self.birth_data()
        birth_id = self._enqueue(self.topics.status, "status", birth, retain=True)
        await self.outbox.wait_committed(birth_id)
        entry = next(e for e in await self.outbox.read(birth_id - 1, 1) if e.id == birth_id)
        await client.publish(entry.topic, entry.payload, qos=1, retain=True, timeout=self.publish_timeout_s)
        self.outbox.remove([birth_id])
        self._online.set()
        log.info("MQTT online at %s:%s as %s (replaying %d)", self.host, self.port, self.client_id,
                 len(self.outbox))
        self._republish_states()  # queued after the replay: the retained values end current
        window = asyncio.Semaphore(self.max_inflight)
        cursor = 0
        while True:
            upto = self.outbox.committed_upto  # read() sees at least this far
            entries = await self.outbox.read(cursor, 256)
            if not entries:  # nothing unsent up to ``upto``: wait for something newer
                cursor = max(cursor, upto)
                await self.outbox.wait_new(cursor)
                continue
            for e in entries:
                cursor = e.id
                if e.id == birth_id:
                    continue
                historical = e.id <= snapshot
                payload = mark_historical(e.payload) if historical else e.payload
                await window.acquire()
                tg.create_task(self._publish_one(client, e.id, e.topic, payload, e.retain and not historical,
                                                 window))

    async def _publish_one(self, client: aiomqtt.Client, entry_id: int, topic: str, payload: bytes, retain: bool,
                           window: asyncio.Semaphore) -> None:
        self._inflight[entry_id] = time.monotonic()
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)  # see _watch_publishes
        finally:
            self._inflight.pop(entry_id, None)
            window.release()
        # acknowledged: removed from the outbox together with the others of this loop turn
        if not self._acked:
            asyncio.get_running_loop().call_soon(self._remove_acked)
        self._acked.append(entry_id)

    def _remove_acked(self) -> None:
        acked, self._acked = self._acked, []
        self.outbox.remove(acked)

    # ---- the bus -------------------------------------------------------------------------
    def _on_bus(self, msg: HubMessage) -> None:
        try:
            self._map(msg)
        except Exception:
            log.exception("cannot publish %s message", msg.kind)

    def _map(self, msg: HubMessage) -> None:
        kind, data = msg.kind, msg.data
        if kind == "device.telemetry":
            self._on_telemetry(msg)
        elif kind == "device.state":
            device = msg.device or data.get("id")
            self._enqueue(self.topics.device_state(device), kind, data, ts=msg.ts, retain=True)
        elif kind == "session.state":
            session = msg.session or data.get("session")
            self._enqueue(self.topics.session, kind, data, session=session, ts=msg.ts, retain=True)
        elif kind == "session.event":
            session = msg.session or data.get("session")
            self._enqueue(self.topics.session_events(session), kind, data, session=session, ts=msg.ts or utcnow(),
                          retain=False, event_index=data.get("index"))
        elif kind == "alarms":
            alarms = list(data.get("alarms", []) if isinstance(data, dict) else data)
            # the envelope names the session when the list holds alarms of one (mqtt-api.md)
            session = msg.session or next((a["session"] for a in alarms if isinstance(a, dict) and a.get("session")),
                                          None)
            self._enqueue(self.topics.alarms, kind, alarms, session=session, ts=msg.ts, retain=True)
        elif kind == "status":
            self._enqueue(self.topics.status, kind, {**self.birth_data(), **data}, ts=msg.ts, retain=True)
        else:
            log.warning("bus message of unknown kind %r not published", kind)

    def _envelope(self, type_: str, data: Any, *, seq: int | None = None, tseq: int | None = None,
                  session: str | None = None, ts: datetime | None = None) -> bytes:
        """The encoded envelope; data that is not plain JSON is sanitised, never refused."""
        try:
            return self.envelopes.encode(type_, data, seq=seq, tseq=tseq, session=session, ts=ts)
        except (TypeError, ValueError):
            return _encode(self.envelopes.message(type_, data, seq=seq, tseq=tseq, session=session, ts=ts))

    def _enqueue(self, topic: str, type_: str, data: Any, *, session: str | None = None,
                 ts: datetime | None = None, retain: bool, event_index: Any = None) -> int:
        """Give a QoS 1 message its seq and put it in the outbox (in that order, at once).

        A session event (``event_index``) also goes into the outbox's ledger with the
        boot, seq and ts it is published with, for the ``events`` verb."""
        seq = self.envelopes.next_seq()
        payload = self._envelope(type_, data, seq=seq, session=session, ts=ts)
        ledger = None
        if session is not None and type(event_index) is int and ts is not None:
            ledger = (session, event_index, self.envelopes.boot, seq, rfc3339(ts))
        entry_id = self.outbox.add(topic, payload, retain, ledger)
        if retain:
            self._retained[topic] = (type_, data, session)
        return entry_id

    def _republish_states(self) -> None:
        for topic, (type_, data, session) in list(self._retained.items()):
            if topic != self.topics.status:
                self._enqueue(topic, type_, data, session=session, retain=True)

    # ---- telemetry -----------------------------------------------------------------------
    def _on_telemetry(self, msg: HubMessage) -> None:
        tseq = self.envelopes.next_tseq()  # taken on arrival: thinned readings show as gaps
        if not self.connected:  # never queued
            self.telemetry_dropped += 1
            return
        device = msg.device or msg.data.get("id")
        topic = self.topics.device_telemetry(device)
        if topic in self._telemetry:
            self.telemetry_dropped += 1  # thinned: the newer reading replaces it
        # encoded when sent, not here: a reading thinned away costs nothing but this
        self._telemetry[topic] = (tseq, msg)
        self._telemetry_evt.set()

    async def _publish_telemetry(self, client: aiomqtt.Client) -> None:
        self._telemetry.clear()
        inflight = self._inflight
        while True:
            await self._telemetry_evt.wait()
            self._telemetry_evt.clear()
            batch, self._telemetry = self._telemetry, {}
            for topic, (tseq, msg) in batch.items():
                payload = self._envelope("device.telemetry", msg.data, tseq=tseq, session=msg.session, ts=msg.ts)
                inflight[TELEMETRY_KEY] = time.monotonic()
                try:  # a QoS 0 publish waits for the socket write; see _watch_publishes
                    await client.publish(topic, payload, qos=0, retain=False, timeout=math.inf)
                finally:
                    inflight.pop(TELEMETRY_KEY, None)
            if self.telemetry_min_interval_s > 0:
                await asyncio.sleep(self.telemetry_min_interval_s)
