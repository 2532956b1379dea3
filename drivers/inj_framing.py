"""INJ-1 framing: a frame's encoding (SOF, LEN, SEQ, CMD, payload, CRC-16/MODBUS), the
:class:`Frame`, and the resynchronising stream parser with the problems it reports
(see ``drivers.inj_frames`` for the format)."""

from __future__ import annotations

import functools
import struct
import time
from dataclasses import dataclass

from drivers.base import ProtocolError
from drivers.crc import crc16_modbus
from drivers.inj_codes import EVENT_SEQ, EVENTS, MAX_LEN, MIN_LEN, PARTIAL_TIMEOUT_S, SOF


@functools.lru_cache(maxsize=4096)
def _encode_cached(seq: int, cmd: int, payload: bytes) -> bytes:
    return encode(seq, cmd, payload, cache=False)


def encode(seq: int, cmd: int, payload: bytes = b"", *, cache: bool = True) -> bytes:
    """One complete frame; raises ValueError for values that cannot be framed.

    Frames repeat (a GET_STATUS or HEARTBEAT differs only by its SEQ), so whole frames
    are kept: a request's CRC is computed once per SEQ, not once per request.
    """
    if cache and isinstance(payload, bytes):
        return _encode_cached(seq, int(cmd), payload)
    if not 0 <= seq <= 255:
        raise ValueError(f"seq {seq} outside 0..255")
    if not 0 <= cmd <= 255:
        raise ValueError(f"cmd {cmd} outside 0..255")
    length = len(payload) + 2
    if length > MAX_LEN:
        raise ValueError(f"payload of {len(payload)} bytes is longer than {MAX_LEN - 2}")
    body = bytes((length, seq, cmd)) + bytes(payload)
    return bytes((SOF,)) + body + struct.pack("<H", crc16_modbus(body))


@dataclass(frozen=True)
class Frame:
    seq: int
    cmd: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode(self.seq, self.cmd, self.payload)

    @property
    def is_event(self) -> bool:
        return self.seq == EVENT_SEQ and self.cmd in EVENTS


# --------------------------------------------------------------------------- parser errors


class FrameError(ProtocolError):
    """Something unreadable on the wire; the parser reports it and carries on."""


class BadCrc(FrameError):
    def __init__(self, raw: bytes) -> None:
        super().__init__(f"bad CRC in {raw.hex(' ')}")
        self.raw = raw


class BadLength(FrameError):
    def __init__(self, length: int) -> None:
        super().__init__(f"impossible LEN {length} (expected {MIN_LEN}..{MAX_LEN})")
        self.length = length


class PartialTimeout(FrameError):
    def __init__(self, raw: bytes) -> None:
        super().__init__(f"partial frame of {len(raw)} bytes discarded after {PARTIAL_TIMEOUT_S * 1000:.0f} ms")
        self.raw = raw


class PayloadError(FrameError):
    """A frame whose payload does not fit its command."""


# --------------------------------------------------------------------------- parser


class FrameParser:
    """Bytes in, frames out, resynchronising on anything unreadable.

    ``feed(data, now)`` returns the complete frames and the errors met, in wire order.
    ``now`` (seconds, monotonic; defaults to ``time.monotonic()``) lets tests drive the
    50 ms partial-frame timeout: when ``now`` is more than 50 ms after the previous
    byte, whatever partial frame is held is discarded first. Bytes outside any frame
    (before a 0x7E) are skipped silently and counted in :attr:`skipped`.
    """

    def __init__(self, partial_timeout: float = PARTIAL_TIMEOUT_S) -> None:
        self.partial_timeout = partial_timeout
        self._buf = bytearray()
        self._last: float | None = None
        #: counters, for diagnostics
        self.skipped = 0
        self.frames = 0
        self.errors = 0

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._last = None

    def feed(self, data: bytes | bytearray | memoryview = b"", now: float | None = None) -> list[Frame | FrameError]:
        if not self._buf and len(data) >= 6 and data[0] == SOF and len(data) == data[1] + 4 \
                and MIN_LEN <= data[1] <= MAX_LEN:
            # the usual case, one whole reply in one chunk: no buffering, no scan, no clock
            frame = self.whole_frame(data)
            if frame is not None:
                return [frame]
        if now is None:
            now = time.monotonic()
        out: list[Frame | FrameError] = []
        if self._buf and self._last is not None and now - self._last > self.partial_timeout:
            # The held bytes are stale. The frame they start is abandoned, but complete
            # frames may hide behind a false start (a 0x7E in noise): drop one byte and
            # rescan until nothing is left waiting.
            out.append(PartialTimeout(bytes(self._buf)))
            while self._buf:
                del self._buf[0]
                self._scan(out)
        if data:
            self._buf += data
            self._last = now
        self._scan(out)
        for x in out:
            if isinstance(x, Frame):
                self.frames += 1
            else:
                self.errors += 1
        return out

    def whole_frame(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """``data`` as one frame when it is exactly one valid frame and nothing is held.

        The receive fast path: a reply usually arrives as one chunk. Anything else (a
        partial frame held, noise, two frames, a bad CRC) returns None and the caller
        falls back to :meth:`feed`, which resynchronises and reports errors.
        """
        if self._buf or len(data) < 6 or data[0] != SOF:
            return None
        length = data[1]
        if len(data) != length + 4 or not MIN_LEN <= length <= MAX_LEN:
            return None
        body = bytes(data[1:2 + length])
        if crc16_modbus(body) != data[2 + length] | (data[3 + length] << 8):
            return None
        self.frames += 1
        return Frame(body[1], body[2], body[3:])

    def _scan(self, out: list[Frame | FrameError]) -> None:
        buf = self._buf
        while buf:
            start = buf.find(SOF)
            if start < 0:
                self.skipped += len(buf)
                buf.clear()
                return
            if start:
                self.skipped += start
                del buf[:start]
            if len(buf) < 2:
                return
            length = buf[1]
            if not MIN_LEN <= length <= MAX_LEN:
                out.append(BadLength(length))
                del buf[0]
                continue
            total = length + 4
            if len(buf) < total:
                return
            body = bytes(buf[1:2 + length])
            crc = buf[2 + length] | (buf[3 + length] << 8)
            if crc16_modbus(body) != crc:
                out.append(BadCrc(bytes(buf[:total])))
                del buf[0]
                continue
            out.append(Frame(body[1], body[2], body[3:]))
            del buf[:total]
