"""The EPG-1 wire format seen from the host: splitting bytes into lines, decoding them.

Kept apart from the driver so it can be fuzzed on its own: whatever bytes arrive,
:class:`LineSplitter` only ever returns lines and :func:`decode_line` only ever returns
a reply text or an event, or raises :class:`~drivers.base.ProtocolError`.

A line is at most 128 bytes of printable ASCII (a ``\\r`` before the ``\\n`` is dropped).
A line that grew longer is cut by the splitter at 129 bytes, the rest discarded up to
its ``\\n``, so memory stays bounded and the decoder reports it as too long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.base import ProtocolError

MAX_LINE = 128


class LineSplitter:
    """Bytes in, complete lines out (without ``\\r\\n``)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._overlong = False

    def reset(self) -> None:
        self._buf.clear()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        lines: list[bytes] = []
        while True:
            i = buf.find(b"\n")
            if i < 0:
                if len(buf) > self.max_line + 1:  # +1: a '\r' may still precede the '\n'
                    self._overlong = True
                    del buf[self.max_line + 1 :]  # keep a head to report, drop the rest
                break
            line = bytes(buf[:i])
            del buf[: i + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._overlong:
                self._overlong = False
                line = line[: self.max_line + 1].ljust(self.max_line + 1, b"?")
            lines.append(line)
        return lines

    @property
    def buffered(self) -> int:
        return len(self._buf)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PulseEvent:
    index: int
    t_us: int
    peak_ma: float


@dataclass(frozen=True)
class DoneEvent:
    pulses: int
    charge_uc: float
    energy_mj: float


@dataclass(frozen=True)
class FaultEvent:
    code: int
    text: str


Event = PulseEvent | DoneEvent | FaultEvent

_INT = r"[+-]?\d+"
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_PULSE = re.compile(rf"!PULSE ({_INT}),({_INT}),({_NUM})", re.IGNORECASE)
_DONE = re.compile(rf"!DONE ({_INT}),({_NUM}),({_NUM})", re.IGNORECASE)
_FAULT = re.compile(rf"!FAULT ({_INT}),\"([^\"]*)\"", re.IGNORECASE)
_ERR = re.compile(rf"ERR ({_INT}),\"([^\"]*)\"", re.IGNORECASE)
_ERR_ENTRY = re.compile(rf"({_INT}),\"([^\"]*)\"")
_NUMBER = re.compile(rf"{_NUM}(?:[eE][+-]?\d+)?")


def _text(raw: bytes) -> str:
    if len(raw) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    if not raw:
        raise ProtocolError("empty line")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise ProtocolError(f"not a printable ASCII line: {raw[:40]!r}")
    return raw.decode("ascii")


def decode_line(raw: bytes) -> str | Event:
    """A reply's text, or the event an ``!`` line carries; ProtocolError for anything else."""
    text = _text(raw)
    if not text.startswith("!"):
        return text
    if m := _PULSE.fullmatch(text):
        return PulseEvent(int(m[1]), int(m[2]), float(m[3]))
    if m := _DONE.fullmatch(text):
        return DoneEvent(int(m[1]), float(m[2]), float(m[3]))
    if m := _FAULT.fullmatch(text):
        return FaultEvent(int(m[1]), m[2])
    raise ProtocolError(f"unknown or malformed event: {text!r}")


def parse_err(reply: str) -> tuple[int, str] | None:
    """``ERR <code>,"<text>"`` -> (code, text); None when the reply is not an error."""
    m = _ERR.fullmatch(reply)
    if m:
        return int(m[1]), m[2]
    if reply[:4].upper() == "ERR ":
        raise ProtocolError(f"malformed error reply: {reply!r}")
    return None


def parse_error_entry(reply: str) -> tuple[int, str]:
    """The reply to ``SYST:ERR?``: ``<code>,"<text>"``."""
    m = _ERR_ENTRY.fullmatch(reply)
    if not m:
        raise ProtocolError(f"malformed SYST:ERR? reply: {reply!r}")
    return int(m[1]), m[2]


def parse_number(reply: str) -> float:
    if not _NUMBER.fullmatch(reply):
        raise ProtocolError(f"expected a number, got {reply!r}")
    return float(reply)
