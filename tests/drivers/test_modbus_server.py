"""The LED-1 and PEMF-1 simulators on the wire: every register, coil and exception code
as the ICDs give them, checked with a plain pymodbus client, raw MBAP bytes and raw
RTU frames on the pty, plus the watchdog and the control channel.

No tests/drivers/__init__.py on purpose: with it, pytest would import this directory
as the package ``drivers`` and hide the real one.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import time
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from drivers.endpoints import Endpoint
from simulators.harness import run_simulator, spawn_simulator
from simulators.modbus_server import crc16_modbus, rtu_frame

pytestmark = pytest.mark.timeout(60)

# name: (address, width, lo, hi, default)
LED_HOLDING = {
    "CHANNEL": (0, 1, 0, 3, 1),
    "IRRADIANCE": (1, 1, 10, 1000, 300),
    "DURATION": (2, 2, 0, 36000, 6000),
    "FLUENCE_TARGET": (4, 2, 0, 100000, 0),
    "PULSE_HZ": (6, 1, 0, 1000, 0),
    "DUTY": (7, 1, 10, 100, 100),
    "WATCHDOG_MS": (8, 1, 200, 10000, 2000),
}
PEMF_HOLDING = {
    "WAVEFORM": (0, 1, 0, 2, 2),
    "FREQ": (1, 1, 1, 1000, 150),
    "PEAK_FIELD": (2, 1, 1, 2000, 200),
    "DURATION": (3, 2, 1, 36000, 6000),
    "WATCHDOG_MS": (5, 1, 200, 10000, 2000),
}
HOLDING = {"led": (LED_HOLDING, 9), "pemf": (PEMF_HOLDING, 6)}  # (fields, HEARTBEAT address)


def regs_of(value: int, width: int) -> list[int]:
    return [value] if width == 1 else [value >> 16, value & 0xFFFF]


async def tcp_client(endpoint: str) -> AsyncModbusTcpClient:
    ep = Endpoint.parse(endpoint)
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=0.3, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


# --------------------------------------------------------------------------- register maps


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_defaults_of_every_holding_register_and_coil(kind: str) -> None:
    fields, hb = HOLDING[kind]
    async with run_simulator(kind) as h:
        unit = Endpoint.parse(h.endpoint).unit
        c = await tcp_client(h.endpoint)
        try:
            rr = await c.read_holding_registers(0, count=hb + 1, device_id=unit)
            expected = [0] * (hb + 1)
            for addr, width, _lo, _hi, default in fields.values():
                expected[addr:addr + width] = regs_of(default, width)
            assert rr.registers == expected
            rr = await c.read_coils(0, count=2, device_id=unit)
            assert rr.bits[:2] == [False, False]
            for addr, count in ((hb + 1, 1), (hb, 2), (100, 1)):
                rr = await c.read_holding_registers(addr, count=count, device_id=unit)
                assert rr.isError() and rr.exception_code == 0x02
            rr = await c.read_coils(1, count=2, device_id=unit)
            assert rr.isError() and rr.exception_code == 0x02
        finally:
            c.close()


async def test_led_input_registers_identity_and_channels() -> None:
    async with run_simulator("led") as h:
        c = await tcp_client(h.endpoint)
        try:
            rr = await c.read_input_registers(100, count=6, device_id=1)
            assert rr.registers == [0x4C31, rr.registers[1], 630, 660, 810, 850]
            assert rr.registers[1] > 0
            rr = await c.read_input_registers(0, count=10, device_id=1)
            state, fault, irr, el_hi, el_lo, fl_hi, fl_lo, head, skin, dist = rr.registers
            assert (state, fault, irr, el_hi, el_lo, fl_hi, fl_lo) == (0, 0, 0, 0, 0, 0, 0)
            async with h.client() as ctl:
                st = await ctl.state()
                assert head == round(st["head_temp_c"] * 10)
                assert abs(skin - st["skin_temp_c"] * 10) <= 1
                assert dist == 10
                await ctl.set("distance_mm", 25.0)
                assert (await c.read_input_registers(9, count=1, device_id=1)).registers == [25]
            for addr, count in ((10, 1), (9, 2), (99, 1), (106, 1), (105, 2)):
                rr = await c.read_input_registers(addr, count=count, device_id=1)
                assert rr.isError() and rr.exception_code == 0x02, (addr, count)
        finally:
            c.close()


async def test_pemf_input_registers_and_identity() -> None:
    async with run_simulator("pemf") as h:
        assert Endpoint.parse(h.endpoint).unit == 2
        c = await tcp_client(h.endpoint)
        try:
            rr = await c.read_input_registers(100, count=2, device_id=2)
            assert rr.registers[0] == 0x5031 and rr.registers[1] > 0
            rr = await c.read_input_registers(0, count=9, device_id=2)
            assert rr.registers[:5] == [0, 0, 0, 0, 0]
            assert rr.registers[5] == 250  # coil at 25.0 degC ambient
            assert rr.registers[6:] == [0, 0, 0]
            for addr in (9, 99, 102):
                rr = await c.read_input_registers(addr, count=1, device_id=2)
                assert rr.isError() and rr.exception_code == 0x02
            # unit 1 is not this device: no reply at all
            with pytest.raises(Exception):
                await c.read_input_registers(0, count=1, device_id=1)
        finally:
            c.close()


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_every_range_is_enforced_with_0x03_and_nothing_changes(kind: str) -> None:
    fields, hb = HOLDING[kind]
    async with run_simulator(kind) as h:
        unit = Endpoint.parse(h.endpoint).unit
        c = await tcp_client(h.endpoint)
        try:
            before = (await c.read_holding_registers(0, count=hb + 1, device_id=unit)).registers
            for name, (addr, width, lo, hi, _d) in fields.items():
                bad = [v for v in (lo - 1, hi + 1) if v >= 0]
                for value in bad:
                    if width == 1:
                        rr = await c.write_register(addr, value, device_id=unit)
                    else:
                        rr = await c.write_registers(addr, regs_of(value, 2), device_id=unit)
                    assert rr.isError() and rr.exception_code == 0x03, (name, value)
                # a multi-register write with one bad value changes none of them
                rr = await c.write_registers(0, [*before[:addr], *regs_of(hi + 1, width)], device_id=unit)
                assert rr.isError() and rr.exception_code == 0x03, name
                assert (await c.read_holding_registers(0, count=hb + 1, device_id=unit)).registers == before
            # both limits are accepted
            for name, (addr, width, lo, hi, _d) in fields.items():
                for value in (lo, hi):
                    rr = await c.write_registers(addr, regs_of(value, width), device_id=unit)
                    assert not rr.isError(), (name, value)
                    got = (await c.read_holding_registers(addr, count=width, device_id=unit)).registers
                    assert got == regs_of(value, width)
            # HEARTBEAT takes any value
            for value in (0, 1, 0xFFFF):
                assert not (await c.write_register(hb, value, device_id=unit)).isError()
            # writes past the map
            rr = await c.write_register(hb + 1, 0, device_id=unit)
            assert rr.isError() and rr.exception_code == 0x02
            rr = await c.write_registers(hb, [1, 2], device_id=unit)
            assert rr.isError() and rr.exception_code == 0x02
        finally:
            c.close()


async def test_half_of_a_32_bit_value_is_checked_combined_with_the_other_half() -> None:
    async with run_simulator("led") as h:
        c = await tcp_client(h.endpoint)
        try:
            assert not (await c.write_register(3, 100, device_id=1)).isError()  # DURATION low word
            assert (await c.read_holding_registers(2, count=2, device_id=1)).registers == [0, 100]
            rr = await c.write_register(2, 1, device_id=1)  # 65636 > 36000
            assert rr.isError() and rr.exception_code == 0x03
            assert (await c.read_holding_registers(2, count=2, device_id=1)).registers == [0, 100]
            assert not (await c.write_register(4, 1, device_id=1)).isError()  # FLUENCE 65536
            assert (await c.read_holding_registers(4, count=2, device_id=1)).registers == [1, 0]
        finally:
            c.close()


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_setpoints_refused_with_0x04_while_on_heartbeat_always_writable(kind: str) -> None:
    fields, hb = HOLDING[kind]
    async with run_simulator(kind) as h:
        unit = Endpoint.parse(h.endpoint).unit
        c = await tcp_client(h.endpoint)
        try:
            assert not (await c.write_coil(0, True, device_id=unit)).isError()
            assert (await c.read_coils(0, count=1, device_id=unit)).bits[0] is True
            assert (await c.read_input_registers(0, count=1, device_id=unit)).registers == [1]
            before = (await c.read_holding_registers(0, count=hb, device_id=unit)).registers
            for name, (addr, width, lo, hi, _d) in fields.items():
                if width == 1:
                    rr = await c.write_register(addr, lo, device_id=unit)
                else:
                    rr = await c.write_registers(addr, regs_of(lo, 2), device_id=unit)
                assert rr.isError() and rr.exception_code == 0x04, name
            rr = await c.write_registers(hb - 1, [before[hb - 1], 7], device_id=unit)  # with HEARTBEAT
            assert rr.isError() and rr.exception_code == 0x04
            assert (await c.read_holding_registers(0, count=hb, device_id=unit)).registers == before
            for value in (7, 8, 8):
                assert not (await c.write_register(hb, value, device_id=unit)).isError()
            assert not (await c.write_registers(hb, [9], device_id=unit)).isError()
            assert (await c.read_holding_registers(hb, count=1, device_id=unit)).registers == [9]
            # out of range while on: the range is checked first
            rr = await c.write_register(fields["WATCHDOG_MS"][0], 1, device_id=unit)
            assert rr.isError() and rr.exception_code == 0x03
            assert not (await c.write_coil(0, False, device_id=unit)).isError()
            assert (await c.read_input_registers(0, count=1, device_id=unit)).registers == [0]
            assert not (await c.write_register(fields["WATCHDOG_MS"][0], 300, device_id=unit)).isError()
        finally:
            c.close()


async def test_led_start_needs_exactly_one_of_duration_and_fluence() -> None:
    async with run_simulator("led") as h:
        c = await tcp_client(h.endpoint)
        try:
            for regs in ([0, 0, 0, 0], [0, 10, 0, 5]):  # neither, both
                assert not (await c.write_registers(2, regs, device_id=1)).isError()
                rr = await c.write_coil(0, True, device_id=1)
                assert rr.isError() and rr.exception_code == 0x04
                assert (await c.read_coils(0, count=1, device_id=1)).bits[0] is False
                assert (await c.read_input_registers(0, count=2, device_id=1)).registers == [0, 0]
            assert not (await c.write_registers(2, [0, 0, 0, 5], device_id=1)).isError()  # fluence only
            assert not (await c.write_coil(0, True, device_id=1)).isError()
            assert (await c.read_input_registers(0, count=1, device_id=1)).registers == [1]
            assert not (await c.write_coil(0, False, device_id=1)).isError()
        finally:
            c.close()


async def test_illegal_function_and_coil_values() -> None:
    async with run_simulator("led") as h:
        c = await tcp_client(h.endpoint)
        try:
            rr = await c.read_discrete_inputs(0, count=1, device_id=1)
            assert rr.isError() and rr.exception_code == 0x01
            rr = await c.write_coils(0, [True], device_id=1)
            assert rr.isError() and rr.exception_code == 0x01
            rr = await c.write_coil(2, True, device_id=1)
            assert rr.isError() and rr.exception_code == 0x02
        finally:
            c.close()


# --------------------------------------------------------------------------- raw wire bytes


async def test_mbap_bytes_exactly_and_other_units_ignored() -> None:
    async with run_simulator("led") as h:
        ep = Endpoint.parse(h.endpoint)
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # read input registers 100..101 of unit 1, transaction 0x1234, split in two writes
            req = bytes.fromhex("1234 0000 0006 01 04 0064 0002".replace(" ", ""))
            writer.write(req[:5])
            await writer.drain()
            writer.write(req[5:])
            reply = await asyncio.wait_for(reader.readexactly(13), 2)
            assert reply == bytes.fromhex("1234 0000 0007 01 04 04 4c31".replace(" ", "")) + reply[-2:]
            # unit 7 and broadcast get no reply; the next good request is answered in order
            writer.write(bytes.fromhex("0001 0000 0006 07 03 0000 0001".replace(" ", "")))
            writer.write(bytes.fromhex("0002 0000 0006 00 05 0000 ff00".replace(" ", "")))
            writer.write(bytes.fromhex("0003 0000 0006 01 03 0000 0001".replace(" ", "")))
            reply = await asyncio.wait_for(reader.readexactly(11), 2)
            assert reply == bytes.fromhex("0003 0000 0005 01 03 02 0001".replace(" ", ""))
            # exception response bytes: write IRRADIANCE = 5
            writer.write(bytes.fromhex("0004 0000 0006 01 06 0001 0005".replace(" ", "")))
            reply = await asyncio.wait_for(reader.readexactly(9), 2)
            assert reply == bytes.fromhex("0004 0000 0003 01 86 03".replace(" ", ""))
            # quantities out of the Modbus limits: 0 and 126 registers
            for tid, count in ((5, 0), (6, 126)):
                writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, 0, count))
                reply = await asyncio.wait_for(reader.readexactly(9), 2)
                assert reply == struct.pack(">HHHBBB", tid, 0, 3, 1, 0x83, 0x03)
            async with h.client() as ctl:
                assert (await ctl.state())["output_on"] is False  # the broadcast did nothing
        finally:
            writer.close()


async def test_rtu_frames_on_the_pty_split_garbage_and_crc() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # the CRC-16/MODBUS check value
    async with run_simulator("pemf", rtu_pty=True) as h:
        ep = Endpoint.parse(h.endpoint)
        assert h.endpoint == f"modbus-rtu://{ep.path}?baud=19200&parity=N&unit=2"
        line = RawLine(ep.path)
        try:
            ident = rtu_frame(2, bytes.fromhex("0400640002"))
            # a pause inside a frame does not split it
            line.write(ident[:3])
            await asyncio.sleep(0.005)
            line.write(ident[3:])
            reply = await line.read(9)
            fw = struct.unpack(">H", reply[5:7])[0]
            assert reply == rtu_frame(2, bytes.fromhex("04045031") + struct.pack(">H", fw))
            # noise before a frame, a frame with a bad CRC, a frame for unit 1: only the
            # good one is answered
            bad = bytearray(rtu_frame(2, bytes.fromhex("0300000001")))
            bad[-1] ^= 0xFF
            line.write(b"\x00\x17" + bytes(bad) + rtu_frame(1, bytes.fromhex("0300000001"))
                       + rtu_frame(2, bytes.fromhex("0300000001")))
            assert await line.read(7) == rtu_frame(2, bytes.fromhex("03020002"))
            # an exception reply, byte for byte: FREQ = 0 is out of range
            line.write(rtu_frame(2, bytes.fromhex("0600010000")))
            assert await line.read(5) == rtu_frame(2, bytes.fromhex("8603"))
            # an unknown function code is answered with 0x01 after the line goes quiet
            line.write(rtu_frame(2, bytes.fromhex("41")))
            assert await line.read(5) == rtu_frame(2, bytes.fromhex("c101"))
            assert await line.idle(0.05)
        finally:
            line.close()


class RawLine:
    """The host's end of the pty, raw, read through the event loop."""

    def __init__(self, path: str) -> None:
        import tty

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buf = bytearray()
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            self.buf += os.read(self.fd, 512)
        except BlockingIOError:
            return
        self.event.set()

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read(self, n: int, timeout: float = 2.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), max(0.001, deadline - time.monotonic()))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def idle(self, seconds: float) -> bool:
        """True when nothing more arrives within ``seconds``."""
        self.event.clear()
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except asyncio.TimeoutError:
            return not self.buf
        return False

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


async def test_raw_pymodbus_rtu_client_on_the_pty() -> None:
    async with run_simulator("led", rtu_pty=True) as h:
        ep = Endpoint.parse(h.endpoint)
        # parity N: a pty carries no parity and this kernel refuses PARENB on one
        c = AsyncModbusSerialClient(ep.path, baudrate=19200, parity="N", timeout=0.3, retries=0, reconnect_delay=0)
        assert await c.connect()
        try:
            assert (await c.read_input_registers(102, count=4, device_id=1)).registers == [630, 660, 810, 850]
            rr = await c.write_register(7, 9, device_id=1)
            assert rr.isError() and rr.exception_code == 0x03
            assert not (await c.write_registers(0, [3, 1000], device_id=1)).isError()
            assert (await c.read_holding_registers(0, count=2, device_id=1)).registers == [3, 1000]
        finally:
            c.close()


# --------------------------------------------------------------------------- watchdog, faults


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_watchdog_fires_when_heartbeats_stop(kind: str) -> None:
    fields, hb = HOLDING[kind]
    async with run_simulator(kind) as h, h.client() as ctl:
        unit = Endpoint.parse(h.endpoint).unit
        c = await tcp_client(h.endpoint)
        try:
            wd = fields["WATCHDOG_MS"][0]
            # fed with HEARTBEAT writes (even repeating one value: any write counts) it stays
            # on well past WATCHDOG_MS (400 ms here, margin for a loaded machine)
            assert not (await c.write_register(wd, 400, device_id=unit)).isError()
            assert not (await c.write_coil(0, True, device_id=unit)).isError()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                assert not (await c.write_register(hb, 5, device_id=unit)).isError()
                assert (await c.read_input_registers(0, count=2, device_id=unit)).registers == [1, 0]
                await asyncio.sleep(0.04)
            assert not (await c.write_coil(0, False, device_id=unit)).isError()
            # WATCHDOG_MS = 200, started, then silence
            assert not (await c.write_register(wd, 200, device_id=unit)).isError()
            assert not (await c.write_coil(0, True, device_id=unit)).isError()
            on_at = (await ctl.state())["output_changed_at"]
            # reads do not feed it: off no sooner than 200 ms after the start, by the device's clock
            t1 = time.monotonic()
            while True:
                state, fault = (await c.read_input_registers(0, count=2, device_id=unit)).registers
                if state != 1:
                    break
                assert time.monotonic() - t1 < 10.0, "watchdog did not fire"  # a hang guard, not a bound
                await asyncio.sleep(0.01)
            assert (state, fault) == (3, 5)
            assert (await ctl.state())["output_changed_at"] - on_at >= 0.2 - 0.001
            assert (await c.read_coils(0, count=1, device_id=unit)).bits[0] is False
            # a latched fault refuses the start; FAULT_RESET clears it (the cause is gone)
            rr = await c.write_coil(0, True, device_id=unit)
            assert rr.isError() and rr.exception_code == 0x04
            assert not (await c.write_coil(1, True, device_id=unit)).isError()
            assert (await c.read_input_registers(0, count=2, device_id=unit)).registers == [0, 0]
            assert (await c.read_coils(0, count=2, device_id=unit)).bits[:2] == [False, False]
        finally:
            c.close()


