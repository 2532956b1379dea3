"""What a step needs from the session, and nothing more: the step context.

The step modules (``injection``, ``electroporation``, ``exposure``) import this module,
never the runner; the runner (``session.py``) implements :class:`StepContext` and finds
the steps through ``devicehub.runner.steps``. Steps never write the record themselves:
a delivery is opened (its intent written) and settled (its result written, from the
device's own figures) through the context, see ``devicehub.runner.settlement``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from devicehub.runner.progress import PointProgress, StepProgress
from devicehub.runner.settlement import Delivery
from devicehub.runner.totals import Totals
from drivers.base import Device, DeviceEvent


class StepFailure(Exception):
    """A step cannot go on; the session fails with ``reason``."""

    def __init__(self, reason: str, text: str = "", *, alarm: str | None = None, device: str | None = None,
                 code: Any = None, t_trigger: float | None = None) -> None:
        super().__init__(text or reason)
        self.reason = reason
        self.text = text or reason
        self.alarm = alarm  # an alarm code to raise (high), if any
        self.device, self.code = device, code  # the device fault behind it, if one (recoverable?)
        self.t_trigger = t_trigger  # when its cause arrived (time.monotonic()), if known


async def next_event(q: asyncio.Queue[DeviceEvent], deadline: float, failure: StepFailure) -> DeviceEvent:
    """The device's next event, or ``failure`` raised once the loop's clock passes ``deadline``.

    asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel, and a
    step that outlives its cancellation is what the stop path must never see.
    """
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise failure
    try:
        async with asyncio.timeout(left):
            return await q.get()
    except TimeoutError:
        raise failure from None


@dataclass
class RunnerOptions:
    #: a point's injected dose is reached at dose x (1 - tolerance); the gun's cap allows dose x (1 + tolerance)
    dose_tolerance: float = 0.05
    #: a single shot may report at most this much more than it was set to before the runner stops
    shot_overreport: float = 0.10
    #: INJ-1: how much more than its set volume a shot may deliver (the gun's scatter, +/-2 %
    #: in its ICD); the gun checks its cap against the set volume, so the cap keeps this room
    shot_scatter: float = 0.02
    #: EP: extra time beyond the train's own length before a missing DONE is a failure
    train_margin_s: float = 2.0
    #: LED/PEMF: extra time beyond the exposure before a missing done is a failure
    exposure_margin_s: float = 5.0
    #: exposure_progress events at most this often
    progress_interval_s: float = 1.0
    #: confirm steps are acknowledged automatically (demo, tests, --yes)
    auto_acknowledge_prompts: bool = False
    #: a device that has not confirmed its safe state by then is reported unconfirmed
    safe_state_timeout_s: float = 1.0
    #: pauses by a recoverable fault per session; the next recoverable fault fails it
    max_recoveries: int = 3
    #: EP: the pulse-timing limit (limits.electroporation.pulse_timing_error_us; the room sets it)
    pulse_timing: Any = None


class StepContext(Protocol):
    """The session as a step sees it (implemented by ``SessionRunner``)."""

    program: Any
    options: RunnerOptions
    totals: Totals
    progress: dict[str, StepProgress]
    start_marks: dict[str, float]
    alongside_barrier: asyncio.Barrier | None

    def device_for(self, step: Any) -> tuple[str, Device]: ...

    async def event(self, name: str, **data: Any) -> int: ...

    def publish_state(self) -> None: ...

    async def progress_event(self, step_id: str, device_id: str, **data: Any) -> None: ...

    def account(self, device_id: str, point: PointProgress | None, **amounts: float) -> None:
        """Amounts seen live (a shot event) entering progress, totals and the caps."""

    async def open_delivery(self, device_id: str, step: Any, *, point: PointProgress | None,
                            planned: dict[str, Any]) -> Delivery:
        """Read the device's counters, write the intent, and hold the delivery open until settled."""

    async def delivery_started(self, delivery: Delivery) -> None:
        """The device confirmed the run began (recorded, so a late settlement knows it too)."""

    async def counted(self, delivery: Delivery) -> dict[str, float]:
        """What the device has counted under ``delivery`` so far, by its own counters (a
        device that cannot say fails the step)."""

    async def settle(self, delivery: Delivery, status: str = "done", **extra: Any) -> dict[str, float]:
        """The delivery's result from the device's own figures (see ``settlement.settle``)."""
