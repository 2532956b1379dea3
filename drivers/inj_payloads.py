"""INJ-1 payloads: one fixed-size little-endian struct per reply, event and request with
a payload, and the decoding of a frame's payload by its command."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.inj_codes import Cmd
from drivers.inj_framing import Frame, PayloadError


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
