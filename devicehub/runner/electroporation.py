"""Electroporation step: per grid point, check the skin contact, deliver one train, verify it.

Per point: measure the applicator's impedance (skip the point or stop, as the program
says, when out of range), configure the train with the pulses this point still needs
(the device-side bound), arm, trigger, await DONE, compare with the device's train
report, and record the pulse-timing error from the device's own pulse offsets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from devicehub.runner.context import StepContext, StepFailure, next_event
from devicehub.runner.pulse_timing import TrainTiming, check_pulse
from drivers.epg import EpgTrain

#: the load assumed when no impedance was measured (as the program validation assumes)
DEFAULT_LOAD_OHM = 500.0


async def run(runner: StepContext, step: Any) -> None:
    dev_id, epg = runner.device_for(step)
    sp = runner.progress[step.id]
    await epg.set_pulse_events(True)
    imp = getattr(step, "impedance", None)
    for zone in step.zones:
        for pt in runner.program.points(zone):
            pp = sp.point(pt.id, zone)
            if pp.status in ("done", "skipped"):
                continue
            remaining = int(step.pulses_per_point) - int(pp.get("pulses"))
            if remaining <= 0:
                pp.status = "done"
                continue
            if imp is not None:
                ohm = await epg.measure_impedance()
                if not imp.min_ohm <= ohm <= imp.max_ohm:
                    text = f"{pt.id}: impedance {ohm:.0f} ohm outside {imp.min_ohm:.0f}-{imp.max_ohm:.0f} ohm"
                    if imp.on_out_of_range == "stop":
                        raise StepFailure("impedance_out_of_range", text)
                    pp.status = "skipped"
                    await runner.event("point_skipped", step=step.id, zone=zone, point=pt.id, device=dev_id,
                                       reason="impedance_out_of_range", impedance_ohm=round(ohm, 1))
                    continue
            else:
                ohm = None
            await _deliver_train(runner, step, dev_id, epg, pp, remaining, ohm)


async def _deliver_train(runner: Any, step: Any, dev_id: str, epg: Any, pp: Any, pulses: int,
                         ohm: float | None) -> None:
    cap_room = runner.totals.remaining("charge_uc")
    # the charge this train is expected to carry: V/R per pulse with the impedance just
    # measured (else the load the validation assumed), never above the current limit at
    # which the device aborts a train; a train that would pass the session's cap is not
    # started (what a train really carried is checked against the cap after it, too)
    load = ohm or (step.impedance.min_ohm if getattr(step, "impedance", None) else DEFAULT_LOAD_OHM)
    per_pulse_ma = min(float(step.current_limit_ma), step.amplitude_v / max(load, 1.0) * 1000.0)
    expected_uc = per_pulse_ma * step.width_ms * pulses  # mA x ms = uC
    if expected_uc > cap_room + 1e-9:
        raise StepFailure("dose_cap_reached", f"{pp.point}: a train of {pulses} pulses would carry about "
                          f"{expected_uc:.0f} uC; the session's EP charge cap leaves {cap_room:.0f} uC",
                          alarm="dose_cap_reached")
    train = EpgTrain(amplitude_v=step.amplitude_v, width_ms=step.width_ms, period_ms=step.period_ms, pulses=pulses,
                     polarity=step.polarity, current_limit_ma=step.current_limit_ma)
    await epg.configure(train)
    timing = TrainTiming(step.period_ms, runner.options.pulse_timing)
    # armed before the intent: a train's intent then always finds its device armed, which
    # a hub killed before it heard whether the trigger arrived leaves the next hub to read
    # in the device's state (an armed device left alone faults on its watchdog; only a
    # trigger makes it idle again without one; devicehub/runner/settlement.py)
    await epg.start()
    # the intent, with the device's last-train report as it is before this train: after a
    # stop (or a hub restart) the train is what the report says, counted only if this
    # train was triggered (devicehub/runner/settlement.py)
    delivery = await runner.open_delivery(dev_id, step, point=pp, planned={
        "pulses": pulses, "amplitude_v": step.amplitude_v, "width_ms": step.width_ms, "period_ms": step.period_ms,
        **({"impedance_ohm": round(ohm, 1)} if ohm is not None else {})})
    delivery.details = timing.delivered  # the timing error so far, also in a result written on a stop
    runner.publish_state()
    timeout = pulses * step.period_ms / 1000.0 + runner.options.train_margin_s
    async with epg.subscribe() as q:
        await epg.trigger()
        await runner.delivery_started(delivery)  # the device answered OK to OUTP:TRIG
        done = None
        deadline = asyncio.get_running_loop().time() + timeout
        late = StepFailure("train_timeout", f"{dev_id}: no DONE within {timeout:.1f} s", alarm="device_fault")
        while done is None:
            ev = await next_event(q, deadline, late)
            if ev.kind == "pulse":
                await check_pulse(runner, timing, dev_id, step, pp, ev)
            elif ev.kind == "train_done":
                done = ev
    timing_error = timing.error_us  # the largest interval error (EPG-1 ICD)
    report = await runner.settle(delivery, "done", **({"impedance_ohm": round(ohm, 1)} if ohm is not None else {}))
    if int(report.get("pulses", 0)) != pulses:
        raise StepFailure("train_mismatch", f"{dev_id}: train report {report.get('pulses')} pulses, {pulses} configured",
                          alarm="device_fault")
    pp.status = "done"
    await runner.event("train_done", step=step.id, zone=pp.zone, point=pp.point, pulses=int(report["pulses"]),
                       charge_uC=round(report["charge_uc"], 3), energy_mJ=round(report["energy_mj"], 3),
                       timing_error_us=round(timing_error, 1))
    await runner.event("point_done", step=step.id, zone=pp.zone, point=pp.point, device=dev_id,
                       delivered={"pulses": int(pp.get("pulses")), "charge_uC": round(pp.get("charge_uc"), 3),
                                  "energy_mJ": round(pp.get("energy_mj"), 3)})
    runner.publish_state()
