"""One room, one owner: the room's lock, and ``devicehub run`` through the daemon."""

from __future__ import annotations

import asyncio
import os
import sys

from devicehub.local_console import ConsoleClient
from tests.hub.conftest import (
    ROOT,
    SHORT_DEMO,
    Clinic,
    HubProcess,
    Setup,
    acli,
    auto_trigger,
    console,
    wait_all_off,
)

EXIT_ROOM_HELD = 5


def _short_params() -> list[str]:
    return [f"--param={step}.{k}={v}" for step, values in SHORT_DEMO.items() for k, v in values.items()]


async def _run(setup: Setup, *extra: str, patient: str = "P-owner") -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicehub.cli", "run", "demo", "--config", setup.config, "--patient", patient,
        "--operator", "anna", "--plain", *extra, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _socket_answers(setup: Setup) -> dict:
    """The room's console socket status, once its owner serves it (awaits the owner's start)."""
    while True:
        try:
            async with ConsoleClient(setup.room.directory / "devicehub.sock") as c:
                reply = await c.request("status")
                if reply.get("ok"):
                    return reply["data"]
        except (OSError, ConnectionError):
            pass
        await asyncio.sleep(0.05)  # poll interval while the owner starts


async def test_a_second_serve_on_a_held_room_exits_5_and_the_first_goes_on(setup: Setup) -> None:
    await setup.hub.astart()
    second = await acli("serve", "--config", setup.config)
    assert second.returncode == EXIT_ROOM_HELD, (second.stdout, second.stderr)
    line = second.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"pid {setup.hub.proc.pid}" in line and "serve" in line and "since" in line, line
    assert setup.hub.alive()
    status = await console(setup.room, "status")
    assert status["ok"] and status["data"]["hub"]["owner"] == "serve", status
    # the read-only commands stay usable while the room is held
    listed = await acli("sessions", "list", "--config", setup.config)
    assert listed.returncode == 0, listed.stderr
    checked = await acli("programs", "check", str(ROOT / "configs/programs/demo.yaml"), "--config", setup.config)
    assert checked.returncode in (0, 2) and "held" not in checked.stderr, checked.stderr


async def test_two_runs_at_once_one_is_refused(setup: Setup) -> None:
    first = await _run(setup, *_short_params())  # waits at its preflight prompt, holding the room
    try:
        status = await _socket_answers(setup)
        assert status["hub"]["owner"] == "run"
        second = await _run(setup, "--preflight-done", "--yes", patient="P-other")
        out, err = await second.communicate()
        assert second.returncode == EXIT_ROOM_HELD, (out.decode(), err.decode())
        assert f"pid {first.pid}" in err.decode() and "run" in err.decode(), err.decode()
        # the first one still owns the room and its session: an abort at the chair ends it
        aborted = await console(setup.room, "abort", reason="test over")
        assert aborted["ok"], aborted
        first.stdin.close()
        out, err = await first.communicate()
        assert first.returncode == 3, (out.decode(), err.decode())
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    await wait_all_off(setup.room)


async def test_run_while_serve_runs_goes_through_the_daemon(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 10)
        proc = await _run(setup, "--preflight-done", "--yes", "--ack", "ep.voltage_v", *_short_params())
        out, err = await proc.communicate()
        assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
        sid = next(line.split()[2] for line in out.decode().splitlines() if line.startswith("result: session"))
        # the daemon's session: clinic software saw it over MQTT, origin console
        done = await clinic.wait_event(sid, "completed")
        created = next(e for e in clinic.events(sid) if e["data"]["event"] == "created")
        assert created["data"]["origin"] == "console"
        assert created["data"]["patient_ref"] == "P-owner" and created["data"]["operator"] == "anna"
        assert done["data"]["event"] == "completed"
        assert hub.alive()


async def test_sigkill_of_the_owner_frees_the_room(setup: Setup) -> None:
    await setup.hub.astart()
    setup.hub.kill()
    successor = HubProcess(setup.room.config_path, setup.room.directory / "hub2.log")
    try:
        await successor.astart()
        assert successor.boot == setup.hub.boot + 1
        status = await console(setup.room, "status")
        assert status["ok"] and status["data"]["hub"]["boot"] == successor.boot
    finally:
        await asyncio.to_thread(successor.terminate)
    assert os.path.exists(setup.room.directory / "devicehub.sqlite.lock")
