"""The hub killed mid-delivery, and latched faults, against ``devicehub serve`` (issue 15).

The record's totals (the ``session`` verb and ``devicehub sessions show --json``) are
held against the simulators' own counters: EP pulses exactly, charge and fluence within
2 %, volume within 0.5 uL, time within 0.15 s. After each crash the hub settles what was
in flight from the devices' counters before it marks the session failed, clears the
watchdog faults its death caused, and a full session of every device starts at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from simulators.control import ControlClient
from tests.hub.conftest import (
    SHORT_DEMO,
    Clinic,
    HubProcess,
    Setup,
    acli,
    confirmed,
    hub_followed,
    sim_states,
    wait_all_off,
    wait_sim,
)
from tests.totals_check import assert_totals_match

pytestmark = pytest.mark.timeout(180)

#: the demo with trains of 20 pulses at 200 ms: a hub killed or a fault injected mid-train
LONG_TRAINS = {"ep": {"pulses_per_point": 20, "period_ms": 200}, "light": {"duration_s": 1},
               "field": {"duration_s": 1}}


def mid_train(pulses: int) -> Callable[[dict[str, Any]], bool]:
    """The EPG's own state: a train running, ``pulses`` of it delivered."""
    return lambda s: s["state"] == "running" and s["last_train"]["pulses"] >= pulses


async def full_session_completes(setup: Setup, clinic: Clinic) -> None:
    """Right after a crash: a session of every device starts, and completes."""
    async with confirmed(clinic, setup.room, params=SHORT_DEMO) as sid:
        done = await clinic.wait_state(("completed", "failed", "aborted"), session=sid, timeout=90)
        assert done["data"]["state"] == "completed", (done["data"].get("state"), done["data"].get("reason"))


async def restarted_failed(setup: Setup, clinic: Clinic, sid: str, seen: int, boot: int) -> HubProcess:
    """The hub back on the same config (terminated again if what follows does not hold): the
    session failed with hub_restart, its record's totals what the devices counted."""
    restarted = HubProcess(setup.room.config_path, setup.room.directory / "hub.log")
    await restarted.astart()
    try:
        assert restarted.boot == boot + 1
        failed = await clinic.wait_state("failed", session=sid, start=seen)
        assert failed["data"]["reason"] == "hub_restart"
        await clinic.wait_event(sid, "failed", start=seen)
        await record_equals_devices(setup, clinic, sid)
    except BaseException:
        await asyncio.to_thread(restarted.terminate)
        raise
    return restarted


async def restarted_and_settled(setup: Setup, clinic: Clinic, sid: str, seen: int, boot: int,
                                devices: set[str]) -> HubProcess:
    """The hub back on the same config: the open deliveries settled late, then the session failed."""
    restarted = await restarted_failed(setup, clinic, sid, seen, boot)
    events = [m["data"] for m in clinic.events(sid)]
    settled = [e for e in events if e["event"] == "delivery_settled"]
    assert {e["device"] for e in settled} == devices and all(e["late"] for e in settled), settled
    end = next(e["index"] for e in events if e["event"] == "failed")
    assert all(e["index"] < end for e in settled), "settled before the session is marked failed"
    # the watchdog faults the dead hub caused: raised as device_watchdog, then cleared
    alarms = [m.body["data"] for m in clinic.on("alarms") if m.body["boot"] == boot + 1]
    for dev in devices:
        raised = [i for i, a in enumerate(alarms) if any(x["code"] == "device_watchdog" and x["source"] == dev
                                                         for x in a)]
        assert raised, (dev, alarms)
        assert not any(x["code"] == "device_watchdog" and x["source"] == dev for x in alarms[-1]), alarms[-1]
    return restarted


async def record_equals_devices(setup: Setup, clinic: Clinic, sid: str) -> dict[str, Any]:
    sims = await sim_states(setup.room)
    shown = await acli("sessions", "show", sid, "--json", "--config", setup.config)
    assert shown.returncode == 0, shown.stderr
    reply = await clinic.request("session", {"session": sid})
    assert reply["ok"], reply
    for summary in (json.loads(shown.stdout)["summary"], reply["data"]):
        assert summary["state"] == "failed" and summary["reason"] == "hub_restart"
        assert summary["in_flight"] == []
        assert_totals_match(summary["totals"], sims)
    return sims


