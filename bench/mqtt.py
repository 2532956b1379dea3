"""The hub's MQTT side: telemetry and event throughput beside raw aiomqtt, request latency,
and the time from a remote ``start`` to the first device command.

1. Throughput (the front end in this process, a subscriber in another): the hub's
   :class:`~devicehub.mqtt.frontend.MqttFrontend` is driven by a bus flooded with
   ``device.telemetry`` (QoS 0) or ``session.event`` (QoS 1, through the on-disk outbox
   with synchronous=FULL, as the daemon runs it) messages, beside a raw aiomqtt loop
   publishing the same envelope bytes to the same broker at the same QoS (QoS 0 awaited
   one by one; QoS 1 with the front end's window of 6 publishes in flight). Rounds
   alternate (raw, hub, raw, hub, ...). A separate subscriber process counts what it
   receives per round (its topic names the round) and its first and last arrival;
   rate = messages / (last - first). Ratio hub / raw per kind, target >= 0.7.
2. Request to reply (the real hub: ``devicehub serve`` as a process, a simulated room):
   ``status`` requests one at a time (MQTT 5 Response Topic + Correlation Data, QoS 1
   both ways, TCP_NODELAY), beside a raw echo responder (an aiomqtt process answering
   on the same broker) for the floor.
3. ``start`` to the first device command (the real hub, remote confirmation off, a copy
   of the demo without preflight items, so a start runs at once): from just before the
   ``start`` PUBLISH to the injector simulator's first ``SET_PARAMS`` (its request
   counter, read over its control channel in a tight loop; the poll's own round trip is
   the resolution and is reported), and to the gun armed (``output_on``). Each sample
   is aborted over MQTT and waited off before the next.

Results: ``bench/results/mqtt.json``. ``--quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bench.common import ROOT, machine_info, median, pinned, quiet_logging, summary, table, write_results  # noqa: E402
from simulators.devsupport.processes import ServeProcess  # noqa: E402

TARGET_RATIO = 0.7
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
WINDOW = 6  # the front end's default max_inflight


# =========================================================================== the subscriber process
def _subscriber(port: int) -> None:
    """Count messages per topic with their last arrival (CLOCK_MONOTONIC, shared by processes).

    paho with its own network thread, subscribed at QoS 0 (the broker then never waits
    for this process's PUBACKs, so the measurement does not throttle what it measures;
    the publishing leg keeps its own QoS). stdin: ``count TOPIC`` answers ``[n, last]``
    on stdout; end of input ends it.
    """
    import threading

    import paho.mqtt.client as paho

    counts: dict[str, list[float]] = {}
    lock = threading.Lock()
    ready = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe([("bench/#", 0), ("devicehub/v1/bench/#", 0)])

    def on_subscribe(*_: Any) -> None:
        ready.set()

    def on_message(client: Any, userdata: Any, m: Any) -> None:
        t = time.monotonic()
        with lock:
            entry = counts.get(m.topic)
            if entry is None:
                counts[m.topic] = [1, t]
            else:
                entry[0] += 1
                entry[1] = t

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}",
                    protocol=paho.MQTTv5)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.on_socket_open = lambda client, userdata, sock: sock.setsockopt(*NODELAY)
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, topic = line.strip().partition(" ")
        if cmd == "count":
            with lock:
                entry = list(counts.get(topic, [0, 0.0]))
            print(json.dumps(entry), flush=True)
    c.loop_stop()


class _Counter:
    """The main process's side of the subscriber process."""

    def __init__(self, port: int) -> None:
        self.proc = _helper("--subscriber", port)

    def count(self, topic: str) -> tuple[int, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"count {topic}\n")
        self.proc.stdin.flush()
        n, last = json.loads(self.proc.stdout.readline())
        return int(n), float(last)

    async def settled(self, topic: str, expect: int | None, timeout: float = 30.0) -> tuple[int, float]:
        """Wait until ``expect`` messages arrived (QoS 1) or, for QoS 0, the count stops growing."""
        deadline = time.monotonic() + timeout
        previous = -1
        while True:
            n, last = await asyncio.to_thread(self.count, topic)
            if expect is not None and n >= expect:
                return n, last
            if expect is None and n == previous and time.monotonic() - last > 0.2:
                return n, last
            if time.monotonic() > deadline:
                return n, last
            previous = n
            await asyncio.sleep(0.05)  # polling another process

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


