"""The room's devices as the hub holds them: drivers, connection upkeep, state and telemetry.

The device manager is the only owner of the drivers. It connects them (and keeps
trying when one is away), publishes each device's state when it changes and its
readings at the telemetry rate (2 Hz while a session runs, 0.2 Hz idle), and tells the
room when a device's connection is lost. Telemetry observes: publishing goes to the
bus, which never blocks, and polling shares the driver like any other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from devicehub.alarms import WATCHDOG_CODES, AlarmBoard
from devicehub.bus import Bus
from drivers.base import Device, DeviceStatus, DriverError
from drivers.registry import create_driver

log = logging.getLogger(__name__)

RECONNECT_S = 2.0
#: polls in a row a device may leave unanswered (link up) before it counts as unresponsive
UNRESPONSIVE_AFTER = 2


class DeviceManager:
    def __init__(self, config: Any, bus: Bus, alarms: AlarmBoard) -> None:
        self.config = config
        self.bus = bus
        self.alarms = alarms
        self.devices: dict[str, Device] = {}
        self.types: dict[str, str] = {}
        self.identity: dict[str, dict[str, str]] = {}
        self.last_status: dict[str, DeviceStatus | None] = {}
        #: each device's state when this hub first connected to it (before it sent anything)
        self.found: dict[str, str] = {}
        self._last_state: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.running = False  # a session is running: poll faster
        self.telemetry_hooks: list[Callable[[str, DeviceStatus], None]] = []
        self._wake = asyncio.Event()
        #: devices whose link is up but which stopped answering, and their missed polls in a row
        self.unresponsive: set[str] = set()
        self._missed: dict[str, int] = {}
        self._last_reading: dict[str, float] = {}  # monotonic time of each device's last telemetry
        #: called (awaited, in the device's own upkeep) when a device answers again: on each
        #: connection, when it answers after being unresponsive, and on each poll while it is
        #: in ``unsettled``; the room settles its open deliveries and clears a watchdog fault
        self.on_answer: Callable[[str], Awaitable[None]] | None = None
        #: a watchdog fault found outside a session is the room's to clear (device_watchdog),
        #: not an alarm of its own (shared/mqtt-api.md, "Latched device faults outside a session")
        self.room_clears_watchdogs = False
        #: devices that may still have deliveries open in the record (settled on their next answer)
        self.unsettled: set[str] = set()
        #: devices being settled right now: unavailable to a start or a resume until done
        self.held: set[str] = set()
        for dev in config.devices:
            self.devices[dev.id] = create_driver(dev.type, dev.endpoint, device_id=dev.id, **dict(dev.options or {}))
            self.types[dev.id] = dev.type
            self.last_status[dev.id] = None

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        await asyncio.gather(*(self._connect(i) for i in self.devices))
        for dev_id in self.devices:
            self._tasks.append(asyncio.get_running_loop().create_task(self._upkeep(dev_id), name=f"upkeep-{dev_id}"))

    async def close(self) -> None:
        # cancelled until they end: one cancel can be swallowed (a wait_for whose inner
        # future completes at the same moment, Python 3.11; pymodbus uses wait_for)
        tasks = list(self._tasks)
        for _ in range(100):
            pending = [t for t in tasks if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=0.1)
        self._tasks.clear()
        for dev in self.devices.values():
            with contextlib.suppress(Exception):
                await dev.close()

    def set_running(self, running: bool) -> None:
        self.running = running
        self._wake.set()

    # ------------------------------------------------------------------ state
    def connected(self, dev_id: str) -> bool:
        return bool(self.devices[dev_id].connected)

    def unavailable(self, ids: list[str] | None = None) -> list[str]:
        ids = list(self.devices) if ids is None else ids
        return [i for i in ids if i not in self.devices or not self.devices[i].connected or i in self.unresponsive
                or i in self.held or i in self.unsettled
                or (self.last_status.get(i) is not None and self.last_status[i].state == "fault")]

    async def not_answering(self, ids: list[str]) -> list[str]:
        """Ask each device for its status now, together; the ones that did not answer.

        For a start: a device whose link is up but which stopped answering since its last
        poll (idle polls are 5 s apart) must not be found out by the session's first
        command."""
        async def answers(dev_id: str) -> bool:
            # asked up to three times: a safe state running meanwhile (an abort beside the
            # start) cuts requests short and refuses new ones until it holds the link, for a
            # few milliseconds; that is not silence. These misses do not count towards
            # marking the device unresponsive.
            for pause in (0.0, 0.05, 0.2):
                if pause:
                    await asyncio.sleep(pause)  # a retry's backoff
                if await self._poll(dev_id, counted=False):
                    return True
            return False

        results = await asyncio.gather(*(answers(i) for i in ids))
        return [i for i, ok in zip(ids, results) if not ok]

    def describe(self) -> list[dict[str, Any]]:
        return [self.state_of(i) for i in self.devices]

    def state_of(self, dev_id: str) -> dict[str, Any]:
        st = self.last_status.get(dev_id)
        return {
            "id": dev_id,
            "type": self.types[dev_id],
            "connected": self.connected(dev_id),
            "state": ("unresponsive" if dev_id in self.unresponsive and self.connected(dev_id)
                      else st.state if st else ("unknown" if self.connected(dev_id) else "disconnected")),
            "fault": (st.fault if st else None),
            "fault_text": (st.fault_text if st else ""),
            "output_on": (st.output_on if st else False),
            "endpoint": str(self.devices[dev_id].endpoint),
            **({"identity": self.identity[dev_id]} if dev_id in self.identity else {}),
        }

    def _publish_state(self, dev_id: str, force: bool = False) -> None:
        data = self.state_of(dev_id)
        if force or data != self._last_state.get(dev_id):
            self._last_state[dev_id] = data
            self.bus.emit("device.state", data, device=dev_id)

    def republish(self) -> None:
        for dev_id in self.devices:
            self._publish_state(dev_id, force=True)

    def note_status(self, dev_id: str, st: DeviceStatus) -> None:
        self._note_status(dev_id, st)
        self._publish_state(dev_id)

    def _note_status(self, dev_id: str, st: DeviceStatus) -> None:
        """Keep the newest status; a device newly seen in fault outside a session (it
        faulted while idle, a session left it so) is a high alarm. In a session the runner
        raises it, with the session. A watchdog fault has its own path: the room clears it
        when it talks to the device again (``device_watchdog``, devicehub/late_settlement.py)."""
        before = self.last_status.get(dev_id)
        self.last_status[dev_id] = st
        if st.state == "fault" and (before is None or before.state != "fault") and not self.running:
            watchdog = str(st.fault) in WATCHDOG_CODES
            if watchdog and self.room_clears_watchdogs:
                return
            code = "watchdog" if watchdog else "device_fault"
            self.alarms.raise_alarm(priority="high", source=dev_id, code=code, key=f"{dev_id}:{code}",
                                    text=f"{dev_id}: {st.fault_text or 'fault'} ({st.fault})")

    # ------------------------------------------------------------------ upkeep
    async def _connect(self, dev_id: str) -> bool:
        dev = self.devices[dev_id]
        try:
            await dev.connect()
            ident = await dev.identify()
            self.identity[dev_id] = asdict(ident)
            st = await dev.status()
            # as this hub first found it, before it sent anything: what an earlier hub left
            # (evidence for a late settlement, devicehub/runner/settlement.py)
            self.found.setdefault(dev_id, st.state)
            self._note_status(dev_id, st)
        except (DriverError, OSError) as exc:
            log.info("%s: not available: %s", dev_id, exc)
            with contextlib.suppress(Exception):
                await dev.close()
            self._publish_state(dev_id)
            return False
        self.alarms.clear(f"{dev_id}:disconnected")
        self._publish_state(dev_id)
        await self._answered(dev_id)
        return True

    async def _answered(self, dev_id: str) -> None:
        if self.on_answer is None:
            return
        self.unsettled.discard(dev_id)
        try:
            await self.on_answer(dev_id)
        except Exception:  # noqa: BLE001 - upkeep goes on; tried again at the next answer
            log.exception("%s: handling its answer failed", dev_id)
            self.unsettled.add(dev_id)

    async def _upkeep(self, dev_id: str) -> None:
        dev = self.devices[dev_id]
        async with dev.subscribe() as events:
            while True:
                if not dev.connected:
                    self._publish_state(dev_id)
                    if not self.running:
                        self.alarms.raise_alarm(priority="medium", source=dev_id, code="disconnected",
                                                text=f"{dev_id} is not connected", key=f"{dev_id}:disconnected")
                    await asyncio.sleep(RECONNECT_S)
                    await self._connect(dev_id)
                    continue
                period = 1.0 / (self.config.telemetry.running_hz if self.running else self.config.telemetry.idle_hz)
                await self._poll(dev_id)
                # wait for the next poll, an event worth a state update, or a rate change
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):  # not wait_for: it can swallow a cancel
                        ev = await self._next_interesting(events)
                    if ev is not None and ev.kind == "connection_lost":
                        with contextlib.suppress(Exception):
                            await dev.close()

    async def _next_interesting(self, events: asyncio.Queue[Any]) -> Any:
        """The next event that deserves an early poll, or None when the poll rate changed."""
        wake = asyncio.ensure_future(self._wake.wait())
        get: asyncio.Future[Any] | None = None
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({wake, get}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    ev = get.result()
                    if ev.kind in ("fault", "connection_lost", "exposure_done", "train_done"):
                        return ev
                    continue
                get.cancel()
                self._wake.clear()
                return None
        finally:
            for f in (wake, get):
                if f is not None and not f.done():
                    f.cancel()

    async def _poll(self, dev_id: str, *, counted: bool = True) -> bool:
        """One status read: state, telemetry and hooks; False when the device did not answer
        (``counted``: a miss counts towards marking the device unresponsive)."""
        dev = self.devices[dev_id]
        try:
            st = await dev.status()
        except DriverError as exc:
            log.debug("%s: status failed: %s", dev_id, exc)
            if not counted:
                return False
            self._missed[dev_id] = missed = self._missed.get(dev_id, 0) + 1
            if missed >= UNRESPONSIVE_AFTER and dev.connected and dev_id not in self.unresponsive:
                log.warning("%s: not answering (%d polls in a row): %s", dev_id, missed, exc)
                self.unresponsive.add(dev_id)
                if not self.running:  # in a session the runner fails it with a high alarm
                    self.alarms.raise_alarm(priority="medium", source=dev_id, code="unresponsive", latched=False,
                                            text=f"{dev_id} does not answer: {exc}", key=f"{dev_id}:unresponsive")
                self._publish_state(dev_id)
            return False
        self._missed[dev_id] = 0
        back = dev_id in self.unresponsive
        if back:
            self.unresponsive.discard(dev_id)
            self.alarms.clear(f"{dev_id}:unresponsive")
        self._note_status(dev_id, st)
        self._publish_state(dev_id)
        if counted and (back or dev_id in self.unsettled):
            await self._answered(dev_id)
        # telemetry at the configured rate: an early poll (after a train or an exposure
        # ends) updates the state and the hooks, but sends a reading only when one is due
        now = time.monotonic()
        rate = self.config.telemetry.running_hz if self.running else self.config.telemetry.idle_hz
        if now - self._last_reading.get(dev_id, -1e9) >= 0.9 / rate:
            self._last_reading[dev_id] = now
            self.bus.emit("device.telemetry", {"device": dev_id, "type": self.types[dev_id], "state": st.state,
                                               "output_on": st.output_on, "readings": st.readings}, device=dev_id)
        for hook in self.telemetry_hooks:
            try:
                hook(dev_id, st)
            except Exception:  # noqa: BLE001 - an observer never breaks the poll
                log.exception("telemetry hook failed")
        return True
