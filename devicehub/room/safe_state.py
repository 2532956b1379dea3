"""The room's safe state: every device's off command out at once (joined by every trigger
that arrives meanwhile), and the abort that is never refused."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from typing import Any

from devicehub.safety import SafeStateReport, safe_state_all


class RoomSafeState:
    """The safe state and the abort of :class:`devicehub.room.Room`."""

    def safe_state_now(self, trigger: str, t_trigger: float | None = None) -> Awaitable[SafeStateReport]:
        """Every device's off command on its way at once, before the caller awaits anything else.

        Call it first on a stop path and await it. A safe state already under way is joined
        (its off commands went out before this trigger arrived); the report's ``ms`` is timed
        from this caller's ``t_trigger`` (a ``time.monotonic()`` stamp of the trigger's arrival).
        """
        t0 = time.monotonic() if t_trigger is None else t_trigger
        off = self._off
        if off is None or (off.done() and self._off_for != t0):
            self._off_for = t0
            async def reach() -> tuple[SafeStateReport, float]:
                report = await safe_state_all(self.devices.devices, trigger, t_trigger=t0)
                return report, time.monotonic()

            off = self._off = asyncio.ensure_future(reach())

        async def joined() -> SafeStateReport:
            report, done_at = await asyncio.shield(off)
            return dataclasses.replace(report, trigger=trigger, ms=max(0.0, (done_at - t0) * 1000.0))

        return joined()

    async def abort(self, *, session: str | None = None, reason: str | None = None,
                    t_trigger: float | None = None) -> dict[str, Any]:
        """Never refused: every device to its safe state first, then the active session ended."""
        t0 = time.monotonic() if t_trigger is None else t_trigger
        self._abort_epoch += 1  # before any await: a start under way stops where it is
        runner = self.active_session()
        if runner is not None:
            runner.abort_requested = True
        report = await self.safe_state_now("abort", t0)
        runner = runner or self.active_session()
        if runner is not None:
            final = await runner.abort(reason or "abort", t_trigger=t0, first=report)
            ms = final.ms if final is not None else report.ms
            return {"session": runner.session_id, "state": runner.state, "safe_state_ms": round(ms, 3)}
        if not report.confirmed:
            self.alarms.raise_alarm(priority="high", source="room", code="safe_state_unconfirmed",
                                    text="safe state not confirmed by " + ", ".join(
                                        d for d, s in report.devices.items() if s != "off"))
        return {"session": None, "state": "idle", "safe_state_ms": round(report.ms, 3)}
