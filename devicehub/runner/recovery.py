"""Recoverable faults: the ones a technician removes at the chair pause the session.

Which faults are recoverable, and what the technician checks, is each driver's
``recovery_hints`` (kept beside its fault table, so a new device type brings its own);
shared/mqtt-api.md lists them. A recoverable fault while ``running``: every output off
(the stop path, as for every fault), a latched high alarm, then ``paused`` with reason
``fault`` and ``recovery {device, code, text, hint}``. ``recover`` at the console sends the
device its own clear command; a device that refuses (the cause is still there) leaves the
session paused. After ``recovered`` a resume (confirmed at the chair as any resume)
continues with the point that was in progress. At most ``max_recoveries`` pauses by a
fault per session; the next recoverable fault fails it (``too_many_faults``).
"""

from __future__ import annotations

from typing import Any

from drivers.base import DeviceRefused, DriverError


class RecoveryRefused(Exception):
    """The device did not clear its fault: the cause is still there."""


def recovery_for(device: Any, dev_id: str, code: Any, text: str = "") -> dict[str, Any] | None:
    """``{device, code, text, hint}`` when ``code`` is a recoverable fault of ``device``."""
    hints = getattr(device, "recovery_hints", None) or {}
    for key in (code, _as_int(code)):
        if key is not None and key in hints:
            texts = getattr(device, "fault_texts", None) or {}
            return {"device": dev_id, "code": key, "text": text or texts.get(key, str(key)), "hint": hints[key]}
    return None


def _as_int(code: Any) -> int | None:
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


async def clear(device: Any, recovery: dict[str, Any]) -> None:
    """The device's own clear command, then its status: RecoveryRefused while it still faults."""
    dev_id, hint = recovery["device"], recovery["hint"]
    try:
        await device.clear_fault()
    except DeviceRefused as exc:
        raise RecoveryRefused(f"{dev_id} refused to clear fault {recovery['code']} ({exc}): the cause is still "
                              f"there. {hint}") from None
    except DriverError as exc:
        raise RecoveryRefused(f"{dev_id} did not answer the clear command ({exc}); check it, then recover") from None
    try:
        status = await device.status()
    except DriverError as exc:
        raise RecoveryRefused(f"{dev_id} did not answer after the clear command ({exc}); recover again") from None
    if status.fault:
        raise RecoveryRefused(f"{dev_id} still reports fault {status.fault} ({status.fault_text}): "
                              f"the cause is still there. {hint}")
