"""The Modbus side of an emitter simulator (LED-1, PEMF-1): register map, PDU handling,
the on/off state machine with its latched faults, and the watchdog.

Both ICDs describe the same kind of device: setpoints in holding registers, OUTPUT and
FAULT_RESET coils, STATE/FAULT and measurements in input registers, a watchdog fed by
register writes. This class implements that shared behaviour once; a subclass supplies
the register table, the physics (:meth:`step`) and what makes a start refused or a fault.

Transports (``simulators.modbus_server``) hand :meth:`handle_request` a unit id and a
PDU and send back whatever it returns (``None``: no reply at all).

Readings of the ICDs made here (see also the module docstrings of led/pemf):
- Check order is the Modbus one: function (0x01), address and quantity (0x02/0x03),
  value ranges (0x03), then the device state (0x04).
- A write that covers only one half of a 32-bit value is combined with the other,
  unchanged half and the combined value is range-checked.
- Only accepted register writes (FC 0x06/0x10) feed the watchdog; reads and refused
  writes do not. Starting the output restarts the watchdog's clock.
- Requests to another unit id, and broadcasts (unit 0), are ignored without a reply on
  both TCP and RTU: a broadcast cannot be confirmed, so it never controls an emitter.
- ``stall`` lasts until cleared: requests are not processed and not answered, while
  the physics and the watchdog keep running. ``drop_reply`` is counted (``count``):
  the request is processed, its reply is not sent.
- Starting with a latched fault is refused with 0x04. A fault condition found at the
  start (LED applicator too far) is accepted as a write, latches the fault and leaves
  the output off. FAULT_RESET while the cause is still present is refused with 0x04.
- Temperature faults latch at any time; the others only while the output is on (or,
  for the LED applicator distance, at the start).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from simulators.base import DeviceSimulator

# Modbus exception codes
ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
SERVER_DEVICE_FAILURE = 0x04

# STATE input register values
IDLE, ON, DONE, FAULT = 0, 1, 2, 3
STATE_NAMES = {IDLE: "idle", ON: "on", DONE: "done", FAULT: "fault"}

WATCHDOG_FAULT = 5

#: physics tick while nothing asks (requests also bring the physics up to date)
TICK_S = 0.02
#: longest physics step, so thermal models and sampling stay fine-grained
MAX_STEP_S = 0.02


class ModbusError(Exception):
    """A request answered with a Modbus exception response."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code:#04x}")
        self.code = code


@dataclass(frozen=True)
class Field:
    """One named holding-register value: its first address, width (1 or 2 registers,
    high word first) and allowed range."""

    name: str
    address: int
    lo: int
    hi: int
    default: int
    width: int = 1

    @property
    def addresses(self) -> range:
        return range(self.address, self.address + self.width)


