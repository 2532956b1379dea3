"""CRC-16/MODBUS, shared by the INJ-1 frames and Modbus RTU (drivers and simulators)."""

from __future__ import annotations

import sys


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def _crc_table16() -> tuple[int, ...]:
    # Two bytes at a time: XOR a little-endian 16-bit word into the register, and the
    # register has then been shifted through entirely, so one lookup replaces two.
    t = _CRC_TABLE
    out = []
    for v in range(65536):
        c = (v >> 8) ^ t[v & 0xFF]
        out.append((c >> 8) ^ t[c & 0xFF])
    return tuple(out)


#: 65 536 entries (about 2 MB, 8 ms to build at import): halves the CRC's cost per frame,
#: which is a visible share of an INJ-1 round trip (bench/drivers.py)
_CRC_TABLE16 = _crc_table16()


def crc16_modbus_bytewise(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS one byte at a time: the reference, and the big-endian hosts' version."""
    crc = 0xFFFF
    for b in memoryview(data).cast("B"):
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def _crc16_modbus_wordwise(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFF
    view = memoryview(data).cast("B")
    n = len(view)
    if n > 1:
        t16 = _CRC_TABLE16
        for word in view[: n & ~1].cast("H"):  # native order, little-endian on this path
            crc = t16[crc ^ word]
    if n & 1:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ view[n - 1]) & 0xFF]
    return crc


if sys.byteorder == "little":
    crc16_modbus = _crc16_modbus_wordwise
else:  # pragma: no cover - the word-wise table assumes little-endian words
    crc16_modbus = crc16_modbus_bytewise
crc16_modbus.__doc__ = """CRC-16/MODBUS: reflected polynomial 0xA001, init 0xFFFF, no final xor; sent low byte first."""