async def test_hub_killed_mid_train_settles_from_the_train_report(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=20) as clinic:
        boot = hub.boot
        async with confirmed(clinic, room, params=LONG_TRAINS) as sid:  # the hub killed in the first train
            await wait_sim(room, "epg-1", mid_train(8), what="EPG mid-train")
        seen = len(clinic.messages)
        await asyncio.to_thread(hub.kill)
        states = await wait_all_off(room, timeout=5)  # the EPG's own watchdog ends the train
        assert 8 <= states["epg-1"]["last_train"]["pulses"] < 20 and states["epg-1"]["fault"] == -310

        restarted = await restarted_and_settled(setup, clinic, sid, seen, boot, {"epg-1"})
        try:
            sims = await sim_states(room)
            assert sims["epg-1"]["fault"] in (None, 0) and sims["epg-1"]["state"] == "idle"
            await full_session_completes(setup, clinic)
        finally:
            await asyncio.to_thread(restarted.terminate)


async def test_hub_killed_mid_exposure_settles_from_the_run_registers(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=20) as clinic:
        boot = hub.boot
        params = {"light": {"duration_s": 10}, "field": {"duration_s": 10}, "ep": {"pulses_per_point": 2}}
        async with confirmed(clinic, room, params=params) as sid:
            for dev in ("led-1", "pemf-1"):
                await wait_sim(room, dev, lambda s: s["output_on"] and s["run"]["elapsed_s"] >= 2.0,
                               what=f"{dev} 2 s into its exposure")
        seen = len(clinic.messages)
        await asyncio.to_thread(hub.kill)
        states = await wait_all_off(room, timeout=5)  # the emitters' watchdogs end the exposures
        assert states["led-1"]["fault"] == 5 and states["pemf-1"]["fault"] == 5

        restarted = await restarted_and_settled(setup, clinic, sid, seen, boot, {"led-1", "pemf-1"})
        try:
            sims = await sim_states(room)
            assert sims["led-1"]["elapsed_s"] > 2.0 and sims["pemf-1"]["elapsed_s"] > 2.0
            assert all(sims[d]["fault"] in (None, 0) for d in ("led-1", "pemf-1"))
            await full_session_completes(setup, clinic)
        finally:
            await asyncio.to_thread(restarted.terminate)


