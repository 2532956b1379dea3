"""The ``clear_fault`` verb (console only): clear a device's fault outside a session.

A device left in fault (its watchdog fired, it faulted while idle, a session failed on
it) refuses every start (``device_unavailable``). The technician removes the cause at
the chair, then asks the device to clear it: the device's own clear command, then its
status asked at once (so every front end sees the new state). A device that refuses, or
still reports a fault, stays as it is. In a session, ``recover`` is the verb.
"""

from __future__ import annotations

import logging
from typing import Any

from devicehub.control import fields as f
from devicehub.control.table import Caller, verb
from devicehub.room_api import CommandError

log = logging.getLogger(__name__)


class ClearFaultFields(f.Fields):
    device: f.Id
    by: f.Name


async def clear_device_fault(room: Any, device: str, by: str) -> dict[str, Any]:
    """``{device, state, fault}`` after the clear; CommandError when it is not cleared."""
    from drivers.base import DeviceRefused, DriverError

    manager = room.devices
    if device not in manager.devices:
        raise CommandError("not_found", f"no device {device!r} in this room", field="device")
    runner = room.active_session()
    if runner is not None:
        raise CommandError("invalid_state", f"session {runner.session_id} is {runner.state}: a fault in a session "
                                            "is cleared with recover", field="device")
    try:
        await manager.devices[device].clear_fault()
    except DeviceRefused as exc:
        raise CommandError("invalid_state", f"{device} refused to clear its fault ({exc}): the cause is still "
                                            "there", field="device") from None
    except DriverError as exc:
        raise CommandError("device_unavailable", f"{device} did not answer the clear command ({exc})",
                           field="device") from None
    await manager.not_answering([device])  # its status now, published to every front end
    state = manager.state_of(device)
    log.warning("fault of %s cleared at the console by %s: now %s", device, by, state.get("state"))
    if state.get("fault"):
        raise CommandError("invalid_state", f"{device} still reports fault {state['fault']} "
                                            f"({state.get('fault_text')}): the cause is still there",
                           field="device")
    return {"device": device, "state": state.get("state"), "fault": state.get("fault"), "by": by}


@verb("clear_fault", console=ClearFaultFields)
async def clear_fault(room: Any, m: Any, caller: Caller) -> Any:
    """Clear a device's fault outside a session (the device's own clear command)."""
    return await clear_device_fault(room, m.device, m.by)
