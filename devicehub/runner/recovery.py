"""Recoverable faults: the session pauses, the technician removes the cause, ``recover``.

shared/mqtt-api.md, "When a device faults: recover or fail". A fault listed in its
driver's ``recovery_hints`` (the hints live next to each driver's fault table, so a new
device type brings its own) while the session is ``running``: every device to its safe
state (trigger ``fault:<device>``), the latched high alarm, then ``paused`` with reason
``fault`` and ``recovery {device, code, text, hint}``; the delivery in progress keeps
what its device counted (settled like every stop). Any other fault, or one more than
``max_recoveries``, fails the session as before (``too_many_faults``).

``recover`` (console only) sends the device its own clear command; a device that still
shows the fault leaves the session paused (:class:`RecoveryRefused`), else the event
``recovered {device, code, by}`` and ``recovery`` is null again. A resume is then
confirmed at the chair like any resume, and continues with what the point still lacks.
"""

from __future__ import annotations

from typing import Any

from drivers.base import DriverError


class RecoveryRefused(Exception):
    """The device still shows its fault (the cause is still there)."""

    def __init__(self, device: str, code: Any, text: str) -> None:
        super().__init__(f"{device} still shows fault {code}: {text}; remove the cause, then recover again")
        self.device = device
        self.code = code
        self.text = text


def recovery_for(runner: Any, dev_id: str, code: Any, text: str) -> dict[str, Any] | None:
    """``{device, code, text, hint}`` when ``code`` is a fault the technician can remove, else None."""
    dev = runner.devices.get(dev_id)
    hints = getattr(dev, "recovery_hints", None) or {}
    try:
        hint = hints.get(int(code))
    except (TypeError, ValueError):
        return None
    if hint is None:
        return None
    return {"device": dev_id, "code": int(code), "text": str(text or ""), "hint": hint}


async def device_fault(runner: Any, dev_id: str, code: Any, text: str, *, trigger: str,
                       t_trigger: float | None = None, alarm: dict[str, Any] | None = None) -> None:
    """A device faulted during the session: pause for a recoverable fault while running, else fail."""
    recovery = recovery_for(runner, dev_id, code, text)
    if recovery is None or runner.state != "running":
        await runner.fail(f"{(alarm or {}).get('code', 'device_fault')}:{dev_id}", trigger=trigger,
                          t_trigger=t_trigger, alarm=alarm)
        return
    if runner.fault_pauses >= runner.max_recoveries:
        await runner.fail("too_many_faults", trigger=trigger, t_trigger=t_trigger, alarm=alarm)
        return
    await runner.pause_for_fault(recovery, trigger=trigger, t_trigger=t_trigger, alarm=alarm)


async def clear(runner: Any, by: str) -> dict[str, Any]:
    """The device's clear command for the fault the session paused for; ``recovered`` when it holds."""
    recovery = runner.recovery
    dev_id = recovery["device"]
    dev = runner.devices[dev_id]
    refused = ""
    try:
        await dev.clear_fault()
    except DriverError as exc:  # refused: the cause is still there (read below)
        refused = str(exc)
    try:
        st = await dev.status()
    except DriverError as exc:
        raise RecoveryRefused(dev_id, recovery["code"], f"no answer: {exc}") from None
    if st.state == "fault":
        raise RecoveryRefused(dev_id, st.fault, st.fault_text or refused or recovery["text"])
    return {"device": dev_id, "code": recovery["code"], "by": by, "status": st}
