"""Waiting in driver tests, with a deadline and never a bare sleep: for a driver's event,
or for a simulator's state (read over its control channel)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from drivers.base import DeviceEvent
from simulators.control import ControlClient


async def next_event(q: asyncio.Queue[DeviceEvent], *kinds: str, timeout: float = 3.0) -> DeviceEvent:
    """The next event of one of ``kinds`` (others are skipped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(q.get(), max(0.001, deadline - time.monotonic()))
        if ev.kind in kinds:
            return ev


async def wait_state(ctl: ControlClient, pred: Callable[[dict[str, Any]], bool],
                     timeout: float = 3.0) -> dict[str, Any]:
    """The simulator's state once ``pred`` holds; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        st = await ctl.state()
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last state {st}")
        await asyncio.sleep(0.01)
