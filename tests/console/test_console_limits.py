"""The dry run at the console: a hard limit makes a start impossible; a soft one is
acknowledged one by one, and the record says who acknowledged it."""

from __future__ import annotations

from devicehub.console.screens.new_session import NewSessionScreen
from devicehub.console.screens.preflight import PreflightScreen
from tests.console.conftest import SIZE, app_for, on_screen, recorded_events, screen_text, type_into, until, until_shown
from tests.console.test_console_session import SHORT, pick_program
from tests.hub.conftest import Setup, wait_all_off


def findings(app) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in (app.screen.check or {}).get("findings", [])}


async def test_a_soft_limit_is_acknowledged_by_name_and_recorded(setup: Setup, shots) -> None:
    room, hub = setup.room, setup.hub
    await hub.astart()
    app = app_for(setup)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.connected, "the room")
        await pilot.press("n")
        await pick_program(pilot, "demo")
        await type_into(pilot, "#patient", "P-0002")
        await type_into(pilot, "#operator", "dr-b")
        screen = app.screen
        assert isinstance(screen, NewSessionScreen)

        # a hard limit: shown, never acknowledged, no start
        await type_into(pilot, "#params", SHORT + " inject.dose_ul=150")
        await until(pilot, lambda: findings(app).get("inject.dose_ul") == "hard", "the hard finding")
        await until_shown(pilot, "start impossible", "the hard finding on screen")
        assert screen.query_one("#start").disabled
        shots(app, "new-session-hard")
        screen.query_one("#findings").focus()
        await pilot.press("enter")
        assert not screen.acks

        # two soft limits: each acknowledged by the operator, one by one
        await type_into(pilot, "#params", SHORT + " inject.dose_ul=60 ep.amplitude_v=60")
        soft = {"inject.dose_ul": "soft", "ep.amplitude_v": "soft"}
        await until(pilot, lambda: findings(app) == soft, "only the two soft findings")
        await until_shown(pilot, "to acknowledge", "the soft findings on screen")
        assert not screen.check["startable"] and screen.query_one("#start").disabled
        await pilot.press("ctrl+s")  # refused: nothing starts
        assert app.state.session_id is None
        screen.query_one("#findings").focus()
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.acks) == 1 and screen.check["acknowledged"], "one acknowledged")
        assert not screen.check["startable"] and screen.query_one("#start").disabled
        await pilot.press("down", "enter")
        await until(pilot, lambda: screen.check and screen.check["startable"], "startable once both acknowledged")
        assert screen.acks == {"inject.dose_ul": "dr-b", "ep.amplitude_v": "dr-b"}
        assert not screen.query_one("#start").disabled
        shots(app, "new-session-soft")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: on_screen(app, PreflightScreen), "the checklist")
        sid = app.state.session_id
        await pilot.press("ctrl+c")  # abort from the checklist: no dialog
        await until(pilot, lambda: app.state.state == "aborted", "aborted")
    await wait_all_off(room)
    created = next(e for e in recorded_events(room, sid) if e["event"] == "created")
    assert sorted(created["data"]["acknowledged"]) == ["ep.amplitude_v", "inject.dose_ul"]
    assert created["data"]["acknowledged_by"] == {"ep.amplitude_v": "dr-b", "inject.dose_ul": "dr-b"}
    assert created["data"]["params"]["inject"]["dose_ul"] == 60
