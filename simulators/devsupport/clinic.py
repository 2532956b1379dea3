"""Clinic software, the technician at the chair and the simulated world, for the tests
and the benchmarks.

- :class:`Clinic`: clinic software following ``<root>/#`` and sending requests over one
  MQTT 5 (or 3.1.1) connection; :func:`run_to_awaiting` starts a session over MQTT and
  ticks its checklist, up to the chair's confirmation.
- :func:`console`: one request on the room's console socket (the technician);
  :func:`ack_prompts`: the technician acknowledging each confirm step as it comes.
- :func:`sim_states`, :func:`wait_sim`, :func:`wait_all_off`, :func:`auto_trigger`: the
  simulators' control ports.
- The openings the tests share: :func:`room_started` (the hub started, the trigger pulled);
  :func:`hub_followed` (that, with clinic software following the room from before the
  hub's first message); :func:`confirmed` (a session started over MQTT and confirmed at
  the chair); :func:`console_session` (a session started at the technician's console,
  driven by Textual's pilot).

Every run uses its own site id (:func:`new_site`), so topics and retained messages of one
never reach another on a shared broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators.control import ControlClient
from simulators.devsupport.waiting import poll
from simulators.simroom import SimulatedRoom

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
DEVICES = ("epg-1", "inj-1", "led-1", "pemf-1")

#: the demo, kept short: 1 s of light and field, 2 pulses per EP point
SHORT_DEMO = {"light": {"duration_s": 1}, "field": {"duration_s": 1}, "ep": {"pulses_per_point": 2}}


def new_site() -> str:
    return "t" + uuid.uuid4().hex[:10]


def root_of(site: str, room: str = "room-1") -> str:
    return f"devicehub/v1/{site}/{room}"


def reply_properties(response_topic: str, correlation: bytes) -> Properties:
    """The MQTT 5 PUBLISH properties of a request: where to reply, and what to echo."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


@dataclass
class Received:
    topic: str
    raw: bytes
    retain: bool
    correlation: bytes | None
    at: float = field(default_factory=time.monotonic)

    @property
    def body(self) -> Any:
        try:
            return json.loads(self.raw)
        except ValueError:
            return None


