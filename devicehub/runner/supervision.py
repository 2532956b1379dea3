"""Supervision: every device's events watched for the whole session; trouble trips the safe state.

A fault, a lost connection or a failing heartbeat of any device (used by the session or
not) is a high alarm of the session; a fault the technician removes at the chair pauses a
running session (``recovery.py``), anything else fails it (``SessionRunner.fail``); either
brings every device to its safe state first.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from devicehub.alarms import WATCHDOG_CODES
from drivers.base import DeviceEvent

SUPERVISED_EVENTS = ("fault", "connection_lost", "heartbeat_failed")


async def supervise(runner: Any) -> None:
    """Watch every device's events for the whole session; trip the safe state on trouble."""
    queues: list[tuple[str, asyncio.Queue[DeviceEvent]]] = []
    async with contextlib.AsyncExitStack() as stack:
        for dev_id, dev in runner.devices.items():
            q = await stack.enter_async_context(dev.subscribe())
            queues.append((dev_id, q))
        merged: asyncio.Queue[tuple[str, DeviceEvent]] = asyncio.Queue()

        async def pump(dev_id: str, q: asyncio.Queue[DeviceEvent]) -> None:
            while True:
                merged.put_nowait((dev_id, await q.get()))

        pumps = [asyncio.ensure_future(pump(d, q)) for d, q in queues]
        try:
            while not runner.finished:
                dev_id, ev = await merged.get()
                if ev.kind in SUPERVISED_EVENTS:
                    await on_device_trouble(runner, dev_id, ev)
        finally:
            for p in pumps:
                p.cancel()

async def on_device_trouble(runner: Any, dev_id: str, ev: DeviceEvent) -> None:
    if runner.finished:
        return
    code = ev.data.get("code", ev.kind)
    text = ev.data.get("text") or ev.data.get("error") or ev.kind
    if ev.kind == "fault":
        alarm_code = "watchdog" if str(code) in WATCHDOG_CODES else "device_fault"
    else:
        alarm_code = ev.kind
    if runner.state in ("running", "paused", "awaiting_confirmation", "preflight", "created"):
        alarm = runner.raise_alarm(source=dev_id, code=alarm_code, text=f"{dev_id}: {text} ({code})",
                                   key=f"{dev_id}:{alarm_code}", device=dev_id, device_code=code)
        recovery = runner._recovery_for(dev_id, code, text) if ev.kind == "fault" else None
        if recovery is not None:  # a fault the technician removes at the chair (runner/recovery.py)
            stopping = runner.machine.stopping
            if runner.state == "running" and not stopping:
                await runner._pause_for_fault(recovery, trigger=f"fault:{dev_id}", t_trigger=ev.t, alarm=alarm)
                return
            if stopping or runner.state == "paused":
                # the room is (being) made safe already: the fault is recorded, and a
                # paused session shows what to fix before it may resume
                await runner.record_alarm(alarm)
                if runner.state == "paused" and not stopping and runner.recovery is None:
                    runner.recovery = recovery
                    runner.publish_state()
                return
        await runner.fail(f"{alarm_code}:{dev_id}", trigger=f"{ev.kind}:{dev_id}", t_trigger=ev.t, alarm=alarm)
