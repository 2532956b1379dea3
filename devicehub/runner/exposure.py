"""LED and PEMF steps: configure, start, watch progress, await the device's own end.

The emitter times the exposure and ends it itself (its DURATION or FLUENCE_TARGET is
the device-side cap); the host configures only what is still owed (after a pause, the
rest of the duration or fluence), watches progress, and records what the device
reports it delivered. Steps that run side by side meet at a barrier after configuring,
so they start together; the start skew is recorded.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from devicehub.runner.context import StepContext, StepFailure, next_event

#: the emitter's own watchdog while on; the driver heartbeats well inside it
WATCHDOG_MS = 1000
#: amounts smaller than this are "nothing left to deliver"
EPSILON_S = 0.1


def _tenths(left_s: float) -> float:
    """What is still owed, on the device's 0.1 s grid, never rounded up by more than a few
    milliseconds: over any number of pauses an exposure stays within planned + 0.1 s."""
    return max(0.1, math.floor((left_s + 0.02) * 10.0) / 10.0)


def _plan(runner: Any, step: Any) -> tuple[Any, float, dict[str, float]] | None:
    """The device parameters for what is still owed, its expected length in s, and the planned amounts."""
    done = runner.progress[step.id].done_amounts
    if step.kind == "led":
        from drivers.led import LedExposure

        fluence_j = getattr(step, "fluence_j_cm2", None)
        if fluence_j:
            left_mj = fluence_j * 1000.0 - done.get("fluence_j_cm2", 0.0) * 1000.0
            left_mj = min(left_mj, runner.totals.remaining("fluence_j_cm2") * 1000.0)
            # FLUENCE_TARGET is whole mJ/cm2 and the FLUENCE counter truncates: the device
            # may have delivered up to 1 mJ/cm2 more than it said, so what is owed is
            # rounded down, never up (over any pause the device's resolution, not more)
            left_mj = math.floor(left_mj + 1e-6)
            if left_mj < 1.0:
                return None
            expected = left_mj / step.irradiance_mw_cm2 / (getattr(step, "duty_pct", 100) / 100.0)
            params = LedExposure(wavelength_nm=step.wavelength_nm, irradiance_mw_cm2=step.irradiance_mw_cm2,
                                 duration_s=0, fluence_mj_cm2=int(left_mj),
                                 pulse_hz=getattr(step, "pulse_hz", 0), duty_pct=getattr(step, "duty_pct", 100),
                                 watchdog_ms=WATCHDOG_MS)
            return params, expected, {"fluence_j_cm2": left_mj / 1000.0}
        left = step.duration_s - done.get("exposure_s", 0.0)
        left = min(left, runner.totals.remaining("exposure_s"))
        if left < EPSILON_S:
            return None
        params = LedExposure(wavelength_nm=step.wavelength_nm, irradiance_mw_cm2=step.irradiance_mw_cm2,
                             duration_s=_tenths(left), fluence_mj_cm2=0, pulse_hz=getattr(step, "pulse_hz", 0),
                             duty_pct=getattr(step, "duty_pct", 100), watchdog_ms=WATCHDOG_MS)
        return params, left, {"exposure_s": left}
    from drivers.pemf import PemfExposure

    left = step.duration_s - done.get("field_time_s", 0.0)
    left = min(left, runner.totals.remaining("field_time_s"))
    if left < EPSILON_S:
        return None
    params = PemfExposure(waveform=step.waveform, frequency_hz=step.frequency_hz, peak_field_mt=step.peak_field_mt,
                          duration_s=_tenths(left), watchdog_ms=WATCHDOG_MS)
    return params, left, {"field_time_s": left}


async def run(runner: StepContext, step: Any) -> None:
    dev_id, dev = runner.device_for(step)
    plan = _plan(runner, step)
    barrier: asyncio.Barrier | None = getattr(runner, "alongside_barrier", None)
    if plan is None:
        if barrier is not None:
            await barrier.abort()
        return
    params, expected_s, planned = plan
    await dev.configure(params)
    rate = 0.0
    if step.kind == "led":
        rate = float(step.irradiance_mw_cm2) * float(getattr(step, "duty_pct", 100)) / 100.0
    # this run's intent, with the run registers as they are before it: a run the device
    # refuses delivered nothing, whatever they still hold (devicehub/runner/settlement.py)
    delivery = await runner.open_delivery(dev_id, step, point=None, planned={
        **{k: round(v, 6) for k, v in planned.items()}, **({"rate_mw_cm2": rate} if rate else {})})
    if barrier is not None:
        try:
            await barrier.wait()
        except asyncio.BrokenBarrierError:
            pass
    async with dev.subscribe() as q:
        t_start = time.monotonic()
        await dev.start()  # a refused start raises (DeviceFault): the run never began
        delivery.t_started = t_start
        runner.start_marks[step.id] = time.monotonic()
        await runner.delivery_started(delivery)
        deadline = asyncio.get_running_loop().time() + expected_s + runner.options.exposure_margin_s
        late = StepFailure("exposure_timeout", f"{dev_id}: exposure did not end in time", alarm="device_fault")
        done = None
        while done is None:
            ev = await next_event(q, deadline, late)
            if ev.kind == "progress":
                data = {"elapsed_s": round(float(ev.data.get("elapsed_s", 0.0)), 1)}
                if step.kind == "led":
                    data["fluence_j_cm2"] = round(float(ev.data.get("fluence_mj_cm2", 0.0)) / 1000.0, 4)
                else:
                    data["pulses"] = int(ev.data.get("pulses", 0))
                await runner.progress_event(step.id, dev_id, **data)
            elif ev.kind == "exposure_done":
                done = ev
    await runner.settle(delivery, "done")
