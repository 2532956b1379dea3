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

A setting whose reply is lost (``SOUR:VOLT``, ``PULS:...``, ``CURR:LIM`` in ``configure``)
may still have been set: ``configure`` carries on (once; a second lost reply stands) and
its read-back of every setting decides. A query that changes nothing (``*IDN?``,
``OUTP:STAT?``, ``TRAIN:REP?``, the settings' queries) is asked once more, and a command
that does the same done twice (``SYST:EVEN:PULS``, which has no query; ``OUTP:STOP``)
is sent once more; ``SYST:HEART`` is not (a silent device is found by it, inside its
watchdog). Nothing that energises (``OUTP:ARM``, ``OUTP:TRIG``,
``MEAS:IMP?``'s test pulse) is ever sent again, nor ``SYST:ERR?`` (each read takes an
entry off the queue), and nothing is carried on after a request that safe_state
preempted (:class:`Preempted`).

The request/reply pairing is in ``drivers.epg_lines``, the train and its report in
``drivers.epg_train``; this module holds the driver's lifetime and device commands.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel

from drivers.base import (
    Device,
    DeviceStatus,
    DeviceTimeout,
    Identity,
    ProtocolError,
    SafeStateResult,
    timed_safe_state,
)
from drivers.endpoints import Endpoint
from drivers.epg_lines import _LOST, _PREEMPT, REPLY_TIMEOUT, EpgLines, Preempted  # noqa: F401 - REPLY_TIMEOUT re-exported
from drivers.epg_train import EpgTrain, TrainReport  # noqa: F401 - EpgTrain re-exported
from drivers.line_protocol import LineSplitter, parse_error_entry, parse_number
from drivers.reply_timer import ReplyQueue
from drivers.serial_link import SerialLink

log = logging.getLogger(__name__)

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


class EpgDriver(EpgLines, Device):
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
        #: while OUTP:ARM or OUTP:TRIG waits for the link, the start latch's count it needs
        #: (drivers.base.Device._start_gate, decision 0015)
        self._energise_gate: int | None = None
        #: OUTP:TRIG lines written, and how many had been when a ``!PULSE`` or ``!DONE`` last came
        self._triggers_written = 0
        self._train_seen_at = 0

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

    # ================================================================== the device
    async def query(self, line: str) -> str:
        """Send any line and return the raw reply line (``ERR ...`` included, not raised)."""
        return await self._request(line)

    async def identify(self) -> Identity:
        reply = await self._read("*IDN?")
        parts = reply.split(",")
        if len(parts) != 4:
            raise ProtocolError(f"{self.device_id}: malformed identity {reply!r}")
        return Identity(*(p.strip() for p in parts))

    async def configure(self, params: BaseModel) -> None:
        """Send every setting of an :class:`EpgTrain`, then read them all back."""
        train = params if isinstance(params, EpgTrain) else EpgTrain.model_validate(params.model_dump())
        self._settings_sent()  # a safe state from here on voids this train
        # width and period are checked against each other: order them so every step is valid
        width_now = parse_number(await self._read("PULS:WIDT?"))
        timing = [("PULS:PER", train.period_ms), ("PULS:WIDT", train.width_ms)]
        if train.period_ms < 2 * width_now:
            timing.reverse()
        numeric = [("SOUR:VOLT", train.amplitude_v), *timing, ("PULS:COUN", train.pulses),
                   ("CURR:LIM", train.current_limit_ma)]
        lost: DeviceTimeout | None = None
        for line in [f"{h} {_number(v)}" for h, v in numeric] + [f"PULS:POL {train.polarity.upper()}"]:
            try:
                await self._command(line)
            except Preempted:
                raise
            except DeviceTimeout as exc:
                if lost is not None:
                    raise
                lost = exc  # the setting may have been made: the read-back below decides
                log.warning("%s: %s: reply lost (%s); the read-back decides", self.device_id, line, exc)
        lost_note = f" (a reply was lost: {lost})" if lost is not None else ""
        for header, value in numeric:
            got = parse_number(await self._read(header + "?"))
            if abs(got - value) > 1e-9 * max(1.0, abs(value)):
                raise ProtocolError(f"{self.device_id}: {header} reads back {got}, sent {value}{lost_note}")
        pol = await self._read("PULS:POL?")
        if pol.upper() != train.polarity.upper():
            raise ProtocolError(f"{self.device_id}: PULS:POL reads back {pol!r}, sent {train.polarity!r}{lost_note}")
        if lost is not None:
            log.warning("%s: every setting reads back as sent: the configuration took", self.device_id)

    async def set_pulse_events(self, on: bool) -> None:
        """``SYST:EVEN:PULS``: it has no query, so a lost reply sends it once more (a setting,
        allowed in every state: sending it twice is sending it once)."""
        await self._again(f"SYST:EVEN:PULS {'ON' if on else 'OFF'}")

    async def measure_impedance(self) -> float:
        """Applicator-to-skin impedance in ohms (above 20 000 means open circuit). Never
        asked again when its reply is lost: each one is a test pulse through the skin."""
        return parse_number(await self._value("MEAS:IMP?"))

    async def start(self) -> None:
        """Arm (IDLE -> ARMED); from here the heartbeat keeps the device's watchdog fed."""
        await self._energising("OUTP:ARM")
        self._set_energised(True)

    async def trigger(self) -> None:
        """Start the armed train (ARMED -> RUNNING); the device times the pulses."""
        await self._energising("OUTP:TRIG")

    async def _energising(self, line: str) -> None:
        """``OUTP:ARM`` or ``OUTP:TRIG`` for the train configured last, never after a safe
        state that came since that configure: checked again on the link, right before the
        line is written (a step that outlived a stop must not arm or fire; a line written
        before the safe state's ``OUTP:STOP`` is undone by it, the device taking lines in
        order)."""
        self._energise_gate = self._start_gate(line)
        try:
            await self._command(line)
        finally:
            self._energise_gate = None

    def trigger_mark(self) -> int:
        """A mark of the triggers written so far, for :meth:`train_seen_since`."""
        return self._triggers_written

    def train_seen_since(self, mark: int) -> bool:
        """Whether the device announced a pulse or a train's end (``!PULSE``, ``!DONE``)
        after a trigger written since ``mark``: that train ran, even if the trigger's ``OK``
        was lost or never awaited."""
        return self._train_seen_at > mark

    async def stop(self) -> None:
        self._energised = False  # even if the stop is lost, the watchdog will turn the output off
        await self._again("OUTP:STOP")

    async def train_report(self) -> TrainReport:
        reply = await self._read("TRAIN:REP?")
        parts = reply.split(",")
        if len(parts) != 4:
            raise ProtocolError(f"{self.device_id}: malformed train report {reply!r}")
        try:
            return TrainReport(int(parts[0]), *(parse_number(p) for p in parts[1:]))
        except ValueError:
            raise ProtocolError(f"{self.device_id}: malformed train report {reply!r}") from None

    async def status(self) -> DeviceStatus:
        state = (await self._read("OUTP:STAT?")).upper()
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
        # not sent again when its reply is lost: the heartbeat is how a silent device is
        # found, inside the device's own 500 ms watchdog (docs/decisions/0014)
        await self._command("SYST:HEART")

    # ================================================================== a lost reply
    async def _read(self, line: str) -> str:
        """A query that changes nothing, asked once more when its reply is lost (the reply
        to the first is then discarded by the resync). Not ``SYST:ERR?`` (each read takes
        an entry off the queue) nor ``MEAS:IMP?`` (each is a test pulse)."""
        try:
            return await self._value(line)
        except Preempted:
            raise
        except DeviceTimeout as exc:
            log.warning("%s: %s: reply lost (%s): asked once more", self.device_id, line, exc)
            return await self._value(line)

    async def _again(self, line: str) -> None:
        """A command that does the same done twice (``OUTP:STOP``, ``SYST:EVEN:PULS``), sent
        once more when its reply is lost. Never ``OUTP:ARM`` or
        ``OUTP:TRIG``: what energises is not sent again."""
        try:
            await self._command(line)
        except Preempted:
            raise
        except DeviceTimeout as exc:
            log.warning("%s: %s: reply lost (%s): sent once more", self.device_id, line, exc)
            await self._command(line)

    # ================================================================== safe state
    async def safe_state(self) -> SafeStateResult:
        self._safe_state_begins()  # before any await: an OUTP:ARM or OUTP:TRIG under way sees it
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
