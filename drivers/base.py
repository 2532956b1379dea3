"""The one small async interface every device driver offers to the session runner.

A driver knows its wire protocol and nothing of sessions. The runner talks to every
device through :class:`Device`; what only one device type has (the injector's cap, the
pulse generator's impedance measurement) is a plain extra method on that driver.

Everything a device says is untrusted: a driver turns silence, garbage, a wrong
sequence number or a device error into one of the typed errors below, within the
ICD's reply timeout, and never lets an exception escape from a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.endpoints import Endpoint

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors


class DriverError(Exception):
    """Base of every error a driver raises."""


class DeviceTimeout(DriverError):
    """The device did not answer within the ICD's reply timeout."""


class ProtocolError(DriverError):
    """The device answered something the protocol does not allow (garbage, bad CRC, wrong SEQ)."""


class DeviceRefused(DriverError):
    """The device understood and refused a request (out of range, not allowed in this state)."""

    def __init__(self, code: int | str, text: str = "") -> None:
        super().__init__(f"device refused: {code} {text}".strip())
        self.code = code
        self.text = text


class DeviceFault(DriverError):
    """The device is in a latched fault."""

    def __init__(self, code: int | str, text: str = "") -> None:
        super().__init__(f"device fault {code}: {text}".strip())
        self.code = code
        self.text = text


class NotConnected(DriverError):
    """The connection is closed or was lost."""


