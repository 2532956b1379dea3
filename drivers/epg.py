"""Driver of the EPG-1 electroporation pulse generator (shared/icd/epg-1.md).

One request is in flight at a time (an ``asyncio.Lock``); its reply must come within
250 ms. ``!`` lines that arrive meanwhile go to the event subscribers.

Keeping replies paired with requests. The protocol carries no sequence numbers, but
the device answers lines strictly in order, one reply per line (a reply may be lost
or replaced by noise, never reordered). So after anything that may leave a reply owed
(a timeout, a garbled reply, a request cut short) the driver marks itself out of
step, and before its next request it sends a *probe*: a query whose reply cannot be
mistaken for any reply still owed (``*IDN?``, or ``PULS:POL?`` / ``TRAIN:REP?`` when
an identity query is among the owed ones). Everything up to the probe's reply is
discarded; after it, replies and requests are paired again. A late reply to a timed
out request is therefore never taken as the reply to the next one.

``safe_state`` does not queue behind a stuck request: it writes ``OUTP:STOP`` at
once, makes the request in flight give up (DeviceTimeout "preempted"), then confirms
with a probe and ``OUTP:STAT?`` sent together, all within about one reply timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import (
    Device,
    DeviceRefused,
    DeviceStatus,
    DeviceTimeout,
    Identity,
    NotConnected,
    ProtocolError,
    SafeStateResult,
    timed_safe_state,
)
from drivers.endpoints import Endpoint
from drivers.line_protocol import (
    MAX_LINE,
    DoneEvent,
    FaultEvent,
    LineSplitter,
    PulseEvent,
    decode_line,
    parse_err,
    parse_error_entry,
    parse_number,
)
from drivers.reply_timer import ReplyQueue
from drivers.serial_link import SerialLink

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 0.25
STATES = ("IDLE", "ARMED", "RUNNING", "FAULT")
#: codes of the ICD's "fault" kind (the rest are command errors)
FAULT_CODES = frozenset({-301, -302, -303, -310})
#: the faults a technician removes at the chair, and what to check (shared/mqtt-api.md)
RECOVERY_HINTS: dict[int, str] = {
    -301: "Overcurrent: check that the electrodes do not touch each other and sit on clean, dry scalp, then recover",
    -302: "Open circuit: re-seat the electrode on the scalp and check its cable and connector, then recover",
    -303: "Generator too hot: let it cool for a minute with the vents free, then recover",
}
#: at most this many SYST:ERR? reads when looking for the latched fault
MAX_ERROR_READS = 20


class EpgTrain(BaseModel):
    """One pulse train as the device's capability ranges allow it (clinical limits live elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amplitude_v: float = Field(ge=1, le=150, description="pulse amplitude, volts, in 0.5 V steps")
    width_ms: float = Field(ge=0.05, le=20, description="pulse width, milliseconds")
    period_ms: float = Field(ge=1, le=2000, description="start-to-start period, milliseconds")
    pulses: int = Field(ge=1, le=10_000)
    polarity: Literal["mono", "bip"] = "mono"
    current_limit_ma: float = Field(default=20, ge=1, le=100)

    @field_validator("amplitude_v")
    @classmethod
    def _half_volt_steps(cls, v: float) -> float:
        if abs(v * 2 - round(v * 2)) > 1e-9:
            raise ValueError("amplitude must be a multiple of 0.5 V")
        return v

    @model_validator(mode="after")
    def _period_holds_two_widths(self) -> "EpgTrain":
        if self.period_ms < 2 * self.width_ms:
            raise ValueError("period must be at least 2 x width")
        return self


@dataclass
class TrainReport:
    pulses: int
    charge_uc: float
    energy_mj: float
    peak_ma: float


# what the reply to a line looks like, for choosing a probe that cannot be confused with it
_KIND_OF = {"*IDN?": "idn", "PULS:POL?": "pol", "TRAIN:REP?": "report", "OUTP:STAT?": "state"}
_PROBES = (
    ("*IDN?", "idn", re.compile(r"[^,]*,EPG-1,[^,]*,[^,]*")),
    ("PULS:POL?", "pol", re.compile(r"MONO|BIP", re.IGNORECASE)),
    ("TRAIN:REP?", "report", re.compile(r"\d+,[\d.]+,[\d.]+,[\d.]+")),
)


