"""Device upkeep seen from the room: a device whose link stays up but which stops
answering (a stalled simulator) is not startable, is shown as such, and comes back when
it answers again; telemetry keeps to its rate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from devicehub.models.config import HubConfig
from devicehub.room_api import CommandError
from simulators.simroom import SimulatedRoom
from simulators.control import ControlClient
from tests.mqtt import until

from .conftest import FAST_DEMO, Hub, open_room


async def test_a_silent_device_refuses_the_start_then_shows_unresponsive(tmp_path: Path) -> None:
    sim = SimulatedRoom(tmp_path / "room", extra={"telemetry": {"running_hz": 2, "idle_hz": 10}})
    await asyncio.to_thread(sim.start)
    try:
        config = HubConfig.load(sim.config_path)
        async with open_room(config) as (_store, room, _sub), ControlClient(sim.sims["epg-1"].control) as epg_ctl:
            def epg() -> dict[str, Any]:
                return next(d for d in room.status()["devices"] if d["id"] == "epg-1")

            def epg_alarms() -> list[tuple[str, str, bool]]:
                return [(a["code"], a["priority"], a["latched"]) for a in room.status()["alarms"]
                        if a["source"] == "epg-1"]

            await epg_ctl.inject("stall", count=-1)
            # a start finds it silent at once, before any poll has
            with pytest.raises(CommandError) as err:
                await room.start_session(program="demo", patient_ref="P-1", operator="tech", params=FAST_DEMO,
                                         origin="console", preflight_done_by="tech (test)")
            assert err.value.code == "device_unavailable", err.value
            assert [d["device"] for d in err.value.details] == ["epg-1"]
            assert room.active_session() is None and not (await epg_ctl.state())["output_on"]
            # two polls unanswered in a row: shown unresponsive, with a medium alarm
            await until(lambda: epg()["state"] == "unresponsive", what="epg-1 shown unresponsive")
            assert epg()["connected"] is True and epg_alarms() == [("unresponsive", "medium", False)]

            await epg_ctl.clear("stall")
            await until(lambda: epg()["state"] != "unresponsive" and not epg_alarms(), what="epg-1 back")
            runner = await room.start_session(program="demo", patient_ref="P-1", operator="tech",
                                              params=FAST_DEMO, origin="console", preflight_done_by="tech (test)")
            await room.abort(reason="test")
            assert await asyncio.wait_for(runner.wait(), 10) == "aborted"
    finally:
        await asyncio.to_thread(sim.stop)


async def test_telemetry_keeps_to_its_rate_while_a_session_runs(hub: Hub) -> None:
    # the contract: readings at 2 Hz while a session runs; the early polls after a train
    # or an exposure ends update the device state but send no extra reading
    seen: dict[str, list[float]] = {}

    def on_bus(msg: Any) -> None:
        if msg.kind == "device.telemetry":
            seen.setdefault(msg.device, []).append(time.monotonic())

    remove = hub.room.bus.add_listener(on_bus)
    try:
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST_DEMO)
        assert await hub.finish(runner, 30) == "completed", runner.reason
    finally:
        remove()
    running_hz = hub.config.telemetry.running_hz
    for dev, times in seen.items():
        assert len(times) >= 3, (dev, times)
        # no extra readings: a count over the whole span (one late reading shortens the gap
        # after it, so single gaps are no measure on a loaded machine)
        assert len(times) - 1 <= (times[-1] - times[0]) * running_hz + 1, (dev, times)
