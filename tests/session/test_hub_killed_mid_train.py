"""The hub killed while a train like the one before it runs (the one-hour soak's session
#430 of 5 December, invariant 2).

A step's trains are alike, so the device's last-train report after the second train
equals the report before it. The hub that triggered the train would have known it ran
from the trigger's OK or the train's own ``!PULSE``/``!DONE`` lines; a hub killed before
it heard either takes that knowledge with it. The hub that comes back must still record
the train the device ran, judged here by the simulator's own pulse counter.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devicehub.models.config import HubConfig
from simulators.devsupport.proxy import OnHostLine

from .conftest import Sims, assert_totals_match, devicehub_cmd, open_room
from .test_cli_run import FAST, ROOT


async def _killed_at_second_trigger(sims: Sims, tmp_path: Path, *, trigger_arrives: bool,
                                    ran: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``devicehub run`` of the demo, its EPG-1 reached through a link that stops the hub's
    process (SIGSTOP) as the second train's ``OUTP:TRIG`` passes, delivered to the device
    or not; once the device's own state satisfies ``ran``, the hub is killed (SIGKILL) and
    a hub opened again on the same room. Returns the session's record as that hub left it."""
    await sims.auto_trigger(20)
    config = HubConfig.load(sims.sim.config_path)
    epg = next(d for d in config.devices if d.id == "epg-1")
    hub: list[int] = []

    def freeze_the_hub() -> None:  # before the trigger reaches the device: no reply can reach the hub
        os.kill(hub[0], signal.SIGSTOP)

    async with OnHostLine(epg.parsed_endpoint.port, b"OUTP:TRIG", freeze_the_hub, nth=2,
                          forward=trigger_arrives) as wire:
        doc = yaml.safe_load(sims.sim.config_path.read_text())
        for d in doc["devices"]:
            if d["id"] == "epg-1":
                d["endpoint"] = f"socket://127.0.0.1:{wire.port}"
        proxied = tmp_path / "through-the-link.yaml"
        proxied.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = await asyncio.create_subprocess_exec(
            *devicehub_cmd("run", "demo", "--config", str(proxied), "--patient", "P-1", "--operator", "tech",
                           "--preflight-done", "--yes", "--plain", *FAST),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        hub.append(proc.pid)
        try:
            await wire.seen_line.wait()
            await sims.wait_sim("epg-1", ran, timeout=30, what="the device left as the test needs it")
        finally:
            proc.kill()  # SIGKILL reaches a stopped process
            await proc.wait()

    async with open_room(config) as (store, room, sub):
        sessions = await store.list_sessions()
        assert len(sessions) == 1
        sid = sessions[0]["session"]
        summary = store.read_session(sid)
        assert summary["state"] == "failed" and summary["reason"] == "hub_restart"
        assert summary["in_flight"] == []
        sim = await sims.sim_states()
        assert_totals_match(summary["totals"], sim)
        assert (await store.verify(sid)).ok
        rows = [r for r in await store.deliveries(sid) if r["device"] == "epg-1"]
        settled = [e["data"] for e in await store.events(sid)
                   if e["event"] == "delivery_settled" and e["data"]["device"] == "epg-1"]
        return {"sim": sim, "pulses": [r["delivered"]["pulses"] for r in rows],
                "late": [(e["late"], e["delivered"]["pulses"]) for e in settled if e["late"]]}


async def test_a_train_whose_hub_died_before_its_trigger_was_answered_is_in_the_record(sims: Sims,
                                                                                         tmp_path: Path) -> None:
    # the second train runs to its end on the device's own timer (no watchdog when idle)
    seen = await _killed_at_second_trigger(sims, tmp_path, trigger_arrives=True,
                                           ran=lambda s: s["pulses"] >= 20 and s["state"] == "idle")
    assert seen["sim"]["epg-1"]["pulses"] == 20 and seen["sim"]["epg-1"]["last_train"]["pulses"] == 10
    assert seen["pulses"] == [10, 10] and seen["late"] == [(True, 10)]


async def test_a_train_whose_trigger_never_reached_the_device_is_recorded_as_not_delivered(
        sims: Sims, tmp_path: Path) -> None:
    # the hub died writing the trigger: the device, armed and alone, latches its watchdog
    seen = await _killed_at_second_trigger(sims, tmp_path, trigger_arrives=False,
                                           ran=lambda s: s["state"] == "fault" and s["fault"] == -310)
    assert seen["sim"]["epg-1"]["pulses"] == 10
    assert seen["pulses"] == [10, 0] and seen["late"] == [(True, 0)]
