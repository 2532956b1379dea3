"""INJ-1's vocabulary (shared/icd/inj-1.md): frame constants, commands, states, fault
codes and their texts, refusals and modes."""

from __future__ import annotations

from enum import IntEnum

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
