"""Recoverable faults pause the session; the technician removes the cause, recovers, resumes (issue 13).

shared/mqtt-api.md, "When a device faults: recover or fail". Each recoverable fault of
each device is injected mid-step: every output off, the session paused with its
``recovery``; ``resume`` refused until ``recover``; ``recover`` refused while the cause
is there; then the session completes with the simulators' own totals equal to the
record's, and no point above its plan.
"""

from __future__ import annotations

import pytest

from devicehub.room_api import CommandError

from .conftest import Hub, assert_totals_match
from .test_faults import PARAMS, _mid_step

#: (device, injected fault, device fault code, what makes its cause go away beyond ``clear``)
RECOVERABLE = [
    ("epg-1", "overcurrent", -301), ("epg-1", "open_circuit", -302), ("epg-1", "over_temperature", -303),
    ("inj-1", "occlusion", 6), ("inj-1", "empty", 7), ("inj-1", "cartridge_missing", 8),
    ("led-1", "head_overheat", 1), ("pemf-1", "overheat", 1),
    # LED-1 2 (skin over temperature) is recoverable too, but the hub's own skin limit
    # (limits.runtime.skin_temp_c, a hard limit passed at run time) fails the session first
]

#: a cause that lasts beyond ``clear``: the state the simulator must reach first
COOLED = {
    "head_overheat": lambda s: s["head_temp_c"] < 54.0,
    "overheat": lambda s: s["coil_temp_c"] < 44.0,
}


async def _remove_cause(hub: Hub, dev: str, fault: str) -> None:
    await hub.control(dev).clear(fault)
    if fault == "empty":
        await hub.control(dev).set("reservoir_ul", 5000)  # a new vial
    if fault in COOLED:
        await hub.wait_sim(dev, COOLED[fault], timeout=60, what=f"{dev} cooled")


def _points_within_plan(rows: list[dict], dose_ul: float, pulses: int) -> None:
    per_point: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        if r["point"] is None or r["delivered"] is None:
            continue
        p = per_point.setdefault((r["step_id"], r["point"]), {})
        for k in ("volume_ul", "pulses"):
            p[k] = p.get(k, 0.0) + float(r["delivered"].get(k, 0.0))
    for (step, point), got in per_point.items():
        if step == "inject":
            assert got["volume_ul"] <= dose_ul * 1.05 + 0.5, (point, got)
        if step == "ep":
            assert got["pulses"] <= pulses, (point, got)


@pytest.mark.parametrize("dev,fault,code", RECOVERABLE, ids=[f"{d}-{f}" for d, f, _ in RECOVERABLE])
async def test_recoverable_fault_pauses_then_recovers(hub: Hub, dev: str, fault: str, code: int) -> None:
    await hub.auto_trigger(20)
    params = PARAMS.get(dev, PARAMS["other"])
    runner = await hub.start("demo", params=params)
    sid = runner.session_id
    await _mid_step(hub, dev)
    await hub.control(dev).inject(fault, count=-1)

    paused = await hub.next_event("paused", timeout=15)
    assert paused["reason"] == "fault", paused
    recovery = paused["recovery"]
    assert (recovery["device"], recovery["code"]) == (dev, code) and recovery["hint"] and "recover" in recovery["hint"]
    assert runner.state == "paused" and runner.snapshot()["recovery"] == recovery  # the retained state too
    safe = next(e for e in hub.events if e["event"] == "safe_state")
    assert safe["trigger"] == f"fault:{dev}"
    states = await hub.wait_all_off()
    assert not any(s["output_on"] for s in states.values())
    assert any(a["priority"] == "high" and a["latched"] and a["source"] == dev for a in hub.room.alarms.active())

    # no resume before recovery, over MQTT or at the console
    for origin, by in (("mqtt", None), ("console", "tech")):
        with pytest.raises(CommandError) as err:
            await hub.room.resume(session=sid, origin=origin, by=by)
        assert err.value.code == "invalid_state"
    # recover refused while the cause is still there: the session stays paused
    with pytest.raises(CommandError) as err:
        await hub.room.recover(session=sid, by="tech")
    assert err.value.code == "device_unavailable" and err.value.details[0]["device"] == dev
    assert runner.state == "paused" and runner.recovery == recovery

    await _remove_cause(hub, dev, fault)
    reply = await hub.room.recover(session=sid, by="tech")
    assert reply["recovered"] and reply["state"] == "paused"
    recovered = await hub.next_event("recovered")
    assert recovered == {**recovered, "device": dev, "code": code, "by": "tech"}
    assert runner.recovery is None and runner.snapshot()["recovery"] is None
    await hub.room.resume(session=sid, origin="console", by="tech")
    assert await hub.finish(runner, 60) == "completed"

    summary = hub.store.read_session(sid)
    assert summary["in_flight"] == []
    assert_totals_match(summary["totals"], await hub.sim_states())
    dose = 20.0
    pulses = int(params["ep"].get("pulses_per_point", 10))
    _points_within_plan(await hub.store.deliveries(sid), dose, pulses)


async def test_a_fourth_recoverable_fault_fails_the_session(hub: Hub) -> None:
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params={"ep": {"pulses_per_point": 20, "period_ms": 20},
                                             "light": {"duration_s": 1}, "field": {"duration_s": 1}})
    sid = runner.session_id
    await hub.next_event("train_done", timeout=30)
    for n in range(4):
        await hub.wait_sim("epg-1", lambda s: s["state"] == "running", what="EPG mid-train")
        await hub.control("epg-1").inject("open_circuit", count=-1)
        if n == 3:
            break
        await hub.next_event("paused", timeout=15)
        await hub.control("epg-1").clear("open_circuit")
        await hub.room.recover(session=sid, by="tech")
        await hub.room.resume(session=sid, origin="console", by="tech")
    assert await hub.finish(runner, 30) == "failed"
    assert hub.store.read_session(sid)["reason"] == "too_many_faults"
    await hub.control("epg-1").clear("open_circuit")
    assert_totals_match(hub.store.read_session(sid)["totals"], await hub.sim_states())
