"""End-to-end helpers for the hub daemon: a simulated room, ``devicehub serve`` as a
process, and clinic software over a real Mosquitto.

Why a process: the hub is a daemon; killing it (SIGKILL), restarting it on the same
config and reading its will are what clinics will live through, and only a real
process has a real TCP connection whose loss makes the broker publish the will.

Every test gets its own site id, so topics (and the broker's retained messages) of
one test never reach another even on the shared session broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devicehub.local_console import ConsoleClient
from simulators.simroom import SimulatedRoom
from simulators.control import ControlClient

ROOT = Path(__file__).resolve().parents[2]
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
DEVICES = ("epg-1", "inj-1", "led-1", "pemf-1")

#: the demo, kept short: 1 s of light and field, 2 pulses per EP point
SHORT_DEMO = {"light": {"duration_s": 1}, "field": {"duration_s": 1}, "ep": {"pulses_per_point": 2}}


def new_site() -> str:
    return "t" + uuid.uuid4().hex[:10]


def root_of(site: str, room: str = "room-1") -> str:
    return f"devicehub/v1/{site}/{room}"


# ====================================================================== the hub process
class HubProcess:
    """``devicehub serve --config CFG`` as a child process; ready when it prints its line."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""

    @property
    def boot(self) -> int:
        return int(self.ready_line.split(" boot ")[1].split(";")[0])

    def start(self, timeout: float = 30.0) -> "HubProcess":
        err = open(self.log, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "devicehub.cli", "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err.close()
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("devicehub serving"):
            self.kill()
            raise RuntimeError(f"the hub did not get ready: {line!r}; log:\n{self.log.read_text()[-3000:]}")
        self.ready_line = line[0].strip()
        return self

    async def astart(self, timeout: float = 30.0) -> "HubProcess":
        return await asyncio.to_thread(self.start, timeout)

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``devicehub ARGS`` as a process, as a technician would type it."""
    return subprocess.run([sys.executable, "-m", "devicehub.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


async def acli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, timeout=timeout)


# ====================================================================== clinic software
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
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = corr.encode()
        start = len(self.messages)
        await self.publish(f"{self.root}/cmd/{verb}", raw, properties=props, retain=retain)
        m = await self.wait_for(lambda m: m.topic == reply_topic, timeout, start, what=f"the reply to {verb}")
        reply = m.body
        assert reply["correlation_id"] == corr, reply
        if not v311:
            assert m.correlation == corr.encode(), "the reply must echo Correlation Data"
        return reply


async def timed_request(clinic: Clinic, verb: str, body: dict[str, Any] | bytes | None = None
                        ) -> tuple[dict[str, Any], float, float]:
    """A request and the ``time.monotonic()`` just before it was sent and just after its reply."""
    t0 = time.monotonic()
    reply = await clinic.request(verb, body)
    return reply, t0, time.monotonic()


def assert_safe_state_ms(ms: Any, t0: float, t1: float) -> None:
    """A reported safe-state time is a real duration inside the request that caused it:
    more than nothing, and no more than the request's whole round trip (not a fixed
    bound, which a loaded machine could miss)."""
    assert isinstance(ms, (int, float)) and not isinstance(ms, bool), ms
    assert 0 < ms <= (t1 - t0) * 1000.0, (ms, (t1 - t0) * 1000.0)


# ====================================================================== the room
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


async def auto_trigger(room: SimulatedRoom, rate_hz: float) -> None:
    async with ControlClient(room.sims["inj-1"].control) as c:
        await c.call("auto_trigger", rate_hz=rate_hz)


async def console(room: SimulatedRoom, op: str, **fields: Any) -> dict[str, Any]:
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


# ====================================================================== fixtures
@dataclass
class Setup:
    room: SimulatedRoom
    hub: HubProcess
    port: int

    @property
    def root(self) -> str:
        return root_of(self.room.site, self.room.room)

    @property
    def config(self) -> str:
        return str(self.room.config_path)


@contextlib.contextmanager
def simulated_room(directory: Path, port: int, *, room: str = "room-1", site: str | None = None,
                   remote_confirmation: bool = True) -> Iterator[SimulatedRoom]:
    with SimulatedRoom(directory, site=site or new_site(), room=room, mqtt_port=port,
                       remote_confirmation=remote_confirmation) as sr:
        yield sr


@contextlib.asynccontextmanager
async def hub_in(room: SimulatedRoom) -> AsyncIterator[HubProcess]:
    hub = HubProcess(room.config_path, room.directory / "hub.log")
    try:
        yield hub
    finally:
        await asyncio.to_thread(hub.terminate)


@pytest.fixture
async def setup(broker, tmp_path) -> AsyncIterator[Setup]:
    """A simulated room and its hub (not started yet: the clinic subscribes first)."""
    with simulated_room(tmp_path / "room", broker.port) as sr:
        async with hub_in(sr) as hub:
            yield Setup(sr, hub, broker.port)


async def running_with_output(setup: Setup, clinic: Clinic) -> str:
    """A session confirmed at the console and delivering (a device output on)."""
    sid = await run_to_awaiting(clinic)
    r = await console(setup.room, "confirm", session=sid, by="tech")
    assert r["ok"], r
    await clinic.wait_event(sid, "point_done")
    deadline = asyncio.get_running_loop().time() + 10
    while not any((await outputs_on(setup.room)).values()):
        assert asyncio.get_running_loop().time() < deadline, "no output came on"
    return sid
