"""CRC-16/MODBUS, shared by the INJ-1 frames and Modbus RTU (drivers and simulators)."""

from __future__ import annotations


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS: reflected polynomial 0xA001, init 0xFFFF, no final xor; sent low byte first."""
    crc = 0xFFFF
    for b in data:  # bytes, bytearray and memoryview all iterate as ints
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc
