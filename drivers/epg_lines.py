"""EPG-1 requests and replies on the line: bytes in (replies, ``!`` events, a lost link),
one request at a time with its reply paired to it, and the probe that pairs them again
after anything that may have left a reply owed (see ``drivers.epg``). A part of
:class:`drivers.epg.EpgDriver`."""

from __future__ import annotations

import asyncio
import logging
import re

from drivers.base import DeviceRefused, DeviceTimeout, NotConnected, Preempted, ProtocolError  # noqa: F401 - Preempted re-exported
from drivers.line_protocol import MAX_LINE, DoneEvent, FaultEvent, PulseEvent, decode_line, parse_err

#: the driver's logger: its messages keep the name they had before this split
log = logging.getLogger("drivers.epg")

REPLY_TIMEOUT = 0.25

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


class EpgLines:
    """The request/reply methods of :class:`drivers.epg.EpgDriver` (its attributes are
    set by the driver's ``__init__``)."""

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
        if isinstance(ev, (PulseEvent, DoneEvent)):
            self._train_seen_at = self._triggers_written  # a train of the last trigger written ran
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
        if text[:9].upper() == "OUTP:TRIG":
            self._triggers_written += 1

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
            raise Preempted(f"{self.device_id}: {_PREEMPT.name}")
        if item is _LOST:
            raise NotConnected(f"{self.device_id}: connection lost")
        assert not isinstance(item, _Signal)
        return item

    def _check_usable(self) -> None:
        if not self.connected:
            raise NotConnected(f"{self.endpoint}: not connected")
        if self._preempting:
            raise Preempted(f"{self.device_id}: {_PREEMPT.name}")

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
            gate = self._energise_gate  # OUTP:ARM / OUTP:TRIG: no safe state since its configure
            if gate is not None and self._preempted_since(gate):
                raise Preempted(f"{self.device_id}: a safe state came after the configure: {line} not sent")
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
