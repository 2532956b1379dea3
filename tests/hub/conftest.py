"""End-to-end helpers for the hub daemon: a simulated room, ``devicehub serve`` as a
process, and clinic software over a real Mosquitto.

Why a process: the hub is a daemon; killing it (SIGKILL), restarting it on the same
config and reading its will are what clinics will live through, and only a real
process has a real TCP connection whose loss makes the broker publish the will.

Every test gets its own site id, so topics (and the broker's retained messages) of
one test never reach another even on the shared session broker.

The hub process, the clinic and the room's helpers live in simulators/devsupport (the
benchmarks use them too); this module names them for the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulators.devsupport.clinic import (DEVICES, SHORT_DEMO, Clinic, ack_prompts,  # noqa: F401
                                          auto_trigger, confirmed, console, console_session, hub_followed,
                                          new_site, outputs_on, room_started, root_of, run_to_awaiting,
                                          sim_states, start_at_the_chair, start_body, wait_all_off, wait_sim)
from simulators.devsupport.processes import ROOT
from simulators.devsupport.processes import ServeProcess as HubProcess
from simulators.devsupport.processes import SimulatedRoomProcess, hub_in
from simulators.simroom import SimulatedRoom


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``devicehub ARGS`` as a process, as a technician would type it."""
    return subprocess.run([sys.executable, "-m", "devicehub.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


async def acli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, timeout=timeout)


async def timed_request(clinic: Clinic, verb: str, body: dict[str, Any] | bytes | None = None
                        ) -> tuple[dict[str, Any], float, float]:
    """A request and the ``time.monotonic()`` just before it was sent and just after its reply."""
    t0 = time.monotonic()
    reply = await clinic.request(verb, body)
    return reply, t0, time.monotonic()


def assert_safe_state_ms(ms: Any, t0: float, t1: float) -> None:
    """A reported safe-state time is a real duration inside the request that caused it:
    more than nothing, and no more than the request's whole round trip (not a fixed
    bound, which a loaded machine could miss)."""
    assert isinstance(ms, (int, float)) and not isinstance(ms, bool), ms
    assert 0 < ms <= (t1 - t0) * 1000.0, (ms, (t1 - t0) * 1000.0)


# ====================================================================== fixtures
@dataclass
class Setup:
    room: SimulatedRoom
    hub: HubProcess
    port: int

    @property
    def root(self) -> str:
        return root_of(self.room.site, self.room.room)

    @property
    def config(self) -> str:
        return str(self.room.config_path)


@contextlib.contextmanager
def simulated_room(directory: Path, port: int, *, room: str = "room-1", site: str | None = None,
                   remote_confirmation: bool = True, own_process: bool = False) -> Iterator[SimulatedRoom]:
    """The four simulators and the hub's config; ``own_process``: the simulators in a process
    of their own, out of reach of this process's GIL (a test whose process is busy beside a
    session: a simulator held up past the hub's reply deadline is a device not answering)."""
    kind = SimulatedRoomProcess if own_process else SimulatedRoom
    with kind(directory, site=site or new_site(), room=room, mqtt_port=port,
              remote_confirmation=remote_confirmation) as sr:
        yield sr


@pytest.fixture
async def setup(broker, tmp_path) -> AsyncIterator[Setup]:
    """A simulated room and its hub (not started yet: the clinic subscribes first)."""
    # the simulators in a process of their own: in this one they would share the GIL with
    # the test's clinic, and on a loaded machine miss the hub's heartbeat deadlines
    with simulated_room(tmp_path / "room", broker.port, own_process=True) as sr:
        async with hub_in(sr) as hub:
            yield Setup(sr, hub, broker.port)


async def running_with_output(setup: Setup, clinic: Clinic) -> str:
    """A session confirmed at the console and delivering (a device output on)."""
    sid = await run_to_awaiting(clinic)
    r = await console(setup.room, "confirm", session=sid, by="tech")
    assert r["ok"], r
    await clinic.wait_event(sid, "point_done")
    deadline = asyncio.get_running_loop().time() + 10
    while not any((await outputs_on(setup.room)).values()):
        assert asyncio.get_running_loop().time() < deadline, "no output came on"
    return sid
