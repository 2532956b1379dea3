"""Recoverable faults pause the session; the technician fixes the cause, recovers, resumes.

For each recoverable fault of each device (shared/mqtt-api.md, "recover or fail"): injected
while its device delivers, the session pauses with its recovery data and every simulator
output off; a resume from afar is refused; a recover while the cause is still there is
refused; with the cause removed through the simulator's control port the device clears,
the session resumes and completes, and the simulators' own delivered totals equal the
record's and the program's plan, never above it per point.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devicehub.report.collect import dose_steps
from devicehub.room_api import CommandError

from .conftest import DEVICES, Hub, open_hub, write_limits
from .test_faults import DELIVERING, _mid_step
from tests.totals_check import assert_totals_match

#: what each simulator counts, in the record's quantities (record key, simulator key)
COUNTERS = {
    "epg-1": (("pulses", "pulses"), ("charge_uc", "charge_uC")),
    "inj-1": (("volume_ul", "volume_ul"), ("shots", "shots")),
    "led-1": (("fluence_j_cm2", "fluence_mj_cm2"),),
    "pemf-1": (("field_pulses", "pulses"),),
}
SCALE = {("led-1", "fluence_j_cm2"): 1000.0}  # J/cm2 in the record, mJ/cm2 in the simulator

#: per device at fault: long enough to inject while it delivers
PARAMS = {
    "epg-1": {"ep": {"pulses_per_point": 20, "period_ms": 20}, "light": {"duration_s": 1}, "field": {"duration_s": 1}},
    "other": {"ep": {"period_ms": 10}, "light": {"duration_s": 3}, "field": {"duration_s": 3}},
}

#: fault -> (device code, how the technician removes the cause through the control port)
RECOVERABLE = [
    ("epg-1", "overcurrent", -301, []),
    ("epg-1", "open_circuit", -302, []),
    ("epg-1", "over_temperature", -303, []),
    ("inj-1", "occlusion", 6, [("wait", {"pressure_kpa_below": 100.0})]),  # the new cartridge purged
    ("inj-1", "empty", 7, [("set", {"name": "reservoir_ul", "value": 10000})]),
    ("inj-1", "cartridge_missing", 8, []),
    ("led-1", "head_overheat", 1, []),
    ("led-1", "skin_overheat", 2, []),
    ("pemf-1", "overheat", 1, []),
]

async def _delivered(hub: Hub) -> dict[str, dict[str, float]]:
    states = await hub.sim_states()
    return {d: {rec: float(states[d][sim]) for rec, sim in COUNTERS[d]} for d in DEVICES}


async def _recover_when_cleared(hub: Hub, sid: str, dev: str) -> dict[str, Any]:
    """Recover at the chair once the device can clear (a hot part cools on the simulator's clock)."""
    async def attempt() -> dict[str, Any] | None:
        try:
            return await hub.room.recover(session=sid, by="tech")
        except CommandError as exc:
            assert exc.code == "invalid_state" and dev in exc.message, exc.to_dict()
            return None

    from .conftest import poll

    return await poll(attempt, timeout=60.0, interval=0.2, what=f"{dev} clearing its fault")


@pytest.mark.parametrize("dev,fault,code,fix", RECOVERABLE, ids=[f"{d}-{f}" for d, f, _, _ in RECOVERABLE])
async def test_recoverable_fault_pauses_then_recovers_and_completes(tmp_path: Path, dev: str, fault: str, code: int,
                                                                     fix: list[tuple[str, dict]]) -> None:
    limits = None
    if fault == "skin_overheat":
        # the clinic's own hard limit on skin temperature (41 degC, as the LED-1's) fails a
        # session before the device faults; above it, the device's fault 2 is what pauses
        limits = write_limits(tmp_path / "limits.yaml",
                              {"runtime": {"skin_temp_c": {"soft": 44, "hard": 45, "unit": "degC"}}})
    async with open_hub(tmp_path / "room", limits=limits) as hub:
        await _fault_recover_complete(hub, dev, fault, code, fix)


async def _fault_recover_complete(hub: Hub, dev: str, fault: str, code: int, fix: list[tuple[str, dict]]) -> None:
    before = await _delivered(hub)
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params=PARAMS.get(dev, PARAMS["other"]))
    sid = runner.session_id
    await _mid_step(hub, dev)
    await hub.control(dev).inject(fault, count=-1)

    paused = await hub.next_event("paused", timeout=15)
    assert paused["reason"] == "fault"
    recovery = paused["recovery"]
    assert recovery["device"] == dev and recovery["code"] == code and recovery["hint"] and recovery["text"]
    assert runner.snapshot()["recovery"] == recovery
    safe = [e for e in hub.events if e["event"] == "safe_state"][-1]  # recorded before "paused"
    assert safe["trigger"] == f"fault:{dev}" and all(v == "off" for v in safe["devices"].values()), safe
    await hub.wait_all_off(timeout=3.0)
    assert any(a["priority"] == "high" and a["latched"] and a["source"] == dev for a in hub.room.status()["alarms"])

    # from afar, a resume before the recovery is refused; so is a recover while the cause is there
    with pytest.raises(CommandError) as refused:
        await hub.room.resume(session=sid, origin="mqtt")
    assert refused.value.code == "invalid_state"
    with pytest.raises(CommandError) as still:
        await hub.room.recover(session=sid, by="tech")
    assert still.value.code == "invalid_state" and recovery["hint"] in still.value.message
    assert runner.state == "paused"

    await hub.control(dev).clear(fault)
    for op, fields in fix:
        if op == "wait":  # the plunger's pressure falls on the simulator's own clock
            await hub.wait_sim(dev, lambda st: st["pressure_kpa"] < fields["pressure_kpa_below"], timeout=60,
                               interval=0.1, what="the plunger pressure falling")
        else:
            await hub.control(dev).call(op, **fields)
    recovered = await _recover_when_cleared(hub, sid, dev)
    assert recovered["recovered"]["device"] == dev
    event = await hub.next_event("recovered")
    assert event["device"] == dev and event["code"] == code and event["by"] == "tech"
    assert runner.recovery is None

    await hub.room.resume(session=sid, origin="console", by="tech")
    try:
        final = await hub.finish(runner, 60)
    except TimeoutError:
        raise AssertionError(f"not ended after the resume: {runner.state}, {[(e['event'], e['data']) for e in (await hub.store.events(sid))][-8:]}") from None
    assert final == "completed", hub.store.read_session(sid).get("reason")

    # the devices' own counts equal the record's, which equal the plan; no point above its dose
    after = await _delivered(hub)
    summary = hub.store.read_session(sid)
    totals = summary["totals"]
    for d in DEVICES:
        for rec, _sim in COUNTERS[d]:
            device_count = (after[d][rec] - before[d][rec]) / SCALE.get((d, rec), 1.0)
            assert totals[d][rec] == pytest.approx(device_count, rel=0.02, abs=0.6), (d, rec, totals[d], device_count)
    assert summary["in_flight"] == []
    per_point: dict[tuple[str, str], float] = {}
    for row in summary.get("deliveries", []):
        if row.get("step") == "inject":
            key = (row["step"], row["point"])
            per_point[key] = per_point.get(key, 0.0) + float((row.get("delivered") or {}).get("volume_ul", 0.0))
    assert all(v <= 20 * 1.05 + 1e-6 for v in per_point.values()), per_point
    assert (await hub.store.verify(sid)).ok
    if dev == "inj-1":  # the report's dose map: the point the fault cut shows once, with its total
        deliveries = await hub.store.deliveries(sid)
        rows_per_point = Counter(d["point"] for d in deliveries if d["step_id"] == "inject")
        assert any(n > 1 for n in rows_per_point.values()), rows_per_point
        injection = next(s for s in dose_steps(runner.program_json, deliveries, await hub.store.events(sid))
                         if s.kind == "injection")
        assert len(injection.cells) == len(rows_per_point) and all(c.state == "full" for c in injection.cells)