class Clinic:
    """Clinic software: follows ``<root>/#`` and sends requests, over one MQTT connection.

    ``persistent=True`` makes it a follower with a persistent session (MQTT 5 clean
    start false, a session expiry, a fixed client id) that reconnects by itself after a
    broker outage, as shared/mqtt-api.md asks of clients that follow sessions.
    """

    _n = itertools.count(1)

    def __init__(self, port: int, root: str, *, client_id: str | None = None, subscribe: str | None = "#",
                 protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5, persistent: bool = False) -> None:
        self.port = port
        self.root = root
        self.client_id = client_id or f"clinic-{uuid.uuid4().hex[:8]}"
        self.filter = f"{root}/{subscribe}" if subscribe else None
        self.protocol = protocol
        self.persistent = persistent
        self.messages: list[Received] = []
        self.connects = 0
        self._new = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _make(self) -> aiomqtt.Client:
        kw: dict[str, Any] = {}
        if self.protocol == aiomqtt.ProtocolVersion.V5:
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 600
                kw.update(clean_start=False, properties=props)
        else:
            kw.update(clean_session=not self.persistent)
        return aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id, protocol=self.protocol,
                              socket_options=[NODELAY], timeout=5, max_queued_incoming_messages=0, **kw)

    async def __aenter__(self) -> "Clinic":
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with self._make() as client:
                    if self.filter:
                        await client.subscribe(self.filter, qos=1)
                    self._client = client
                    self.connects += 1
                    self._connected.set()
                    async for m in client.messages:
                        props = m.properties
                        corr = getattr(props, "CorrelationData", None) if props is not None else None
                        raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        self.messages.append(Received(m.topic.value, raw, bool(m.retain), corr))
                        self._new.set()
            except aiomqtt.MqttError:
                self._client = None
                self._connected.clear()
                if not self.persistent:
                    raise
                await asyncio.sleep(0.05)  # reconnect back-off while the broker is away

    async def wait_connected(self, timeout: float = 15.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # ---- receiving ---------------------------------------------------------------
    async def wait_for(self, pred: Callable[[Received], bool], timeout: float = 20.0, start: int = 0,
                       what: str = "a message") -> Received:
        """The first message from index ``start`` on that satisfies ``pred`` (deadline ``timeout``)."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.messages):
                m = self.messages[i]
                i += 1
                with contextlib.suppress(Exception):
                    if pred(m):
                        return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last messages: "
                                     f"{[(x.topic, x.raw[:200]) for x in self.messages[-5:]]}")
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic == f"{self.root}/{suffix}"]

    def events(self, session: str) -> list[dict[str, Any]]:
        """The session's events as a consumer keeps them: duplicates (a QoS 1 resend, the
        outbox's replay after a restart) dropped by ``msg_id``, as shared/mqtt-api.md says."""
        seen: set[str] = set()
        out = []
        for m in self.messages:
            if m.topic == f"{self.root}/sessions/{session}/events" and m.body.get("msg_id") not in seen:
                seen.add(m.body.get("msg_id"))
                out.append(m.body)
        return out

    async def wait_event(self, session: str, event: str, timeout: float = 30.0, start: int = 0) -> dict[str, Any]:
        topic = f"{self.root}/sessions/{session}/events"
        m = await self.wait_for(lambda m: m.topic == topic and m.body["data"]["event"] == event, timeout, start,
                                what=f"event {event} of {session}")
        return m.body

    async def wait_state(self, state: str | tuple[str, ...], timeout: float = 30.0, start: int = 0,
                         session: str | None = None) -> dict[str, Any]:
        states = (state,) if isinstance(state, str) else state
        topic = f"{self.root}/session"

        def ok(m: Received) -> bool:
            b = m.body
            return (m.topic == topic and b["data"]["state"] in states
                    and (session is None or b["data"]["session"] == session))

        return (await self.wait_for(ok, timeout, start, what=f"session state {states}")).body

    # ---- requests ----------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties, timeout=10)

    async def request(self, verb: str, body: dict[str, Any] | bytes | None = None, *, timeout: float = 15.0,
                      v311: bool | None = None, retain: bool = False) -> dict[str, Any]:
        """Send one request with a reply path and return the reply's body.

        MQTT 5: Response Topic and Correlation Data properties. MQTT 3.1.1 (or
        ``v311=True``): ``reply_to`` and ``correlation_id`` in the payload.
        """
        n = next(self._n)
        corr = f"c{n}-{uuid.uuid4().hex[:6]}"
        reply_topic = f"{self.root}/reply/{self.client_id}/{n}"
        if v311 is None:
            v311 = self.protocol != aiomqtt.ProtocolVersion.V5
        props = None
        if isinstance(body, dict) or body is None:
            payload: dict[str, Any] = dict(body or {})
            payload.setdefault("request_id", f"r-{uuid.uuid4().hex}")
            if v311:
                payload.update(reply_to=reply_topic, correlation_id=corr)
            raw = json.dumps(payload).encode()
        else:
            raw = body
        if not v311:
            props = reply_properties(reply_topic, corr.encode())
        start = len(self.messages)
        await self.publish(f"{self.root}/cmd/{verb}", raw, properties=props, retain=retain)
        m = await self.wait_for(lambda m: m.topic == reply_topic, timeout, start, what=f"the reply to {verb}")
        reply = m.body
        assert reply["correlation_id"] == corr, reply
        if not v311:
            assert m.correlation == corr.encode(), "the reply must echo Correlation Data"
        return reply


# ---------------------------------------------------------------------- the room
async def sim_states(room: SimulatedRoom) -> dict[str, dict[str, Any]]:
    out = {}
    for dev in DEVICES:
        async with ControlClient(room.sims[dev].control) as c:
            out[dev] = await c.state()
    return out


async def outputs_on(room: SimulatedRoom) -> dict[str, bool]:
    return {d: bool(s["output_on"]) for d, s in (await sim_states(room)).items()}


async def wait_all_off(room: SimulatedRoom, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Poll every simulator until none has its output on; returns the last states."""
    deadline = time.monotonic() + timeout
    while True:
        states = await sim_states(room)
        if not any(s["output_on"] for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"outputs still on after {timeout} s: "
                                 f"{ {d: s['output_on'] for d, s in states.items()} }")
        await asyncio.sleep(0.02)  # poll interval


async def wait_sim(room: SimulatedRoom, dev: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                   what: str = "") -> dict[str, Any]:
    """Poll one simulator's own state until ``check`` holds (its control port)."""
    async with ControlClient(room.sims[dev].control) as c:
        async def probe() -> dict[str, Any] | None:
            st = await c.state()
            return st if check(st) else None

        return await poll(probe, timeout=timeout, interval=0.01, what=what or f"{dev} state")


async def auto_trigger(room: SimulatedRoom, rate_hz: float) -> None:
    async with ControlClient(room.sims["inj-1"].control) as c:
        await c.call("auto_trigger", rate_hz=rate_hz)


async def console(room: SimulatedRoom, op: str, **fields: Any) -> dict[str, Any]:
    """One request on the room's console socket, as the technician at the chair sends it."""
    from devicehub.local_console import ConsoleClient  # the hub's own client of its socket

    async with ConsoleClient(room.directory / "devicehub.sock") as c:
        return await c.request(op, **fields)


async def ack_prompts(clinic: Clinic, room: SimulatedRoom, session: str) -> None:
    """The technician at the chair: acknowledges each confirm step as it comes (run as a task)."""
    seen = 0
    topic = f"{clinic.root}/sessions/{session}/events"
    while True:
        m = await clinic.wait_for(lambda m: m.topic == topic and m.body["data"]["event"] == "prompt",
                                  timeout=600, start=seen)
        seen = clinic.messages.index(m) + 1
        reply = await console(room, "prompt_ack", by="tech")
        assert reply["ok"], reply


def start_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"program": "demo", "patient_ref": f"P-{uuid.uuid4().hex[:8]}", "operator": "dr-a",
                            "params": SHORT_DEMO}
    body.update(extra)
    return body


async def run_to_awaiting(clinic: Clinic, **extra: Any) -> str:
    """start + both preflight items over MQTT; returns the session id (awaiting_confirmation)."""
    reply = await clinic.request("start", start_body(**extra))
    assert reply["ok"], reply.get("error")
    sid = reply["data"]["session"]
    for item in ("consent", "scalp_cleansed"):
        r = await clinic.request("preflight", {"session": sid, "item": item, "done": True, "by": "nurse"})
        assert r["ok"], r
    assert r["data"]["state"] == "awaiting_confirmation", r
    return sid


# ---------------------------------------------------------------------- the openings
async def room_started(room: SimulatedRoom, hub: Any, trigger_hz: float | None = None) -> None:
    """The hub (``hub.astart()``, e.g. a ServeProcess) started on the room; the gun's trigger
    pulled ``trigger_hz`` times a second (None: not pulled, so an injection waits armed)."""
    await hub.astart()
    if trigger_hz is not None:
        await auto_trigger(room, trigger_hz)


@contextlib.asynccontextmanager
async def hub_followed(room: SimulatedRoom, hub: Any, trigger_hz: float | None = None) -> AsyncIterator[Clinic]:
    """Clinic software following the room, then :func:`room_started` (so the clinic sees
    the hub's first messages); yields the clinic."""
    async with Clinic(room.mqtt_port or 1883, root_of(room.site, room.room)) as clinic:
        await room_started(room, hub, trigger_hz)
        yield clinic


@contextlib.asynccontextmanager
async def confirmed(clinic: Clinic, room: SimulatedRoom, **extra: Any) -> AsyncIterator[str]:
    """A session started over MQTT (:func:`run_to_awaiting` with ``extra``) and confirmed at
    the chair; yields its id. The technician acknowledges each confirm step until the block ends."""
    sid = await run_to_awaiting(clinic, **extra)
    acks = asyncio.create_task(ack_prompts(clinic, room, sid))
    try:
        r = await console(room, "confirm", session=sid, by="tech")
        assert r["ok"], r
        yield sid
    finally:
        acks.cancel()


async def start_at_the_chair(room: SimulatedRoom, params: dict[str, Any]) -> str:
    """The demo started at the room's console socket, its checklist taken as done by the nurse; its id."""
    reply = await console(room, "start", program="demo", patient_ref="P-0003", operator="dr-c",
                          params=params, preflight_done_by="nurse")
    assert reply["ok"], reply
    return reply["data"]["session"]


@contextlib.asynccontextmanager
async def console_session(room: SimulatedRoom, hub: Any, app: Any, params: dict[str, Any], *,
                          size: tuple[int, int], trigger_hz: float | None = None,
                          timeout: float = 60.0) -> AsyncIterator[tuple[Any, str]]:
    """The opening of a session at the chair: :func:`room_started`, the technician's console
    ``app`` (devicehub.console's ConsoleApp) run under Textual's pilot until it is attached
    to the room, then :func:`start_at_the_chair` with ``params``; yields (the pilot, the session id)."""
    await room_started(room, hub, trigger_hz)
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + timeout  # only keeps a broken test from hanging
        while not app.state.connected:
            assert time.monotonic() < deadline, f"the console did not attach to the room: {app.state.lost_reason}"
            await pilot.pause(0.05)
        sid = await start_at_the_chair(room, params)
        yield pilot, sid
