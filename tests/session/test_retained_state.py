"""What the retained topics say: the alarms from the first moment, the last session's
state across a restart, both again on ``rebirth``; and how alarms leave the list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from devicehub.alarms import AlarmBoard
from devicehub.bus import Bus, Subscription
from devicehub.models.config import HubConfig

from .conftest import FAST_DEMO, open_room, open_sims


def drain(sub: Subscription) -> list[tuple[str, Any]]:
    """Every message published so far (nothing is awaited: the room published synchronously)."""
    out = []
    while (msg := sub.get_nowait()) is not None:
        out.append((msg.kind, msg.data))
    return out


async def test_alarms_and_the_last_session_are_published_at_open_and_on_republish(tmp_path: Path) -> None:
    async with open_sims(tmp_path / "room") as sim:
        config = HubConfig.load(sim.config_path)
        async with open_room(config) as (_store, room, sub):
            opened = drain(sub)
            assert ("alarms", {"alarms": []}) in opened  # `[]` when none, from the start
            assert not [d for k, d in opened if k == "session.state"]  # no session recorded yet
            runner = await room.start_session(program="demo", patient_ref="P-1", operator="tech",
                                              params=FAST_DEMO, origin="console", preflight_done_by="tech (test)")
            await room.abort(reason="test")
            assert await asyncio.wait_for(runner.wait(), 10) == "aborted"
            sid = runner.session_id

        # the hub again (a new boot): the last session's final state until the next one starts
        async with open_room(config) as (_store, room, sub):
            opened = drain(sub)
            states = [d for k, d in opened if k == "session.state"]
            assert [(s["session"], s["state"]) for s in states] == [(sid, "aborted")]
            assert states[0]["program"] == "demo" and states[0]["ended_at"]
            assert ("alarms", {"alarms": []}) in opened
            room.republish()  # rebirth: every retained state again, the earlier boot's session too
            again = drain(sub)
            kinds = [k for k, _ in again]
            assert kinds.count("session.state") == 1 and kinds.count("alarms") == 1
            assert {d["id"] for k, d in again if k == "device.state"} == {"epg-1", "inj-1", "led-1", "pemf-1"}
            assert next(d for k, d in again if k == "session.state")["session"] == sid


def test_acknowledging_removes_latched_alarms_only() -> None:
    bus = Bus()
    sub = bus.subscribe()
    board = AlarmBoard(bus)
    fault = board.raise_alarm(priority="high", source="epg-1", code="device_fault", text="Overcurrent")
    full = board.raise_alarm(priority="high", source="outbox", code="outbox_full", text="full", latched=False)
    assert fault.latched and not full.latched
    assert board.acknowledge(full.id) == 0  # its cause is still there: it stays listed
    assert board.acknowledge() == 1  # acknowledge all: the latched one
    assert [a["id"] for a in board.active()] == [full.id]
    board.clear("outbox:outbox_full")  # the cause went: now it leaves
    assert board.active() == []
    published = [m.data["alarms"] for m in iter(sub.get_nowait, None)]
    assert published[-1] == [] and len(published) == 4  # raised, raised, acknowledged, cleared
