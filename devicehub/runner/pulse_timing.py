"""The EP pulse-timing limit (``limits.electroporation.pulse_timing_error_us``), held on
every ``!PULSE`` as it arrives.

A pulse's timing error is its interval error ``|t_k - t_(k-1) - P|`` by the device's own
offsets (EPG-1 ICD, physics); a train's is the largest. Above the soft limit: one
medium alarm per train, and the session goes on. Above the hard limit: the step fails
at once (``StepFailure``, as a device fault does), so the runner's stop path takes
every output off, the point is settled ``failed`` with what the device counted, and a
high alarm is recorded.
"""

from __future__ import annotations

from typing import Any

from devicehub.runner.context import StepFailure

ALARM = "pulse_timing"


class TrainTiming:
    """One train's pulse offsets and its largest interval error so far."""

    def __init__(self, period_ms: float, limit: Any) -> None:
        self.period_us = round(period_ms * 1000.0)
        self.limit = limit
        self.error_us = 0
        self.soft_alarmed = False
        self._last: tuple[int, int] | None = None  # (index, t_us) of the previous pulse

    def add(self, index: int, t_us: int) -> tuple[str, float] | None:
        """Take one pulse; ``(severity, limit)`` when this pulse puts the train past a limit.

        Only consecutive pulses make an interval: a lost ``!PULSE`` leaves a gap, not an error.
        """
        last, self._last = self._last, (index, t_us)
        if last is None or index != last[0] + 1:
            return None
        error = abs(t_us - last[1] - self.period_us)
        self.error_us = max(self.error_us, error)
        if self.limit is None:
            return None
        return self.limit.exceeded(error)

    def delivered(self) -> dict[str, Any]:
        """The record's figure for the point: ``timing_error_us``."""
        return {"timing_error_us": self.error_us}


async def check_pulse(runner: Any, timing: TrainTiming, dev_id: str, step: Any, pp: Any, ev: Any) -> None:
    """Hold one ``pulse`` event of the train to the limit (raises StepFailure on the hard one)."""
    hit = timing.add(int(ev.data.get("index", 0)), int(ev.data.get("t_us", 0)))
    if hit is None:
        return
    severity, limit = hit
    where = f"{step.id} {pp.zone}/{pp.point}, pulse {ev.data.get('index')}"
    if severity == "hard":
        raise StepFailure(ALARM, f"{dev_id}: pulse interval error {timing.error_us} us above the hard limit "
                          f"{limit:g} us ({where})", alarm=ALARM, t_trigger=ev.t)
    if timing.soft_alarmed:
        return
    timing.soft_alarmed = True
    alarm = runner.raise_alarm(priority="medium", source=dev_id, code=ALARM, latched=False,
                               key=f"{dev_id}:{ALARM}:{pp.zone}/{pp.point}",
                               text=f"{dev_id}: pulse interval error {timing.error_us} us above the soft limit "
                                    f"{limit:g} us ({where})")
    await runner.record_alarm(alarm)
