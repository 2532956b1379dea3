"""Pause and resume from afar (confirmed at the chair), and the console's own controls."""

from __future__ import annotations

import asyncio
import sys

from tests.hub.conftest import (
    DEVICES,
    Setup,
    acli,
    console,
    hub_followed,
    outputs_on,
    run_to_awaiting,
    running_with_output,
    wait_all_off,
)


async def test_remote_pause_and_resume_is_confirmed_at_the_chair(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=10) as clinic:
        sid = await running_with_output(setup, clinic)

        paused = await clinic.request("pause", {"session": sid, "reason": "patient asked"})
        assert paused["ok"] and paused["data"] == {"session": sid, "state": "paused"}, paused
        safe = await clinic.wait_event(sid, "safe_state")
        assert safe["data"]["trigger"] == "pause" and all(safe["data"]["devices"][d] == "off" for d in DEVICES)
        assert not any((await outputs_on(room)).values())

        # a resume from afar energises nothing until a technician confirms at the chair
        resumed = await clinic.request("resume", {"session": sid})
        assert resumed["ok"] and resumed["data"]["state"] == "awaiting_confirmation", resumed
        assert not any((await outputs_on(room)).values())
        again = await clinic.request("pause", {"session": sid})
        assert again["ok"] is False and again["error"]["code"] == "invalid_state", again

        confirm = await acli("confirm", sid, "--by", "nurse-b", "--config", setup.config)
        assert confirm.returncode == 0, confirm.stderr
        assert "state=running" in confirm.stdout
        confirmed = [e for e in clinic.events(sid) if e["data"]["event"] == "confirmed"]
        assert confirmed[-1]["data"]["by"] == "nurse-b"
        await clinic.wait_event(sid, "resumed")

        # the console's own controls: pause, resume (confirmed by whoever is at it), abort
        r = await acli("console", "--pause", sid, "--by", "tech", "--config", setup.config)
        assert r.returncode == 0 and "state=paused" in r.stdout, (r.stdout, r.stderr)
        r = await acli("console", "--pause", sid, "--by", "tech", "--config", setup.config)
        assert r.returncode == 2 and "invalid_state" in r.stderr, (r.stdout, r.stderr)
        r = await acli("console", "--resume", sid, "--by", "tech", "--config", setup.config)
        assert r.returncode == 0 and "state=running" in r.stdout, (r.stdout, r.stderr)
        r = await acli("console", "--abort", "--by", "tech", "--config", setup.config)
        # if the session ended on its own before the abort, say how (its last events)
        assert r.returncode == 0 and "state=aborted" in r.stdout, (
            r.stdout, r.stderr, [e["data"] for e in clinic.events(sid)][-6:])
        await clinic.wait_event(sid, "aborted")
        await wait_all_off(room)
        states = [e["data"]["state"] for e in clinic.events(sid) if e["data"]["event"] == "state"]
        assert states[-6:] == ["paused", "awaiting_confirmation", "running", "paused", "running", "aborted"], states


async def test_console_cli_without_a_hub_says_so(setup: Setup) -> None:
    r = await acli("console", "--abort", "--config", setup.config)
    assert r.returncode == 1 and "not reachable" in r.stderr
    r = await acli("confirm", "NOPE", "--config", setup.config)
    assert r.returncode == 1 and "not reachable" in r.stderr


async def test_console_watch_streams_the_session(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with hub_followed(room, hub, trigger_hz=10) as clinic:
        sid = await run_to_awaiting(clinic)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "devicehub.cli", "console", "--plain", "--config", setup.config,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            seen: list[str] = []

            async def until(text: str) -> None:
                while not any(text in line for line in seen):
                    line = await asyncio.wait_for(proc.stdout.readline(), 20)
                    assert line, (seen, (await proc.stderr.read()).decode() if proc.stderr else "")
                    seen.append(line.decode())

            await until(f"session {sid} awaiting_confirmation")  # the view's first picture
            assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
            await until("confirmed by=tech")
            await until("state -> running")
            await until(" on inj-1: volume_ul")  # a point delivered, as the technician sees it
        finally:
            proc.terminate()
            await proc.wait()
