"""Device upkeep seen from the room: a device whose link stays up but which stops
answering (a stalled simulator) is not startable, is shown as such, and comes back when
it answers again; telemetry keeps to its rate."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devicehub.room_api import CommandError

from .conftest import FAST_DEMO, Hub


async def test_a_silent_device_refuses_the_start_then_shows_unresponsive(hub: Hub) -> None:
    await hub.control("epg-1").inject("stall", count=-1)
    for attempt in (1, 2):
        with pytest.raises(CommandError) as err:
            await hub.start("demo", params=FAST_DEMO)
        assert err.value.code == "device_unavailable", err.value
        assert [d["device"] for d in err.value.details] == ["epg-1"]
    assert hub.room.active_session() is None and not (await hub.sim_state("epg-1"))["output_on"]
    # two status reads unanswered in a row: the room shows it, with a medium alarm
    epg = next(d for d in hub.room.status()["devices"] if d["id"] == "epg-1")
    assert epg["connected"] is True and epg["state"] == "unresponsive"
    assert [(a["code"], a["priority"], a["latched"]) for a in hub.room.status()["alarms"]
            if a["source"] == "epg-1"] == [("unresponsive", "medium", False)]

    await hub.control("epg-1").clear("stall")
    runner = await hub.start("demo", params=FAST_DEMO)  # answers again: startable, alarm gone
    assert not [a for a in hub.room.status()["alarms"] if a["source"] == "epg-1"]
    epg = next(d for d in hub.room.status()["devices"] if d["id"] == "epg-1")
    assert epg["state"] != "unresponsive"
    await hub.room.abort(reason="test")
    assert await hub.finish(runner, 10) == "aborted"


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
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 3, (dev, times)
        assert min(gaps) >= 0.9 / running_hz - 0.01, (dev, gaps)
