"""Runtime limits watched on every telemetry reading while a session runs.

The skin temperature read by an emitter is held to ``limits.runtime.skin_temp_c``: past
the soft limit a medium alarm is recorded and the session goes on; past the hard limit
the session fails through the runner's stop path (every output off first).
"""

from __future__ import annotations

import asyncio
from typing import Any


class RuntimeLimitWatch:
    """A telemetry hook of the room's device manager: ``hook(device_id, status)``; never waits."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` beside the caller (a telemetry hook may not wait), keeping a reference."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def __call__(self, dev_id: str, status: Any) -> None:
        room = self.room
        runner = room.active_session()
        if runner is None or runner.state != "running":
            return
        skin = status.readings.get("skin_temp_c")
        if skin is None:
            return
        limit = room.limits.runtime.skin_temp_c
        hit = limit.exceeded(float(skin))
        if hit is None:
            room.alarms.clear(f"{dev_id}:skin_temperature")
            return
        severity, value = hit
        if severity == "hard":
            alarm = runner.raise_alarm(source=dev_id, code="skin_temperature",
                                       text=f"skin {skin:.1f} degC above the hard limit {value:g} degC",
                                       key=f"{dev_id}:skin_temperature_hard")
            self._spawn(runner.fail("skin_temperature", trigger=f"skin_temperature:{dev_id}", alarm=alarm))
        else:  # the session goes on; the record and its followers still learn of it
            alarm = runner.raise_alarm(priority="medium", source=dev_id, code="skin_temperature",
                                       text=f"skin {skin:.1f} degC above the soft limit {value:g} degC",
                                       key=f"{dev_id}:skin_temperature", latched=False)
            self._spawn(runner.record_alarm(alarm))
