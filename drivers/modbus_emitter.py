"""What the LED-1 and PEMF-1 drivers share: an emitter behind a Modbus register map.

Both ICDs have the same shape: setpoints in holding registers from 0, the OUTPUT and
FAULT_RESET coils, STATE/FAULT and the measurements in input registers from 0, a
HEARTBEAT register the host changes while the output is on, MODEL/FIRMWARE at input
registers 100/101. A subclass gives the addresses, turns its pydantic parameters into
setpoint registers and input registers into readings.

Behaviour:
- ``configure`` writes all setpoints with one FC 0x10 and reads them back.
- ``start`` writes OUTPUT=1, then reads STATE once: a fault found at the start (LED
  applicator too far) raises :class:`DeviceFault` after the ``fault`` event.
- A write whose reply is lost is settled by reading back (the device may have done it;
  only its reply was lost): setpoints that read back as written took, else
  they are written once more (``ModbusLink.write_registers(confirm=True)``); OUTPUT=1
  took if coil 0 reads back on, and is never written again when it reads off (an
  exposure that started and already ended must not start twice): the DeviceTimeout
  stands. OUTPUT=0 that reads back on is written once more; FAULT_RESET took when STATE
  is no longer fault, else it is written once more (a refusal then says why).
- While energised, the heartbeat writes a changing HEARTBEAT value every quarter of
  WATCHDOG_MS (at most 0.25 s), reads the input registers and emits ``progress``
  (at most every 0.5 s), ``exposure_done`` when STATE turns done and ``fault`` when it
  turns fault; either ends the energised period. Between heartbeats the driver watches
  STATE and FAULT every ``watch_interval`` (20 ms): an emitter that faults switches
  itself off, and the hub must switch the room's other outputs off within 50 ms of
  that (bench/soak.py, invariant 1), not at the next heartbeat. A watch read that gets
  no reply is skipped (the next heartbeat decides); its link time is one reply timeout.
- A start belongs to the configure before it: ``safe_state`` latches the device, and a
  ``start`` after a safe state that came since its ``configure`` raises
  :class:`Preempted` without writing OUTPUT=1; a safe state that comes while OUTPUT=1
  is on its way has the start write OUTPUT=0 at once when its reply comes, and raise.
  Nothing is switched on after a stop by a step that outlived it (the 01:15 soak
  hour's #597: a resumed exposure started 55 ms after an abort's confirmed safe state).
- ``safe_state`` stops the heartbeat first (so if the device cannot be reached, its
  own watchdog turns the output off within WATCHDOG_MS), writes OUTPUT=0 once (over TCP
  on a connection of its own if a request is waiting for its reply) and then
  confirms by reading coil 0 and STATE, even when the write's reply was lost (a
  dropped reply still turned the output off). Never raises; idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.base import (
    Device,
    DeviceFault,
    DeviceStatus,
    DeviceTimeout,
    DriverError,
    Identity,
    Preempted,
    ProtocolError,
    SafeStateResult,
    timed_safe_state,
)
from drivers.endpoints import Endpoint
from drivers.modbus_link import DEFAULT_TIMEOUT, ModbusLink

log = logging.getLogger(__name__)

IDLE, ON, DONE, FAULT = 0, 1, 2, 3
STATE_NAMES = {IDLE: "idle", ON: "on", DONE: "done", FAULT: "fault"}

COIL_OUTPUT = 0
#: a safe state whose read-back finds the output on writes it off again, this many times in all
SAFE_STATE_WRITES = 3
COIL_FAULT_RESET = 1
INPUT_MODEL = 100
INPUT_FIRMWARE = 101

MAX_HEARTBEAT_S = 0.25
PROGRESS_INTERVAL_S = 0.5
#: how often STATE and FAULT are read while the output is on (a 2-register read takes
#: about 10 ms at 19200 baud on RTU, well under 1 ms over TCP)
WATCH_INTERVAL_S = 0.02
#: how long a safe state tries to open a lost connection again before it says unconfirmed
SAFE_STATE_CONNECT_S = 0.5


def heartbeat_interval_for(watchdog_ms: int) -> float:
    """A quarter of the watchdog period, at most 0.25 s: three heartbeats may be late or
    lost before the device gives up."""
    return min(MAX_HEARTBEAT_S, watchdog_ms / 4000.0)


def on_grid(value: float, step: float, name: str) -> float:
    """``value`` if it is a whole number of ``step`` (a register's resolution), else ValueError,
    so a parameter is never silently rounded on its way to the device."""
    n = round(value / step)
    if abs(n * step - value) > step * 1e-6:
        raise ValueError(f"{name} must be a multiple of {step:g}")
    return value


class ModbusEmitter(Device):
    """Base of the Modbus emitter drivers; subclasses fill in the class variables and hooks."""

    #: the pydantic parameter model ``configure`` takes
    params_type: ClassVar[type[BaseModel]] = BaseModel
    #: MODEL input register value and the model's name
    model_code: ClassVar[int] = 0
    model_name: ClassVar[str] = ""
    #: holding registers 0..setpoint_count-1 are the setpoints
    setpoint_count: ClassVar[int] = 0
    heartbeat_register: ClassVar[int] = 0
    watchdog_register: ClassVar[int] = 0
    #: input registers 0..input_count-1 hold STATE, FAULT and the measurements
    input_count: ClassVar[int] = 0
    fault_texts: ClassVar[dict[int, str]] = {}

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        device_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        read_retries: int = 1,
        watch_interval: float = WATCH_INTERVAL_S,
    ) -> None:
        super().__init__(endpoint, device_id=device_id)
        self.watch_interval = watch_interval
        self._last_keepalive = 0.0
        self.link = ModbusLink(self.endpoint, timeout=timeout, read_retries=read_retries,
                               on_lost=self._connection_lost, name=self.device_id)
        self.heartbeat_interval = heartbeat_interval_for(2000)  # type: ignore[misc]
        self._hb_value = 0
        self._last_state: int | None = None
        self._last_progress = 0.0
        self.last_status: DeviceStatus | None = None

    # ------------------------------------------------------------------ lifetime
    async def connect(self) -> None:
        """Open the link, check the device is the model this driver speaks to, and take the
        heartbeat period from its WATCHDOG_MS."""
        await self.link.open()
        self.connected = True
        try:
            code = (await self.link.read_input(INPUT_MODEL, 1))[0]
            if code != self.model_code:
                raise ProtocolError(f"{self.endpoint}: MODEL is {code:#06x}, expected {self.model_code:#06x} "
                                    f"({self.model_name})")
            wd = (await self.link.read_holding(self.watchdog_register, 1))[0]
            self.heartbeat_interval = heartbeat_interval_for(wd)  # type: ignore[misc]
            regs = await self.link.read_input(0, self.input_count)
            self._last_state = regs[0]
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await super().close()
        await self.link.close()

    def _connection_lost(self) -> None:
        log.warning("%s: connection lost", self.device_id)
        self._emit("connection_lost", endpoint=str(self.endpoint))

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def setpoint_registers(self, params: BaseModel) -> list[int]:
        """Holding registers 0..setpoint_count-1 for ``params``."""

    @abstractmethod
    def readings_from(self, regs: list[int]) -> dict[str, Any]:
        """Readings (unit in the key) from input registers 0..input_count-1."""

    @abstractmethod
    def done_data(self, readings: dict[str, Any]) -> dict[str, Any]:
        """What ``exposure_done`` carries: elapsed_s and the run's total."""

    # ------------------------------------------------------------------ the interface
    async def identify(self) -> Identity:
        model, firmware = await self.link.read_input(INPUT_MODEL, 2)
        name = self.model_name if model == self.model_code else f"unknown {model:#06x}"
        # the ICDs have no vendor or serial-number registers
        return Identity(vendor="", model=name, serial="", firmware=f"{firmware // 100}.{firmware % 100:02d}")

    async def configure(self, params: BaseModel) -> None:
        if not isinstance(params, self.params_type):
            raise TypeError(f"{type(self).__name__}.configure needs {self.params_type.__name__}")
        self._settings_sent()  # a safe state from here on voids this start
        regs = self.setpoint_registers(params)
        if len(regs) != self.setpoint_count:  # pragma: no cover - a subclass bug
            raise ValueError("setpoint register count mismatch")
        await self.link.write_registers(0, regs, confirm=True)
        back = await self.link.read_holding(0, len(regs))
        if back != regs:
            raise ProtocolError(f"{self.endpoint}: setpoints read back as {back}, wrote {regs}")
        self.heartbeat_interval = heartbeat_interval_for(regs[self.watchdog_register])  # type: ignore[misc]

    async def start(self) -> None:
        armed = self._start_gate("OUTPUT=1")
        # a lost reply: coil 0 reading on says the start took; off, it is not written again
        try:
            await self.link.write_coil(COIL_OUTPUT, True, confirm=True, rewrite=False)
        except DeviceTimeout:
            if self._preempted_since(armed):
                await self._off_behind_safe_state()
            await self._fault_at_start()
            raise
        if self._preempted_since(armed):
            await self._off_behind_safe_state()
        self._last_state = None
        self._last_progress = self._last_keepalive = time.monotonic()
        self._set_energised(True)
        regs = await self.link.read_input(0, self.input_count)
        self._track(regs)
        if regs[0] == FAULT:
            raise DeviceFault(regs[1], self.fault_texts.get(regs[1], ""))

    async def _off_behind_safe_state(self) -> None:
        """A safe state came while OUTPUT=1 was on its way: the on may reach the device
        after the safe state's off (another connection, a late frame), so the off again
        now; raises Preempted."""
        try:
            await self.link.write_coil_urgent(COIL_OUTPUT, False)
        except DriverError:
            pass  # the stop's own safe state (its second pass) confirms the off
        raise Preempted(f"{self.device_id}: a safe state came while starting: switched off again")

    async def _fault_at_start(self) -> None:
        """After a start left unconfirmed: a fault STATE shows (the start was refused or
        latched a fault, e.g. the LED applicator too far) raises DeviceFault, as an
        answered start would; anything else leaves the DeviceTimeout to stand."""
        try:
            regs = await self.link.read_input(0, self.input_count)
        except DriverError:
            return
        log.warning("%s: OUTPUT=1 unconfirmed; STATE reads %s", self.device_id, STATE_NAMES.get(regs[0], regs[0]))
        self._track(regs)
        if regs[0] == FAULT:
            raise DeviceFault(regs[1], self.fault_texts.get(regs[1], ""))

    async def stop(self) -> None:
        self._energised = False
        await self.link.write_coil(COIL_OUTPUT, False, confirm=True, rewrite=True)
        await self.poll()

    async def safe_state(self) -> SafeStateResult:
        # Stopping the heartbeat first is the fallback: an unreachable device's own
        # watchdog switches the output off. The running heartbeat is not cancelled
        # mid-request (on RTU a cancelled request's late reply would be taken for ours).
        self._safe_state_begins()  # before any await: a start under way sees it
        self._energised = False
        return await timed_safe_state(self._raw_safe_state)

    async def _raw_safe_state(self) -> tuple[bool, str]:
        if not self.link.is_open:
            # a connection lost (or closed) since: one attempt to open it again, as INJ-1's
            # driver does, so a device that answers again is switched off and confirmed
            try:
                await asyncio.wait_for(self.link.open(), SAFE_STATE_CONNECT_S)
            except (DriverError, asyncio.TimeoutError) as exc:
                return False, f"not connected: {exc}"
        for _attempt in range(SAFE_STATE_WRITES):
            write_error: DriverError | None = None
            try:
                await self.link.write_coil_urgent(COIL_OUTPUT, False)
            except DriverError as exc:  # e.g. the reply was dropped: the read-back decides
                write_error = exc
            coil = (await self.link.read_coils(COIL_OUTPUT, 1, retries=0))[0]
            state = (await self.link.read_input(0, 1, retries=0))[0]
            ok = not coil and state != ON
            detail = f"OUTPUT={int(coil)} STATE={STATE_NAMES.get(state, state)}"
            if write_error is not None:
                detail += f" (write: {write_error})"
            if ok:
                break
            # on again after the off (a start that reached the device behind it, on another
            # connection or late): off again at once, not at the stop path's second pass
        return ok, detail

    async def status(self) -> DeviceStatus:
        coil = (await self.link.read_coils(COIL_OUTPUT, 1))[0]
        regs = await self.link.read_input(0, self.input_count)
        self._track(regs)
        state, fault = regs[0], regs[1]
        st = DeviceStatus(
            state=STATE_NAMES.get(state, f"unknown {state}"),
            output_on=coil,
            fault=fault or None,
            fault_text=self.fault_texts.get(fault, "") if fault else "",
            readings=self.readings_from(regs),
        )
        self.last_status = st
        return st

    async def clear_fault(self) -> None:
        try:
            await self.link.write_coil(COIL_FAULT_RESET, True)
        except DeviceTimeout as lost:
            # FAULT_RESET is a command, not a state: STATE tells whether it took
            regs = await self.poll()
            if regs[0] != FAULT:
                log.warning("%s: the reply to FAULT_RESET was lost; STATE reads %s: the fault is cleared",
                            self.device_id, STATE_NAMES.get(regs[0], regs[0]))
                return
            log.warning("%s: the reply to FAULT_RESET was lost and STATE reads fault: written once more (%s)",
                        self.device_id, lost)
            await self.link.write_coil(COIL_FAULT_RESET, True)
        await self.poll()

    async def heartbeat(self) -> None:
        self._hb_value = (self._hb_value + 1) & 0xFFFF
        self._last_keepalive = time.monotonic()
        # not confirmed by a read-back when its reply is lost: the heartbeat is how a silent
        # device is found, and a read-back would spend another reply timeout of the
        # device's own watchdog (docs/decisions/0014)
        await self.link.write_register(self.heartbeat_register, self._hb_value)
        await self.poll()

    @property
    def tick_interval(self) -> float:
        return min(self.watch_interval, self.heartbeat_interval)

    async def tick(self) -> None:
        """The heartbeat when it is due, else a watch of STATE and FAULT; a change reads
        everything, so ``fault`` and ``exposure_done`` carry the device's figures."""
        if time.monotonic() - self._last_keepalive >= self.heartbeat_interval - self.tick_interval / 2:
            await self.heartbeat()
            return
        try:
            state, _fault = await self.link.read_input(0, 2, retries=0)
        except DeviceTimeout:  # one lost watch is not a fault: the heartbeat's own read decides
            log.info("%s: a watch read got no reply", self.device_id)
            return
        if state != ON:
            await self.poll()

    async def poll(self) -> list[int]:
        """Read the input registers once and emit whatever changed."""
        regs = await self.link.read_input(0, self.input_count)
        self._track(regs)
        return regs

    # ------------------------------------------------------------------ events
    def _track(self, regs: list[int]) -> None:
        state, fault = regs[0], regs[1]
        previous, self._last_state = self._last_state, state
        readings = self.readings_from(regs)
        if state == FAULT:
            if previous != FAULT:
                self._emit("fault", code=fault, text=self.fault_texts.get(fault, ""), **readings)
            self._energised = False
        elif state == DONE:
            if self._energised or previous == ON:
                self._emit("exposure_done", **self.done_data(readings))
            self._energised = False
        elif state == IDLE:
            if self._energised:
                log.warning("%s: output went off without a done or a fault (stopped by another host?)",
                            self.device_id)
            self._energised = False
        elif state == ON and self._energised:
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_INTERVAL_S:
                self._last_progress = now
                self._emit("progress", state="on", **readings)


__all__ = ["ModbusEmitter", "heartbeat_interval_for", "on_grid", "STATE_NAMES"]
