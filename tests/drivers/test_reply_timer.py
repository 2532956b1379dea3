"""The lazy reply deadline the INJ-1 driver uses instead of asyncio.timeout per request."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.reply_timer import ReplyQueue, ReplyTimer

pytestmark = pytest.mark.timeout(10)


async def test_an_unanswered_reply_fails_at_its_deadline() -> None:
    timer = ReplyTimer()
    fut = asyncio.get_running_loop().create_future()
    t0 = time.monotonic()
    timer.watch(fut, 0.05)
    with pytest.raises(TimeoutError):
        await fut
    assert time.monotonic() - t0 >= 0.045  # never before its deadline (a lower bound: load cannot break it)


async def _answered_then_unanswered(first_timeout: float, second_timeout: float) -> float:
    """One reply answered in time, then one never answered: seconds until it times out."""
    loop = asyncio.get_running_loop()
    timer = ReplyTimer()
    first = loop.create_future()
    timer.watch(first, first_timeout)
    first.set_result("reply")
    timer.clear()
    second = loop.create_future()
    t0 = time.monotonic()
    timer.watch(second, second_timeout)
    with pytest.raises(TimeoutError):
        await second
    return time.monotonic() - t0


async def test_a_later_request_gets_its_own_full_timeout() -> None:
    # the timer armed for the first request fires at its deadline, finds the second
    # one's later deadline, and re-arms for it
    assert await _answered_then_unanswered(0.05, 0.15) >= 0.145


async def test_a_shorter_timeout_than_the_armed_one_is_kept() -> None:
    # it fails at its own 0.05 s, not at the 5 s the timer was armed for: anything short of 5 s shows it
    assert await _answered_then_unanswered(5.0, 0.05) < 5.0


async def test_answered_replies_are_never_failed_and_cancel_stops_the_timer() -> None:
    loop = asyncio.get_running_loop()
    timer = ReplyTimer()
    for _ in range(100):
        fut = loop.create_future()
        timer.watch(fut, 0.02)
        loop.call_soon(fut.set_result, 1)
        assert await fut == 1
        timer.clear()
    late = loop.create_future()
    timer.watch(late, 0.02)
    timer.cancel()
    done, _ = await asyncio.wait([late], timeout=0.1)
    assert not done  # nothing watched it any more
    late.cancel()


def test_one_timer_serves_two_event_loops_in_turn() -> None:
    timer = ReplyTimer()

    async def one() -> None:
        fut = asyncio.get_running_loop().create_future()
        timer.watch(fut, 0.03)
        with pytest.raises(TimeoutError):
            await fut

    async def leave_armed() -> None:
        fut = asyncio.get_running_loop().create_future()
        timer.watch(fut, 5.0)
        fut.set_result(None)
        timer.clear()

    asyncio.run(leave_armed())  # a handle left on a loop that then closes
    asyncio.run(one())


async def test_reply_queue_in_order_with_a_deadline() -> None:
    q = ReplyQueue()
    q.put_nowait("a")
    q.put_nowait("b")
    assert await q.get(0.05) == "a" and q.get_nowait() == "b" and q.empty()
    loop = asyncio.get_running_loop()
    loop.call_soon(q.put_nowait, "c")
    assert await q.get(1.0) == "c"  # a waiting get takes what arrives
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await q.get(0.05)
    assert time.monotonic() - t0 >= 0.045
    q.put_nowait("late")  # arrives after its reader gave up: kept for whoever reads next
    assert q.get_nowait() == "late"
    waiting = asyncio.ensure_future(q.get(1.0))
    await asyncio.sleep(0)  # let it start waiting (no time passes)
    with pytest.raises(RuntimeError):
        await q.get(1.0)
    q.put_nowait("d")
    assert await waiting == "d"
    q.close()
