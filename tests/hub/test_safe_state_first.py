"""The safe state before anything else: with every SQLite worker of the hub stalled (the
record, the outbox, the idempotency store), an abort over MQTT or over the console socket
still brings every simulator output off within 50 ms of the abort's sending, timed by the
simulators' own ``output_changed_at`` (CLOCK_MONOTONIC, the same clock in every process)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from devicehub.daemon import mqtt_frontend
from devicehub.local_console import ConsoleClient, ConsoleServer
from devicehub.models.config import HubConfig
from devicehub.records.hub_store import HubStore
from devicehub.room import Room
from simulators.control import ControlClient
from tests.hub.conftest import DEVICES, Clinic, Setup, auto_trigger, sim_states, simulated_room

#: the demo, short but for its light and field: the abort lands while both are on
LONG_EXPOSURE = {"light": {"duration_s": 60}, "field": {"duration_s": 60}, "ep": {"pulses_per_point": 2}}
BOUND_S = 0.050


@contextlib.asynccontextmanager
async def hub_here(config: HubConfig) -> AsyncIterator[tuple[Room, Any, HubStore]]:
    """The daemon's parts in this process, so the test can stall their worker threads."""
    store = HubStore(config.store)
    room = Room(config, store=store, boot=await store.next_boot())
    try:
        async with mqtt_frontend(config, room, room.boot) as frontend:
            await room.open()
            server = ConsoleServer(room, config.console_socket)
            await server.start()
            try:
                yield room, frontend, store
            finally:
                await server.close()
                await room.close()
    finally:
        await store.close()


async def _until(cond, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.02)  # poll interval


@pytest.mark.parametrize("front", ["mqtt", "console"])
async def test_abort_with_every_worker_stalled_turns_every_output_off_within_50_ms(broker, tmp_path, front):
    with simulated_room(tmp_path / "room", broker.port, remote_confirmation=False) as sr:
        config = HubConfig.load(sr.config_path)
        setup = Setup(sr, None, broker.port)  # type: ignore[arg-type]
        async with hub_here(config) as (room, frontend, store), Clinic(broker.port, setup.root) as clinic:
            await clinic.wait_connected()
            await auto_trigger(sr, 10)
            async with ConsoleClient(config.console_socket) as chair:
                started = await chair.request("start", program="demo", patient_ref=f"P-{uuid.uuid4().hex[:6]}",
                                              operator="anna", params=LONG_EXPOSURE, preflight_done_by="anna")
                assert started["ok"], started
                sid = started["data"]["session"]

                async def acks() -> None:  # the technician acknowledges the confirm step
                    while True:
                        if room.current is not None and room.current.prompt_pending:
                            await chair.request("prompt_ack", by="anna")
                        await asyncio.sleep(0.05)

                acker = asyncio.ensure_future(acks())

                async def exposing() -> bool:
                    states = await sim_states(sr)
                    return states["led-1"]["output_on"] and states["pemf-1"]["output_on"]

                await _until(exposing, "LED + PEMF exposure")
                acker.cancel()

                # stall every SQLite worker of the hub until the test lets them go
                gate = threading.Event()
                stalls = [asyncio.ensure_future(store.call(lambda _records: gate.wait(30.0))),
                          asyncio.ensure_future(frontend.outbox.call(gate.wait, 30.0)),
                          asyncio.ensure_future(frontend.idempotency.call(gate.wait, 30.0))]
                try:
                    on_before = {d: s["output_on"] for d, s in (await sim_states(sr)).items()}
                    t_sent = time.monotonic()
                    if front == "mqtt":
                        await clinic.publish(f"{setup.root}/cmd/abort",
                                             orjson.dumps({"request_id": uuid.uuid4().hex, "session": sid}))
                    else:
                        asyncio.ensure_future(chair.request("abort", session=sid))

                    async def all_off() -> dict[str, Any] | None:
                        states = await sim_states(sr)
                        return None if any(s["output_on"] for s in states.values()) else states

                    states = await _until(all_off, "safe state", timeout=10.0)
                    assert not gate.is_set()  # the workers were stalled all along
                    late = {d: states[d]["output_changed_at"] - t_sent for d in DEVICES if on_before[d]}
                    assert late and all(v <= BOUND_S for v in late.values()), late
                finally:
                    gate.set()
                    await asyncio.gather(*stalls)
                await clinic.wait_event(sid, "aborted")
                summary = await chair.request("session", session=sid)
                assert summary["data"]["state"] == "aborted", summary


@pytest.mark.parametrize("moment", ["before_creation", "during_creation", "after_creation"])
async def test_abort_during_a_start_ends_with_outputs_off_and_a_final_state(broker, tmp_path, moment):
    """An abort at any moment of a start: every output off, and a session that was created
    ends in a final state in the record (one that was not is refused, nothing started)."""
    with simulated_room(tmp_path / "room", broker.port, remote_confirmation=False) as sr:
        config = HubConfig.load(sr.config_path)
        async with hub_here(config) as (room, frontend, store), \
                ConsoleClient(config.console_socket) as chair, ConsoleClient(config.console_socket) as other:
            await auto_trigger(sr, 10)
            gate = threading.Event()
            stall = None
            if moment == "during_creation":  # the start waits on its creation writes
                stall = asyncio.ensure_future(store.call(lambda _records: gate.wait(30.0)))
            if moment == "before_creation":  # the start waits for a device that went quiet to answer
                async with ControlClient(sr.sims["epg-1"].control) as c:
                    assert (await c.call("inject", fault="stall", count=-1))["ok"]
            start = asyncio.ensure_future(chair.request(
                "start", program="demo", patient_ref=f"P-{uuid.uuid4().hex[:6]}", operator="anna",
                params=LONG_EXPOSURE, preflight_done_by="anna"))
            if moment == "after_creation":
                assert (await start)["ok"]
            elif moment == "during_creation":
                await _until(lambda: _true(room.current is not None), "the session object")
            else:
                await _until(lambda: _true(room.starting), "the start's checks")
            aborted = await other.request("abort", reason="test")
            assert aborted["ok"], aborted
            if moment == "before_creation":
                async with ControlClient(sr.sims["epg-1"].control) as c:
                    assert (await c.call("clear", fault="stall"))["ok"]
            gate.set()
            if stall is not None:
                await stall
            reply = await start
            await _until(lambda: _none_on(sr), "every output off", timeout=10.0)
            if moment != "before_creation":
                assert reply["ok"], reply
                sid = reply["data"]["session"]
                await asyncio.wait_for(room.current.wait(), 10.0)
                summary = await chair.request("session", session=sid)
                assert summary["data"]["state"] == "aborted", summary
            else:  # refused: nothing was created, nothing energised
                assert not reply["ok"] and reply["error"]["code"] == "invalid_state", reply
                assert room.current is None
                listed = await store.list_sessions(limit=5)
                assert all(s["state"] in ("aborted", "completed", "failed") for s in listed), listed
            assert not any(s["output_on"] for s in (await sim_states(sr)).values())


async def _true(value: bool) -> bool:
    return value


async def _none_on(sr: Any) -> bool:
    return not any(s["output_on"] for s in (await sim_states(sr)).values())
