"""The stop path of a session: pause, abort and failure all bring every device to its
safe state first, settle the open deliveries from the devices' counters, then write the
record (a part of :class:`devicehub.runner.session.SessionRunner`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from devicehub.bus import rfc3339, utcnow
from devicehub.runner.states import SessionState
from devicehub.safety import SafeStateReport, safe_state_all

#: the runner's own logger: the stop path's messages stay where they were before the split
log = logging.getLogger("devicehub.runner.session")

#: how long a step whose device a safe state took first waits for the stop behind it
PREEMPT_GRACE_S = 2.0


class StopPath:
    """The stopping methods of :class:`devicehub.runner.session.SessionRunner` (its
    attributes are set by the runner's ``__init__``)."""

    # ================================================================== stopping
    async def stop_follows(self, grace_s: float = PREEMPT_GRACE_S) -> bool:
        """After a step's device refused to start because a safe state came first
        (drivers.base.Preempted): whether a stop of this session is under way or comes.
        The room's own safe state at an abort or an e-stop runs before the stop reaches
        the runner, whose stop then cancels this wait; a safe state no stop follows is a
        device error after ``grace_s``."""
        if self.machine.stopping or self.finished:
            return True
        await asyncio.sleep(grace_s)
        return self.machine.stopping or self.finished

    async def _stop(self, kind: str, *, trigger: str, reason: str | None, t_trigger: float | None = None,
                    alarm: dict[str, Any] | None = None, first: SafeStateReport | None = None,
                    recovery: dict[str, Any] | None = None,
                    before_record: Callable[[], Awaitable[None]] | None = None) -> None:
        """Pause, abort or fail: outputs off first, then the record (the alarm that caused it first)."""
        t0 = t_trigger if t_trigger is not None else time.monotonic()
        if self.machine.state is SessionState.NEW:
            return  # its record was never created: nothing ran, nothing to end
        if self.finished or (self.machine.stopping and kind == "paused"):
            return
        if self.machine.stopping:
            # already stopping (e.g. a fault during an abort): that path finishes first, and a
            # failure outranks an abort or a pause in its final state; an abort that arrived
            # during a pause then ends the paused session itself (an abort is never lost)
            if kind == "failed":
                self._escalate = (reason, trigger)
                if alarm is not None:
                    await self.record_alarm(alarm)
            await self._stop_idle.wait()
            if kind == "aborted" and not self.finished:
                await self._stop(kind, trigger=trigger, reason=reason, t_trigger=t0)
            return
        self.machine.go(SessionState.STOPPING)
        self._stop_idle.clear()
        self._escalate = None
        try:
            await self._stop_now(kind, trigger=trigger, reason=reason, t0=t0, alarm=alarm, first=first,
                                 recovery=recovery, before_record=before_record)
        finally:
            self._stop_idle.set()

    async def _stop_now(self, kind: str, *, trigger: str, reason: str | None, t0: float,
                        alarm: dict[str, Any] | None, first: SafeStateReport | None = None,
                        recovery: dict[str, Any] | None = None,
                        before_record: Callable[[], Awaitable[None]] | None = None) -> None:
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        report = first if first is not None else await safe_state_all(
            self.devices, trigger, t_trigger=t0, timeout=self.options.safe_state_timeout_s)
        self.last_safe_state = report
        if before_record is not None:  # the trigger's own event, first in the record
            await before_record()
        if alarm is not None:  # recorded once the room is safe, never before
            await self.record_alarm(alarm)
        if task is not None and task is not asyncio.current_task() and not task.done():
            # the step outlived the safe state: it may have commanded a device since, so it
            # is cancelled until it ends (one cancel can be swallowed by a wait_for whose
            # inner future completes at the same moment, Python 3.11) and the room is made
            # safe again behind it
            await self._end_task(task)
            again = await safe_state_all(self.devices, trigger, timeout=self.options.safe_state_timeout_s)
            if not again.confirmed:
                report = SafeStateReport(trigger=report.trigger, ms=report.ms,
                                         devices={d: ("off" if report.devices.get(d) == "off" and s == "off"
                                                      else "unconfirmed") for d, s in again.devices.items()},
                                         details={**report.details, **again.details}, device_ms=report.device_ms)
                self.last_safe_state = report
        await self.book.settle_open("interrupted" if kind == "paused" else kind, t_stopped=t0, report=report)
        await self.event("safe_state", **report.event_data())
        if not report.confirmed:
            bad = [d for d, s in report.devices.items() if s != "off"]
            await self.record_alarm(self.raise_alarm(source=",".join(bad), code="safe_state_unconfirmed",
                                                     text=f"safe state not confirmed by {', '.join(bad)}"))
            if kind != "failed":
                kind, reason = "failed", "safe_state_unconfirmed"
        if self._escalate is not None and kind != "failed":
            kind, reason = "failed", self._escalate[0]
        if kind == "paused":
            self.recovery = recovery
            await self.event("paused", **({"reason": reason} if reason else {}),
                             **({"recovery": recovery} if recovery is not None else {}))
            await self._set_state("paused", reason=None)
            await self.book.announce_deferred()  # after paused and its state
            return
        await self._finish(kind, reason)

    @staticmethod
    async def _end_task(task: asyncio.Task[Any], timeout: float = 2.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
        if not task.done():
            log.error("the step task did not end after its cancellation: %r", task)

    async def _finish(self, final: str, reason: str | None) -> None:
        self.ended_at = rfc3339(utcnow())
        self.current_step = None
        data: dict[str, Any] = {"totals": self.totals.as_dict(),
                                "steps": [sp.summary() for sp in self.progress.values()]}
        if reason:
            data["reason"] = reason
        if self.last_safe_state is not None:
            data["safe_state_ms"] = round(self.last_safe_state.ms, 3)
        await self.event(final, **data)
        await self.book.announce_deferred()  # after the final event, before the state is published
        await self._set_state(final, reason=reason)
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
        self._finished.set()
