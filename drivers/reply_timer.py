"""A reply deadline for request/reply links that have one request in flight at a time.

``asyncio.timeout()`` around every reply schedules a timer, cancels it, and cancels and
uncancels the task on expiry: several microseconds per request, a large share of a
driver's cost at thousands of round trips a second (bench/README.md). A link with one
request in flight needs far less. :class:`ReplyTimer` keeps at most one timer handle and
re-arms it lazily: a request only records its deadline; when the timer fires it fails
the reply still awaited if that reply's deadline has passed, and otherwise re-arms
itself for the current deadline. At 5 000 requests a second with a 200 ms timeout the
timer fires 5 times a second instead of being created and cancelled 5 000 times.

Usage, by the one coroutine that owns the request (under the link's lock)::

    fut = loop.create_future()
    timer.watch(fut, 0.2)           # fut gets TimeoutError() 0.2 s from now
    try:
        reply = await fut
    finally:
        timer.clear()
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

#: the timer may run this much before a deadline (the loop's own clock tolerance)
_EARLY = 1e-6


class ReplyTimer:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fut: asyncio.Future | None = None
        self._deadline = 0.0

    def watch(self, fut: asyncio.Future, timeout: float) -> None:
        """Fail ``fut`` with TimeoutError unless it is done within ``timeout`` seconds."""
        loop = fut.get_loop()
        if loop is not self._loop:  # first use, or a new event loop: the old handle is dead
            self._loop, self._handle = loop, None
        self._fut = fut
        self._deadline = deadline = loop.time() + timeout
        handle = self._handle
        if handle is None:
            self._handle = loop.call_at(deadline, self._fire)
        elif handle.when() > deadline:  # a shorter timeout than the one armed for
            handle.cancel()
            self._handle = loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        """The awaited reply came, failed or was given up: nothing is watched now."""
        self._fut = None

    def cancel(self) -> None:
        """Stop the timer altogether (the link is closing)."""
        self._fut = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        fut = self._fut
        if fut is None:
            return  # idle: no timer until the next request
        loop = self._loop
        assert loop is not None
        if loop.time() + _EARLY >= self._deadline:
            self._fut = None
            if not fut.done():
                fut.set_exception(TimeoutError())
        else:
            self._handle = loop.call_at(self._deadline, self._fire)




class ReplyQueue:
    """A queue of replies for one consumer, whose ``get`` has a deadline kept by a
    :class:`ReplyTimer` (no timer per reply). For line protocols where replies are
    matched by order, not by a sequence number (EPG-1)."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[Any] | None = None
        self._timer = ReplyTimer()

    def put_nowait(self, item: Any) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(item)
        else:
            self._items.append(item)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        """The oldest item; IndexError when there is none."""
        return self._items.popleft()

    async def get(self, timeout: float) -> Any:
        """The oldest item, waiting at most ``timeout`` seconds (then TimeoutError)."""
        if self._items:
            return self._items.popleft()
        if self._waiter is not None:
            raise RuntimeError("ReplyQueue has one consumer at a time")
        fut = self._waiter = asyncio.get_running_loop().create_future()
        self._timer.watch(fut, timeout)
        try:
            return await fut
        finally:
            self._timer.clear()
            if self._waiter is fut:
                self._waiter = None

    def close(self) -> None:
        """Stop the timer (the link is closing)."""
        self._timer.cancel()


__all__ = ["ReplyQueue", "ReplyTimer"]
