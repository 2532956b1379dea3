"""INJ-1 wire format: frames, CRC-16/MODBUS, a resynchronising stream parser and payloads.

Shared by the driver (``drivers.inj``) and the simulator (``simulators.inj``) so both
ends read the ICD (shared/icd/inj-1.md) through the same few lines of code::

    0x7E | LEN | SEQ | CMD | PAYLOAD (LEN-2 bytes) | CRC16 little-endian

``LEN`` counts SEQ + CMD + PAYLOAD (2..250); the CRC covers LEN, SEQ, CMD and PAYLOAD.
There is no byte stuffing, so a receiver finds frames by scanning for 0x7E and checking
LEN and CRC; on a bad CRC or an impossible LEN it drops the first byte and scans again.

Nothing in this module raises on bad input bytes: :meth:`FrameParser.feed` returns the
problems it met as :class:`FrameError` values beside the frames it found, and payload
decoding raises only :class:`PayloadError` (a :class:`FrameError`).
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from drivers.base import ProtocolError
from drivers.crc import crc16_modbus  # noqa: F401 - re-exported

SOF = 0x7E
MIN_LEN = 2
MAX_LEN = 250
#: a partial frame is discarded when this long passes without its next byte (ICD)
PARTIAL_TIMEOUT_S = 0.050
#: bytes around the payload: SOF, LEN, SEQ, CMD, CRC16
OVERHEAD = 6
#: SEQ of unsolicited events
EVENT_SEQ = 0


class Cmd(IntEnum):
    # host requests
    PING = 0x01
    SET_PARAMS = 0x02
    ARM = 0x03
    DISARM = 0x04
    GET_STATUS = 0x05
    HEARTBEAT = 0x06
    SET_CAP = 0x07
    CLEAR_FAULT = 0x08
    # replies
    NAK = 0x7F
    ACK = 0x80
    INFO = 0x81
    STATUS = 0x85
    # events (SEQ 0)
    SHOT = 0x90
    FAULT = 0x91
    TRIGGER_REFUSED = 0x92


REQUESTS = frozenset({Cmd.PING, Cmd.SET_PARAMS, Cmd.ARM, Cmd.DISARM, Cmd.GET_STATUS,
                      Cmd.HEARTBEAT, Cmd.SET_CAP, Cmd.CLEAR_FAULT})
REPLIES = frozenset({Cmd.NAK, Cmd.ACK, Cmd.INFO, Cmd.STATUS})
EVENTS = frozenset({Cmd.SHOT, Cmd.FAULT, Cmd.TRIGGER_REFUSED})


class State(IntEnum):
    IDLE = 0
    ARMED = 1
    FIRING = 2
    FAULT = 3


class Code(IntEnum):
    """NAK error codes (1-4) and latched fault codes (5-8) share one table in the ICD."""

    BAD_FRAME = 1
    UNKNOWN_COMMAND = 2
    OUT_OF_RANGE = 3
    NOT_ALLOWED = 4
    WATCHDOG = 5
    OCCLUSION = 6
    EMPTY = 7
    CARTRIDGE_MISSING = 8


CODE_TEXT: dict[int, str] = {
    0: "no fault",
    1: "bad CRC or malformed frame",
    2: "unknown command",
    3: "parameter out of range",
    4: "not allowed in this state",
    5: "watchdog",
    6: "occlusion: plunger pressure above 400 kPa",
    7: "reservoir empty",
    8: "needle cartridge missing",
}


#: the faults a technician removes at the chair, and what to check (shared/mqtt-api.md)
RECOVERY_HINTS: dict[int, str] = {
    6: "Occlusion: the needle cartridge is clogged; fit a new cartridge and purge it, then recover",
    7: "Reservoir empty: fit a new vial, then recover",
    8: "Needle cartridge missing: fit a needle cartridge, then recover",
}


class Refusal(IntEnum):
    """TRIGGER_REFUSED reasons."""

    NOT_ARMED = 1
    CAP_REACHED = 2
    EMPTY = 3


REFUSAL_TEXT: dict[int, str] = {1: "not armed", 2: "cap reached", 3: "empty"}


class Mode(IntEnum):
    SINGLE = 0
    BURST = 1
    NAPPAGE = 2


def code_text(code: int) -> str:
    return CODE_TEXT.get(code, f"unknown code {code}")


# --------------------------------------------------------------------------- CRC, encoding


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


# --------------------------------------------------------------------------- payloads


class _Payload:
    """A fixed-size little-endian payload described by one ``struct`` format."""

    FMT: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def size(cls) -> int:
        return cls.FMT.size

    @classmethod
    def _fields(cls, payload: bytes) -> tuple[int, ...]:
        if len(payload) != cls.FMT.size:
            raise PayloadError(f"{cls.__name__}: payload of {len(payload)} bytes, expected {cls.FMT.size}")
        return cls.FMT.unpack(payload)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        """Decode a payload of exactly this type's size (else PayloadError)."""
        # A frozen dataclass's __init__ sets each field through object.__setattr__; filling
        # the instance's dict at once halves the cost of decoding a STATUS (read hundreds of
        # times a second). The fields are plain ints, with nothing to validate.
        obj = object.__new__(cls)
        obj.__dict__.update(zip(cls._NAMES, cls._fields(payload)))
        return obj

    _NAMES: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class Info(_Payload):
    """0x81 INFO, the reply to PING."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<HH8s")
    model: int
    firmware: int
    serial: str  # 8 ASCII characters

    def pack(self) -> bytes:
        serial = self.serial.encode("ascii", "replace")[:8].ljust(8, b" ")
        return self.FMT.pack(self.model, self.firmware, serial)

    @classmethod
    def unpack(cls, payload: bytes) -> "Info":
        model, fw, serial = cls._fields(payload)
        return cls(model, fw, serial.decode("ascii", "replace").rstrip("\x00 "))


@dataclass(frozen=True)
class Params(_Payload):
    """0x02 SET_PARAMS: volume and depth in tenths, mode, burst rate."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<HHBB")
    volume_x10: int
    depth_x10: int
    mode: int
    rate: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.volume_x10, self.depth_x10, self.mode, self.rate)