async def _echo(port: int) -> None:
    """Answer every ``bench/echo/req`` on its Response Topic with its Correlation Data (QoS 1)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-echo-{os.getpid()}",
                              protocol=aiomqtt.ProtocolVersion.V5, socket_options=[NODELAY]) as c:
        await c.subscribe("bench/echo/req", qos=1)
        print("ready", flush=True)
        async for m in c.messages:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = m.properties.CorrelationData
            await c.publish(m.properties.ResponseTopic, m.payload, qos=1, properties=props)


def _helper(mode: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), mode, "--port", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{mode} helper did not start")
    return proc


# =========================================================================== 1. throughput
class _BenchRoom:
    """All the front end needs of a room when no request is sent: its bus."""

    def __init__(self) -> None:
        from devicehub.bus import Bus

        self.bus = Bus()


def _event_data(i: int) -> dict[str, Any]:
    return {"event": "point_done", "index": i, "step": "inject", "zone": "left", "point": "r1c1", "device": "inj-1",
            "delivered": {"volume_ul": 20.1, "shots": 1, "depth_mm": 1.5}}


TELEMETRY = {"id": "inj-1", "connected": True, "state": "armed", "readings": {
    "pressure_kpa": 212.0, "reservoir_ul": 9840.3, "volume_total_ul": 160.3, "shots_total": 8, "depth_mm": 1.5}}


async def _raw_round(client: aiomqtt.Client, topic: str, payload: bytes, qos: int, seconds: float,
                     timeout: float | None = None) -> int:
    """Publish ``payload`` for ``seconds``: QoS 0 awaited one by one, QoS 1 with WINDOW in flight.
    ``timeout``: aiomqtt's per-publish timeout (None: its default, math.inf: none, as the hub)."""
    end = time.monotonic() + seconds
    n = 0
    if qos == 0:
        while time.monotonic() < end:
            await client.publish(topic, payload, qos=0, timeout=timeout)
            n += 1
        return n
    window = asyncio.Semaphore(WINDOW)
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            await client.publish(topic, payload, qos=1, timeout=timeout)
        finally:
            window.release()

    while time.monotonic() < end:
        await window.acquire()
        t = asyncio.create_task(one())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    return n


async def _hub_telemetry_round(fe: Any, bus: Any, device: str, seconds: float) -> int:
    """One reading per event-loop turn: the front end always has the newest to send (QoS 0)."""
    from devicehub.bus import HubMessage

    end = time.monotonic() + seconds
    n = 0
    data = dict(TELEMETRY, id=device)
    while time.monotonic() < end:
        bus.publish(HubMessage("device.telemetry", data, device=device))
        n += 1
        await asyncio.sleep(0)
    return n


async def _hub_telemetry_paced_round(fe: Any, bus: Any, device: str, seconds: float) -> int:
    """A new reading as soon as the front end has taken the previous one (its client's
    QoS 0 publish was called): the publish path without thinning, and without a producer
    spinning on the event loop (see _BenchFrontend)."""
    from devicehub.bus import HubMessage

    end = time.monotonic() + seconds
    n = 0
    data = dict(TELEMETRY, id=device)
    taken = fe.reading_taken
    async with asyncio.timeout(seconds + 10):  # one guard for the round, not one per reading
        while time.monotonic() < end:
            taken.clear()
            bus.publish(HubMessage("device.telemetry", data, device=device))
            n += 1
            await taken.wait()
    return n


async def _hub_events_round(fe: Any, bus: Any, session: str, seconds: float) -> int:
    """Keep a backlog of events in the outbox for ``seconds``; then wait until it drained."""
    from devicehub.bus import HubMessage

    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        if len(fe.outbox) < 256:
            for _ in range(32):
                n += 1
                bus.publish(HubMessage("session.event", _event_data(n), session=session))
            await asyncio.sleep(0)
        else:  # a backlog of 256 keeps the publisher busy for longer than this: no spinning
            await asyncio.sleep(0.001)
    while len(fe.outbox):
        await asyncio.sleep(0.005)
    return n


