"""A whole session at the console, from program pick to the ended screen."""

from __future__ import annotations

from devicehub.console.screens.dialogs import AdverseEventDialog
from devicehub.console.screens.ended import EndedScreen
from devicehub.console.screens.new_session import NewSessionScreen
from devicehub.console.screens.preflight import PreflightScreen
from devicehub.console.screens.room import RoomScreen
from devicehub.console.screens.running import RunningScreen
from tests.console.conftest import SIZE, app_for, on_screen, recorded_events, screen_text, type_into, until, until_shown
from tests.hub.conftest import Setup, auto_trigger, console

SHORT = "light.duration_s=1 field.duration_s=1 ep.pulses_per_point=2"


async def pick_program(pilot, program: str) -> None:
    app = pilot.app
    await until(pilot, lambda: on_screen(app, NewSessionScreen) and app.screen.programs, "the programs")
    ol = app.screen.query_one("#programs")
    ol.focus()
    ids = [p["program"] for p in app.screen.programs]
    for _ in range(len(ids) + 1):
        if ol.highlighted is not None and ids[ol.highlighted] == program:
            break
        await pilot.press("down")
    await pilot.press("enter")
    await until(pilot, lambda: app.screen.program == program, f"program {program} picked")


async def test_a_whole_session_from_program_pick_to_the_ended_screen(setup: Setup, shots) -> None:
    room, hub = setup.room, setup.hub
    await hub.astart()
    await auto_trigger(room, 10)  # the simulated technician pulls the INJ-1 trigger
    enrolled = await console(room, "enrol", patient_ref="P-0001", course="demo-course", by="dr-a")
    assert enrolled["ok"], enrolled
    app = app_for(setup)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.connected and app.state.devices, "the room")
        assert on_screen(app, RoomScreen)
        shots(app, "room")
        await pilot.press("n")
        await pick_program(pilot, "demo")
        await type_into(pilot, "#patient", "P-0001")
        await until_shown(pilot, "course: session 1 of 2 of phase initial (course demo-course)", "the course")
        await type_into(pilot, "#params", SHORT)
        await until(pilot, lambda: app.screen.check and app.screen.check.get("startable")
                    and app.screen.check["params"], "a startable dry run")
        shots(app, "new-session")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: on_screen(app, PreflightScreen), "the checklist")
        screen = app.screen
        screen.query_one("#items").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "consent" in app.state.preflight, "consent ticked")
        assert app.state.state == "preflight"
        assert screen.query_one("#start").disabled
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.state.state == "awaiting_confirmation", "every item done")
        await until(pilot, lambda: not screen.query_one("#start").disabled, "START enabled")
        shots(app, "preflight")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: on_screen(app, RunningScreen), "the running screen")
        await until(pilot, lambda: app.state.prompt, "the confirm step")
        await until_shown(pilot, "CONFIRM STEP apply-serum", "the prompt on screen")
        shots(app, "running-prompt")
        await pilot.press("c")
        await until(pilot, lambda: any("prompt_acknowledged" in line and "by=tech-a" in line
                                       for line in app.state.events), "the step confirmed by tech-a")
        await until(pilot, lambda: on_screen(app, EndedScreen) and app.screen.verified, "the ended screen",
                    timeout=120)
        await until(pilot, lambda: app.screen.report, "the report's path")
        text = screen_text(app)
        assert "COMPLETED" in text and "VERIFIES" in text, text
        shots(app, "ended")
        tick = {t.by for t in app.state.preflight.values()}
        assert tick == {"tech-a"}

        # an adverse event, recorded from the ended screen with who recorded it
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, AdverseEventDialog), "the adverse event form")
        await pilot.click("#kind")
        await until(pilot, lambda: app.screen.query_one("#kind").highlighted is not None, "a kind chosen")
        while app.screen.query_one("#kind").highlighted != 0:  # pain
            await pilot.press("up")
        await pilot.click("#severity")
        await until(pilot, lambda: app.screen.query_one("#severity").highlighted is not None, "severity chosen")
        while app.screen.query_one("#severity").highlighted != 1:
            await pilot.press("down")
        await type_into(pilot, "#score", "11")
        await pilot.press("ctrl+s")  # refused by the form: 0-10
        assert on_screen(app, AdverseEventDialog)
        await type_into(pilot, "#score", "3")
        shots(app, "adverse-event")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: on_screen(app, EndedScreen) and app.screen.recorded, "recorded")
        sid = app.state.session_id
        await until_shown(pilot, "course demo-course: phase initial, 1 session(s) completed; next session due",
                          "the course's next session window")

        # the same patient again, at once: the course says where they stand, and it is too soon
        await pilot.press("n")
        await pick_program(pilot, "demo")
        await type_into(pilot, "#patient", "P-0001")
        await until(pilot, lambda: {f["id"]: f["severity"] for f in (app.screen.check or {}).get("findings", [])}
                    .get("course.interval_days") == "hard", "the course interval finding")
        await until_shown(pilot, "course: session 2 of 2 of phase initial (course demo-course), next due",
                          "the patient's course")
        assert app.screen.query_one("#start").disabled
    events = recorded_events(room, sid)
    adverse = [e for e in events if e["event"] == "adverse_event"]
    assert [(a["data"]["kind"], a["data"]["severity"], a["data"]["by"], a["data"]["score"]) for a in adverse] == [
        ("pain", "moderate", "tech-a", 3)]
    assert [e["data"]["by"] for e in events if e["event"] == "confirmed"] == ["tech-a"]
    completed = next(e["index"] for e in events if e["event"] == "completed")
    assert adverse[0]["index"] > completed  # recorded after the end, in the same chain