async def test_fault_reset_refused_while_the_cause_is_there() -> None:
    async with run_simulator("led") as h, h.client() as ctl:
        c = await tcp_client(h.endpoint)
        try:
            await ctl.set("distance_mm", 45.0)
            assert not (await c.write_coil(0, True, device_id=1)).isError()
            assert (await c.read_input_registers(0, count=2, device_id=1)).registers == [3, 4]
            assert (await c.read_input_registers(9, count=1, device_id=1)).registers == [45]
            rr = await c.write_coil(1, True, device_id=1)
            assert rr.isError() and rr.exception_code == 0x04
            assert (await c.read_input_registers(0, count=2, device_id=1)).registers == [3, 4]
            await ctl.set("distance_mm", 20.0)
            assert not (await c.write_coil(1, True, device_id=1)).isError()
            assert (await c.read_input_registers(0, count=2, device_id=1)).registers == [0, 0]
        finally:
            c.close()


async def test_stall_and_drop_reply_on_the_wire() -> None:
    async with run_simulator("led") as h, h.client() as ctl:
        c = await tcp_client(h.endpoint)
        try:
            await ctl.inject("drop_reply")
            with pytest.raises(Exception):
                await c.write_register(6, 50, device_id=1)  # applied, reply dropped
            assert (await c.read_holding_registers(6, count=1, device_id=1)).registers == [50]
            await ctl.inject("stall")
            with pytest.raises(Exception):
                await c.write_register(6, 60, device_id=1)  # not applied: a stalled device is deaf
            await ctl.clear("stall")
            assert (await c.read_holding_registers(6, count=1, device_id=1)).registers == [50]
        finally:
            c.close()


