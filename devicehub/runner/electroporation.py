"""Electroporation step: per grid point, check the skin contact, deliver one train, verify it.

Per point: measure the applicator's impedance (skip the point or stop, as the program
says, when out of range), configure the train with the pulses this point still needs
(the device-side bound), arm, trigger, await DONE, compare with the device's train
report, and record the pulse-timing error from the device's own pulse offsets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from devicehub.runner.pulse_timing import TrainTiming, check_pulse
from devicehub.runner.session import StepFailure, next_event
from drivers.epg import EpgTrain

#: the load assumed when no impedance was measured (as the program validation assumes)
DEFAULT_LOAD_OHM = 500.0


async def run(runner: Any, step: Any) -> None:
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
    offsets: list[int] = []
    timing = TrainTiming(step.period_ms, runner.options.pulse_timing)
    # "triggered": from the moment OUTP:TRIG may have reached the device; before it, the
    # device's train report is the previous point's and must not be counted again
    accounted = {"done": False, "triggered": False}

    async def settle(status: str) -> None:
        """After a stop mid-train: count the pulses the device reported, no more, no less."""
        if accounted["done"]:
            return
        accounted["done"] = True
        n = len(offsets)
        charge = energy = 0.0
        try:
            if not accounted["triggered"]:
                raise LookupError("no train was triggered for this point")
            rep = await epg.train_report()
            if rep.pulses == n:
                charge, energy = rep.charge_uc, rep.energy_mj
            elif rep.pulses > n:  # pulses whose events were lost in the stop still count
                n, charge, energy = rep.pulses, rep.charge_uc, rep.energy_mj
        except Exception:  # noqa: BLE001 - the device may be the reason we stopped
            pass
        if n:
            try:
                runner.account(dev_id, pp, pulses=n, charge_uc=charge, energy_mj=energy)
            except Exception:  # noqa: BLE001 - the room is already safe; recorded below
                pass
        await runner.store.delivery_result(pp.delivery_id, status=status, delivered={
            "pulses": n, "charge_uc": round(charge, 3), "energy_mj": round(energy, 3), **timing.delivered()})
        pp.delivery_id = None

    await runner.begin_point(dev_id, step, pp, settle, planned={
        "pulses": pulses, "amplitude_v": step.amplitude_v, "width_ms": step.width_ms, "period_ms": step.period_ms,
        **({"impedance_ohm": round(ohm, 1)} if ohm is not None else {})})
    runner.publish_state()
    timeout = pulses * step.period_ms / 1000.0 + runner.options.train_margin_s
    async with epg.subscribe() as q:
        await epg.start()
        accounted["triggered"] = True
        await epg.trigger()
        done = None
        deadline = asyncio.get_running_loop().time() + timeout
        late = StepFailure("train_timeout", f"{dev_id}: no DONE within {timeout:.1f} s", alarm="device_fault")
        while done is None:
            ev = await next_event(q, deadline, late)
            if ev.kind == "pulse":
                offsets.append(int(ev.data.get("t_us", 0)))
                await check_pulse(runner, timing, dev_id, step, pp, ev)
            elif ev.kind == "train_done":
                done = ev
    report = await epg.train_report()
    accounted["done"] = True
    runner.set_active(dev_id, None)
    timing_error = timing.error_us  # the largest interval error (EPG-1 ICD)
    runner.account(dev_id, pp, pulses=report.pulses, charge_uc=report.charge_uc, energy_mj=report.energy_mj)
    if report.pulses != pulses:
        raise StepFailure("train_mismatch", f"{dev_id}: train report {report.pulses} pulses, {pulses} configured",
                          alarm="device_fault")
    delivered = {"pulses": report.pulses, "charge_uc": round(report.charge_uc, 3),
                 "energy_mj": round(report.energy_mj, 3), "peak_ma": round(report.peak_ma, 3),
                 "timing_error_us": round(timing_error, 1),
                 **({"impedance_ohm": round(ohm, 1)} if ohm is not None else {})}
    await runner.store.delivery_result(pp.delivery_id, delivered=delivered, status="done")
    pp.delivery_id = None
    pp.status = "done"
    await runner.event("train_done", step=step.id, zone=pp.zone, point=pp.point, pulses=report.pulses,
                       charge_uC=round(report.charge_uc, 3), energy_mJ=round(report.energy_mj, 3),
                       timing_error_us=round(timing_error, 1))
    await runner.event("point_done", step=step.id, zone=pp.zone, point=pp.point, device=dev_id,
                       delivered={"pulses": int(pp.get("pulses")), "charge_uC": round(pp.get("charge_uc"), 3),
                                  "energy_mJ": round(pp.get("energy_mj"), 3)})
    runner.publish_state()
