"""Recoverable faults over MQTT (shared/mqtt-api.md, "recover or fail"): the paused event and
the retained session state carry ``recovery``; ``resume`` before the recovery is
``invalid_state``; after ``recover`` at the chair it waits for the chair as any resume."""

from __future__ import annotations

from simulators.control import ControlClient
from tests.hub.conftest import Clinic, Setup, auto_trigger, console, run_to_awaiting, sim_states, wait_all_off


async def test_recovery_over_mqtt(setup: Setup) -> None:
    room = setup.room
    async with Clinic(setup.port, setup.root) as clinic:
        await setup.hub.astart()
        await auto_trigger(room, 10)
        sid = await run_to_awaiting(clinic)
        assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
        await clinic.wait_event(sid, "point_done")
        while not (await sim_states(room))["inj-1"]["output_on"]:
            pass  # the gun arms for its next point within a few control round trips
        async with ControlClient(room.sims["inj-1"].control) as gun:
            await gun.call("inject", fault="cartridge_missing", count=-1)
            paused = await clinic.wait_event(sid, "paused")
            recovery = paused["data"]["recovery"]
            assert paused["data"]["reason"] == "fault" and recovery["device"] == "inj-1" and recovery["code"] == 8
            state = await clinic.wait_state("paused", session=sid)
            assert state["data"]["recovery"] == recovery
            await wait_all_off(room)

            refused = await clinic.request("resume", {"session": sid})
            assert not refused["ok"] and refused["error"]["code"] == "invalid_state", refused
            still = await console(room, "recover", session=sid, by="tech")
            assert not still["ok"] and recovery["hint"] in still["error"]["message"], still
            await gun.call("clear", fault="cartridge_missing")
        recovered = await console(room, "recover", session=sid, by="tech")
        assert recovered["ok"], recovered
        event = await clinic.wait_event(sid, "recovered")
        assert event["data"]["device"] == "inj-1" and event["data"]["code"] == 8 and event["data"]["by"] == "tech"
        resumed = await clinic.request("resume", {"session": sid})
        assert resumed["ok"] and resumed["data"]["state"] == "awaiting_confirmation", resumed
        assert (await console(room, "abort", session=sid))["ok"]
