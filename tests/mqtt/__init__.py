"""Helpers of the MQTT tests: a stub room, an observing MQTT client, a running front end.

The stub room stands in for the lead's Room: it records every call and publishes on a
real :class:`devicehub.bus.Bus`, so the front end is exercised exactly as in the hub.
Every test talks to a real Mosquitto (the ``broker`` fixture or a private one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from devicehub.bus import Bus
from devicehub.mqtt.envelope import new_ulid
from devicehub.mqtt.frontend import MqttFrontend
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox
from devicehub.room_api import CommandError
from simulators.devsupport.proxy import CutProxy

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test uses (the session broker is shared)."""
    return f"{prefix}-{next(_ids)}-{new_ulid()[-6:].lower()}"


# ---- the stub room -----------------------------------------------------------------
class StubRoom:
    """Records calls; answers like a room would; publishes states and events on its bus."""

    PROGRAMS = [{"program": "scalp-a", "version": "1", "title": "Scalp A", "sha256": "0" * 64, "steps": 3,
                 "est_duration_s": 600.0, "preflight": ["consent", "skin"], "soft_limits": ["s1.voltage_v"]}]

    def __init__(self) -> None:
        self.bus = Bus()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sessions: dict[str, str] = {}  # id -> state
        self.active: str | None = None
        self.fail: dict[str, CommandError] = {}
        self._index: dict[str, int] = {}
        self._devices: dict[str, dict[str, Any]] = {}
        self._last_session: str | None = None

    def verbs_called(self) -> list[str]:
        return [verb for verb, _ in self.calls]

    def _record(self, verb: str, **kwargs: Any) -> None:
        self.calls.append((verb, kwargs))
        if verb in self.fail:
            raise self.fail[verb]

    def event(self, session: str, event: str, **data: Any) -> None:
        self._index[session] = self._index.get(session, 0) + 1
        self.bus.emit("session.event", {"event": event, "index": self._index[session], **data}, session=session)

    def set_state(self, session: str, state: str) -> None:
        self.sessions[session] = state
        self._last_session = session
        self.bus.emit("session.state", {"session": session, "state": state}, session=session)

    def device_state(self, device: str, state: str, connected: bool = True) -> None:
        self._devices[device] = {"id": device, "connected": connected, "state": state, "fault": None}
        self.bus.emit("device.state", self._devices[device], device=device)

    def republish(self) -> None:
        """What a room does for ``rebirth``: every retained state again, alarms included."""
        for device, data in self._devices.items():
            self.bus.emit("device.state", data, device=device)
        if self._last_session is not None:
            sid = self._last_session
            self.bus.emit("session.state", {"session": sid, "state": self.sessions[sid]}, session=sid)
        self.bus.emit("alarms", {"alarms": []})

    # RoomAPI
    def programs(self) -> list[dict[str, Any]]:
        self._record("programs")
        return self.PROGRAMS

    def program(self, program_id: str) -> dict[str, Any]:
        self._record("program", program=program_id)
        if program_id != "scalp-a":
            raise CommandError("unknown_program", f"no program {program_id!r}", field="program")
        return {"program": "scalp-a", "steps": [{"id": "s1"}, {"id": "s2"}, {"id": "s3"}]}

    def status(self) -> dict[str, Any]:
        # not recorded: the abort path reads it
        session = {"session": self.active, "state": self.sessions[self.active]} if self.active else None
        return {"hub": {"version": "0.1.0", "boot": 1, "since": "2026-11-21T10:00:00.000000Z"},
                "devices": [{"id": "epg-1", "type": "EPG-1", "connected": True, "state": "idle", "fault": None}],
                "session": session, "alarms": []}

    def session_summary(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise CommandError("not_found", f"no session {session_id!r}", field="session")
        return {"session": session_id, "state": self.sessions[session_id], "totals": {}, "steps": []}

    async def start(self, *, program: str, patient_ref: str, operator: str, params: Any = None,
                    acknowledge: Any = None, origin: str = "mqtt") -> dict[str, Any]:
        self._record("start", program=program, patient_ref=patient_ref, operator=operator, params=params,
                     acknowledge=acknowledge, origin=origin)
        if program != "scalp-a":
            raise CommandError("unknown_program", f"no program {program!r}", field="program")
        if self.active is not None:
            raise CommandError("busy", "a session is already under way")
        session = new_ulid()
        self.active = session
        self.event(session, "created", program=program, patient_ref=patient_ref, operator=operator)
        self.set_state(session, "awaiting_confirmation")
        return {"session": session, "state": "awaiting_confirmation", "course": None}

    async def preflight(self, *, session: str, item: str, done: bool, by: str) -> dict[str, Any]:
        self._record("preflight", session=session, item=item, done=done, by=by)
        self._known(session)
        return {"session": session, "state": self.sessions[session], "pending_items": []}

    async def confirm(self, *, session: str, by: str) -> dict[str, Any]:
        self._record("confirm", session=session, by=by)
        return {"session": session, "state": "running"}

    async def pause(self, *, session: str, reason: str | None = None) -> dict[str, Any]:
        self._record("pause", session=session, reason=reason)
        self._known(session)
        if self.sessions[session] != "running":
            raise CommandError("invalid_state", f"session is {self.sessions[session]}")
        self.set_state(session, "paused")
        return {"session": session, "state": "paused"}

    async def resume(self, *, session: str, origin: str = "mqtt", by: str | None = None) -> dict[str, Any]:
        self._record("resume", session=session, origin=origin)
        self._known(session)
        self.set_state(session, "awaiting_confirmation")
        return {"session": session, "state": "awaiting_confirmation"}

    async def abort(self, *, session: str | None = None, reason: str | None = None,
                    t_trigger: float | None = None) -> dict[str, Any]:
        self._record("abort", session=session, reason=reason)
        active, self.active = self.active, None
        if active is None:
            return {"session": None, "state": "idle", "safe_state_ms": 3.0}
        self.event(active, "aborted", reason=reason)
        self.set_state(active, "aborted")
        return {"session": active, "state": "aborted", "safe_state_ms": 3.0}

    def _known(self, session: str) -> None:
        if session not in self.sessions:
            raise CommandError("not_found", f"no session {session!r}", field="session")

    def make_running(self) -> str:
        """A running session, as if started and confirmed at the chair."""
        session = new_ulid()
        self.active = session
        self.set_state(session, "running")
        return session


# ---- an observing client -------------------------------------------------------------
@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Any

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Observer:
    """An MQTT client that records what it receives; ``await wait_for(pred)`` with a deadline."""

    client: aiomqtt.Client
    seen: list[Seen] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 5.0, start: int = 0) -> Seen:
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.seen):
                if pred(self.seen[i]):
                    return self.seen[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not seen within {timeout} s; seen: {[s.topic for s in self.seen][-20:]}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def wait_count(self, pred: Callable[[Seen], bool], n: int, timeout: float = 5.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while True:
            got = [s for s in self.seen if pred(s)]
            if len(got) >= n:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"saw {len(got)} of {n} within {timeout} s")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def of(self, pred: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.seen if pred(s)]

    async def _read(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self.seen.append(Seen(m.topic.value, payload, bool(m.retain), m.qos, m.properties))
            self._changed.set()


def client(broker: Any, identifier: str | None = None, *, protocol: Any = aiomqtt.ProtocolVersion.V5,
           **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, identifier=identifier or unique("test"), protocol=protocol,
                          socket_options=NODELAY, **kwargs)


@contextlib.asynccontextmanager
async def observing(broker: Any, *topics: str, identifier: str | None = None,
                    protocol: Any = aiomqtt.ProtocolVersion.V5, retain_as_published: bool = False,
                    **kwargs: Any) -> AsyncIterator[Observer]:
    """A connected client subscribed (QoS 1) to ``topics`` and recording.

    ``retain_as_published`` (MQTT 5) shows the publisher's retain flag on live messages.
    """
    async with client(broker, identifier, protocol=protocol, **kwargs) as c:
        obs = Observer(c)
        for t in topics:
            if retain_as_published:
                await c.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=True))
            else:
                await c.subscribe(t, qos=1)
        reader = asyncio.create_task(obs._read())
        try:
            yield obs
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` with a deadline (for state that has no event to await)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


def props(response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        p.ResponseTopic = response_topic
    if correlation is not None:
        p.CorrelationData = correlation
    return p


# ---- a running front end ---------------------------------------------------------------
def make_frontend(tmp: Path, broker: Any, room: StubRoom, *, site: str = "clinic-a", room_id: str | None = None,
                  boot: int = 1, outbox: Outbox | None = None, store: IdempotencyStore | None = None,
                  **kwargs: Any) -> MqttFrontend:
    return MqttFrontend(room, site=site, room_id=room_id or unique("room"), boot=boot, host=broker.host,
                        port=broker.port, outbox=Outbox(tmp / "outbox.sqlite") if outbox is None else outbox,
                        idempotency=IdempotencyStore(tmp / "requests.sqlite") if store is None else store,
                        reconnect_min_s=0.05, reconnect_max_s=0.5, **kwargs)


@contextlib.asynccontextmanager
async def running(frontend: MqttFrontend, *, wait_online: bool = True, close_stores: bool = True
                  ) -> AsyncIterator[MqttFrontend]:
    task = asyncio.create_task(frontend.run())
    try:
        if wait_online:
            await asyncio.wait_for(asyncio.shield(frontend._online.wait()), 10)
        yield frontend
    finally:
        if not task.done():
            await asyncio.wait_for(frontend.stop(timeout=2.0), 10)
        await task
        if close_stores:
            await frontend.outbox.aclose()
            frontend.idempotency.close()


class Requester:
    """Sends requests to one room and waits for the matching reply (MQTT 5 properties)."""

    def __init__(self, obs: Observer, root: str, client_id: str) -> None:
        self.obs = obs
        self.root = root
        self.reply_topic = f"{root}/reply/{client_id}"

    async def send(self, verb: str, payload: dict[str, Any] | bytes | str | None = None, *,
                   correlation: bytes | None = None, reply_to: str | None = None, retain: bool = False,
                   use_props: bool = True) -> None:
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload or {})
        p = props(reply_to or self.reply_topic, correlation) if use_props else None
        await self.obs.client.publish(f"{self.root}/cmd/{verb}", body, qos=1, retain=retain, properties=p)

    async def request(self, verb: str, payload: dict[str, Any] | bytes | str | None = None, *,
                      timeout: float = 5.0, **kwargs: Any) -> dict[str, Any]:
        correlation = new_ulid().encode()
        start = len(self.obs.seen)
        await self.send(verb, payload, correlation=correlation, **kwargs)
        seen = await self.obs.wait_for(
            lambda s: s.topic.startswith(self.reply_topic) and s.json.get("correlation_id") == correlation.decode(),
            timeout, start=start)
        return seen.json


# ---- a TCP proxy, to cut a connection abruptly -------------------------------------------
class Proxy(CutProxy):
    """Forwards a local port to the broker; :meth:`cut` aborts every connection (no DISCONNECT);
    ``swallow_downstream``: a broker that keeps the link up and never answers."""

    def __init__(self, broker: Any) -> None:
        super().__init__(broker.port, broker.host)
        self.broker = broker