async def test_a_fourth_recoverable_fault_fails_the_session(hub: Hub) -> None:
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params={"light": {"duration_s": 1}, "field": {"duration_s": 1}})
    sid = runner.session_id
    for n in range(3):
        await hub.wait_sim("inj-1", DELIVERING["inj-1"], what="the gun armed")
        await hub.control("inj-1").inject("cartridge_missing", count=-1)
        await hub.next_event("paused", timeout=15)
        await hub.control("inj-1").clear("cartridge_missing")
        await _recover_when_cleared(hub, sid, "inj-1")
        await hub.room.resume(session=sid, origin="console", by="tech")
    await hub.wait_sim("inj-1", DELIVERING["inj-1"], what="the gun armed")
    await hub.control("inj-1").inject("cartridge_missing", count=-1)
    assert await hub.finish(runner, 15) == "failed"
    assert hub.store.read_session(sid)["reason"] == "too_many_faults"
    await hub.wait_all_off(timeout=3.0)


async def test_led_applicator_too_far_at_the_side_by_side_start_pauses_then_completes(hub: Hub) -> None:
    before = await hub.sim_states()
    await hub.auto_trigger(20)
    await hub.control("led-1").set("distance_mm", 45.0)  # the applicator lifted off the scalp
    runner = await hub.start("demo", params={"light": {"duration_s": 2}, "field": {"duration_s": 2},
                                             "ep": {"period_ms": 10}})
    sid = runner.session_id
    paused = await hub.next_event("paused", timeout=60)
    assert paused["reason"] == "fault" and paused["recovery"]["device"] == "led-1" and paused["recovery"]["code"] == 4
    await hub.wait_all_off(timeout=3.0)
    with pytest.raises(CommandError):
        await hub.room.recover(session=sid, by="tech")  # still too far
    await hub.control("led-1").set("distance_mm", 10.0)
    await _recover_when_cleared(hub, sid, "led-1")
    await hub.room.resume(session=sid, origin="console", by="tech")
    assert await hub.finish(runner, 60) == "completed"
    totals = hub.store.read_session(sid)["totals"]
    assert totals["led-1"]["exposure_s"] <= 2.0 + 0.1 and totals["pemf-1"]["field_time_s"] <= 2.0 + 0.1
    # the refused LED start delivered nothing; the record equals what the devices counted
    assert_totals_match(totals, await hub.sim_states(), before)


