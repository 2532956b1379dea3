"""A shot whose report never reaches the hub (a garbled or lost SHOT frame: the soak's
session #203, `corrupt` on INJ-1) does not leave the point waiting for ever.

The gun's cap counts the lost shot; the hub's count did not, so the gun refused the
shot the hub expected and the technician pulled in vain. A cap refusal while the point
still has room now reads the gun's own totals, enters the shot from them and sets the
cap again; the record equals the gun's counters.
"""

from __future__ import annotations

from pathlib import Path

from simulators.devsupport.proxy import InjEventDropper

from .conftest import FAST_DEMO, assert_totals_match, open_hub_through

SHOT = 0x90


async def test_a_point_whose_shot_report_was_lost_is_completed_from_the_guns_totals(tmp_path: Path) -> None:
    async with open_hub_through(tmp_path / "room", "inj-1",
                                lambda port: InjEventDropper(port, SHOT, nth=2)) as (hub, wire):
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST_DEMO)
        final = await hub.finish(runner)
        assert wire.dropped.is_set()
        assert final == "completed", runner.reason
        sims = await hub.sim_states()
        summary = hub.store.read_session(runner.session_id)
        assert summary["in_flight"] == []
        assert_totals_match(summary["totals"], sims)
        # every point has its dose, by the gun's own totals: none passed it
        done = [e["data"] for e in await hub.store.events(runner.session_id)
                if e["event"] == "point_done" and e["data"]["device"] == "inj-1"]
        step = next(s for s in runner.program.steps if s.kind == "injection")
        assert done and all(step.dose_ul * 0.95 <= d["delivered"]["volume_ul"] <= step.dose_ul * 1.05 for d in done)
        assert sum(d["delivered"]["shots"] for d in done) == sims["inj-1"]["shots"]
