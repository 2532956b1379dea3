"""Deliveries settled late, and watchdog faults cleared, when a device answers again.

A delivery whose device could not be read when it stopped (stalled, link cut, the hub
killed) stays open in the record (``in_flight``). When the device answers again (the
hub starts, the link comes back, the device answers after a stall), the hub reads that
device's counters before it sends it anything else that could change them, writes each
open delivery's result and appends ``delivery_settled`` (``late: true``) to its
session (devicehub/runner/settlement.py does the reading and the writing). Then a
watchdog fault latched because the hub went quiet is cleared, with a
``device_watchdog`` alarm raised and cleared so the history shows it
(shared/mqtt-api.md, "Latched device faults outside a session").

Until that is done the device is held: a start or a resume finds it unavailable.
"""

from __future__ import annotations

import logging
from typing import Any

from devicehub.alarms import WATCHDOG_CODES
from devicehub.records.store import RecordStore
from devicehub.runner import settlement
from drivers.base import DriverError

log = logging.getLogger(__name__)


class LateSettlement:
    def __init__(self, room: Any) -> None:
        self.room = room

    async def device_back(self, dev_id: str) -> None:
        """``dev_id`` answers (again): settle its open deliveries, then clear a watchdog fault."""
        room = self.room
        devices = room.devices
        devices.held.add(dev_id)
        try:
            active = room.active_session()
            if active is not None and active.state == "running" and dev_id in active.devices_needed():
                return  # the session's own stop path settles what it opened
            if active is not None and dev_id in active.unsettled_devices():
                await active.settle_pending(dev_id)  # a paused session's own, into its progress
                if dev_id in active.unsettled_devices():
                    return
            exclude = active.session_id if active is not None else None
            await self.settle(dev_id, exclude=exclude)
            if await self.room.store.call(RecordStore.open_deliveries, dev_id, exclude):
                devices.unsettled.add(dev_id)  # it stopped answering again: the next answer settles them
                return
            await self.clear_watchdog(dev_id)
        finally:
            devices.held.discard(dev_id)

    async def settle(self, dev_id: str, exclude: str | None = None) -> list[dict[str, Any]]:
        room = self.room
        kind = room.devices.types.get(dev_id)
        if kind not in ("inj", "epg", "led", "pemf"):
            return []
        store = room.store

        async def read_open(device: str) -> list[dict[str, Any]]:
            return await store.call(RecordStore.open_deliveries, device, exclude)

        async def read_started(session_id: str) -> set[int]:
            return await store.call(RecordStore.started_deliveries, session_id)

        try:
            done = await settlement.settle_late(store, room.bus, dev_id, kind, room.devices.devices[dev_id],
                                                read_open, read_started, found=room.devices.found.get(dev_id),
                                                restarted=room.restarted_sessions)
        except Exception:  # noqa: BLE001 - left open; tried again the next time the device answers
            log.exception("late settlement on %s failed", dev_id)
            return []
        for d in done:
            log.warning("delivery on %s (session %s, %s %s) settled late: %s", dev_id, d["session"], d["step"],
                        d["point"], d["delivered"])
        return done

    async def clear_watchdog(self, dev_id: str) -> bool:
        """A watchdog fault the device latched because the hub went quiet: its cause is gone
        now that the hub talks to it. Cleared with a ``device_watchdog`` alarm raised and
        cleared. Returns True when one was cleared."""
        room = self.room
        dev = room.devices.devices[dev_id]
        try:
            st = await dev.status()
        except DriverError:
            return False
        if st.state != "fault" or str(st.fault) not in WATCHDOG_CODES:
            return False
        key = f"{dev_id}:device_watchdog"
        room.alarms.raise_alarm(priority="high", source=dev_id, code="device_watchdog", key=key, latched=False,
                                text=f"{dev_id}: {st.fault_text or 'watchdog'} ({st.fault}) latched while the hub "
                                     f"was not talking to it; cleared by the hub")
        try:
            await dev.clear_fault()
            after = await dev.status()
        except DriverError as exc:
            log.warning("%s: watchdog fault not cleared: %s", dev_id, exc)
            return False
        room.devices.note_status(dev_id, after)
        if after.state == "fault":
            return False
        room.alarms.clear(key)
        # the alarm the device manager raised on finding it in fault has no cause left either
        room.alarms.clear(f"{dev_id}:watchdog")
        log.warning("%s: watchdog fault cleared by the hub", dev_id)
        return True
