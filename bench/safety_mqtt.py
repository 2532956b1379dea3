"""An abort over MQTT, end to end: publish -> every simulator output off.

The room's daemon (``devicehub serve``) runs as its own process on four simulated
devices, with a private Mosquitto (TCP_NODELAY on both ends). Each round starts a
session at the console whose program is one long LED + PEMF exposure side by side,
waits until both simulators report their output on, then a clinic client publishes
``cmd/abort`` (QoS 1, MQTT 5) and the round is timed from ``time.monotonic()`` just
before the publish to the last simulator's ``output_changed_at`` (the simulators stamp
it at the change itself, on the same CLOCK_MONOTONIC). The baseline in the same run is
the bare broker: a raw aiomqtt publish -> a raw subscriber's receipt on the same broker,
so the ratio shows what the hub and the devices add to the message's own trip.

Run twice: unloaded, and with both CPUs kept busy by other processes (one busy loop per
CPU, bounded in time). Targets: p99 < 5 ms unloaded, < 20 ms loaded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from devicehub.local_console import ConsoleClient  # noqa: E402
from simulators.devsupport.clinic import NODELAY, sim_states  # noqa: E402
from simulators.devsupport.processes import hub_in  # noqa: E402
from simulators.devsupport.waiting import poll  # noqa: E402
from simulators.local_broker import LocalBroker  # noqa: E402
from simulators.simroom import ROOT, SimulatedRoom  # noqa: E402

TARGET_P99_MS = {"unloaded": 5.0, "loaded": 20.0}
DEVICES = ("epg-1", "inj-1", "led-1", "pemf-1")


def _exposure_program(directory: Path) -> Path:
    """The demo's light + field, ten minutes long, alone: outputs on within ms of a start."""
    demo = yaml.safe_load((ROOT / "configs/programs/demo.yaml").read_text())
    demo.update(id="bench-exposure", title="Bench - LED and PEMF side by side")
    demo["steps"] = [s for s in demo["steps"] if s["id"] in ("light", "field")]
    for s in demo["steps"]:
        s["duration_s"] = 600
    programs = directory / "programs"
    programs.mkdir(parents=True, exist_ok=True)
    (programs / "bench-exposure.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    return programs


def _burn(until: float) -> None:
    while time.monotonic() < until:
        pass


@contextlib.contextmanager
def cpus_loaded(seconds: float) -> Iterator[None]:
    """Every CPU kept busy by another process, for at most ``seconds``."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_burn, args=(time.monotonic() + seconds,), daemon=True)
             for _ in range(os.cpu_count() or 2)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


async def _until(check: Any, timeout: float = 30.0) -> Any:
    # poll interval: the simulators share this process's GIL
    return await poll(check, timeout=timeout, interval=0.025, what="the room's state")


def _client(port: int, ident: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=ident, protocol=aiomqtt.ProtocolVersion.V5,
                          socket_options=(NODELAY,))


async def abort_rounds(room: SimulatedRoom, port: int, rounds: int) -> dict[str, Any]:
    root = f"devicehub/v1/{room.site}/{room.room}"
    latencies: list[float] = []
    async with _client(port, f"bench-clinic-{uuid.uuid4().hex[:6]}") as clinic, \
            ConsoleClient(room.directory / "devicehub.sock") as chair:
        for i in range(rounds):
            started = await chair.request("start", program="bench-exposure", patient_ref=f"B-{i}",
                                          operator="bench", preflight_done_by="bench")
            if not started.get("ok"):
                raise RuntimeError(f"start refused: {started}")

            async def exposing() -> bool:
                s = await sim_states(room)
                return s["led-1"]["output_on"] and s["pemf-1"]["output_on"]

            await _until(exposing)
            body = orjson.dumps({"request_id": uuid.uuid4().hex, "session": started["data"]["session"]})
            t_sent = time.monotonic()
            await clinic.publish(f"{root}/cmd/abort", body, qos=1)

            async def all_off() -> dict[str, Any] | None:
                s = await sim_states(room)
                return None if any(v["output_on"] for v in s.values()) else s

            states = await _until(all_off)
            changed = [states[d]["output_changed_at"] for d in ("led-1", "pemf-1")]
            latencies.append((max(changed) - t_sent) * 1000.0)
            # the session's end is recorded before the next start
            await _until(lambda: _final(chair, started["data"]["session"]))
    return summary(latencies)


async def _final(chair: ConsoleClient, sid: str) -> bool:
    reply = await chair.request("session", session=sid)
    return (reply.get("data") or {}).get("state") in ("aborted", "completed", "failed")


async def broker_rounds(port: int, rounds: int) -> dict[str, Any]:
    """Baseline: raw aiomqtt publish -> raw subscriber receipt, QoS 1, same broker."""
    topic = f"bench/raw/{uuid.uuid4().hex[:6]}"
    latencies: list[float] = []
    async with _client(port, "bench-raw-sub") as sub, _client(port, "bench-raw-pub") as pub:
        await sub.subscribe(topic, qos=1)
        messages = sub.messages
        for i in range(rounds):
            t_sent = time.monotonic()
            await pub.publish(topic, b'{"request_id":"%d"}' % i, qos=1)
            await anext(messages)
            latencies.append((time.monotonic() - t_sent) * 1000.0)
    return summary(latencies)


async def measure(rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        directory = Path(tmp)
        room = SimulatedRoom(directory / "room", site="bench", mqtt_port=broker.port,
                             programs=_exposure_program(directory))
        with room:
            async with hub_in(room) as hub_proc:
                await hub_proc.astart()
                for label in ("unloaded", "loaded"):
                    load = cpus_loaded(600.0) if label == "loaded" else contextlib.nullcontext()
                    with load:
                        hub = await abort_rounds(room, broker.port, rounds)
                        raw = await broker_rounds(broker.port, rounds)
                    results[label] = {"abort_publish_to_outputs_off_ms": hub, "raw_publish_to_receipt_ms": raw,
                                      "ratio_p50": round(hub["p50"] / raw["p50"], 2) if raw["p50"] else None,
                                      "target_p99_ms": TARGET_P99_MS[label],
                                      "met": hub["p99"] < TARGET_P99_MS[label]}
    return results