def _bench_frontend_class() -> type:
    from devicehub.mqtt.frontend import MqttFrontend

    class _BenchFrontend(MqttFrontend):
        """The daemon's front end, whose MQTT client also tells the paced telemetry round
        when a reading has been taken (its QoS 0 publish called), so that round's producer
        waits on an event instead of polling every event-loop turn. (Overrides a private
        hook: a bench may, the product must not.) The cost it adds to the measured path,
        one coroutine frame and an Event.set per publish, counts against the hub."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reading_taken = asyncio.Event()

        def _make_client(self) -> aiomqtt.Client:
            client = super()._make_client()
            publish, taken = client.publish, self.reading_taken

            async def publish_and_signal(topic: str, payload: Any = None, qos: int = 0, *args: Any,
                                         **kwargs: Any) -> None:
                if qos == 0:
                    taken.set()
                await publish(topic, payload, qos, *args, **kwargs)

            client.publish = publish_and_signal  # type: ignore[method-assign]
            return client

    return _BenchFrontend


async def bench_throughput(port: int, rounds: int, seconds: float, broker_pid: int | None = None,
                           pin: bool = True) -> dict[str, Any]:
    from devicehub.mqtt.envelope import EnvelopeFactory, dumps
    from devicehub.mqtt.idempotency import IdempotencyStore
    from devicehub.mqtt.outbox import Outbox

    counter = _Counter(port)
    tmp = tempfile.TemporaryDirectory(prefix="devicehub-bench-")
    room = _BenchRoom()
    fe = _bench_frontend_class()(room, site="bench", room_id="room-1", boot=1, host="127.0.0.1", port=port,
                      outbox=Outbox(Path(tmp.name) / "outbox.sqlite", bound=100_000),
                      idempotency=IdempotencyStore(Path(tmp.name) / "requests.sqlite"))
    # the raw loop publishes exactly the bytes the hub would (same sizes)
    env = EnvelopeFactory("bench", "room-1", 1)
    tele_bytes = dumps(env.message("device.telemetry", TELEMETRY, tseq=123456))
    event_bytes = dumps(env.message("session.event", _event_data(1234), seq=123456, session="r0-" + "X" * 23))
    task = asyncio.create_task(fe.run())
    results: dict[str, list[dict[str, Any]]] = {"raw_qos0": [], "raw_qos0_untimed": [], "hub_telemetry": [],
                                                "hub_telemetry_paced": [], "raw_qos1": [], "raw_qos1_untimed": [],
                                                "hub_events": []}

    async def measure(name: str, topic: str, qos: int, publish: Any) -> None:
        gc.collect()
        t0 = time.monotonic()
        cpu0 = time.process_time()  # this process: the loop and the outbox's writer thread
        sent = await publish()
        cpu = time.process_time() - cpu0
        got, last = await counter.settled(topic, sent if qos == 1 else None)
        rate = got / (last - t0) if last > t0 else 0.0
        results[name].append({"sent": sent, "received": got, "seconds": round(last - t0, 3), "rate": round(rate, 1),
                              "cpu_us_per_msg": round(cpu / got * 1e6, 1) if got else None})

    pinning = pinned(pin, [p for p in (broker_pid, counter.proc.pid) if p], "broker and subscriber")
    placement = pinning.__enter__()
    try:
        await fe.wait_online(10)
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-raw", protocol=aiomqtt.ProtocolVersion.V5,
                                  socket_options=[NODELAY], max_inflight_messages=20) as raw:
            for r in range(rounds + 1):  # round 0 warms up
                tag = f"r{r}"
                await measure("raw_qos0", f"bench/raw0/{tag}", 0,
                              lambda: _raw_round(raw, f"bench/raw0/{tag}", tele_bytes, 0, seconds))
                await measure("raw_qos0_untimed", f"bench/raw0u/{tag}", 0,
                              lambda: _raw_round(raw, f"bench/raw0u/{tag}", tele_bytes, 0, seconds, math.inf))
                dev = f"tele-{tag}"
                await measure("hub_telemetry", f"{fe.topics.root}/devices/{dev}/telemetry", 0,
                              lambda: _hub_telemetry_round(fe, room.bus, dev, seconds))
                await measure("hub_telemetry_paced", f"{fe.topics.root}/devices/{dev}-paced/telemetry", 0,
                              lambda: _hub_telemetry_paced_round(fe, room.bus, f"{dev}-paced", seconds))
                await measure("raw_qos1", f"bench/raw1/{tag}", 1,
                              lambda: _raw_round(raw, f"bench/raw1/{tag}", event_bytes, 1, seconds))
                await measure("raw_qos1_untimed", f"bench/raw1u/{tag}", 1,
                              lambda: _raw_round(raw, f"bench/raw1u/{tag}", event_bytes, 1, seconds, math.inf))
                sid = f"{tag}-" + uuid.uuid4().hex[:20].upper()
                await measure("hub_events", fe.topics.session_events(sid), 1,
                              lambda: _hub_events_round(fe, room.bus, sid, seconds))
        thinned = fe.telemetry_dropped
    finally:
        pinning.__exit__(None, None, None)
        await fe.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        fe.outbox.close()
        fe.idempotency.close()
        tmp.cleanup()
        counter.close()

    out: dict[str, Any] = {"round_seconds": seconds, "rounds": rounds, "pinned": placement, "payload_bytes": {
        "telemetry": len(tele_bytes), "session_event": len(event_bytes)}, "variants": {}}
    for name, rows in results.items():
        rows = rows[1:]  # without the warm-up
        out["variants"][name] = {"rate_median": round(median([x["rate"] for x in rows]), 1),
                                 "cpu_us_per_msg_median": round(median([x["cpu_us_per_msg"] or 0.0 for x in rows]), 1),
                                 "rounds": rows}
    v = out["variants"]
    out["ratio_telemetry"] = round(v["hub_telemetry"]["rate_median"] / v["raw_qos0"]["rate_median"], 3)
    out["ratio_telemetry_paced"] = round(v["hub_telemetry_paced"]["rate_median"] / v["raw_qos0"]["rate_median"], 3)
    out["ratio_events"] = round(v["hub_events"]["rate_median"] / v["raw_qos1"]["rate_median"], 3)
    out["ratio_telemetry_untimed"] = round(v["hub_telemetry"]["rate_median"] / v["raw_qos0_untimed"]["rate_median"], 3)
    out["ratio_telemetry_paced_untimed"] = round(
        v["hub_telemetry_paced"]["rate_median"] / v["raw_qos0_untimed"]["rate_median"], 3)
    out["ratio_events_untimed"] = round(v["hub_events"]["rate_median"] / v["raw_qos1_untimed"]["rate_median"], 3)

    def per_round(hub: str, raw: str) -> list[float]:
        return [round(h["rate"] / r["rate"], 3) for h, r in zip(v[hub]["rounds"], v[raw]["rounds"])]

    out["ratio_telemetry_rounds"] = per_round("hub_telemetry", "raw_qos0")
    out["ratio_telemetry_paced_rounds"] = per_round("hub_telemetry_paced", "raw_qos0")
    out["ratio_events_rounds"] = per_round("hub_events", "raw_qos1")
    out["ratio_telemetry_paced_untimed_rounds"] = per_round("hub_telemetry_paced", "raw_qos0_untimed")
    out["ratio_events_untimed_rounds"] = per_round("hub_events", "raw_qos1_untimed")
    out["telemetry_thinned"] = thinned
    return out


# =========================================================================== the real hub
class _Client:
    """A clinic client: one MQTT 5 connection, requests with Response Topic + Correlation Data."""

    def __init__(self, port: int, root: str) -> None:
        self.port = port
        self.root = root
        self.id = f"bench-clinic-{uuid.uuid4().hex[:6]}"
        self._waiting: dict[bytes, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._n = 0

    async def __aenter__(self) -> "_Client":
        self.client = aiomqtt.Client("127.0.0.1", self.port, identifier=self.id, protocol=aiomqtt.ProtocolVersion.V5,
                                     socket_options=[NODELAY])
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.root}/reply/{self.id}/#", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for m in self.client.messages:
            t = time.perf_counter()
            corr = getattr(m.properties, "CorrelationData", None) if m.properties is not None else None
            if corr is None:
                print(f"a reply without Correlation Data on {m.topic.value}: {m.payload[:200]!r}", file=sys.stderr)
                continue
            fut = self._waiting.pop(bytes(corr), None)
            if fut is not None and not fut.done():
                fut.set_result((t, json.loads(m.payload)))

    async def send(self, verb: str, body: dict[str, Any], topic: str | None = None
                   ) -> tuple[float, asyncio.Future[tuple[float, dict[str, Any]]]]:
        """Publish a request; returns (time just before the PUBLISH, future of (reply time, reply))."""
        self._n += 1
        corr = f"{self._n}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.root}/reply/{self.id}/{self._n}" if topic is None else topic
        props.CorrelationData = corr
        fut: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[corr] = fut
        payload = json.dumps({"request_id": uuid.uuid4().hex, **body})
        t0 = time.perf_counter()
        await self.client.publish(topic or f"{self.root}/cmd/{verb}", payload, qos=1, properties=props)
        return t0, fut

    async def request(self, verb: str, body: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        t0, fut = await self.send(verb, body or {})
        t1, reply = await asyncio.wait_for(fut, 10)
        return (t1 - t0) * 1000.0, reply


def _hub(config: Path) -> ServeProcess:
    """``devicehub serve`` as a process, started; its log (warnings and up) goes to ``hub.log`` beside its config."""
    log = config.parent / "hub.log"
    log.write_text("")
    return ServeProcess(config, log).start()


async def bench_latency(port: int, directory: Path, seconds: float) -> dict[str, Any]:
    from simulators.simroom import SimulatedRoom

    out: dict[str, Any] = {}
    echo = _helper("--echo", port)
    try:
        async with _Client(port, "bench") as c:
            lat = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                c._n += 1
                corr = str(c._n).encode()
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = f"bench/reply/{c.id}/{c._n}"
                props.CorrelationData = corr
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                c._waiting[corr] = fut
                await c.client.subscribe(props.ResponseTopic, qos=1) if c._n == 1 else None
                t0 = time.perf_counter()
                await c.client.publish("bench/echo/req", b'{"request_id":"x"}', qos=1, properties=props)
                t1, _ = await asyncio.wait_for(fut, 10)
                lat.append((t1 - t0) * 1000.0)
            out["raw_echo_ms"] = summary(lat[20:])
    finally:
        echo.terminate()
        echo.wait(5)

    with SimulatedRoom(directory / "latency", site="bench", room="lat", mqtt_port=port) as room:
        hub = _hub(room.config_path)
        try:
            async with _Client(port, "devicehub/v1/bench/lat") as c:
                for _ in range(20):  # warm-up
                    await c.request("status")
                lat = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    ms, reply = await c.request("status")
                    assert reply["ok"], reply
                    lat.append(ms)
                out["status_ms"] = summary(lat)
        finally:
            hub.terminate()
    out["status_over_raw_p50"] = round(out["status_ms"]["p50"] / out["raw_echo_ms"]["p50"], 2)
    return out


async def _reply(fut: asyncio.Future[Any], hub: ServeProcess, what: str) -> Any:
    try:
        return await asyncio.wait_for(fut, 15)
    except asyncio.TimeoutError:
        raise RuntimeError(f"no reply to {what} within 15 s; the hub's log:\n{hub.tail()}") from None


def _program_without_preflight(directory: Path) -> Path:
    doc = yaml.safe_load((ROOT / "configs" / "programs" / "demo.yaml").read_text())
    doc["id"] = "bench-start"
    doc["title"] = "Demo without preflight items (bench: a start runs at once)"
    doc["preflight"] = []
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench-start.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


async def bench_start(port: int, directory: Path, samples: int) -> dict[str, Any]:
    from simulators.simroom import SimulatedRoom
    from simulators.control import ControlClient

    programs = _program_without_preflight(directory / "programs")
    to_command, to_armed, to_reply, poll = [], [], [], []
    with SimulatedRoom(directory / "start", site="bench", room="start", mqtt_port=port, remote_confirmation=False,
                       programs=programs) as room:
        hub = _hub(room.config_path)
        try:
            async with _Client(port, "devicehub/v1/bench/start") as c, \
                    ControlClient(room.sims["inj-1"].control) as inj:
                for i in range(samples + 2):  # two warm-up starts
                    before = (await inj.state())["requests"].get("SET_PARAMS", 0)
                    t0, fut = await c.send("start", {"program": "bench-start", "patient_ref": f"B-{uuid.uuid4().hex}",
                                                     "operator": "bench"})
                    t_cmd = t_armed = None
                    polls = 0
                    tp = time.perf_counter()
                    while t_armed is None:
                        s = await inj.state()
                        now = time.perf_counter()
                        polls += 1
                        if t_cmd is None and s["requests"].get("SET_PARAMS", 0) > before:
                            t_cmd = now
                        if s["output_on"]:
                            t_armed = now
                        if now - t0 > 10:
                            raise RuntimeError(f"start #{i}: the injector was not armed within 10 s\n{hub.tail()}")
                    poll_ms = (time.perf_counter() - tp) * 1000.0 / polls
                    t_reply, reply = await _reply(fut, hub, f"start #{i}")
                    assert reply["ok"] and reply["data"]["state"] == "running", reply
                    _, fut = await c.send("abort", {"session": reply["data"]["session"]})
                    _, ab = await _reply(fut, hub, f"abort #{i}")
                    assert ab["ok"], ab
                    while (await inj.state())["output_on"]:
                        pass
                    if i >= 2:
                        to_command.append((t_cmd - t0) * 1000.0)
                        to_armed.append((t_armed - t0) * 1000.0)
                        to_reply.append((t_reply - t0) * 1000.0)
                        poll.append(poll_ms)
        finally:
            hub.terminate()
    return {"samples": samples, "start_to_first_command_ms": summary(to_command),
            "start_to_armed_ms": summary(to_armed), "start_to_reply_ms": summary(to_reply),
            "poll_round_trip_ms": summary(poll),
            "measured": "from just before the start PUBLISH to the first poll of the INJ-1 simulator's control "
                        "channel that shows a SET_PARAMS request (the injection step's first device command), "
                        "and to the first that shows output_on (ARM accepted); polls back to back, resolution "
                        "one poll round trip"}


# =========================================================================== main
async def main(args: argparse.Namespace) -> dict[str, Any]:
    from simulators.local_broker import LocalBroker

    doc: dict[str, Any] = {"machine": machine_info(), "target_ratio": TARGET_RATIO}
    with quiet_logging(), LocalBroker() as broker, tempfile.TemporaryDirectory(prefix="devicehub-bench-") as d:
        t = time.monotonic()
        doc["throughput"] = await bench_throughput(broker.port, args.rounds, args.seconds,
                                                   broker.proc.pid if broker.proc else None, pin=not args.no_pin)
        if not args.throughput_only:
            doc["latency"] = await bench_latency(broker.port, Path(d), args.latency_seconds)
            doc["start"] = await bench_start(broker.port, Path(d), args.samples)
        doc["wall_seconds"] = round(time.monotonic() - t, 1)
    return doc


def report(doc: dict[str, Any]) -> str:
    tp = doc["throughput"]
    v = tp["variants"]
    def rounds(key: str) -> str:
        return " ".join(f"{x:.2f}" for x in tp[key])

    def cpu(key: str) -> float:
        return v[key]["cpu_us_per_msg_median"]

    rows = [
        ["raw aiomqtt QoS 0 (awaited)", v["raw_qos0"]["rate_median"], cpu("raw_qos0"), "", "", ""],
        ["raw aiomqtt QoS 0 (awaited, timeout=inf)", v["raw_qos0_untimed"]["rate_median"], cpu("raw_qos0_untimed"),
         "", "", ""],
        ["hub telemetry QoS 0, flooded (thinned)", v["hub_telemetry"]["rate_median"], cpu("hub_telemetry"),
         tp["ratio_telemetry"], tp["ratio_telemetry_untimed"], rounds("ratio_telemetry_rounds")],
        ["hub telemetry QoS 0, paced", v["hub_telemetry_paced"]["rate_median"], cpu("hub_telemetry_paced"),
         tp["ratio_telemetry_paced"], tp["ratio_telemetry_paced_untimed"], rounds("ratio_telemetry_paced_rounds")],
        [f"raw aiomqtt QoS 1 ({WINDOW} in flight)", v["raw_qos1"]["rate_median"], cpu("raw_qos1"), "", "", ""],
        [f"raw aiomqtt QoS 1 ({WINDOW} in flight, timeout=inf)", v["raw_qos1_untimed"]["rate_median"],
         cpu("raw_qos1_untimed"), "", "", ""],
        ["hub session events QoS 1 (outbox)", v["hub_events"]["rate_median"], cpu("hub_events"),
         tp["ratio_events"], tp["ratio_events_untimed"], rounds("ratio_events_rounds")],
    ]
    pinned = tp.get("pinned")
    lines = [f"Throughput, received per second by a subscriber process (payload {tp['payload_bytes']} bytes; "
             f"ratio: of medians against the plain raw loop, target >= {TARGET_RATIO}; vs untimed: against the "
             f"raw loop without aiomqtt's per-publish timeout, as the hub publishes; per round: the plain ratio "
             f"within each round; CPUs {pinned or 'not pinned'})",
             table(["variant", "msg/s", "CPU us/msg", "ratio", "vs untimed", "per round"], rows), ""]
    if "latency" not in doc:
        return "\n".join(lines)
    lat, st = doc["latency"], doc["start"]
    rows = [["raw MQTT 5 echo (QoS 1 both ways)", lat["raw_echo_ms"]["p50"], lat["raw_echo_ms"]["p99"],
             lat["raw_echo_ms"]["n"]],
            ["hub status request -> reply", lat["status_ms"]["p50"], lat["status_ms"]["p99"], lat["status_ms"]["n"]],
            ["start -> reply", st["start_to_reply_ms"]["p50"], st["start_to_reply_ms"]["p99"], st["samples"]],
            ["start -> first device command (INJ SET_PARAMS)", st["start_to_first_command_ms"]["p50"],
             st["start_to_first_command_ms"]["p99"], st["samples"]],
            ["start -> injector armed", st["start_to_armed_ms"]["p50"], st["start_to_armed_ms"]["p99"],
             st["samples"]],
            ["(control poll round trip)", st["poll_round_trip_ms"]["p50"], st["poll_round_trip_ms"]["p99"], ""]]
    lines += ["Latency (ms)", table(["what", "p50", "p99", "n"], rows)]
    return "\n".join(lines)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=6, help="measured rounds per throughput variant (default 6)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per throughput round (default 1)")
    p.add_argument("--latency-seconds", type=float, default=4.0, help="seconds of status requests (default 4)")
    p.add_argument("--samples", type=int, default=40, help="start samples (default 40)")
    p.add_argument("--quick", action="store_true", help="a short smoke run; results not written")
    p.add_argument("--throughput-only", action="store_true", help="only the throughput part; results not written")
    p.add_argument("--no-pin", action="store_true",
                   help="leave CPU placement to the scheduler during the throughput rounds")
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/mqtt.json)")
    args = p.parse_args()
    if args.subscriber:
        _subscriber(args.port)
        return
    if args.echo:
        asyncio.run(_echo(args.port))
        return
    if args.quick:
        args.rounds, args.seconds, args.latency_seconds, args.samples = 1, 0.5, 1.0, 5
    doc = asyncio.run(main(args))
    print(report(doc))
    if not args.quick and not args.throughput_only:
        print(f"\nwritten {write_results('mqtt', doc, args.out)}")


if __name__ == "__main__":
    cli()
