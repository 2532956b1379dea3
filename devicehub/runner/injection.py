"""Injection step: per grid point, cap the gun, let the technician fire, count what was delivered.

Per point: the gun's cap is set to what this point and the session may still receive
(the device-side cap, so an overdose needs two failures), the gun is armed, and the
shots it reports (their delivered volumes, not the set ones) are counted until the
point's dose is reached. Between points the cap is set to zero, so a pull in between
is refused by the gun itself.
"""

from __future__ import annotations

import time
from typing import Any

from devicehub.runner.session import StepFailure
from drivers.inj import InjParams


def _shot_volume(step: Any) -> float:
    return float(getattr(step, "shot_ul", None) or step.dose_ul)


async def run(runner: Any, step: Any) -> None:
    dev_id, gun = runner.device_for(step)
    sp = runner.progress[step.id]
    opts = runner.options
    shot_ul = _shot_volume(step)
    tol = opts.dose_tolerance
    await gun.configure(InjParams(volume_ul=shot_ul, depth_mm=step.depth_mm, mode=step.mode,
                                  rate_hz=int(getattr(step, "rate_hz", None) or 3)))
    await gun.set_cap(0.0)
    # what the gun had delivered before this run of the step: the baseline for settling
    base = (await gun.status()).readings
    counted = {"volume_ul": 0.0, "shots": 0}

    async with gun.subscribe() as q:
        armed = False
        for zone in step.zones:
            for pt in runner.program.points(zone):
                pp = sp.point(pt.id, zone)
                if pp.status in ("done", "skipped"):
                    continue
                if pp.get("volume_ul") >= step.dose_ul * (1 - tol):
                    await _point_done(runner, step, dev_id, pp)
                    continue

                async def settle(status: str, pp=pp) -> None:
                    await _settle(runner, gun, dev_id, step, pp, base, counted, status)

                # active from its intent on: a stop at any await from here settles the intent
                await runner.begin_point(dev_id, step, pp, settle,
                                         planned={"volume_ul": step.dose_ul, "depth_mm": step.depth_mm,
                                                  "shot_ul": shot_ul, "mode": step.mode})
                point_room = step.dose_ul * (1 + tol) - pp.get("volume_ul")
                session_room = runner.totals.remaining("volume_ul")
                cap = min(point_room, session_room)
                if cap + 1e-9 < shot_ul:
                    raise StepFailure("dose_cap_reached", f"session volume cap leaves {session_room:.1f} uL, "
                                      f"less than one {shot_ul:.1f} uL shot", alarm="dose_cap_reached")
                await gun.set_cap(cap)
                runner.publish_state()
                if not armed:
                    await gun.start()
                    armed = True
                while pp.get("volume_ul") < step.dose_ul * (1 - tol):
                    ev = await q.get()
                    if ev.kind == "shot":
                        vol = float(ev.data.get("volume_ul", 0.0))
                        counted["volume_ul"] += vol
                        counted["shots"] += 1
                        pp.delivered.setdefault("depth_mm_sum", 0.0)
                        pp.delivered["depth_mm_sum"] += float(ev.data.get("depth_mm", 0.0))
                        runner.account(dev_id, pp, volume_ul=vol, shots=1)
                        if vol > shot_ul * (1 + opts.shot_overreport):
                            raise StepFailure("device_overreport",
                                              f"{dev_id} reported {vol:.1f} uL for a {shot_ul:.1f} uL shot",
                                              alarm="dose_cap_reached")
                        if pp.get("volume_ul") > step.dose_ul * (1 + tol) + 1e-9:
                            raise StepFailure("dose_cap_reached",
                                              f"{pt.id}: {pp.get('volume_ul'):.1f} uL exceeds the point's dose",
                                              alarm="dose_cap_reached")
                    elif ev.kind == "trigger_refused" and ev.data.get("reason") == 3:
                        raise StepFailure("reservoir_empty", f"{dev_id}: reservoir empty", alarm="device_fault")
                await gun.set_cap(0.0)
                runner.set_active(dev_id, None)
                await _point_done(runner, step, dev_id, pp)
    await gun.stop()


async def _point_done(runner: Any, step: Any, dev_id: str, pp: Any, status: str = "done") -> None:
    shots = int(pp.get("shots"))
    delivered = {"volume_ul": round(pp.get("volume_ul"), 3), "shots": shots,
                 "depth_mm": round(pp.get("depth_mm_sum") / shots, 2) if shots else 0.0}
    if pp.delivery_id is not None:
        await runner.store.delivery_result(pp.delivery_id, delivered=delivered, status=status)
    pp.status = "done" if status == "done" else pp.status
    await runner.event("point_done", step=step.id, zone=pp.zone, point=pp.point, device=dev_id, delivered=delivered)
    runner.publish_state()


async def _settle(runner: Any, gun: Any, dev_id: str, step: Any, pp: Any, base: dict[str, Any],
                  counted: dict[str, float], status: str) -> None:
    """After a stop: shots the gun made that no event reported still count, at this point."""
    t0 = time.monotonic()
    try:
        now = (await gun.status()).readings
    except Exception:  # noqa: BLE001 - the device may be the reason we stopped
        now = None
    if now is not None:
        extra_vol = float(now.get("volume_total_ul", 0)) - float(base.get("volume_total_ul", 0)) - counted["volume_ul"]
        extra_shots = int(now.get("shots_total", 0)) - int(base.get("shots_total", 0)) - int(counted["shots"])
        if extra_shots > 0 and extra_vol > 0:
            counted["volume_ul"] += extra_vol
            counted["shots"] += extra_shots
            try:
                runner.account(dev_id, pp, volume_ul=extra_vol, shots=extra_shots)
            except Exception:  # noqa: BLE001 - recorded below; the room is already safe
                pass
    if pp.delivery_id is not None:
        shots = int(pp.get("shots"))
        await runner.store.delivery_result(
            pp.delivery_id,
            delivered={"volume_ul": round(pp.get("volume_ul"), 3), "shots": shots,
                       "depth_mm": round(pp.get("depth_mm_sum") / shots, 2) if shots else 0.0,
                       "settle_ms": round((time.monotonic() - t0) * 1000, 3)},
            status=status)
        if status == "interrupted":
            pp.delivery_id = None  # the resumed point gets a fresh intent for the rest of its dose
