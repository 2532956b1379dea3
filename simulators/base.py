"""What every device simulator shares: the control operations, fault bookkeeping, a clock.

A simulator is one object holding the device's state and physics. A transport
(``simulators.stream`` for the serial devices, ``simulators.modbus_server`` for the
Modbus ones) feeds it the host's bytes or register accesses; the control channel
(``simulators.control``) lets a test, the demo or a person stand in for the world:
inject faults, pull the injector's trigger, change the skin's impedance.

Control requests are validated completely before anything changes: a bad request gets
``ControlError`` and leaves the simulator as it was (shared/simulator-control.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np


class ControlError(ValueError):
    """A control request that cannot be honoured; nothing was changed."""


class Connection:
    """One host connection of a byte-stream simulator (a TCP client or a pty)."""

    def __init__(self, send: Callable[[bytes], None], name: str = "",
                 close: Callable[[], None] | None = None) -> None:
        self._send = send
        self._close = close
        self.name = name
        self.open = True
        self.state: dict[str, Any] = {}  # per-connection parser state (partial frames, ...)

    def close(self) -> None:
        """Drop the host's connection (the simulator is going away, or the cable is pulled)."""
        self.open = False
        if self._close is not None:
            try:
                self._close()
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        if self.open:
            try:
                self._send(data)
            except OSError:
                self.open = False


class DeviceSimulator(ABC):
    #: "epg", "inj", "led", "pemf"
    kind: ClassVar[str] = ""
    #: "stream" (serial byte protocol) or "modbus"
    transport: ClassVar[str] = "stream"
    #: names accepted by the control op ``inject``
    fault_names: ClassVar[tuple[str, ...]] = ()
    #: physical inputs accepted by the control op ``set``: name -> (min, max)
    inputs: ClassVar[dict[str, tuple[float, float]]] = {}

    def __init__(self, *, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        #: injected fault name -> remaining occurrences (-1: until cleared)
        self.injected: dict[str, int] = {}
        self.t0 = time.monotonic()
        #: time.monotonic() when output_on last changed (None before the first change)
        self.output_changed_at: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------ clock
    @staticmethod
    def now() -> float:
        return time.monotonic()

    def mark_output_change(self) -> None:
        """Stamp the moment output_on changed; called at the change, before any reply."""
        self.output_changed_at = time.monotonic()

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        """Start background activity (physics ticks, watchdogs). Subclasses extend."""
        self.loop = asyncio.get_running_loop()

    def spawn(self, coro: Any, name: str = "") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return task

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # ------------------------------------------------------------------ faults
    def fault_active(self, name: str) -> bool:
        return self.injected.get(name, 0) != 0

    def consume_fault(self, name: str) -> bool:
        """True if an injected one-off fault happens now; counts it down."""
        left = self.injected.get(name, 0)
        if left == 0:
            return False
        if left > 0:
            left -= 1
            if left == 0:
                del self.injected[name]
            else:
                self.injected[name] = left
        return True

    def on_inject(self, name: str) -> None:
        """Hook: a fault was injected (e.g. open circuit sets R to infinity)."""

    def on_clear(self, name: str) -> None:
        """Hook: an injected cause was removed."""

    # ------------------------------------------------------------------ control
    def control(self, req: Any) -> dict[str, Any]:
        """Handle one control request; raises ControlError for a bad one."""
        if not isinstance(req, dict):
            raise ControlError("request must be a JSON object")
        op = req.get("op")
        if not isinstance(op, str):
            raise ControlError("missing or non-string 'op'")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ControlError(f"unknown op {op!r}")
        return handler(req) or {}

    def op_state(self, req: dict[str, Any]) -> dict[str, Any]:
        state = self.snapshot()
        state.setdefault("device", self.kind)
        state["injected"] = dict(self.injected)
        state["output_changed_at"] = self.output_changed_at
        return state

    def op_inject(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("fault")
        if name not in self.fault_names:
            raise ControlError(f"unknown fault {name!r}; expected one of {', '.join(self.fault_names)}")
        count = req.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count == 0 or count < -1:
            raise ControlError("'count' must be a positive integer or -1")
        self.injected[name] = count
        self.on_inject(name)
        return {"injected": name, "count": count}

    def op_clear(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("fault")
        if name is None:
            names = list(self.injected)
        elif name in self.fault_names:
            names = [name]
        else:
            raise ControlError(f"unknown fault {name!r}; expected one of {', '.join(self.fault_names)}")
        for n in names:
            self.injected.pop(n, None)
            self.on_clear(n)
        return {"cleared": names}

    def op_set(self, req: dict[str, Any]) -> dict[str, Any]:
        name, value = req.get("name"), req.get("value")
        if name not in self.inputs:
            raise ControlError(f"unknown input {name!r}; expected one of {', '.join(self.inputs)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ControlError(f"'value' for {name} must be a number")
        lo, hi = self.inputs[name]
        if math.isnan(value) or not lo <= value <= hi:
            raise ControlError(f"'value' for {name} must be within {lo}..{hi}")
        self.set_input(name, float(value))
        return {name: value}

    def op_trigger(self, req: dict[str, Any]) -> dict[str, Any]:
        raise ControlError(f"op 'trigger' is not supported by {self.kind}")

    def op_auto_trigger(self, req: dict[str, Any]) -> dict[str, Any]:
        raise ControlError(f"op 'auto_trigger' is not supported by {self.kind}")

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The whole internal state: output_on, state, fault, totals, physical inputs."""

    @abstractmethod
    def set_input(self, name: str, value: float) -> None:
        """Apply a validated physical input."""


class StreamDeviceSimulator(DeviceSimulator):
    """A serial device: bytes in, bytes out, on one or more host connections."""

    transport: ClassVar[str] = "stream"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.connections: list[Connection] = []

    def connection_made(self, conn: Connection) -> None:
        self.connections.append(conn)

    def connection_lost(self, conn: Connection) -> None:
        conn.open = False
        if conn in self.connections:
            self.connections.remove(conn)

    def broadcast(self, data: bytes) -> None:
        """Send unsolicited bytes (events) to every connected host."""
        for conn in list(self.connections):
            conn.send(data)

    @abstractmethod
    def data_received(self, conn: Connection, data: bytes) -> None: ...