# --------------------------------------------------------------------------- control channel


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_bad_control_requests_change_nothing(kind: str) -> None:
    other_input = {"led": "coil_ohm", "pemf": "distance_mm"}[kind]
    async with run_simulator(kind) as h, h.client() as ctl:
        def stable(st: dict[str, Any]) -> dict[str, Any]:
            keys = ("output_on", "state", "fault", "setpoints", "inputs", "injected")
            return {k: st[k] for k in keys}

        before = stable(await ctl.state())
        name = next(iter(before["inputs"]))
        bad: list[Any] = [
            b"",  # a blank line is an (empty) request: answered, not skipped
            b"   ",
            b"not json",
            b"[1, 2]",
            {"op": "nope"},
            {"no_op": 1},
            {"op": "inject", "fault": "garbage"},
            {"op": "inject", "fault": "overcurrent"},
            {"op": "inject", "fault": "stall", "count": 0},
            {"op": "inject", "fault": "stall", "count": "2"},
            {"op": "clear", "fault": "nope"},
            {"op": "set", "name": other_input, "value": 1.0},
            {"op": "set", "name": name, "value": "x"},
            {"op": "set", "name": name, "value": True},
            {"op": "set", "name": name, "value": -1e9},
            {"op": "set", "name": name},
            {"op": "trigger"},
            {"op": "auto_trigger", "rate_hz": 1},
        ]
        for req in bad:
            reply = await ctl.request(req)
            assert reply["ok"] is False and reply["error"], req
        assert stable(await ctl.state()) == before


