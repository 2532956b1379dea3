"""Whole sessions of every shipped program, sped up with parameter overrides.

What the record says was delivered must be what the devices themselves say they
delivered (each simulator counts its own totals from zero), every grid point must have
its delivery row with its full dose, the hash chains must verify, and every output must
be off at the end.
"""

from __future__ import annotations

import asyncio

import pytest

from .conftest import FAST_DEMO, Hub

#: per program: overrides that keep a complete session to a few seconds on the
#: simulators. Trains of 10 pulses at 5-10 ms (width 1 ms), about 1 s of light and of
#: field. telogen-effluvium keeps its 4 burst shots of 5 uL per point but runs on its
#: two temple zones only (its whole grid, 90 points x 4 shots, takes about 40 s).
SPEEDUPS = {
    "demo": FAST_DEMO,
    "aga-initial": {"ep": {"period_ms": 5}, "light": {"fluence_j_cm2": 0.005}, "field": {"duration_s": 1}},
    "aga-maintenance": {"ep": {"period_ms": 5}, "light": {"fluence_j_cm2": 0.005}, "field": {"duration_s": 1}},
    "telogen-effluvium": {"inject": {"zones": ["temporal-left", "temporal-right"]},
                          "light": {"fluence_j_cm2": 0.005}, "field": {"duration_s": 1}},
    "alopecia-areata": {"light": {"fluence_j_cm2": 0.005}},
}


def _sum(rows: list[dict], key: str) -> float:
    return sum(float(r["delivered"].get(key, 0.0)) for r in rows)


@pytest.mark.parametrize("program", sorted(SPEEDUPS))
async def test_complete_session_matches_the_devices(hub: Hub, program: str) -> None:
    await hub.auto_trigger(20)
    runner = await hub.start(program, params=SPEEDUPS[program])
    sid = runner.session_id
    assert await hub.finish(runner, 30) == "completed", runner.reason
    prog = runner.program  # the program as it ran, overrides applied

    states = await hub.wait_all_off(timeout=1.0)
    summary = hub.store.read_session(sid)
    assert summary["state"] == "completed" and summary["reason"] is None
    assert summary["program"] == program and summary["params"] == SPEEDUPS[program]
    assert summary["in_flight"] == []
    totals = summary["totals"]
    deliveries = await hub.store.deliveries(sid)

    kinds = {s.kind for s in prog.steps}
    for step in prog.steps:
        if step.kind not in ("injection", "electroporation"):
            continue
        rows = [d for d in deliveries if d["step_id"] == step.id]
        planned_points = [p.id for z in step.zones for p in prog.points(z)]
        # every point of the step has exactly one delivery, done, with its dose
        assert sorted(r["point"] for r in rows) == sorted(planned_points)
        assert all(r["status"] == "done" for r in rows)
        for r in rows:
            if step.kind == "injection":
                shots = round(step.dose_ul / (step.shot_ul or step.dose_ul))
                assert r["delivered"]["shots"] == shots
                assert r["delivered"]["volume_ul"] == pytest.approx(step.dose_ul, rel=0.05)
            else:
                assert r["delivered"]["pulses"] == step.pulses_per_point

    if "injection" in kinds:
        inj = states["inj-1"]
        rows = [d for d in deliveries if d["device"] == "inj-1"]
        assert totals["inj-1"]["shots"] == inj["shots"] == _sum(rows, "shots")
        assert totals["inj-1"]["volume_ul"] == pytest.approx(inj["volume_ul"], abs=1e-6)
        assert _sum(rows, "volume_ul") == pytest.approx(inj["volume_ul"], abs=1e-6)
    if "electroporation" in kinds:
        epg = states["epg-1"]
        rows = [d for d in deliveries if d["device"] == "epg-1"]
        assert totals["epg-1"]["pulses"] == epg["pulses"] == _sum(rows, "pulses")
        # the train reports carry 6 decimals; the record rounds each point to 3
        assert totals["epg-1"]["charge_uc"] == pytest.approx(epg["charge_uC"], rel=1e-6, abs=1e-3)
        assert totals["epg-1"]["energy_mj"] == pytest.approx(epg["energy_mJ"], rel=1e-6, abs=1e-3)
        assert _sum(rows, "charge_uc") == pytest.approx(epg["charge_uC"], abs=1e-3 * len(rows))
        assert _sum(rows, "energy_mj") == pytest.approx(epg["energy_mJ"], abs=1e-3 * len(rows))
    if "led" in kinds:
        led = states["led-1"]
        # LED-1 reports fluence in whole mJ/cm2 and time in 0.1 s
        assert totals["led-1"]["fluence_j_cm2"] * 1000 == pytest.approx(led["fluence_mj_cm2"], abs=1.0)
        assert totals["led-1"]["exposure_s"] == pytest.approx(led["elapsed_s"], abs=0.1)
    if "pemf" in kinds:
        pemf = states["pemf-1"]
        assert totals["pemf-1"]["field_pulses"] == pemf["pulses"]
        assert totals["pemf-1"]["field_time_s"] == pytest.approx(pemf["elapsed_s"], abs=0.1)
        field = next(s for s in prog.steps if s.kind == "pemf")
        assert pemf["elapsed_s"] == pytest.approx(field.duration_s, abs=0.1)
    # devices the program does not use delivered nothing
    unused = {"injection": "inj-1", "electroporation": "epg-1", "led": "led-1", "pemf": "pemf-1"}
    for kind, dev in unused.items():
        if kind not in kinds:
            assert dev not in totals
            st = states[dev]
            assert st.get("pulses", 0) == 0 and st.get("shots", 0) == 0 and st.get("elapsed_s", 0) == 0

    # every step started and done, in the record
    recorded = await hub.store.events(sid)
    names = [e["event"] for e in recorded]
    for step in prog.steps:
        assert sum(1 for e in recorded if e["event"] == "step_done" and e["data"]["step"] == step.id) == 1
    assert names.count("completed") == 1 and "safe_state" not in names and "alarm" not in names
    check = await hub.store.verify(sid)
    assert check.ok, check.message
    assert check.events == len(recorded) and check.deliveries == 2 * len(deliveries)


@pytest.mark.parametrize("how", ["aborted", "completed"])
async def test_the_room_is_free_once_a_session_has_announced_its_end(hub: Hub, how: str) -> None:
    # clinic software starts the next session the moment it sees the last one's final
    # event: the room must not answer busy because the runner was still winding down
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params=FAST_DEMO)
    if how == "aborted":
        await hub.wait_sim("led-1", lambda s: s["output_on"], what="light on")
        abort = asyncio.ensure_future(hub.room.abort(session=runner.session_id))
    await hub.next_event(how, timeout=60)
    nxt = await hub.start("demo", params=FAST_DEMO, patient="P-2")
    assert nxt.session_id != runner.session_id
    if how == "aborted":
        await abort
    await hub.room.abort(session=nxt.session_id)
    assert await hub.finish(nxt) == "aborted"
