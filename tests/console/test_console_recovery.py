"""A recoverable fault pauses the session: the console says what to check, recovers with
one key once the cause is gone, and resumes after a confirmation."""

from __future__ import annotations

from devicehub.console.screens.dialogs import ConfirmDialog
from devicehub.console.screens.room import RoomScreen
from devicehub.console.screens.running import RunningScreen
from simulators.control import ControlClient
from tests.console.conftest import SIZE, app_for, on_screen, until, until_shown
from tests.console.test_console_safety import LONG_EP, until_output
from tests.hub.conftest import Setup, console, console_session, outputs_on, wait_all_off


async def test_a_fault_paused_session_is_recovered_and_resumed_at_the_console(setup: Setup, shots) -> None:
    room, app = setup.room, app_for(setup)
    # no trigger pulled: the injector stays armed
    async with console_session(room, setup.hub, app, LONG_EP, size=SIZE) as (pilot, _):
        await until(pilot, lambda: on_screen(app, RunningScreen), "running")
        await until_output(pilot, room, "inj-1")
        async with ControlClient(room.sims["inj-1"].control) as inj:
            await inj.call("inject", fault="cartridge_missing", count=-1)
            await until_shown(pilot, "PAUSED BY A FAULT on inj-1", "the fault's pause",
                              lambda: (app.state.session or {}).get("recovery"))
            assert not any((await outputs_on(room)).values())
            shots(app, "fault")
            await pilot.press("f")  # the cause is still there: refused, still paused
            await until(pilot, lambda: any(r.startswith("recover refused") for r in app.refusals), "the refusal")
            assert app.state.state == "paused" and app.state.session.get("recovery")
            await inj.call("clear", fault="cartridge_missing")  # a cartridge put back
        await pilot.press("f")
        await until(pilot, lambda: app.state.state == "paused" and not app.state.session.get("recovery"),
                    "recovered")
        await pilot.press("r")
        await until(pilot, lambda: on_screen(app, ConfirmDialog), "the resume question")
        await pilot.press("y")
        await until(pilot, lambda: app.state.state == "running", "running again")
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.state.state == "aborted", "aborted")
    await wait_all_off(room)


async def test_a_device_left_in_fault_is_cleared_from_the_room_screen(setup: Setup) -> None:
    room, app = setup.room, app_for(setup)
    async with console_session(room, setup.hub, app, LONG_EP, size=SIZE, trigger_hz=10) as (pilot, sid):
        await until(pilot, lambda: app.state.prompt, "the confirm step")
        await pilot.press("c")
        await until_output(pilot, room, "epg-1")
        async with ControlClient(room.sims["epg-1"].control) as epg:
            await epg.call("inject", fault="overcurrent", count=-1)
            await until(pilot, lambda: (app.state.session or {}).get("recovery"), "paused by the fault")
            await pilot.press("ctrl+c")  # the technician ends the session instead
            await until(pilot, lambda: app.state.state == "aborted", "aborted")
            await until(pilot, lambda: app.state.devices["epg-1"].get("fault"), "epg-1 left in fault")
            start = await console(room, "start", program="demo", patient_ref="P-0009", operator="dr-c")
            assert start["error"]["code"] == "device_unavailable", start  # a faulted device refuses starts
            await pilot.press("escape")
            await until(pilot, lambda: on_screen(app, RoomScreen), "the room")
            await pilot.press("f")  # the cause is still there: the device refuses
            await until(pilot, lambda: any(r.startswith("clear_fault refused") for r in app.refusals), "refused")
            assert app.state.devices["epg-1"].get("fault")
            await epg.call("clear", fault="overcurrent")  # the cause found and removed
        await pilot.press("f")
        await until(pilot, lambda: not app.state.devices["epg-1"].get("fault"), "epg-1 cleared")
        assert app.state.alarms  # the fault's latched alarm stays until acknowledged
        await pilot.press("a")
        await until(pilot, lambda: not app.state.alarms, "the alarms acknowledged")
        assert app.state.session_id == sid and app.state.state == "aborted"
    states = await wait_all_off(room)
    assert states["epg-1"]["fault"] in (None, 0, "", False), states["epg-1"]
