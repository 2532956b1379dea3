"""CRC-16/MODBUS bit by bit, straight from its definition: what the tests check the
project's table-driven CRC (drivers.crc) and the frames on the wire against."""

from __future__ import annotations


def crc_reference(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc
