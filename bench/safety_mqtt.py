"""An abort over MQTT, end to end: publish -> every simulator output off.

The room's daemon (``devicehub serve``) runs as its own process on four simulated
devices, which run in a third process (``python -m simulators room``: they share no
interpreter lock with this one or the hub), with a private Mosquitto (TCP_NODELAY on
both ends). Each round starts a
session at the console whose program is one long LED + PEMF exposure side by side,
waits until both simulators report their output on, then a clinic client publishes
``cmd/abort`` (QoS 1, MQTT 5) and the round is timed from ``time.monotonic()`` just
before the publish to the last simulator's ``output_changed_at`` (the simulators stamp
it at the change itself, on the same CLOCK_MONOTONIC). The baseline in the same run is
the bare broker: a raw aiomqtt publish -> a raw subscriber's receipt on the same broker,
so the ratio shows what the hub and the devices add to the message's own trip. Per
round it also keeps each emitter's own lag and the hub's ``safe_state_ms`` (from the
request's arrival to every device confirmed off, by the hub's clock), which split the
trip into broker + hub + device.

    .venv/bin/python bench/safety_mqtt.py --rounds 100     # this part alone

Run twice: unloaded, and with both CPUs kept busy by other processes (one busy loop per
CPU, bounded in time). Targets: p99 < 5 ms unloaded, < 20 ms loaded.
"""

from __future__ import annotations

import asyncio
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

from bench.common import summary, write_results  # noqa: E402
from bench.soaklib.procs import Simulators, write_hub_config  # noqa: E402
from devicehub.local_console import ConsoleClient  # noqa: E402
from simulators.control import ControlClient  # noqa: E402
from simulators.devsupport.clinic import NODELAY  # noqa: E402
from simulators.devsupport.processes import hub_in  # noqa: E402
from simulators.devsupport.waiting import poll  # noqa: E402
from simulators.local_broker import LocalBroker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

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


class Room:
    """The simulators (a child process), the hub's config and its console socket."""

    def __init__(self, directory: Path, sims: Simulators, config: Path) -> None:
        self.directory = directory
        self.sims = sims
        self.config_path = config
        self.site, self.room = "bench", "room-1"
        self._controls: dict[str, ControlClient] = {}

    async def states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for dev in DEVICES:
            if dev not in self._controls:
                self._controls[dev] = ControlClient(self.sims.controls[dev])
            out[dev] = await self._controls[dev].state()
        return out

    async def close(self) -> None:
        for c in self._controls.values():
            await c.close()
        self._controls.clear()


async def _until(check: Any, timeout: float = 30.0) -> Any:
    return await poll(check, timeout=timeout, interval=0.01, what="the room's state")


def _client(port: int, ident: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=ident, protocol=aiomqtt.ProtocolVersion.V5,
                          socket_options=(NODELAY,))


async def abort_rounds(room: Room, port: int, rounds: int) -> dict[str, Any]:
    root = f"devicehub/v1/{room.site}/{room.room}"
    latencies: list[float] = []
    per_device: dict[str, list[float]] = {"led-1": [], "pemf-1": []}
    hub_ms: list[float] = []
    async with _client(port, f"bench-clinic-{uuid.uuid4().hex[:6]}") as clinic, \
            ConsoleClient(room.directory / "devicehub.sock") as chair:
        await clinic.subscribe(f"{root}/sessions/+/events", qos=1)
        finals: dict[str, dict[str, Any]] = {}

        async def follow() -> None:
            async for msg in clinic.messages:
                env = orjson.loads(msg.payload)
                data = env.get("data") or {}
                if data.get("event") in ("aborted", "completed", "failed"):
                    finals[env.get("session")] = data

        follower = asyncio.ensure_future(follow())
        for i in range(rounds):
            started = await chair.request("start", program="bench-exposure", patient_ref=f"B-{i}",
                                          operator="bench", preflight_done_by="bench")
            if not started.get("ok"):
                raise RuntimeError(f"start refused: {started}")

            async def exposing() -> bool:
                s = await room.states()
                return s["led-1"]["output_on"] and s["pemf-1"]["output_on"]

            await _until(exposing)
            request_id = uuid.uuid4().hex
            body = orjson.dumps({"request_id": request_id, "session": started["data"]["session"]})
            t_sent = time.monotonic()
            await clinic.publish(f"{root}/cmd/abort", body, qos=1)

            # nothing polls the simulators while the abort is under way (their replies to a
            # poll would compete with the hub's off commands): the final event, then one read
            sid = started["data"]["session"]
            final = await _until(lambda: _final_seen(finals, sid))
            states = await room.states()
            on = [d for d, v in states.items() if v["output_on"]]
            if on:
                raise RuntimeError(f"round {i}: {on} still on after the session's final event")
            for d in per_device:
                per_device[d].append((states[d]["output_changed_at"] - t_sent) * 1000.0)
            latencies.append(max(per_device[d][-1] for d in per_device))
            if isinstance(final.get("safe_state_ms"), (int, float)):  # the hub's clock
                hub_ms.append(float(final["safe_state_ms"]))
        follower.cancel()
    return {"to_outputs_off_ms": summary(latencies),
            "per_device_ms": {d: summary(v) for d, v in per_device.items()},
            "hub_safe_state_ms": summary(hub_ms) if hub_ms else None}


async def _final_seen(finals: dict[str, dict[str, Any]], sid: str) -> dict[str, Any] | None:
    return finals.get(sid)


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
        sims = Simulators(directory, seed=1).start()
        try:
            config = write_hub_config(directory, sims.endpoints, broker.port, "bench")
            doc = yaml.safe_load(config.read_text())
            doc.update(programs=str(_exposure_program(directory)), remote_confirmation=False)
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            room = Room(directory, sims, config)
            async with hub_in(room) as hub_proc:
                await hub_proc.astart()
                for label in ("unloaded", "loaded"):
                    load = cpus_loaded(600.0) if label == "loaded" else contextlib.nullcontext()
                    with load:
                        hub = await abort_rounds(room, broker.port, rounds)
                        raw = await broker_rounds(broker.port, rounds)
                    total = hub["to_outputs_off_ms"]
                    results[label] = {"abort_publish_to_outputs_off_ms": total, "raw_publish_to_receipt_ms": raw,
                                      "per_device_ms": hub["per_device_ms"],
                                      "hub_safe_state_ms": hub["hub_safe_state_ms"],
                                      "ratio_p50": round(total["p50"] / raw["p50"], 2) if raw["p50"] else None,
                                      "target_p99_ms": TARGET_P99_MS[label],
                                      "met": total["p99"] < TARGET_P99_MS[label]}
            await room.close()
        finally:
            sims.stop()
    return results


def main() -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    results = {"benchmark": "safety-abort-mqtt", "rounds": args.rounds, **asyncio.run(measure(args.rounds))}
    print(json.dumps(results, indent=1))
    if not args.no_write:
        print(f"results: {write_results('safety-abort-mqtt', results, None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
