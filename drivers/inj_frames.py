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

The code is in three modules, all re-exported here: ``inj_codes`` (the ICD's
constants, commands, states and codes), ``inj_framing`` (encoding, :class:`Frame`, the
parser) and ``inj_payloads`` (the payload structs).
"""

from __future__ import annotations

from drivers.crc import crc16_modbus
from drivers.inj_codes import (
    CODE_TEXT,
    EVENTS,
    EVENT_SEQ,
    MAX_LEN,
    MIN_LEN,
    OVERHEAD,
    PARTIAL_TIMEOUT_S,
    RECOVERY_HINTS,
    REFUSAL_TEXT,
    REPLIES,
    REQUESTS,
    SOF,
    Cmd,
    Code,
    Mode,
    Refusal,
    State,
    code_text,
)
from drivers.inj_framing import (
    BadCrc,
    BadLength,
    Frame,
    FrameError,
    FrameParser,
    PartialTimeout,
    PayloadError,
    encode,
)
from drivers.inj_payloads import (
    PAYLOAD_TYPES,
    REQUEST_PAYLOAD_SIZE,
    Ack,
    Cap,
    FaultEvent,
    Info,
    Nak,
    Params,
    Shot,
    Status,
    TriggerRefused,
    decode_payload,
)

__all__ = [
    "Ack",
    "BadCrc",
    "BadLength",
    "CODE_TEXT",
    "Cap",
    "Cmd",
    "Code",
    "EVENTS",
    "EVENT_SEQ",
    "FaultEvent",
    "Frame",
    "FrameError",
    "FrameParser",
    "Info",
    "MAX_LEN",
    "MIN_LEN",
    "Mode",
    "Nak",
    "OVERHEAD",
    "PARTIAL_TIMEOUT_S",
    "PAYLOAD_TYPES",
    "Params",
    "PartialTimeout",
    "PayloadError",
    "RECOVERY_HINTS",
    "REFUSAL_TEXT",
    "REPLIES",
    "REQUESTS",
    "REQUEST_PAYLOAD_SIZE",
    "Refusal",
    "SOF",
    "Shot",
    "State",
    "Status",
    "TriggerRefused",
    "code_text",
    "crc16_modbus",
    "decode_payload",
    "encode",
]
