"""An alarm recorded in a session's record is that session's alarm (issue 11).

shared/mqtt-api.md, "Alarms": an alarm is ``{id, ..., since, latched, session?}`` and a
latched one stays listed until acknowledged at the console; "Session events": the
``alarm`` event is the alarm. So when session 1 failed by an LED-1 skin overheat, its
latched alarms left unacknowledged, the technician cleared the cause and the device's
latched fault, and session 2 then fails by the same fault, session 2's record holds
session 2's alarms: its id, raised after session 2 was created, new alarm ids. Session
1's alarms are never copied into it, and they stay listed until acknowledged.
"""

from __future__ import annotations

from typing import Any

from devicehub.alarms import AlarmBoard
from devicehub.bus import Bus
from devicehub.control.table import Caller, dispatch, validate
from devicehub.timefmt import parse_ts

from .conftest import Hub, poll
from .test_faults import PARAMS, _mid_step


async def _fail_by_skin_overheat(hub: Hub) -> str:
    """A session failed by an LED-1 skin overheat injected while the light is on; its id."""
    runner = await hub.start("demo", params=PARAMS["other"])
    await _mid_step(hub, "led-1")
    await hub.control("led-1").inject("skin_overheat", count=-1)
    assert await hub.finish(runner, 15) == "failed", runner.reason
    await hub.wait_sim("led-1", lambda s: s["state"] == "fault", what="led-1 latched in fault")
    return runner.session_id


async def _clear_fault_at_the_console(hub: Hub, dev: str) -> dict[str, Any]:
    """The technician removes the cause, then the console's ``clear_fault`` until the device clears
    (the skin cools on the simulator's own clock)."""
    await hub.control(dev).clear()
    caller = Caller(origin="console")

    async def attempt() -> dict[str, Any] | None:
        request = validate("clear_fault", "console", {"device": dev, "by": "tech"})
        result = await dispatch(hub.room, "clear_fault", request, caller)
        return result if result["cleared"] else None

    return await poll(attempt, timeout=30.0, interval=0.1, what=f"{dev} cleared at the console")


async def _alarm_events(hub: Hub, sid: str) -> list[dict[str, Any]]:
    return [e["data"] for e in await hub.store.events(sid) if e["event"] == "alarm"]


async def test_a_second_session_failed_by_the_same_fault_records_its_own_alarms(hub: Hub) -> None:
    await hub.auto_trigger(20)
    sid1 = await _fail_by_skin_overheat(hub)
    first = await _alarm_events(hub, sid1)
    assert any(a["source"] == "led-1" and a["priority"] == "high" for a in first), first
    assert all(a["session"] == sid1 for a in first), first
    first_ids = {a["id"] for a in first}
    # nobody acknowledges them: session 1's latched alarms stay listed
    standing = {a["id"] for a in hub.room.status()["alarms"] if a.get("session") == sid1 and a["latched"]}
    assert standing, hub.room.status()["alarms"]

    await _clear_fault_at_the_console(hub, "led-1")

    runner = await hub.start("demo", params=PARAMS["other"])
    sid2 = runner.session_id
    await _mid_step(hub, "led-1")
    await hub.control("led-1").inject("skin_overheat", count=-1)
    assert await hub.finish(runner, 15) == "failed", runner.reason

    created = parse_ts(next(e for e in await hub.store.events(sid2) if e["event"] == "created")["ts"])
    second = await _alarm_events(hub, sid2)
    assert any(a["source"] == "led-1" and a["priority"] == "high" for a in second), second
    for alarm in second:
        assert alarm["session"] == sid2, (sid1, alarm)
        assert alarm["id"] not in first_ids, (first_ids, alarm)
        assert parse_ts(alarm["since"]) >= created, (created, alarm)
    assert (await hub.store.verify(sid2)).ok

    # both sessions' latched alarms are listed until acknowledged, each with its own session
    listed = hub.room.status()["alarms"]
    assert standing <= {a["id"] for a in listed}, listed
    assert {a["id"] for a in second if a["latched"]} <= {a["id"] for a in listed}, (second, listed)


def test_one_cause_is_one_alarm_per_session_on_the_board() -> None:
    board = AlarmBoard(Bus())
    first = board.raise_alarm(priority="high", source="led-1", code="device_fault", text="skin", session="S1")
    assert board.raise_alarm(priority="high", source="led-1", code="device_fault", text="skin", session="S1") is first
    again = board.raise_alarm(priority="high", source="led-1", code="device_fault", text="skin", session="S2")
    assert again.id != first.id and again.session == "S2"
    board.clear("led-1:device_fault")  # the device cleared: latched ones stay until acknowledged
    assert [a["id"] for a in board.active()] == [first.id, again.id]
    # an unlatched cause still standing when the next session raises it: listed once, as the new session's
    soft = board.raise_alarm(priority="medium", source="led-1", code="skin_temperature", text="warm", session="S1",
                             latched=False)
    warm = board.raise_alarm(priority="medium", source="led-1", code="skin_temperature", text="warm", session="S2",
                             latched=False)
    assert warm.id != soft.id and [a["id"] for a in board.active() if a["priority"] == "medium"] == [warm.id]
    board.clear("led-1:skin_temperature")
    assert board.acknowledge(first.id) == 1 and [a["id"] for a in board.active()] == [again.id]