def _kind(line: str) -> str:
    return _KIND_OF.get(line.strip().split(" ", 1)[0].upper(), "other")


class _Signal:
    """Wakes a waiting request without a reply: safe_state took over, or the link is gone."""

    def __init__(self, name: str) -> None:
        self.name = name


_PREEMPT = _Signal("preempted by safe_state")
_LOST = _Signal("connection lost")


class EpgDriver(Device):
    kind = "epg"
    heartbeat_interval = 0.15
    recovery_hints = RECOVERY_HINTS

    def __init__(self, endpoint: Endpoint | str, *, device_id: str | None = None) -> None:
        super().__init__(endpoint, device_id=device_id)
        self._link: SerialLink | None = None
        self._splitter = LineSplitter()
        self._replies = ReplyQueue()  # str | ProtocolError | _Signal, with a lazily re-armed deadline
        self._lock = asyncio.Lock()
        #: a reply may still be owed: resynchronise before the next request
        self._desynced = True
        #: kinds of the replies that may still be owed
        self._stale: set[str] = set()
        self._preempting = False
        self._last_fault: tuple[int, str] | None = None
        self._safe_task: asyncio.Future[SafeStateResult] | None = None

    # ================================================================== lifetime
    async def connect(self) -> None:
        if self.connected:
            return
        self._splitter.reset()
        self._drain()
        self._link = SerialLink(self.endpoint, self._on_data, self._on_lost)
        await self._link.open()
        self.connected = True
        self._desynced = True  # whatever sat in the port before us is not ours
        self._stale.clear()

    async def close(self) -> None:
        await self._stop_heartbeat()
        self.connected = False
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._replies.put_nowait(_LOST)
        self._replies.close()

    # ================================================================== bytes in
    def _on_data(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            try:
                msg = decode_line(raw)
            except ProtocolError as exc:
                if raw.startswith(b"!"):  # a broken event is not a reply: nobody waits for it
                    log.warning("%s: %s", self.device_id, exc)
                else:
                    self._replies.put_nowait(exc)
                continue
            if isinstance(msg, str):
                self._replies.put_nowait(msg)
            else:
                self._on_event(msg)

    def _on_event(self, ev: PulseEvent | DoneEvent | FaultEvent) -> None:
        if isinstance(ev, PulseEvent):
            self._emit("pulse", index=ev.index, t_us=ev.t_us, peak_ma=ev.peak_ma)
        elif isinstance(ev, DoneEvent):
            self._energised = False  # the device is idle again: no more heartbeats
            self._emit("train_done", pulses=ev.pulses, charge_uc=ev.charge_uc, energy_mj=ev.energy_mj)
        else:
            self._energised = False
            self._last_fault = (ev.code, ev.text)
            self._emit("fault", code=ev.code, text=ev.text)

    def _on_lost(self, exc: Exception | None) -> None:
        was = self.connected
        self.connected = False
        self._energised = False
        self._link = None
        self._replies.put_nowait(_LOST)
        if was:
            self._emit("connection_lost", error=str(exc) if exc else "")

    # ================================================================== request / reply
    def _drain(self) -> None:
        while not self._replies.empty():
            item = self._replies.get_nowait()
            if not isinstance(item, _Signal):
                log.debug("%s: discarding stray %r", self.device_id, item)

    def _write(self, text: str) -> None:
        if not self.connected or self._link is None:
            raise NotConnected(f"{self.endpoint}: not connected")
        self._link.write(text.encode("ascii"))

    def _owe(self, kind: str) -> None:
        self._desynced = True
        self._stale.add(kind)

    async def _next(self, deadline: float) -> str | ProtocolError:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeviceTimeout(f"{self.device_id}: no reply within {REPLY_TIMEOUT * 1000:.0f} ms")
        try:
            # one lazily re-armed timer, not a timeout per reply (see drivers/reply_timer.py)
            item = await self._replies.get(remaining)
        except TimeoutError:
            raise DeviceTimeout(f"{self.device_id}: no reply within {REPLY_TIMEOUT * 1000:.0f} ms") from None
        if item is _PREEMPT:
            raise DeviceTimeout(f"{self.device_id}: {_PREEMPT.name}")
        if item is _LOST:
            raise NotConnected(f"{self.device_id}: connection lost")
        assert not isinstance(item, _Signal)
        return item

    def _check_usable(self) -> None:
        if not self.connected:
            raise NotConnected(f"{self.endpoint}: not connected")
        if self._preempting:
            raise DeviceTimeout(f"{self.device_id}: {_PREEMPT.name}")

    async def _resync(self, deadline: float, then: str = "") -> None:
        """Send a probe (and ``then`` right behind it); discard everything up to the probe's reply."""
        probe, kind, pattern = next((p for p in _PROBES if p[1] not in self._stale), _PROBES[0])
        self._drain()
        self._write(probe + "\n" + then)
        self._owe(kind)
        while True:
            item = await self._next(deadline)
            if isinstance(item, str) and pattern.fullmatch(item):
                self._desynced = False
                self._stale.clear()
                return

    async def _request(self, line: str) -> str:
        """Send one line and return its reply line (``!`` events are routed meanwhile)."""
        if "\n" in line or "\r" in line or len(line.encode("ascii", "replace")) > MAX_LINE or not line.isascii():
            raise ValueError(f"not a single ASCII line of at most {MAX_LINE} bytes: {line!r}")
        kind = _kind(line)
        async with self._lock:
            self._check_usable()
            loop = asyncio.get_running_loop()
            if self._desynced:
                await self._resync(loop.time() + REPLY_TIMEOUT)
                self._check_usable()
            self._drain()
            self._write(line + "\n")
            try:
                item = await self._next(loop.time() + REPLY_TIMEOUT)
            except BaseException:  # timeout, preemption, cancellation: the reply is still owed
                self._owe(kind)
                raise
            if isinstance(item, ProtocolError):
                self._owe(kind)  # noise may have been extra, not instead of the reply
                raise ProtocolError(f"{self.device_id}: reply to {line!r}: {item}")
            return item

    async def _value(self, line: str) -> str:
        """A query's reply; an ``ERR`` reply raises DeviceRefused."""
        reply = await self._request(line)
        err = parse_err(reply)
        if err is not None:
            raise DeviceRefused(*err)
        return reply

    async def _command(self, line: str) -> None:
        reply = await self._value(line)
        if reply != "OK":
            raise ProtocolError(f"{self.device_id}: expected OK to {line!r}, got {reply!r}")

    # ================================================================== the device
    async def query(self, line: str) -> str:
        """Send any line and return the raw reply line (``ERR ...`` included, not raised)."""
        return await self._request(line)

    async def identify(self) -> Identity:
        reply = await self._value("*IDN?")
        parts = reply.split(",")
        if len(parts) != 4:
            raise ProtocolError(f"{self.device_id}: malformed identity {reply!r}")
        return Identity(*(p.strip() for p in parts))

    async def configure(self, params: BaseModel) -> None:
        """Send every setting of an :class:`EpgTrain`, then read them all back."""
        train = params if isinstance(params, EpgTrain) else EpgTrain.model_validate(params.model_dump())
        # width and period are checked against each other: order them so every step is valid
        width_now = parse_number(await self._value("PULS:WIDT?"))
        timing = [("PULS:PER", train.period_ms), ("PULS:WIDT", train.width_ms)]
        if train.period_ms < 2 * width_now:
            timing.reverse()
        numeric = [("SOUR:VOLT", train.amplitude_v), *timing, ("PULS:COUN", train.pulses),
                   ("CURR:LIM", train.current_limit_ma)]
        for header, value in numeric:
            await self._command(f"{header} {_number(value)}")
        await self._command(f"PULS:POL {train.polarity.upper()}")
        for header, value in numeric:
            got = parse_number(await self._value(header + "?"))
            if abs(got - value) > 1e-9 * max(1.0, abs(value)):
                raise ProtocolError(f"{self.device_id}: {header} reads back {got}, sent {value}")
        pol = await self._value("PULS:POL?")
        if pol.upper() != train.polarity.upper():
            raise ProtocolError(f"{self.device_id}: PULS:POL reads back {pol!r}, sent {train.polarity!r}")

    async def set_pulse_events(self, on: bool) -> None:
        await self._command(f"SYST:EVEN:PULS {'ON' if on else 'OFF'}")

    async def measure_impedance(self) -> float:
        """Applicator-to-skin impedance in ohms (above 20 000 means open circuit)."""
        return parse_number(await self._value("MEAS:IMP?"))

    async def start(self) -> None:
        """Arm (IDLE -> ARMED); from here the heartbeat keeps the device's watchdog fed."""
        await self._command("OUTP:ARM")
        self._set_energised(True)

    async def trigger(self) -> None:
        """Start the armed train (ARMED -> RUNNING); the device times the pulses."""
        await self._command("OUTP:TRIG")

    async def stop(self) -> None:
        self._energised = False  # even if the stop is lost, the watchdog will turn the output off
        await self._command("OUTP:STOP")

    async def train_report(self) -> TrainReport:
        reply = await self._value("TRAIN:REP?")
        parts = reply.split(",")
        if len(parts) != 4:
            raise ProtocolError(f"{self.device_id}: malformed train report {reply!r}")
        try:
            return TrainReport(int(parts[0]), *(parse_number(p) for p in parts[1:]))
        except ValueError:
            raise ProtocolError(f"{self.device_id}: malformed train report {reply!r}") from None

    async def status(self) -> DeviceStatus:
        state = (await self._value("OUTP:STAT?")).upper()
        if state not in STATES:
            raise ProtocolError(f"{self.device_id}: unknown state {state!r}")
        if state != "FAULT":
            self._last_fault = None
            return DeviceStatus(state.lower(), state in ("ARMED", "RUNNING"))
        # the latched fault is queued with the errors: read the queue, keep the newest fault
        for _ in range(MAX_ERROR_READS):
            code, text = parse_error_entry(await self._value("SYST:ERR?"))
            if code == 0:
                break
            if code in FAULT_CODES:
                self._last_fault = (code, text)
        code, text = self._last_fault if self._last_fault else (None, "unknown fault")
        return DeviceStatus("fault", False, code, text)

    async def clear_fault(self) -> None:
        await self._command("SYST:FAULT:CLR")
        self._last_fault = None
        self._energised = False  # a cleared device is idle: nothing to keep alive

    async def reset(self) -> None:
        """``*RST``: stop, disarm, defaults (pulse events off), faults cleared."""
        self._energised = False
        await self._command("*RST")
        self._last_fault = None

    async def heartbeat(self) -> None:
        await self._command("SYST:HEART")

    # ================================================================== safe state
    async def safe_state(self) -> SafeStateResult:
        # concurrent callers share one attempt: a second one must not preempt the first
        task = self._safe_task
        if task is None or task.done():
            task = self._safe_task = asyncio.ensure_future(timed_safe_state(self._safe_state))
        return await asyncio.shield(task)

    async def _safe_state(self) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_TIMEOUT + 0.05
        self._energised = False
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # it may be waiting for a reply; it must not hold the link
        if not self.connected:
            return False, "not connected"
        # output off first, before any waiting; its reply is simply owed
        self._write("OUTP:STOP\n")
        self._owe("other")
        self._preempting = True
        try:
            if self._lock.locked():
                self._replies.put_nowait(_PREEMPT)  # the request in flight gives up at once
            try:
                await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return False, "link busy"
        finally:
            self._preempting = False
        try:
            await self._resync(deadline, then="OUTP:STAT?\n")
            self._owe("state")
            item = await self._next(deadline)
            if not isinstance(item, str):
                return False, f"state read-back: {item}"
            self._stale.discard("state")
            self._desynced = bool(self._stale)
            state = item.upper()
            if state in ("IDLE", "FAULT"):
                return True, state.lower()
            return False, f"device reports {item!r}"
        finally:
            self._lock.release()


def _number(value: float) -> str:
    """A number as the device reads it: shortest exact decimal, never an exponent."""
    if float(value).is_integer():
        return str(int(value))
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{value:.12f}".rstrip("0").rstrip(".")
    return text