async def test_clear_fault_refused_while_the_cause_is_there_then_accepted(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    await hub.astart()
    async with ControlClient(room.sims["led-1"].control) as c:
        await c.inject("head_overheat", count=-1)  # a temperature fault latches in any state
    await wait_sim(room, "led-1", lambda s: s["fault"] == 1, what="LED-1 fault 1 latched")
    args = ("console", "--clear-fault", "led-1", "--by", "tech", "--config", setup.config)
    refused = await acli(*args)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "led-1" in refused.stderr and "1" in refused.stderr and "temperature" in refused.stderr.lower()
    assert (await sim_states(room))["led-1"]["fault"] == 1
    async with ControlClient(room.sims["led-1"].control) as c:
        await c.clear("head_overheat")
    await wait_sim(room, "led-1", lambda s: s["head_temp_c"] < 55.0, what="LED-1 head cooled")
    accepted = await acli(*args)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert (await sim_states(room))["led-1"]["fault"] in (None, 0)
    # an unknown device is refused, naming the field
    unknown = await acli("console", "--clear-fault", "led-9", "--by", "tech", "--config", setup.config)
    assert unknown.returncode == 2 and "not_found" in unknown.stderr


async def test_resume_over_mqtt_refused_while_the_led_does_not_answer(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=20) as clinic:
        params = {"light": {"duration_s": 5}, "field": {"duration_s": 5}, "ep": {"pulses_per_point": 2}}
        async with confirmed(clinic, room, params=params) as sid:
            await wait_sim(room, "led-1", lambda s: s["output_on"], what="LED on")
        paused = await clinic.request("pause", {"session": sid})
        assert paused["ok"] and paused["data"]["state"] == "paused", paused
        async with ControlClient(room.sims["led-1"].control) as c:
            await c.inject("stall", count=-1)
            reply = await clinic.request("resume", {"session": sid})
            assert reply["ok"] is False and reply["error"]["code"] == "device_unavailable", reply
            assert [d["device"] for d in reply["error"]["details"]] == ["led-1"], reply
            state = await clinic.request("session", {"session": sid})
            assert state["data"]["state"] == "paused", state
            await c.clear("stall")
        reply = await clinic.request("resume", {"session": sid})
        assert reply["ok"] and reply["data"]["state"] == "awaiting_confirmation", reply
        aborted = await clinic.request("abort", {"session": sid})
        assert aborted["ok"], aborted
        summary = (await clinic.request("session", {"session": sid}))["data"]
        assert summary["in_flight"] == []
        sims = await sim_states(room)
        assert_totals_match(summary["totals"], sims)


async def test_hub_killed_while_paused_by_a_fault(setup: Setup) -> None:
    """Issue 13: a session paused by a recoverable fault, then the hub is killed: on restart
    it is failed (hub_restart) with the totals the devices counted; the fault the device
    latched is cleared at the chair, and the next session runs."""
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=20) as clinic:
        boot = hub.boot
        async with confirmed(clinic, room, params=LONG_TRAINS) as sid:
            await wait_sim(room, "epg-1", mid_train(3), what="EPG mid-train")
        async with ControlClient(room.sims["epg-1"].control) as c:
            await c.inject("open_circuit", count=-1)
        paused = await clinic.wait_event(sid, "paused")
        assert paused["data"]["reason"] == "fault" and paused["data"]["recovery"]["device"] == "epg-1"
        retained = await clinic.wait_state("paused", session=sid)
        assert retained["data"]["recovery"]["code"] == -302
        refused = await clinic.request("resume", {"session": sid})
        assert refused["ok"] is False and refused["error"]["code"] == "invalid_state", refused
        seen = len(clinic.messages)
        await asyncio.to_thread(hub.kill)

        restarted = await restarted_failed(setup, clinic, sid, seen, boot)
        try:
            # the open circuit latched in the EPG needs the chair: refused while it is there
            args = ("console", "--clear-fault", "epg-1", "--by", "tech", "--config", setup.config)
            assert (await acli(*args)).returncode == 1
            async with ControlClient(room.sims["epg-1"].control) as c:
                await c.clear("open_circuit")
            cleared = await acli(*args)
            assert cleared.returncode == 0, cleared.stdout + cleared.stderr
            await full_session_completes(setup, clinic)
        finally:
            await asyncio.to_thread(restarted.terminate)


async def test_hub_killed_while_paused_by_a_fault_is_failed_with_consistent_totals(setup: Setup) -> None:
    """Recoverable faults (issue 13): the hub SIGKILLed while a session waits, paused by a
    fault, for the technician: back up, the session is failed with hub_restart and its
    totals are what the devices counted; the fault is still the device's to clear."""
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=20) as clinic:
        boot = hub.boot
        async with confirmed(clinic, room, params=SHORT_DEMO) as sid:
            await clinic.wait_event(sid, "point_done")
            await wait_sim(room, "inj-1", lambda s: s["output_on"], what="the gun armed")
            async with ControlClient(room.sims["inj-1"].control) as c:
                await c.call("inject", fault="empty", count=-1)
            paused = await clinic.wait_event(sid, "paused")
            assert paused["data"]["reason"] == "fault" and paused["data"]["recovery"]["code"] == 7
        await wait_all_off(room, timeout=5)
        seen = len(clinic.messages)
        await asyncio.to_thread(hub.kill)
        restarted = await restarted_failed(setup, clinic, sid, seen, boot)
        try:
            events = [m["data"]["event"] for m in clinic.events(sid)]
            assert events.count("recovered") == 0 and "failed" in events
        finally:
            async with ControlClient(room.sims["inj-1"].control) as c:
                await c.call("clear")
            await asyncio.to_thread(restarted.terminate)
