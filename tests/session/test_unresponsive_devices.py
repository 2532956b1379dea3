"""A device whose link stays up but which stops answering (a stalled simulator) is not
startable, is shown as such, and comes back when it answers again."""

from __future__ import annotations

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
