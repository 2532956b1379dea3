"""Fixtures for the session runner's tests: a simulated room, a Room on it, and the
helpers every test needs to watch a session from the outside.

Every test gets fresh simulators (their totals count from zero, so the record can be
compared with what the devices themselves delivered) and a fresh record store. The
tests observe only public things: the bus (``session.event`` messages), the record
(HubStore), and each simulator's own state through its control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devicehub.bus import Subscription
from devicehub.models.config import HubConfig
from devicehub.records.hub_store import HubStore
from devicehub.room import Room
from devicehub.runner.session import RunnerOptions, SessionRunner
from simulators.simroom import ROOM, SimulatedRoom
from simulators.control import ControlClient
from simulators.devsupport.waiting import poll
from tests.totals_check import assert_totals_match  # noqa: F401 - the tests import it from here

ROOT = Path(__file__).resolve().parent.parent.parent
DEVICES = tuple(d for d, _k in ROOM)  # epg-1, inj-1, led-1, pemf-1
SHIPPED_LIMITS = ROOT / "configs" / "limits.yaml"

#: demo sped up: trains of 10 pulses at 10 ms, 1 s of light and field alongside
FAST_DEMO = {"ep": {"period_ms": 10}, "light": {"duration_s": 1}, "field": {"duration_s": 1}}


@dataclass(kw_only=True)
class Sims:
    """The simulated room's devices, seen through their control channels only."""

    sim: SimulatedRoom
    _clients: dict[str, ControlClient] = field(default_factory=dict)

    def control(self, dev: str) -> ControlClient:
        if dev not in self._clients:
            self._clients[dev] = ControlClient(self.sim.sims[dev].control)
        return self._clients[dev]

    async def sim_state(self, dev: str) -> dict[str, Any]:
        return await self.control(dev).state()

    async def sim_states(self) -> dict[str, dict[str, Any]]:
        states = await asyncio.gather(*(self.sim_state(d) for d in DEVICES))
        return dict(zip(DEVICES, states))

    async def auto_trigger(self, rate_hz: float) -> None:
        await self.control("inj-1").call("auto_trigger", rate_hz=rate_hz)

    async def wait_sim(self, dev: str, check: Callable[[dict[str, Any]], bool], *, timeout: float = 10.0,
                       interval: float = 0.005, what: str = "") -> dict[str, Any]:
        """Poll a simulator's own state until ``check(state)``; returns that state."""
        async def probe() -> dict[str, Any] | None:
            st = await self.sim_state(dev)
            return st if check(st) else None

        return await poll(probe, timeout=timeout, interval=interval, what=what or f"{dev} state")

    async def wait_all_off(self, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """Every simulator reports output_on false (polled: a watchdog may be the one to do it)."""
        async def probe() -> dict[str, dict[str, Any]] | None:
            states = await self.sim_states()
            return states if not any(s["output_on"] for s in states.values()) else None

        return await poll(probe, timeout=timeout, what="every output off")

    async def release(self) -> None:
        """Clear every injected fault (a stalled device would hold up whoever closes it), stop
        the simulated technician, close the control connections."""
        with contextlib.suppress(Exception):
            for dev in DEVICES:
                await self.control(dev).clear()
            await self.auto_trigger(0)
        for c in self._clients.values():
            await c.close()
        self._clients.clear()


@dataclass(kw_only=True)
class Hub(Sims):
    """A Room on a SimulatedRoom, with the record store and a bus subscription."""

    config: HubConfig
    store: HubStore
    room: Room
    sub: Subscription
    #: every session event seen so far (in order), whether a test waited for it or not
    events: list[dict[str, Any]] = field(default_factory=list)

    async def start(self, program: str = "demo", *, params: dict[str, Any] | None = None,
                    acknowledge: list[str] | None = None, preflight: bool = True,
                    patient: str = "P-1", operator: str = "tech",
                    confirmation_required: bool = False) -> SessionRunner:
        """Start a session at the console (no remote confirmation unless asked), preflight taken as done."""
        return await self.room.start_session(
            program=program, patient_ref=patient, operator=operator, params=params,
            acknowledge=acknowledge, origin="console",
            preflight_done_by=f"{operator} (test)" if preflight else None,
            confirmation_required=confirmation_required)

    async def finish(self, runner: SessionRunner, timeout: float = 30.0) -> str:
        """The session's final state; fails the test if it does not end in time."""
        return await asyncio.wait_for(runner.wait(), timeout)

    async def next_event(self, name: str, *, timeout: float = 10.0,
                         where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next ``session.event`` called ``name`` (matching ``where``) from the bus."""
        async def wait() -> dict[str, Any]:
            while True:
                msg = await self.sub.get()
                if msg.kind != "session.event":
                    continue
                self.events.append(msg.data)
                if msg.data.get("event") == name and (where is None or where(msg.data)):
                    return msg.data

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            seen = [e.get("event") for e in self.events[-15:]]
            raise AssertionError(f"no session event {name!r} within {timeout:.1f} s; last seen: {seen}") from None


def write_limits(path: Path, changes: dict[str, dict[str, Any]]) -> Path:
    """The shipped limits with some entries replaced: ``{"session": {"injection_volume_ul": {...}}}``."""
    doc = yaml.safe_load(SHIPPED_LIMITS.read_text())
    for section, entries in changes.items():
        for name, value in entries.items():
            doc[section][name] = {**doc[section][name], **value}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def open_sims(directory: Path, *, limits: Path | None = None) -> AsyncIterator[SimulatedRoom]:
    """Fresh simulators and their hub config in ``directory``; stopped afterwards."""
    sim = SimulatedRoom(directory, **({"limits": limits} if limits is not None else {}))
    await asyncio.to_thread(sim.start)
    try:
        yield sim
    finally:
        await asyncio.to_thread(sim.stop)


@contextlib.asynccontextmanager
async def open_room(config: HubConfig, *, options: RunnerOptions | None = None
                    ) -> AsyncIterator[tuple[HubStore, Room, Subscription]]:
    """A Room opened on ``config`` with its store (the hub as ``devicehub run`` builds it)."""
    store = HubStore(config.store)
    room = None
    try:
        room = Room(config, store=store, boot=await store.next_boot(),
                    options=options or RunnerOptions(auto_acknowledge_prompts=True))
        sub = room.bus.subscribe()
        await room.open()
        yield store, room, sub
    finally:
        if room is not None:
            await _bounded(room.close(), "Room.close()")
        await _bounded(store.close(), "HubStore.close()")


async def _bounded(aw: Awaitable[Any], what: str, timeout: float = 15.0) -> None:
    """A close that hangs fails the test with the tasks still running, instead of hanging it."""
    try:
        async with asyncio.timeout(timeout):
            await aw
    except TimeoutError:
        stuck = [f"{t.get_name()}: {t.get_coro()!r}" for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        raise AssertionError(f"{what} did not finish within {timeout:.0f} s; tasks: {stuck}") from None


@contextlib.asynccontextmanager
async def open_hub(directory: Path, *, limits: Path | None = None,
                   options: RunnerOptions | None = None) -> AsyncIterator[Hub]:
    """Fresh simulators, a fresh store, a Room opened on them; all closed afterwards."""
    async with open_sims(directory, limits=limits) as sim:
        config = HubConfig.load(sim.config_path)
        async with open_room(config, options=options) as (store, room, sub):
            hub = Hub(sim=sim, config=config, store=store, room=room, sub=sub)
            try:
                yield hub
            finally:
                await hub.release()  # before the room closes: no stalled device to wait for


@contextlib.asynccontextmanager
async def open_hub_through(directory: Path, device_id: str, wire_for: Callable[[int], Any]
                           ) -> AsyncIterator[tuple[Hub, Any]]:
    """:func:`open_hub` with one device reached through a test link: ``wire_for(port)``
    builds it (a proxy of simulators/devsupport/proxy.py) on the device's own port; the
    hub and the link are yielded."""
    async with open_sims(directory) as sim:
        config = HubConfig.load(sim.config_path)
        dev = next(d for d in config.devices if d.id == device_id)
        async with wire_for(dev.parsed_endpoint.port) as wire:
            devices = [d.model_copy(update={"endpoint": f"socket://127.0.0.1:{wire.port}"}) if d is dev else d
                       for d in config.devices]
            proxied = config.model_copy(update={"devices": devices})
            async with open_room(proxied) as (store, room, sub):
                hub = Hub(sim=sim, config=proxied, store=store, room=room, sub=sub)
                try:
                    yield hub, wire
                finally:
                    await hub.release()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with open_hub(tmp_path / "room") as h:
        yield h


@pytest.fixture
async def sims(tmp_path: Path) -> AsyncIterator[Sims]:
    """The simulators alone: for tests where the hub is another process."""
    async with open_sims(tmp_path / "room") as sim:
        s = Sims(sim=sim)
        try:
            yield s
        finally:
            await s.release()


def devicehub_cmd(*args: str) -> list[str]:
    """The ``devicehub`` console script, run from the source tree by this interpreter."""
    return [sys.executable, "-c", "import sys; from devicehub.cli import main; sys.exit(main())", *args]
