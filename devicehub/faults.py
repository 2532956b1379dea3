"""Latched device faults outside a session: the console's ``clear_fault``.

shared/mqtt-api.md, "Latched device faults outside a session": a watchdog fault the
hub caused by going quiet is cleared by the hub itself when it talks to the device
again (devicehub/late_settlement.py). Any other latched fault left after a session (an
LED applicator that was too far when the session was aborted) needs a person at the
chair: this sends the device its own clear command and says whether the device then
shows no fault. Console only: clinic software cannot see the room.
"""

from __future__ import annotations

import logging
from typing import Any

from devicehub.room_api import CommandError
from drivers.base import DriverError

log = logging.getLogger(__name__)


async def clear_fault(room: Any, device: str, by: str) -> dict[str, Any]:
    """Send ``device`` its clear command; ``{device, by, cleared, state, fault, fault_text}``.

    ``cleared`` is False (with the device's own fault text) while the cause is still there.
    Refused with ``not_found`` for an unknown device, ``invalid_state`` while a session
    runs, ``device_unavailable`` when the device is not connected or does not answer."""
    if device not in room.devices.devices:
        raise CommandError("not_found", f"no device {device!r}; devices: {', '.join(room.devices.devices)}",
                           field="device")
    runner = room.active_session()
    if runner is not None and runner.state == "running":
        raise CommandError("invalid_state", f"session {runner.session_id} is running; pause or end it first")
    dev = room.devices.devices[device]
    if not dev.connected:
        raise CommandError("device_unavailable", f"{device} is not connected",
                           details=[{"device": device, **room.devices.state_of(device)}])
    refusal = ""
    try:
        await dev.clear_fault()
    except DriverError as exc:  # the device refused: its cause is still there (read below)
        refusal = str(exc)
    try:
        st = await dev.status()
    except DriverError as exc:
        raise CommandError("device_unavailable", f"{device} does not answer: {exc}",
                           details=[{"device": device, **room.devices.state_of(device)}]) from None
    room.devices.note_status(device, st)
    cleared = st.state != "fault"
    if cleared:
        for code in ("device_fault", "watchdog", "device_watchdog"):
            room.alarms.clear(f"{device}:{code}")
        log.warning("%s: latched fault cleared at the console by %s", device, by)
    else:
        log.warning("%s: clear refused (by %s): %s (%s) %s", device, by, st.fault_text, st.fault, refusal)
    return {"device": device, "by": by, "cleared": cleared, "state": st.state, "fault": st.fault,
            "fault_text": st.fault_text or ("" if cleared else refusal or "fault")}


async def check_devices_for_rest(room: Any, runner: Any) -> None:
    """``device_unavailable`` (details per device, as for ``start``) when a device the rest of
    the session needs is not connected, not answering or in a latched fault (the ``resume``
    row of shared/mqtt-api.md; checked again at the resume's confirmation)."""
    needed = runner.devices_needed()
    devices = room.devices
    silent = await devices.not_answering([d for d in needed if devices.connected(d)])
    missing = sorted(set(silent) | set(devices.unavailable(needed)) | set(runner.unsettled_devices()))
    if missing:
        raise CommandError("device_unavailable", f"not available for the rest of the session: {', '.join(missing)}",
                           details=[{"device": d, **devices.state_of(d)} for d in missing])