@dataclass(frozen=True)
class Cap(_Payload):
    """0x07 SET_CAP: the volume (0.1 uL) the gun may still deliver."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<I")
    max_volume_x10: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.max_volume_x10)



@dataclass(frozen=True)
class Ack(_Payload):
    """0x80 ACK: the state after the command."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<B")
    state: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.state)



@dataclass(frozen=True)
class Nak(_Payload):
    """0x7F NAK: an error code 1-4."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<B")
    code: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.code)



@dataclass(frozen=True)
class Status(_Payload):
    """0x85 STATUS, the reply to GET_STATUS (20 bytes)."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<BBIIIHHH")
    state: int
    fault: int
    shots_total: int
    volume_total_x10: int
    reservoir_x10: int
    pressure_kpa: int
    depth_x10: int
    volume_x10: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.state, self.fault, self.shots_total, self.volume_total_x10,
                             self.reservoir_x10, self.pressure_kpa, self.depth_x10, self.volume_x10)



@dataclass(frozen=True)
class Shot(_Payload):
    """0x90 SHOT event: index, volume delivered, depth reached, ms since arming."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<IHHI")
    shot_index: int
    volume_x10: int
    depth_x10: int
    t_ms: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.shot_index, self.volume_x10, self.depth_x10, self.t_ms)



@dataclass(frozen=True)
class FaultEvent(_Payload):
    """0x91 FAULT event: the latched fault code (the gun disarmed itself before sending)."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<B")
    code: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.code)



@dataclass(frozen=True)
class TriggerRefused(_Payload):
    """0x92 TRIGGER_REFUSED event: 1 not armed, 2 cap reached, 3 empty."""

    FMT: ClassVar[struct.Struct] = struct.Struct("<B")
    reason: int

    def pack(self) -> bytes:
        return self.FMT.pack(self.reason)



for _kind in (Params, Cap, Ack, Nak, Status, Shot, FaultEvent, TriggerRefused):
    _kind._NAMES = tuple(f.name for f in dataclasses.fields(_kind))

#: payload length of every request (NAK 1 answers any other length)
REQUEST_PAYLOAD_SIZE: dict[int, int] = {
    Cmd.PING: 0,
    Cmd.SET_PARAMS: Params.size(),
    Cmd.ARM: 0,
    Cmd.DISARM: 0,
    Cmd.GET_STATUS: 0,
    Cmd.HEARTBEAT: 0,
    Cmd.SET_CAP: Cap.size(),
    Cmd.CLEAR_FAULT: 0,
}

#: payload type of every reply and event
PAYLOAD_TYPES: dict[int, type[_Payload]] = {
    Cmd.NAK: Nak,
    Cmd.ACK: Ack,
    Cmd.INFO: Info,
    Cmd.STATUS: Status,
    Cmd.SHOT: Shot,
    Cmd.FAULT: FaultEvent,
    Cmd.TRIGGER_REFUSED: TriggerRefused,
    Cmd.SET_PARAMS: Params,
    Cmd.SET_CAP: Cap,
}


def decode_payload(frame: Frame) -> _Payload | None:
    """The typed payload of a frame (None for the empty-payload requests).

    Raises :class:`PayloadError` for a payload that does not fit its command, or a
    command this protocol does not know.
    """
    kind = PAYLOAD_TYPES.get(frame.cmd)
    if kind is None:
        if REQUEST_PAYLOAD_SIZE.get(frame.cmd) == 0:
            if frame.payload:
                raise PayloadError(f"command 0x{frame.cmd:02X} takes no payload, got {len(frame.payload)} bytes")
            return None
        raise PayloadError(f"unknown command 0x{frame.cmd:02X}")
    return kind.unpack(frame.payload)  # type: ignore[attr-defined]
