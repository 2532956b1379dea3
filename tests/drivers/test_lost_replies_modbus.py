"""LED-1 and PEMF-1: a write whose reply is lost (the device did it; only the reply never
came back) is settled by reading back, never by writing OUTPUT=1 again.

The reply is lost either by the simulator's own ``drop_reply`` fault (when nothing else
is talking: the write is the next request) or by a tap on the wire that loses the reply
to one chosen request (while the heartbeat and the watch reads run). The tap also keeps
every request the host sent, so a test can count the writes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.base import DeviceEvent, DeviceFault, DeviceTimeout
from drivers.led import LedDriver, LedExposure
from drivers.pemf import PemfDriver, PemfExposure
from simulators.control import ControlClient
from simulators.devsupport.proxy import ModbusTap
from simulators.harness import run_simulator
from tests.drivers.waiting import next_event

pytestmark = pytest.mark.timeout(60)

START = bytes((0x05, 0x00, 0x00, 0xFF, 0x00))
STOP = bytes((0x05, 0x00, 0x00, 0x00, 0x00))
FAULT_RESET = bytes((0x05, 0x00, 0x01, 0xFF, 0x00))
LONG = LedExposure(wavelength_nm=660, irradiance_mw_cm2=30, duration_s=60, watchdog_ms=1000)
PEMF = PemfExposure(waveform="square", frequency_hz=10, peak_field_mt=2, duration_s=60, watchdog_ms=1000)


def fc(code: int, address: int | None = None) -> Callable[[bytes], bool]:
    """Matches a request PDU of function ``code`` (at ``address``, when given)."""
    return lambda pdu: pdu[0] == code and (address is None or struct.unpack(">H", pdu[1:3])[0] == address)


@contextlib.asynccontextmanager
async def tapped(kind: str, driver: type[LedDriver | PemfDriver]
                 ) -> AsyncIterator[tuple[LedDriver | PemfDriver, ModbusTap, ControlClient]]:
    async with run_simulator(kind) as h, h.client() as ctl:
        port, unit = h.endpoint.rsplit(":", 1)[1].split("?")
        async with ModbusTap(int(port)) as tap, driver(f"modbus-tcp://127.0.0.1:{tap.port}?{unit}") as d:
            yield d, tap, ctl


async def seen(tap: ModbusTap, match: Callable[[bytes], bool], start: int = 0) -> int:
    return await asyncio.wait_for(tap.request(match, start), 5.0)


def drained(q: asyncio.Queue[DeviceEvent]) -> list[str]:
    kinds = []
    while not q.empty():
        kinds.append(q.get_nowait().kind)
    return kinds


# --------------------------------------------------------------------------- setpoints


@pytest.mark.parametrize(("kind", "driver", "params", "expected"), [
    ("led", LedDriver, LedExposure(wavelength_nm=810, irradiance_mw_cm2=45, duration_s=60, watchdog_ms=1000),
     {"CHANNEL": 2, "IRRADIANCE": 450, "DURATION": 600, "WATCHDOG_MS": 1000}),
    ("pemf", PemfDriver, PEMF.model_copy(update={"peak_field_mt": 3.0}),
     {"WAVEFORM": 1, "FREQ": 100, "PEAK_FIELD": 300, "DURATION": 600, "WATCHDOG_MS": 1000}),
])
async def test_setpoints_whose_reply_is_lost_are_read_back_and_taken(kind, driver, params, expected) -> None:
    async with tapped(kind, driver) as (d, tap, ctl):
        before = (await ctl.state())["setpoints"]
        assert all(before[k] != v for k, v in expected.items())
        await ctl.inject("drop_reply")
        await d.configure(params)  # the reply to FC 0x10 is lost: the read-back shows it took
        st = await ctl.state()
        assert st["injected"] == {}
        assert [p[0] for p in tap.requests].count(0x10) == 1  # written once
        assert {k: st["setpoints"][k] for k in expected} == expected


# --------------------------------------------------------------------------- OUTPUT=1


@pytest.mark.parametrize(("kind", "driver", "params"), [("led", LedDriver, LONG), ("pemf", PemfDriver, PEMF)])
async def test_a_start_whose_reply_is_lost_goes_on_when_the_output_reads_back_on(kind, driver, params) -> None:
    async with tapped(kind, driver) as (d, tap, ctl):
        await d.configure(params)
        await ctl.inject("drop_reply")
        await d.start()  # the reply to OUTPUT=1 is lost; coil 0 reads back on
        assert d.energised
        st = await ctl.state()
        assert (st["injected"], st["output_on"], st["state"]) == ({}, True, "on")
        assert tap.requests.count(START) == 1  # one start on the wire
        assert (await d.safe_state()).confirmed


async def test_a_start_that_reads_back_off_is_not_written_again() -> None:
    # a 0.1 s exposure: by the end of the 0.3 s reply timeout it has run and ended, so the
    # coil reads back off; writing OUTPUT=1 again would start a second exposure
    short = LedExposure(wavelength_nm=660, irradiance_mw_cm2=30, duration_s=0.1, watchdog_ms=1000)
    async with tapped("led", LedDriver) as (d, tap, ctl):
        await d.configure(short)
        await ctl.inject("drop_reply")
        with pytest.raises(DeviceTimeout, match="not written again"):
            await d.start()
        assert not d.energised
        i = tap.requests.index(START)
        assert tap.requests.count(START) == 1
        assert any(fc(0x01, 0)(p) for p in tap.requests[i + 1:])  # the coil was read back
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "done")
        assert st["elapsed_s"] == pytest.approx(0.1)  # one exposure of 0.1 s, not two


async def test_a_start_unconfirmed_with_a_fault_at_the_start_raises_the_fault() -> None:
    async with tapped("led", LedDriver) as (d, _tap, ctl):
        await d.configure(LONG)
        await ctl.inject("applicator_removed", count=-1)
        await ctl.inject("drop_reply")
        with pytest.raises(DeviceFault) as err:
            await d.start()
        assert err.value.code == 4
        assert (await ctl.state())["output_on"] is False


# --------------------------------------------------------------------------- while on


async def test_a_heartbeat_whose_reply_is_lost_is_reported_at_once_not_read_back() -> None:
    # the heartbeat is how the hub learns that a device went silent, and the device's
    # watchdog (1 s here) switches it off by itself: a read-back would spend another reply
    # timeout, and a stalled emitter would go off by its own watchdog before the hub knew
    # (the 22:33 hour's #555: the LED went off 77 ms after the stalled PEMF-1's watchdog)
    async with tapped("led", LedDriver) as (d, tap, ctl):
        await d.configure(LONG)
        async with d.subscribe() as q:
            await d.start()
            dropped = tap.drop_reply(fc(0x06, LedDriver.heartbeat_register))
            await asyncio.wait_for(dropped.wait(), 5.0)
            lost = await seen(tap, fc(0x06, LedDriver.heartbeat_register))
            await next_event(q, "heartbeat_failed")
        assert not any(fc(0x03, LedDriver.heartbeat_register)(pdu) for pdu in tap.requests[lost + 1:])
        assert (await d.safe_state()).confirmed
        assert (await ctl.state())["output_on"] is False


async def test_a_stop_whose_reply_is_lost_is_read_back() -> None:
    async with tapped("led", LedDriver) as (d, tap, ctl):
        await d.configure(LONG)
        await d.start()
        dropped = tap.drop_reply(lambda pdu: pdu == STOP)
        await d.stop()  # the reply to OUTPUT=0 is lost; coil 0 reads back off
        assert dropped.is_set() and not d.energised
        assert tap.requests.count(STOP) == 1
        st = await ctl.state()
        assert (st["output_on"], st["state"]) == (False, "idle")


async def test_a_fault_reset_whose_reply_is_lost_is_settled_by_state() -> None:
    async with tapped("led", LedDriver) as (d, tap, ctl):
        await d.configure(LONG)
        async with d.subscribe() as q:
            await d.start()
            await ctl.inject("led_open", count=-1)
            await next_event(q, "fault")
        await ctl.clear("led_open")
        dropped = tap.drop_reply(lambda pdu: pdu == FAULT_RESET)
        await d.clear_fault()  # the reply is lost; STATE reads idle
        assert dropped.is_set()
        assert tap.requests.count(FAULT_RESET) == 1
        st = await ctl.state()
        assert (st["state"], st["fault"]) == ("idle", 0)