class ModbusDeviceSimulator(DeviceSimulator):
    """An emitter behind a Modbus register map. Subclasses fill in the class variables
    and the hooks at the bottom."""

    transport: ClassVar[str] = "modbus"

    #: holding register fields, including HEARTBEAT
    fields: ClassVar[tuple[Field, ...]] = ()
    #: holding registers below this address are setpoints (refused while on)
    setpoint_end: ClassVar[int] = 0
    #: name of the field holding the watchdog period
    watchdog_field: ClassVar[str] = "WATCHDOG_MS"
    #: fault code -> text
    fault_texts: ClassVar[dict[int, str]] = {}
    #: number of coils (OUTPUT, FAULT_RESET)
    coil_count: ClassVar[int] = 2

    def __init__(self, *, unit: int = 1, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.unit = unit
        self.holding: dict[int, int] = {}
        for f in self.fields:
            self._store(f, f.default)
        self._field_by_name = {f.name: f for f in self.fields}
        self._output_on = False
        self.state = IDLE
        self.fault = 0
        self._t = self.now()
        self._last_write = self._t
        self.requests = 0  # requests processed (diagnostics)

    @property
    def output_on(self) -> bool:
        return self._output_on

    @output_on.setter
    def output_on(self, on: bool) -> None:
        if on != self._output_on:
            self._output_on = on
            self.mark_output_change()

    # ------------------------------------------------------------------ registers
    def value(self, name: str) -> int:
        f = self._field_by_name[name]
        return self._compose(f, self.holding)

    @staticmethod
    def _compose(f: Field, regs: dict[int, int]) -> int:
        if f.width == 1:
            return regs[f.address]
        return (regs[f.address] << 16) | regs[f.address + 1]

    def _store(self, f: Field, value: int) -> None:
        if f.width == 1:
            self.holding[f.address] = value & 0xFFFF
        else:
            self.holding[f.address] = (value >> 16) & 0xFFFF
            self.holding[f.address + 1] = value & 0xFFFF

    @property
    def watchdog_s(self) -> float:
        return self.value(self.watchdog_field) / 1000.0

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        await super().start()
        self._t = self.now()
        self.spawn(self._tick_loop(), name=f"{self.kind}-physics")

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.advance()

    # ------------------------------------------------------------------ time
    def advance(self, now: float | None = None) -> None:
        """Bring physics, the run and the watchdog up to ``now``, in small steps, stopping
        exactly at the watchdog's deadline so it fires on time."""
        now = self.now() if now is None else now
        while self._t < now:
            t_next = min(now, self._t + MAX_STEP_S)
            deadline = self._last_write + self.watchdog_s
            if self.output_on and deadline < t_next:
                t_next = max(deadline, self._t)
            dt = t_next - self._t
            self.step(dt)
            self._t = t_next
            if self.output_on and self._t >= deadline:
                self.latch_fault(WATCHDOG_FAULT)  # output off: the loop goes on without it

    # ------------------------------------------------------------------ state machine
    def latch_fault(self, code: int) -> None:
        """Output off at once, fault latched until FAULT_RESET with the cause gone."""
        if self.output_on:
            self.end_run()
        self.output_on = False
        self.state = FAULT
        self.fault = code

    def finish_run(self) -> None:
        """The run reached its end (duration, fluence): output off, state done."""
        self.end_run()
        self.output_on = False
        self.state = DONE

    def _write_output(self, on: bool) -> None:
        if not on:
            if self.output_on:
                self.end_run()
                self.output_on = False
                self.state = IDLE
            return
        if self.output_on:
            return  # already on: nothing changes, the run goes on
        if self.state == FAULT:
            raise ModbusError(SERVER_DEVICE_FAILURE)
        if not self.start_allowed():
            raise ModbusError(SERVER_DEVICE_FAILURE)
        code = self.fault_at_start()
        if code:
            self.latch_fault(code)
            return
        self._last_write = self._t
        self.output_on = True
        self.state = ON
        self.begin_run()

    def _write_fault_reset(self, on: bool) -> None:
        if not on or self.state != FAULT:
            return
        if self.fault_cause_present(self.fault):
            raise ModbusError(SERVER_DEVICE_FAILURE)
        self.fault = 0
        self.state = IDLE

    # ------------------------------------------------------------------ PDU handling
    def handle_request(self, unit: int, pdu: bytes) -> bytes | None:
        """One request PDU for ``unit``; the reply PDU, or None when nothing is sent."""
        if unit != self.unit or not pdu:
            return None
        if self.fault_active("stall"):
            return None
        self.advance()
        fc = pdu[0]
        try:
            reply = self._dispatch(fc, pdu[1:])
        except ModbusError as exc:
            reply = bytes((fc | 0x80, exc.code))
        self.requests += 1
        if self.consume_fault("drop_reply"):
            return None
        return reply

    def _dispatch(self, fc: int, data: bytes) -> bytes:
        if fc == 0x01:
            addr, count = self._addr_count(data, 2000)
            if addr + count > self.coil_count:
                raise ModbusError(ILLEGAL_DATA_ADDRESS)
            bits = [self.output_on, False][addr:addr + count]
            packed = bytearray((count + 7) // 8)
            for i, bit in enumerate(bits):
                if bit:
                    packed[i // 8] |= 1 << (i % 8)
            return bytes((fc, len(packed))) + bytes(packed)
        if fc in (0x03, 0x04):
            addr, count = self._addr_count(data, 125)
            if fc == 0x03:
                values = [self._read_holding(a) for a in range(addr, addr + count)]
            else:
                values = [self._read_input_checked(a) for a in range(addr, addr + count)]
            return bytes((fc, 2 * count)) + struct.pack(f">{count}H", *values)
        if fc == 0x05:
            if len(data) != 4:
                raise ModbusError(ILLEGAL_DATA_VALUE)
            addr, raw = struct.unpack(">HH", data)
            if raw not in (0x0000, 0xFF00):
                raise ModbusError(ILLEGAL_DATA_VALUE)
            if addr >= self.coil_count:
                raise ModbusError(ILLEGAL_DATA_ADDRESS)
            if addr == 0:
                self._write_output(raw == 0xFF00)
            else:
                self._write_fault_reset(raw == 0xFF00)
            return bytes((fc,)) + data
        if fc == 0x06:
            if len(data) != 4:
                raise ModbusError(ILLEGAL_DATA_VALUE)
            addr, value = struct.unpack(">HH", data)
            self._write_holding(addr, [value])
            return bytes((fc,)) + data
        if fc == 0x10:
            if len(data) < 5:
                raise ModbusError(ILLEGAL_DATA_VALUE)
            addr, count, nbytes = struct.unpack(">HHB", data[:5])
            if not 1 <= count <= 123 or nbytes != 2 * count or len(data) != 5 + nbytes:
                raise ModbusError(ILLEGAL_DATA_VALUE)
            values = list(struct.unpack(f">{count}H", data[5:]))
            self._write_holding(addr, values)
            return bytes((fc,)) + data[:4]
        raise ModbusError(ILLEGAL_FUNCTION)

    @staticmethod
    def _addr_count(data: bytes, max_count: int) -> tuple[int, int]:
        if len(data) != 4:
            raise ModbusError(ILLEGAL_DATA_VALUE)
        addr, count = struct.unpack(">HH", data)
        if not 1 <= count <= max_count:
            raise ModbusError(ILLEGAL_DATA_VALUE)
        return addr, count

    def _read_holding(self, addr: int) -> int:
        if addr not in self.holding:
            raise ModbusError(ILLEGAL_DATA_ADDRESS)
        return self.holding[addr]

    def _read_input_checked(self, addr: int) -> int:
        value = self.read_input(addr)
        if value is None:
            raise ModbusError(ILLEGAL_DATA_ADDRESS)
        return max(0, min(0xFFFF, int(value)))

    def _write_holding(self, addr: int, values: list[int]) -> None:
        written = range(addr, addr + len(values))
        if any(a not in self.holding for a in written):
            raise ModbusError(ILLEGAL_DATA_ADDRESS)
        candidate = dict(self.holding)
        for a, v in zip(written, values):
            candidate[a] = v
        for f in self.fields:
            if any(a in written for a in f.addresses):
                if not f.lo <= self._compose(f, candidate) <= f.hi:
                    raise ModbusError(ILLEGAL_DATA_VALUE)
        if self.output_on and any(a < self.setpoint_end for a in written):
            raise ModbusError(SERVER_DEVICE_FAILURE)
        self.holding = candidate
        self._last_write = self._t

    # ------------------------------------------------------------------ snapshot
    def base_snapshot(self) -> dict[str, Any]:
        self.advance()
        return {
            "device": self.kind,
            "unit": self.unit,
            "output_on": self.output_on,
            "state": STATE_NAMES[self.state],
            "fault": self.fault,
            "fault_text": self.fault_texts.get(self.fault, ""),
            "setpoints": {f.name: self.value(f.name) for f in self.fields},
        }

    # ------------------------------------------------------------------ hooks
    def step(self, dt: float) -> None:
        """Advance the physics by ``dt`` seconds (may call finish_run / latch_fault)."""

    def read_input(self, addr: int) -> int | None:
        """The value of an input register, or None when it does not exist."""
        return None

    def start_allowed(self) -> bool:
        """False refuses the start with exception 0x04 (e.g. LED: duration xor fluence)."""
        return True

    def fault_at_start(self) -> int:
        """A fault code found when the output is switched on, 0 for none."""
        return 0

    def begin_run(self) -> None:
        """A run starts: reset per-run totals."""

    def end_run(self) -> None:
        """A run ends (done, stopped or faulted): fold the run into the totals."""

    def fault_cause_present(self, code: int) -> bool:
        """True while the cause of a latched fault is still there (reset refused)."""
        return False
