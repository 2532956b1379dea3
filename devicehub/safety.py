"""Bringing the whole room to its safe state, at once, and proving it.

Every device is commanded to its safe state concurrently; each driver confirms by
read-back. The time from the trigger (a fault event's timestamp, the abort request) to
the last confirmation is measured. A device that does not confirm within the bound is
reported ``unconfirmed``: the caller raises a high alarm and fails the session. The
device's own watchdog is the second line: without heartbeats it switches off by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.base import Device, SafeStateResult

#: a device that has not confirmed by then is reported unconfirmed
CONFIRM_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class SafeStateReport:
    trigger: str
    ms: float
    devices: dict[str, str] = field(default_factory=dict)  # device id -> "off" | "unconfirmed"
    details: dict[str, str] = field(default_factory=dict)
    device_ms: dict[str, float] = field(default_factory=dict)

    @property
    def confirmed(self) -> bool:
        return all(v == "off" for v in self.devices.values())

    def event_data(self) -> dict[str, object]:
        data: dict[str, object] = {"trigger": self.trigger, "ms": round(self.ms, 3), "devices": dict(self.devices)}
        if self.details:
            data["details"] = dict(self.details)
        return data


async def _one(device: Device, timeout: float) -> SafeStateResult:
    try:
        # asyncio.timeout, not wait_for: no task of its own, so the device's off command is
        # written in the same turn of the loop as this task's first step
        async with asyncio.timeout(timeout):
            return await device.safe_state()
    except TimeoutError:
        return SafeStateResult(False, timeout * 1000.0, "no confirmation in time")
    except Exception as exc:  # noqa: BLE001 - safe_state must never take the room down with it
        return SafeStateResult(False, 0.0, f"{type(exc).__name__}: {exc}")


def begin_safe_state(
    devices: Mapping[str, Device],
    trigger: str,
    *,
    t_trigger: float | None = None,
    timeout: float = CONFIRM_TIMEOUT_S,
) -> "asyncio.Future[SafeStateReport]":
    """Every device's safe state scheduled now, one task each, so that every off command is
    written in the loop's next turn, before whatever the caller awaits; the future is the
    report once every device has confirmed or timed out. ``t_trigger``: ``time.monotonic()``."""
    t0 = time.monotonic() if t_trigger is None else t_trigger
    ids = list(devices)
    tasks = [asyncio.ensure_future(_one(devices[i], timeout)) for i in ids]

    async def report() -> SafeStateReport:
        results = await asyncio.gather(*tasks)
        ms = (time.monotonic() - t0) * 1000.0
        return SafeStateReport(
            trigger=trigger,
            ms=ms,
            devices={i: ("off" if r.confirmed else "unconfirmed") for i, r in zip(ids, results)},
            details={i: r.detail for i, r in zip(ids, results) if r.detail and not r.confirmed},
            device_ms={i: round(r.ms, 3) for i, r in zip(ids, results)},
        )

    return asyncio.ensure_future(report())


async def safe_state_all(
    devices: Mapping[str, Device],
    trigger: str,
    *,
    t_trigger: float | None = None,
    timeout: float = CONFIRM_TIMEOUT_S,
) -> SafeStateReport:
    """Command every device off concurrently; ``t_trigger`` is a ``time.monotonic()`` stamp."""
    return await begin_safe_state(devices, trigger, t_trigger=t_trigger, timeout=timeout)
