"""A shot whose report never reaches the hub (a garbled or lost SHOT frame: the soak's
session #203, `corrupt` on INJ-1) does not leave the point waiting for ever.

The gun's cap counts the lost shot; the hub's count did not, so the gun refused the
shot the hub expected and the technician pulled in vain. A cap refusal while the point
still has room now reads the gun's own totals, enters the shot from them and sets the
cap again; the record equals the gun's counters.
"""

from __future__ import annotations

from pathlib import Path

from devicehub.models.config import HubConfig
from simulators.devsupport.proxy import InjEventDropper

from .conftest import FAST_DEMO, Hub, assert_totals_match, open_room, open_sims

SHOT = 0x90


async def test_a_point_whose_shot_report_was_lost_is_completed_from_the_guns_totals(tmp_path: Path) -> None:
    async with open_sims(tmp_path / "room") as sim:
        config = HubConfig.load(sim.config_path)
        inj = next(d for d in config.devices if d.id == "inj-1")
        async with InjEventDropper(inj.parsed_endpoint.port, SHOT, nth=2) as wire:
            devices = [d.model_copy(update={"endpoint": f"socket://127.0.0.1:{wire.port}"}) if d is inj else d
                       for d in config.devices]
            proxied = config.model_copy(update={"devices": devices})
            async with open_room(proxied) as (store, room, sub):
                hub = Hub(sim=sim, config=proxied, store=store, room=room, sub=sub)
                try:
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
                    done = [e["data"] for e in await hub.store.events(runner.session_id) if e["event"] == "point_done"
                            and e["data"]["device"] == "inj-1"]
                    program = runner.program
                    step = next(s for s in program.steps if s.kind == "injection")
                    assert done and all(step.dose_ul * 0.95 <= d["delivered"]["volume_ul"] <= step.dose_ul * 1.05
                                        for d in done)
                    assert sum(d["delivered"]["shots"] for d in done) == sims["inj-1"]["shots"]
                finally:
                    await hub.release()