class Preempted(DeviceTimeout):
    """A safe state took the device first: a request that gave up because safe_state took
    the link (not a lost reply, so nothing may be settled by a read-back and carried on
    after it), or a start refused because a safe state came after the configure it
    belongs to. The stop that took it decides how the session ends."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Identity:
    vendor: str
    model: str
    serial: str
    firmware: str


@dataclass(frozen=True)
class DeviceStatus:
    """A snapshot of a device as its driver last read it.

    ``state`` is the device's own state name in lower case (``idle``, ``armed``,
    ``running``, ``firing``, ``on``, ``done``, ``fault``); ``output_on`` is true when
    anything is being delivered or armed to deliver; ``readings`` carries the
    device-specific values with their unit in the key (``pressure_kpa``).
    """

    state: str
    output_on: bool
    fault: int | None = None
    fault_text: str = ""
    readings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceEvent:
    """Something a device reported on its own (or its driver noticed)."""

    kind: str  # "pulse", "train_done", "shot", "trigger_refused", "fault", "exposure_done", "connection_lost"
    data: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SafeStateResult:
    confirmed: bool
    ms: float
    detail: str = ""


# --------------------------------------------------------------------------- the interface


class Device(ABC):
    """Base of every driver: connection lifetime, event fan-out and the heartbeat.

    Subclasses implement the abstract methods and call :meth:`_emit` for events and
    :meth:`_set_energised` when the device becomes armed/on or off, which starts and
    stops the automatic heartbeat.
    """

    kind: ClassVar[str] = ""
    #: how often the heartbeat is sent while energised, seconds
    heartbeat_interval: ClassVar[float] = 0.2

    @property
    def tick_interval(self) -> float:
        """How often the background loop runs while energised: the heartbeat's period,
        unless a driver watches its device more often than it must keep it alive."""
        return self.heartbeat_interval

    async def tick(self) -> None:
        """One turn of the background loop while energised: by default one heartbeat."""
        await self.heartbeat()

    def __init__(self, endpoint: Endpoint | str, *, device_id: str | None = None) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.device_id = device_id or self.kind
        self._subscribers: list[asyncio.Queue[DeviceEvent]] = []
        self._energised = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.connected = False
        #: the start latch (decision 0015): safe states begun, counted before any await,
        #: and that count when the settings the next start belongs to were sent
        self._safe_states = 0
        self._configured_at = 0

    # -- lifetime
    async def __aenter__(self) -> "Device":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def connect(self) -> None: ...

    async def close(self) -> None:
        await self._stop_heartbeat()
        self.connected = False

    # -- what every device does
    @abstractmethod
    async def identify(self) -> Identity: ...

    @abstractmethod
    async def configure(self, params: BaseModel) -> None:
        """Send a typed parameter set (the driver's own pydantic model)."""

    @abstractmethod
    async def start(self) -> None:
        """Energise: arm (EPG, INJ) or switch the output on (LED, PEMF)."""

    @abstractmethod
    async def stop(self) -> None:
        """Normal stop of the output (not the emergency path: see safe_state)."""

    @abstractmethod
    async def safe_state(self) -> SafeStateResult:
        """Fastest path to outputs off, confirmed by read-back. Idempotent; never raises."""

    @abstractmethod
    async def status(self) -> DeviceStatus: ...

    @abstractmethod
    async def clear_fault(self) -> None:
        """The device's own clear command; DeviceRefused while the cause is still there."""

    #: fault code -> what the technician checks at the chair before clearing it: the faults
    #: whose cause a person removes in a minute (shared/mqtt-api.md, "recover or fail");
    #: every other fault fails a session
    recovery_hints: ClassVar[dict[Any, str]] = {}

    @abstractmethod
    async def heartbeat(self) -> None:
        """One heartbeat; the base class sends it periodically while energised."""

    # -- the start latch (decision 0015)
    def _safe_state_begins(self) -> None:
        """First thing in :meth:`safe_state`, before any await: a start under way, and any
        start of the settings sent before now, sees it."""
        self._safe_states += 1

    def _settings_sent(self) -> None:
        """When a start's settings begin to go out (a configure, INJ-1's cap): a start is
        for these settings, and a safe state from here on voids them."""
        self._configured_at = self._safe_states

    def _start_gate(self, what: str) -> int:
        """The latch's count for a start (arm, trigger, output on); :class:`Preempted`, and
        nothing sent, when a safe state came since its settings were sent: a step that
        outlived a stop must not energise the device after the stop's safe state."""
        if self._configured_at != self._safe_states:
            raise Preempted(f"{self.device_id}: a safe state came after the configure: {what} not sent")
        return self._configured_at

    def _preempted_since(self, gate: int) -> bool:
        """A safe state began since ``gate`` (a start's :meth:`_start_gate`) was taken."""
        return gate != self._safe_states

    # -- events
    @contextlib.asynccontextmanager
    async def subscribe(self, maxsize: int = 0) -> AsyncIterator[asyncio.Queue[DeviceEvent]]:
        """A queue that receives every event from now until the block ends."""
        q: asyncio.Queue[DeviceEvent] = asyncio.Queue(maxsize)
        self._subscribers.append(q)
        try:
            yield q
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(q)

    async def events(self) -> AsyncIterator[DeviceEvent]:
        """An endless async stream of this device's events."""
        async with self.subscribe() as q:
            while True:
                yield await q.get()

    def _emit(self, kind: str, **data: Any) -> None:
        ev = DeviceEvent(kind, data)
        for q in list(self._subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:  # a slow observer never blocks the driver
                log.warning("%s: event queue full, dropping %s", self.device_id, kind)

    # -- heartbeat
    @property
    def energised(self) -> bool:
        return self._energised

    def _set_energised(self, on: bool) -> None:
        self._energised = on
        if on and (self._heartbeat_task is None or self._heartbeat_task.done()):
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"heartbeat-{self.device_id}"
            )

    async def _heartbeat_loop(self) -> None:
        try:
            while self._energised and self.connected:
                await asyncio.sleep(self.tick_interval)
                if not self._energised:
                    break
                try:
                    await self.tick()
                except DriverError as exc:  # reported, never raised from a background task
                    log.warning("%s: heartbeat failed: %s", self.device_id, exc)
                    self._emit("heartbeat_failed", error=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - defensive: a background task never dies loudly
            log.exception("%s: heartbeat loop crashed", self.device_id)
            self._emit("heartbeat_failed", error="heartbeat loop crashed")

    async def _stop_heartbeat(self) -> None:
        self._energised = False
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def timed_safe_state(coro_fn: Any) -> SafeStateResult:
    """Run a subclass's raw safe-state coroutine, timing it and turning errors into 'unconfirmed'."""
    t0 = time.perf_counter()
    try:
        ok, detail = await coro_fn()
    except Exception as exc:  # noqa: BLE001 - safe_state never raises
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return SafeStateResult(ok, (time.perf_counter() - t0) * 1000.0, detail)
