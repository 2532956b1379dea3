"""Limits, at the start and while a session runs.

At the start: a soft limit is passed only with a recorded acknowledgement naming it; a
hard limit never, acknowledged or not, and every refusal is recorded. While running:
the runner bounds what is delivered by what it counts from the devices' own reports,
so a gun that delivers more than it was told is stopped (the point's dose, the
session's volume cap), and the hub's skin temperature limit stops the session.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devicehub.models.limits import fmt_quantity
from devicehub.room_api import CommandError

from .conftest import DEVICES, FAST_DEMO, Hub, open_hub, write_limits

# ---------------------------------------------------------------------------- at the start


async def test_soft_limit_refused_without_acknowledgement(hub: Hub) -> None:
    params = {**FAST_DEMO, "inject": {"depth_mm": 3.5}, "ep": {"pulses_per_point": 60, "period_ms": 5}}
    with pytest.raises(CommandError) as err:
        await hub.start("demo", params=params)
    assert err.value.code == "soft_limit"
    assert sorted(d["id"] for d in err.value.details) == ["ep.pulses_per_point", "inject.depth_mm"]
    depth = next(d for d in err.value.details if d["id"] == "inject.depth_mm")
    assert (depth["value"], depth["limit"], depth["unit"]) == (3.5, 3.0, "mm")
    # acknowledging one of two is not enough; the missing one is named
    with pytest.raises(CommandError) as err:
        await hub.start("demo", params=params, acknowledge=["inject.depth_mm"])
    assert err.value.code == "soft_limit" and [d["id"] for d in err.value.details] == ["ep.pulses_per_point"]
    assert hub.room.active_session() is None and await hub.store.list_sessions() == []
    refusals = await hub.store.refusals()
    assert [r["code"] for r in refusals] == ["soft_limit", "soft_limit"]


async def test_soft_limit_accepted_with_acknowledgement_and_recorded(hub: Hub) -> None:
    await hub.auto_trigger(20)
    acks = ["inject.depth_mm"]
    runner = await hub.start("demo", params={**FAST_DEMO, "inject": {"depth_mm": 3.5}}, acknowledge=acks,
                             operator="dr-lee")
    sid = runner.session_id
    assert await hub.finish(runner, 20) == "completed", runner.reason
    recorded = await hub.store.events(sid)
    created = next(e["data"] for e in recorded if e["event"] == "created")
    assert created["acknowledged"] == acks and created["operator"] == "dr-lee"
    assert created["params"]["inject"] == {"depth_mm": 3.5}
    summary = hub.store.read_session(sid)
    assert summary["acknowledged"] == acks and summary["operator"] == "dr-lee"
    assert summary["state"] == "completed"
    # the acknowledged value is what the gun was set to
    gun = await hub.sim_state("inj-1")
    assert gun["depth_set_mm"] == 3.5 and gun["shots"] == 8
    assert await hub.store.refusals() == []


@pytest.mark.parametrize("params,limit_id", [
    ({"inject": {"depth_mm": 4.5}}, "inject.depth_mm"),
    ({"ep": {"amplitude_v": 150}}, "ep.amplitude_v"),
], ids=["depth", "amplitude"])
async def test_hard_limit_refused_even_when_acknowledged_and_recorded(hub: Hub, params: dict, limit_id: str) -> None:
    for acks in (None, [limit_id]):
        with pytest.raises(CommandError) as err:
            await hub.start("demo", params={**FAST_DEMO, **params}, acknowledge=acks, patient="P-7")
        assert err.value.code == "hard_limit"
        assert [d["id"] for d in err.value.details if d["severity"] == "hard"] == [limit_id]
        assert {d["severity"] for d in err.value.details} <= {"hard", "soft"}  # the soft ones listed too
    assert await hub.store.list_sessions() == []
    refusals = await hub.store.refusals()
    assert len(refusals) == 2 and all(r["code"] == "hard_limit" and r["program"] == "demo"
                                      and r["patient_ref"] == "P-7" for r in refusals)
    assert all(r["details"][0]["id"] == limit_id for r in refusals)
    # nothing was sent to a device
    states = await hub.sim_states()
    assert states["inj-1"]["shots"] == 0 and states["epg-1"]["pulses"] == 0


async def test_course_interval_is_a_hard_limit_after_a_completed_session(hub: Hub) -> None:
    await hub.auto_trigger(20)
    first = await hub.start("alopecia-areata", params={"light": {"fluence_j_cm2": 0.005}}, patient="P-9")
    assert await hub.finish(first, 20) == "completed", first.reason
    for acks in (None, ["course.interval_days"]):
        with pytest.raises(CommandError) as err:
            await hub.start("demo", params=FAST_DEMO, acknowledge=acks, patient="P-9")
        assert err.value.code == "hard_limit"
        assert [d["id"] for d in err.value.details] == ["course.interval_days"]
        # in the one form of every limit's finding: the days since the patient's last session
        course = err.value.details[0]
        # (to two decimals: minutes after the first session, 0 days; the time since in minutes)
        assert (course["field"], course["unit"], course["value"]) == ("course.interval_days", "days", 0)
        assert re.fullmatch(r"course\.interval_days: 0 days is below "
                            rf"the hard limit {re.escape(fmt_quantity(course['limit'], 'days'))} "
                            r"\(\d+ min since the patient's last session ended\)", err.value.message), err.value.message
    assert [r["details"][0]["id"] for r in await hub.store.refusals()] == ["course.interval_days"] * 2
    # another patient is not concerned
    other = await hub.start("demo", params=FAST_DEMO, patient="P-10", preflight=False)
    await hub.room.abort(session=other.session_id)


# ---------------------------------------------------------------------------- while running


@pytest.mark.parametrize("over", [0.5, 0.08], ids=["shot-overreport", "past-point-dose"])
async def test_gun_delivering_more_than_told_is_stopped(hub: Hub, over: float) -> None:
    await hub.control("inj-1").set("over_delivery", over)
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params=FAST_DEMO)
    sid = runner.session_id
    assert await hub.finish(runner, 10) == "failed"
    # 0.5: one shot reports 30 uL for a 20 uL shot; 0.08: 21.6 uL passes the point's 21 uL
    assert runner.reason in ("device_overreport", "dose_cap_reached")
    alarm = await hub.next_event("alarm")
    assert alarm["code"] == "dose_cap_reached" and alarm["priority"] == "high"
    assert any(a["code"] == "dose_cap_reached" for a in hub.room.status()["alarms"])
    safe = await hub.next_event("safe_state")
    assert safe["devices"] == {d: "off" for d in DEVICES}
    gun = await hub.sim_state("inj-1")
    assert not gun["output_on"] and gun["state"] == "idle"
    assert gun["shots"] == 1  # stopped at the first over-delivery, before a second pull could land
    # the record holds what really left the syringe, not what was planned
    rows = await hub.store.deliveries(sid)
    assert len(rows) == 1 and rows[0]["delivered"]["volume_ul"] == pytest.approx(gun["volume_ul"])
    assert rows[0]["delivered"]["volume_ul"] > 21.0
    summary = hub.store.read_session(sid)
    assert summary["state"] == "failed" and summary["totals"]["inj-1"]["volume_ul"] == pytest.approx(gun["volume_ul"])
    assert (await hub.store.verify(sid)).ok


async def test_session_volume_cap_stops_delivery_at_the_cap(tmp_path: Path) -> None:
    # the demo plans 8 x 20 = 160 uL; acknowledged, the session cap is the hard one: 160 uL
    limits = write_limits(tmp_path / "limits.yaml", {"session": {"injection_volume_ul": {"soft": 100, "hard": 160}}})
    async with open_hub(tmp_path / "room", limits=limits) as hub:
        with pytest.raises(CommandError) as err:
            await hub.start("demo", params=FAST_DEMO)
        assert err.value.code == "soft_limit"
        assert [d["id"] for d in err.value.details] == ["session.injection_volume_ul"]
        # each shot 3 % over (within the point's 5 % tolerance): the cap is reached at the 8th point
        await hub.control("inj-1").set("over_delivery", 0.03)
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST_DEMO, acknowledge=["session.injection_volume_ul"])
        sid = runner.session_id
        assert await hub.finish(runner, 10) == "failed"
        assert runner.reason == "dose_cap_reached"
        alarm = await hub.next_event("alarm")
        assert alarm["code"] == "dose_cap_reached"
        gun = await hub.sim_state("inj-1")
        assert not gun["output_on"]
        assert gun["shots"] == 7 and 7 * 20.0 < gun["volume_ul"] <= 160.0
        summary = hub.store.read_session(sid)
        assert summary["totals"]["inj-1"]["volume_ul"] == pytest.approx(gun["volume_ul"])
        rows = await hub.store.deliveries(sid)
        assert [r["status"] for r in rows] == ["done"] * 7 + ["failed"]
        assert rows[-1]["delivered"]["shots"] == 0
        assert (await hub.store.verify(sid)).ok


@pytest.mark.parametrize("hard,outcome", [(32.9, "failed"), (40.0, "completed")], ids=["hard", "soft"])
async def test_skin_temperature_limit_while_running(tmp_path: Path, hard: float, outcome: str) -> None:
    # the skin under the LED head rests at 33.0 degC: above this clinic's soft limit (32.5),
    # and above its hard one too in the first case; the LED's telemetry reports it
    limits = write_limits(tmp_path / "limits.yaml", {"runtime": {"skin_temp_c": {"soft": 32.5, "hard": hard}}})
    async with open_hub(tmp_path / "room", limits=limits) as hub:
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST_DEMO)
        assert await hub.finish(runner, 20) == outcome, runner.reason
        alarms = [a for a in hub.room.status()["alarms"] if a["code"] == "skin_temperature"]
        assert alarms and alarms[0]["source"] == "led-1"
        if outcome == "failed":
            assert runner.reason == "skin_temperature" and alarms[0]["priority"] == "high"
            assert (await hub.next_event("safe_state"))["devices"] == {d: "off" for d in DEVICES}
            await hub.wait_all_off(timeout=1.0)
        else:
            assert {a["priority"] for a in alarms} == {"medium"}
