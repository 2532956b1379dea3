"""Awaiting a condition that has no event of its own, by polling it with a deadline.

The deadline only keeps a broken run from hanging; it is no timing claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def poll(check: Callable[[], Awaitable[Any]], *, timeout: float, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy, and return that; an AssertionError
    after ``timeout`` s (with the last value seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f} s (last: {value!r})")
        await asyncio.sleep(interval)  # poll interval