@pytest.mark.parametrize("cause,code,fix", [
    ("cartridge_missing", 8, None),
    ("reservoir_empty", 7, ("reservoir_ul", 10000)),
])
async def test_a_gun_that_will_not_arm_from_idle_pauses_the_session_then_completes(
        hub: Hub, cause: str, code: int, fix: tuple[str, float] | None) -> None:
    """The cause is there before the gun is armed: the gun stays idle with no fault latched
    (it latches 7/8 only while armed) and refuses ARM (NAK 4). A cause the technician
    removes at the chair pauses the session as the fault would (shared/mqtt-api.md,
    "recover or fail"); it failed it ``device_error:inj-1`` before (the soak's notes)."""
    before = await hub.sim_states()
    await hub.auto_trigger(20)
    if cause == "cartridge_missing":
        await hub.control("inj-1").inject("cartridge_missing", count=-1)
    else:
        await hub.control("inj-1").set("reservoir_ul", 0)
    runner = await hub.start("demo", params={"ep": {"period_ms": 10}, "light": {"duration_s": 1},
                                             "field": {"duration_s": 1}})
    sid = runner.session_id
    paused = await hub.next_event("paused", timeout=30)
    assert paused["reason"] == "fault", paused
    assert (paused["recovery"]["device"], paused["recovery"]["code"]) == ("inj-1", code), paused["recovery"]
    assert (await hub.sim_state("inj-1"))["state"] == "idle"
    if fix is None:
        await hub.control("inj-1").clear(cause)
    else:
        await hub.control("inj-1").set(*fix)
    await _recover_when_cleared(hub, sid, "inj-1")
    await hub.room.resume(session=sid, origin="console", by="tech")
    assert await hub.finish(runner, 60) == "completed"
    summary = hub.store.read_session(sid)
    assert summary["in_flight"] == []
    assert_totals_match(summary["totals"], await hub.sim_states(), before)
    assert (await hub.store.verify(sid)).ok