@pytest.mark.parametrize("kind", ["led", "pemf"])
async def test_control_state_has_the_contracts_fields(kind: str) -> None:
    async with run_simulator(kind) as h, h.client() as ctl:
        st = await ctl.state()
        totals = {"led": ("fluence_mj_cm2", "elapsed_s", "distance_mm", "ambient_c"),
                  "pemf": ("pulses", "elapsed_s", "coil_ohm", "ambient_c")}[kind]
        for key in ("output_on", "state", "fault", *totals):
            assert key in st, key
        assert (st["output_on"], st["state"], st["fault"]) == (False, "idle", 0)


def test_spawned_pemf_simulator_announces_itself() -> None:
    with spawn_simulator("pemf", "--port", "0") as (proc, lines):
        line = lines[0]
        assert list(line) == ["device", "endpoint", "control"]
        assert line["device"] == "pemf"
        m = re.fullmatch(r"modbus-tcp://127\.0\.0\.1:(\d+)\?unit=2", line["endpoint"])
        assert m and int(m.group(1)) > 0
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line["control"])

        async def talk() -> list[int]:
            c = await tcp_client(line["endpoint"])
            try:
                return (await c.read_input_registers(100, count=1, device_id=2)).registers
            finally:
                c.close()

        assert asyncio.run(talk()) == [0x5031]
        assert proc.poll() is None
