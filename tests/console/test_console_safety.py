"""At the chair: Ctrl+C aborts at once, a key is acted on at once while telemetry streams,
a remote start waits for the chair, and a lost daemon is said plainly."""

from __future__ import annotations

from textual.screen import ModalScreen

from devicehub.console.screens.dialogs import ConfirmDialog
from devicehub.console.screens.ended import EndedScreen
from devicehub.console.screens.running import RunningScreen
from tests.console.conftest import SIZE, app_for, on_screen, screen_text, until, until_shown
from tests.hub.conftest import Setup, console_session, hub_followed, outputs_on, run_to_awaiting, wait_all_off

#: a demo whose electroporation lasts: 40 pulses of 50 ms at each of 8 points
LONG_EP = {"light": {"duration_s": 1}, "field": {"duration_s": 1}, "ep": {"pulses_per_point": 40}}


async def until_output(pilot, room, device: str) -> None:
    """Let the app run until the simulator says the device's output is on."""
    while not (await outputs_on(room))[device]:
        await pilot.pause(0.02)


async def test_ctrl_c_during_electroporation_turns_every_output_off(setup: Setup, shots) -> None:
    room, app = setup.room, app_for(setup)
    async with console_session(room, setup.hub, app, LONG_EP, size=SIZE, trigger_hz=10) as (pilot, sid):
        await until(pilot, lambda: on_screen(app, RunningScreen) and app.state.prompt, "the confirm step")
        await pilot.press("c")  # one key confirms the step
        await until(pilot, lambda: (app.state.session or {}).get("step") == "ep", "electroporation")
        await until_output(pilot, room, "epg-1")
        shots(app, "running")
        await pilot.press("ctrl+c")
        assert not on_screen(app, ModalScreen)  # no dialog
        states = await wait_all_off(room)
        assert not any(s["output_on"] for s in states.values())
        await until(pilot, lambda: app.state.state == "aborted", "the session aborted")
        await until(pilot, lambda: on_screen(app, EndedScreen) and app.screen.verified, "the ended screen")
        assert "ABORTED" in screen_text(app)
        assert (app.state.session or {}).get("session") == sid


async def test_a_key_is_acted_on_within_100_ms_while_telemetry_arrives(setup: Setup, shots) -> None:
    room, app = setup.room, app_for(setup)
    async with console_session(room, setup.hub, app, LONG_EP, size=SIZE, trigger_hz=4) as (pilot, _):
        await until(pilot, lambda: on_screen(app, RunningScreen) and app.state.state == "running", "running")
        seen = app.state.telemetry
        await until(pilot, lambda: app.state.telemetry >= seen + 20, "telemetry streaming")
        at_press = app.state.telemetry
        await pilot.press("p")
        await until(pilot, lambda: app.state.state == "paused", "paused")
        # the app's own handling: from taking up the key to the pause request written
        # (the event's wait in the queue before that is the machine's load, shown, not judged)
        handled = app.responsiveness("p", "pause")
        assert handled is not None and handled < 0.100, (
            f"the key took {handled} s to reach the hub (it waited {app.key_wait('p')} s in the queue)")
        await until(pilot, lambda: app.state.telemetry >= at_press + 5, "telemetry still arriving")
        await wait_all_off(room)
        await until_shown(pilot, "PAUSED", "the pause on screen")
        shots(app, "paused")

        # resume asks first; n leaves it paused, y resumes
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the resume question")
        await pilot.press("n")
        await until(pilot, lambda: on_screen(app, RunningScreen), "back, still paused")
        assert app.state.state == "paused"
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the resume question")
        shots(app, "resume-confirm")
        await pilot.press("y")
        await until(pilot, lambda: app.state.state == "running", "running again")
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.state.state == "aborted", "aborted")
    await wait_all_off(room)


async def test_a_remote_start_is_confirmed_at_the_console(setup: Setup, shots) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub) as clinic:  # no trigger pulled: the session stays in its injection
        app = app_for(setup)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.connected, "the room")
            sid = await run_to_awaiting(clinic)
            await until_shown(pilot, "WAITING FOR THE CHAIR: start requested by dr-a (origin mqtt)",
                              "the remote start waiting for the chair",
                              lambda: on_screen(app, RunningScreen) and app.state.meta.get("origin") == "mqtt")
            assert not any((await outputs_on(room)).values())
            shots(app, "remote-start")
            await pilot.press("c")
            confirmed = await clinic.wait_event(sid, "confirmed")
            assert confirmed["data"]["by"] == "tech-a"
            await until(pilot, lambda: app.state.state == "running", "running")

            # paused and resumed from afar: the resume waits for the chair too
            assert (await clinic.request("pause", {"session": sid}))["ok"]
            await until(pilot, lambda: app.state.state == "paused", "paused from afar")
            resumed = await clinic.request("resume", {"session": sid})
            assert resumed["data"]["state"] == "awaiting_confirmation", resumed
            await until_shown(pilot, "WAITING FOR THE CHAIR: resume requested from afar",
                              "the remote resume waiting for the chair",
                              lambda: app.state.state == "awaiting_confirmation")
            assert not any((await outputs_on(room)).values())
            start = len(clinic.messages)
            await pilot.press("c")
            confirmed = await clinic.wait_event(sid, "confirmed", start=start)
            assert confirmed["data"]["by"] == "tech-a"
            await until(pilot, lambda: app.state.state == "running", "running again")
            await pilot.press("ctrl+c")
            await clinic.wait_event(sid, "aborted")
    await wait_all_off(room)


async def test_the_daemon_killed_the_console_says_it_lost_the_room(setup: Setup, shots) -> None:
    room, hub, app = setup.room, setup.hub, app_for(setup)
    # no trigger pulled: the session waits in its injection
    async with console_session(room, hub, app, LONG_EP, size=SIZE) as (pilot, sid):
        await until_shown(pilot, "RUNNING", "running",
                          lambda: on_screen(app, RunningScreen) and app.state.state == "running")
        hub.kill()
        await until_shown(pilot, "LOST THE ROOM", "the lost room said", lambda: not app.state.connected)
        text = screen_text(app)
        assert "RUNNING" not in text and "UNKNOWN" in text, text  # never pretends the session runs
        shots(app, "lost")
        await pilot.press("ctrl+c")  # no hub to take it: the console says so, it does not pretend
        await until(pilot, lambda: any(r.startswith("ABORT NOT DELIVERED") for r in app.refusals),
                    "the undelivered abort said")
        await hub.astart()  # back: the console reconnects by itself
        await until(pilot, lambda: app.state.connected and app.state.state == "failed", "reconnected")
        await until(pilot, lambda: on_screen(app, EndedScreen), "the session's end")
        assert app.state.session_id == sid and (app.state.session or {}).get("reason") == "hub_restart"
        await until_shown(pilot, "ROOM CONNECTED", "the room connected again, said", lambda: app.state.connected)
