"""Every simulator's control ``state`` carries ``output_changed_at`` (shared/simulator-control.md):
``time.monotonic()`` taken when ``output_on`` changed, before the reply that reports it
is written. Simulators run in this process's threads, so the clock is the same one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from drivers.inj import InjDriver, InjParams
from drivers.led import LedDriver, LedExposure
from drivers.pemf import PemfDriver, PemfExposure
from simulators.harness import run_simulator
from tests.drivers import waiting

pytestmark = pytest.mark.timeout(30)


async def _prepare_inj(d: Any) -> None:
    await d.configure(InjParams(volume_ul=20, depth_mm=1.5, mode="single"))
    await d.set_cap(100)


async def _prepare_led(d: Any) -> None:
    await d.configure(LedExposure(wavelength_nm=630, irradiance_mw_cm2=20, duration_s=60, watchdog_ms=2000))


async def _prepare_pemf(d: Any) -> None:
    await d.configure(PemfExposure(waveform="sine", frequency_hz=15, peak_field_mt=1, duration_s=60, watchdog_ms=2000))


CASES: dict[str, tuple[type, Callable[[Any], Awaitable[None]]]] = {
    "inj": (InjDriver, _prepare_inj),
    "led": (LedDriver, _prepare_led),
    "pemf": (PemfDriver, _prepare_pemf),
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_output_changed_at_brackets_the_command_that_changed_it(kind: str) -> None:
    driver_cls, prepare = CASES[kind]
    async with run_simulator(kind, seed=3) as h, driver_cls(h.endpoint) as d, h.client() as ctl:
        first = await ctl.state()
        assert first["output_on"] is False and first["output_changed_at"] is None
        await prepare(d)
        assert (await ctl.state())["output_changed_at"] is None  # settings are not output
        sent = time.monotonic()
        await d.start()
        answered = time.monotonic()
        on = await ctl.state()
        assert on["output_on"] is True and sent <= on["output_changed_at"] <= answered
        sent = time.monotonic()
        await d.stop()
        answered = time.monotonic()
        off = await ctl.state()
        assert off["output_on"] is False and sent <= off["output_changed_at"] <= answered
        assert off["output_changed_at"] > on["output_changed_at"]


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_output_changed_at_when_the_device_turns_itself_off(kind: str) -> None:
    driver_cls, prepare = CASES[kind]
    async with run_simulator(kind, seed=3) as h, driver_cls(h.endpoint) as d, h.client() as ctl:
        await prepare(d)
        await d.start()
        on = await ctl.state()
        fault = {"inj": "occlusion", "led": "head_overheat", "pemf": "coil_open"}[kind]
        await ctl.inject(fault)
        off = await waiting.wait_state(ctl, lambda s: s["output_on"] is False, timeout=5.0)
        assert on["output_changed_at"] < off["output_changed_at"] <= time.monotonic()
