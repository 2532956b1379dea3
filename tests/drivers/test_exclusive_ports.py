"""A serial port has one owner: a second program opening it fails clearly (issue: one owner
per room). pyserial's ``exclusive=True`` for EPG-1 and INJ-1 ports; pymodbus opens RTU
ports exclusively itself."""

from __future__ import annotations

import os

import pytest

from drivers.base import NotConnected
from drivers.endpoints import Endpoint
from drivers.modbus_link import ModbusLink
from drivers.serial_link import SerialLink


@pytest.fixture
def pty_name():
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


async def test_a_second_serial_link_on_an_open_port_is_refused(pty_name: str) -> None:
    ep = Endpoint.parse(f"serial://{pty_name}")
    first = SerialLink(ep, on_data=lambda data: None)
    await first.open()
    try:
        second = SerialLink(ep, on_data=lambda data: None)
        with pytest.raises(NotConnected, match="lock"):
            await second.open()
        assert not second.is_open
        first.write(b"*IDN?\n")  # the owner goes on using it
    finally:
        first.close()
    again = SerialLink(ep, on_data=lambda data: None)  # closed: the port is free again
    await again.open()
    again.close()


async def test_a_second_modbus_rtu_link_on_an_open_port_is_refused(pty_name: str) -> None:
    ep = Endpoint.parse(f"modbus-rtu://{pty_name}?unit=1")
    first = ModbusLink(ep, timeout=0.2)
    await first.open()
    try:
        second = ModbusLink(ep, timeout=0.2)
        with pytest.raises(NotConnected):
            await second.open()
        await second.close()
    finally:
        await first.close()
