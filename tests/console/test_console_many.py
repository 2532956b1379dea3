"""Several consoles on one daemon see the same state; closing one changes no session; one
attached late shows what was done before it."""

from __future__ import annotations

from devicehub.console.screens.preflight import PreflightScreen
from devicehub.console.screens.running import RunningScreen
from devicehub.local_console import ConsoleClient
from tests.console.conftest import SIZE, app_for, on_screen, until
from tests.hub.conftest import Setup, console, room_started, wait_all_off


async def test_two_consoles_see_the_same_session_and_closing_one_changes_nothing(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    await hub.astart()
    first, second = app_for(setup, by="tech-a"), app_for(setup, by="nurse-b")
    async with second.run_test(size=SIZE) as p2:
        async with first.run_test(size=SIZE) as p1:
            await until(p1, lambda: first.state.connected, "the first console attached")
            await until(p2, lambda: second.state.connected, "the second console attached")
            reply = await console(room, "start", program="demo", patient_ref="P-0005", operator="dr-e",
                                  wait_for_start=True)
            assert reply["ok"], reply
            sid = reply["data"]["session"]
            for pilot, app in ((p1, first), (p2, second)):
                await until(pilot, lambda app=app: on_screen(app, PreflightScreen)
                            and app.state.session_id == sid, "the checklist on both")
            # the second console ticks an item: the first sees it, with who
            second.screen.query_one("#by").value = "nurse-b"
            second.screen.query_one("#items").focus()
            await p2.press("enter")
            await until(p1, lambda: "consent" in first.state.preflight, "the tick seen by the first console")
            assert first.state.preflight["consent"].by == "nurse-b"
            await p1.press("ctrl+q")  # the first console closes
        status = await console(room, "status")
        assert status["data"]["session"] == {"session": sid, "state": "preflight"}, status
        assert second.state.state == "preflight" and second.state.connected
        await p2.press("ctrl+c")
        await until(p2, lambda: second.state.state == "aborted", "aborted from the second console")
    await wait_all_off(room)


async def test_a_console_attached_mid_session_shows_what_was_done_before_it(setup: Setup) -> None:
    room = setup.room
    await room_started(room, setup.hub, trigger_hz=10)
    reply = await console(room, "start", program="demo", patient_ref="P-0006", operator="dr-f",
                          preflight_done_by="nurse", params={"light": {"duration_s": 1}, "field": {"duration_s": 1}})
    assert reply["ok"], reply
    sid = reply["data"]["session"]
    async with ConsoleClient(room.directory / "devicehub.sock") as c:  # until the confirm step waits
        assert (await c.request("watch"))["ok"]
        async for m in c.messages():
            if m["kind"] == "session.state" and (m["data"].get("prompt") or {}).get("step") == "apply-serum":
                break
    app = app_for(setup)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: on_screen(app, RunningScreen) and app.state.prompt, "the waiting prompt")
        points = app.state.point_ids("inject")
        await until(pilot, lambda: all(app.state.point_status("inject", p) == "done" for p in points),
                    "the injection's points done, from the record")
        assert len(points) == 8 and app.state.session_id == sid
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.state.state == "aborted", "aborted")
    await wait_all_off(room)
