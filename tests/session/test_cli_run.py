"""``devicehub run`` as a clinic runs it: a separate process on the simulated room.

Exit codes: 0 completed (record and report paths printed), 2 not startable, 3 aborted
(SIGINT: every output off before the process ends). A hub killed outright (SIGKILL)
leaves its session unfinished: the devices' own watchdogs switch their outputs off,
and the next hub to open the store marks the session failed with reason hub_restart,
its record holding what was delivered.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from devicehub.models.config import HubConfig
from devicehub.records.store import RecordStore
from devicehub.runner.totals import QUANTITIES

from .conftest import DEVICES, ROOT, Sims, devicehub_cmd, open_room

FAST = ["--param", "ep.period_ms=10", "--param", "light.duration_s=1", "--param", "field.duration_s=1"]
#: exposures long enough to interrupt the session while light and field are on
LONG_EXPOSURE = ["--param", "ep.period_ms=10", "--param", "light.duration_s=10", "--param", "field.duration_s=10"]


async def _spawn(sims: Sims, *extra: str, program: str = "demo") -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *devicehub_cmd("run", program, "--config", str(sims.sim.config_path), "--patient", "P-1",
                       "--operator", "tech", "--preflight-done", "--yes", "--plain", *extra),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # faulthandler: a hung run dumps its threads' stacks on SIGABRT (see _finish)
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})


#: not a bound on how long a run may take (the suite asserts no durations), only a hang's
#: post-mortem: the run's stacks (faulthandler) before pytest-timeout's 120 s ends the test
HANG_S = 100.0


async def _finish(proc: asyncio.subprocess.Process, timeout: float = HANG_S) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.send_signal(signal.SIGABRT)
        out, err = await proc.communicate()
        raise AssertionError(f"devicehub run did not end within {timeout:.0f} s\n--- stdout\n{out.decode()[-3000:]}"
                             f"\n--- stderr\n{err.decode()[-3000:]}") from None
    return proc.returncode, out.decode(), err.decode()


def _only_session(sims: Sims) -> dict:
    with RecordStore(HubConfig.load(sims.sim.config_path).store, readonly=True) as store:
        sessions = store.list_sessions()
        assert len(sessions) == 1
        summary = store.session(sessions[0]["session"])
        summary["verified"] = store.verify(summary["session"]).ok
        summary["deliveries"] = store.deliveries(summary["session"])
        return summary


async def _exposing(sims: Sims) -> None:
    """Wait until the light and the field are both on (mid-session, outputs on)."""
    for dev in ("led-1", "pemf-1"):
        await sims.wait_sim(dev, lambda s: s["output_on"], timeout=20, interval=0.02, what=f"{dev} on")


async def test_run_demo_completes(sims: Sims) -> None:
    await sims.auto_trigger(20)
    code, out, err = await _finish(await _spawn(sims, *FAST))
    assert code == 0, out + err
    summary = _only_session(sims)
    sid = summary["session"]
    assert summary["state"] == "completed" and summary["origin"] == "console" and summary["verified"]
    assert f"session {sid} completed" in out
    store = HubConfig.load(sims.sim.config_path).store
    assert re.search(rf"^record: {re.escape(str(store))} ", out, re.M), out
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1).strip())
    assert report.is_file() and sid in report.read_text()
    states = await sims.sim_states()
    assert not any(s["output_on"] for s in states.values())
    assert states["inj-1"]["shots"] == summary["totals"]["inj-1"]["shots"] == 8
    assert states["epg-1"]["pulses"] == summary["totals"]["epg-1"]["pulses"] == 80


async def test_run_not_startable_exits_2(sims: Sims) -> None:
    code, out, err = await _finish(await _spawn(sims, *FAST, "--param", "inject.depth_mm=4.5"))
    assert code == 2
    assert "not startable (hard_limit)" in err and "inject.depth_mm" in err and "4.5" in err
    assert "session" not in out
    with RecordStore(HubConfig.load(sims.sim.config_path).store, readonly=True) as store:
        assert store.list_sessions() == []
        assert [r["code"] for r in store.refusals()] == ["hard_limit"]
    assert (await sims.sim_state("inj-1"))["shots"] == 0


async def test_sigint_mid_session_aborts_with_outputs_off(sims: Sims) -> None:
    await sims.auto_trigger(20)
    proc = await _spawn(sims, *LONG_EXPOSURE)
    await _exposing(sims)
    proc.send_signal(signal.SIGINT)
    code, out, err = await _finish(proc)
    assert code == 3, out + err
    # the run ends once the room is safe and the record final; the report's child (niceness
    # +10) is not waited for: on a loaded machine it kept a Ctrl-C waiting for many seconds
    assert "report: not waited for (interrupted); write it with: devicehub sessions report" in out
    # switched off by the hub before it ended, not by a watchdog: no waiting here
    states = await sims.sim_states()
    assert {d: s["output_on"] for d, s in states.items()} == {d: False for d in DEVICES}
    assert states["led-1"]["elapsed_s"] < 10 and states["pemf-1"]["elapsed_s"] < 10
    summary = _only_session(sims)
    assert summary["state"] == "aborted" and summary["reason"] == "console_interrupt" and summary["verified"]
    assert f"session {summary['session']} aborted" in out


async def test_hub_killed_mid_session_then_restart_marks_it_failed(sims: Sims) -> None:
    await sims.auto_trigger(20)
    proc = await _spawn(sims, *LONG_EXPOSURE)
    await _exposing(sims)
    proc.kill()  # SIGKILL: no safe state, no last event
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the devices' own watchdogs (1 s for the emitters) end the exposures, long before 10 s
    states = await sims.wait_all_off(timeout=3.0)
    assert states["led-1"]["elapsed_s"] < 5 and states["pemf-1"]["elapsed_s"] < 5
    before = _only_session(sims)
    assert before["state"] == "running"

    config = HubConfig.load(sims.sim.config_path)
    async with open_room(config) as (store, room, sub):
        sid = before["session"]
        summary = store.read_session(sid)
        assert summary["state"] == "failed" and summary["reason"] == "hub_restart"
        assert [s["state"] for s in summary["states"]][-2:] == ["running", "failed"]
        # the totals are in the runner's quantities, as a finished session's are
        assert set(summary["totals"]) >= {"inj-1", "epg-1"}
        assert all(set(q) <= set(QUANTITIES) for q in summary["totals"].values()), summary["totals"]
        assert {"volume_ul", "shots"} <= set(summary["totals"]["inj-1"])
        announced = []
        while (msg := sub.get_nowait()) is not None:
            if msg.kind == "session.state":
                announced.append(msg.data)
        assert any((a["session"], a["state"], a.get("reason")) == (sid, "failed", "hub_restart")
                   for a in announced), announced
        assert (await store.verify(sid)).ok
        # what the record says was delivered is what the devices counted: the injector and
        # the EPG had finished; the exposures the kill cut short were settled late, from
        # the emitters' run registers, before the session was marked failed
        assert summary["in_flight"] == []
        rows = await store.deliveries(sid)
        assert all(r["status"] == "done" for r in rows if r["device"] in ("inj-1", "epg-1"))
        assert {r["device"]: r["status"] for r in rows if r["device"] in ("led-1", "pemf-1")} == {
            "led-1": "late", "pemf-1": "late"}
        for dev, key, sim_key in (("inj-1", "shots", "shots"), ("inj-1", "volume_ul", "volume_ul"),
                                  ("epg-1", "pulses", "pulses"), ("epg-1", "charge_uc", "charge_uC")):
            recorded = sum(float(r["delivered"][key]) for r in rows if r["device"] == dev)
            assert recorded == pytest.approx(states[dev][sim_key], abs=1e-3 * len(rows)), (dev, key)
        totals = summary["totals"]
        assert totals["led-1"]["exposure_s"] == pytest.approx(states["led-1"]["elapsed_s"], abs=0.15)
        assert totals["led-1"]["fluence_j_cm2"] * 1000 == pytest.approx(states["led-1"]["fluence_mj_cm2"], rel=0.02,
                                                                        abs=1.0)
        assert totals["pemf-1"]["field_time_s"] == pytest.approx(states["pemf-1"]["elapsed_s"], abs=0.15)
        assert totals["pemf-1"]["field_pulses"] == states["pemf-1"]["pulses"]
        events = await store.events(sid)
        settled = [e for e in events if e["event"] == "delivery_settled"]
        assert {e["data"]["device"] for e in settled} == {"led-1", "pemf-1"}
        assert all(e["data"]["late"] for e in settled)
        assert max(e["index"] for e in settled) < min(e["index"] for e in events if e["event"] == "failed")
        # the watchdog faults the kill left are cleared by the hub when it talks to them
        states = await sims.sim_states()
        assert states["led-1"]["fault"] in (0, None) and states["pemf-1"]["fault"] in (0, None)
        # the room is usable again: no session is active
        assert room.active_session() is None
