"""Injection step: per grid point, cap the gun, let the technician fire, count what was delivered.

Per point: the gun's cap is set to what this point and the session may still receive
(the device-side cap, so an overdose needs two failures), the gun is armed, and the
shots it reports (their delivered volumes, not the set ones) are counted until the
point's dose is reached. Between points the cap is set to zero, so a pull in between
is refused by the gun itself.

A point interrupted by a pause (or a shot cut short) is resumed with only what it still
needs: when that is less than one shot, the gun is set, for that point, to a shot of
exactly the rest (rounded down to the gun's 0.1 uL). Each delivery row records what was
delivered under its own intent, so the rows of a point add up to the point's dose.
"""

from __future__ import annotations

import time
from typing import Any

from devicehub.runner.session import StepFailure
from drivers.inj import InjParams


#: the gun's smallest shot (INJ-1 ICD): a point needing less than this is done
MIN_SHOT_UL = 1.0


def _shot_volume(step: Any) -> float:
    return float(getattr(step, "shot_ul", None) or step.dose_ul)


def _params(step: Any, volume_ul: float) -> InjParams:
    return InjParams(volume_ul=volume_ul, depth_mm=step.depth_mm, mode=step.mode,
                     rate_hz=int(getattr(step, "rate_hz", None) or 3))


async def run(runner: Any, step: Any) -> None:
    dev_id, gun = runner.device_for(step)
    sp = runner.progress[step.id]
    opts = runner.options
    shot_ul = _shot_volume(step)
    tol = opts.dose_tolerance
    await gun.configure(_params(step, shot_ul))
    configured = shot_ul
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
                rest = step.dose_ul - pp.get("volume_ul")
                if pp.get("volume_ul") >= step.dose_ul * (1 - tol) or rest < MIN_SHOT_UL:
                    await _point_done(runner, step, dev_id, pp)
                    continue
                # a point resumed with less than a shot to go gets a shot of exactly the rest
                this_shot = shot_ul if rest >= shot_ul - 1e-9 else int(rest * 10 + 1e-6) / 10.0
                if abs(this_shot - configured) > 1e-9:
                    if armed:
                        await gun.stop()  # the gun takes new parameters only when disarmed
                        armed = False
                    await gun.configure(_params(step, this_shot))
                    configured = this_shot

                async def settle(status: str, pp=pp) -> None:
                    await _settle(runner, gun, dev_id, step, pp, base, counted, status)

                # active from its intent on: a stop at any await from here settles the intent
                await runner.begin_point(dev_id, step, pp, settle,
                                         planned={"volume_ul": step.dose_ul, "depth_mm": step.depth_mm,
                                                  "shot_ul": shot_ul, "mode": step.mode})
                point_room = step.dose_ul * (1 + tol) - pp.get("volume_ul")
                session_room = runner.totals.remaining("volume_ul")
                cap = min(point_room, session_room)
                if cap + 1e-9 < this_shot:
                    raise StepFailure("dose_cap_reached", f"session volume cap leaves {session_room:.1f} uL, "
                                      f"less than one {this_shot:.1f} uL shot", alarm="dose_cap_reached")
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
                        if vol > configured * (1 + opts.shot_overreport):
                            raise StepFailure("device_overreport",
                                              f"{dev_id} reported {vol:.1f} uL for a {configured:.1f} uL shot",
                                              alarm="dose_cap_reached")
                        if pp.get("volume_ul") > step.dose_ul * (1 + tol) + 1e-9:
                            raise StepFailure("dose_cap_reached",
                                              f"{pt.id}: {pp.get('volume_ul'):.1f} uL exceeds the point's dose",
                                              alarm="dose_cap_reached")
                    elif ev.kind == "trigger_refused" and ev.data.get("reason") == 3:
                        raise StepFailure("reservoir_empty", f"{dev_id}: reservoir empty", alarm="device_fault",
                                          device=dev_id, code=7)
                await gun.set_cap(0.0)
                runner.set_active(dev_id, None)
                await _point_done(runner, step, dev_id, pp)
    await gun.stop()


def _delivered(pp: Any, since: dict[str, float] | None = None) -> dict[str, float]:
    """What the point received (since ``since``, the amounts already in earlier rows)."""
    since = since or {}
    shots = int(pp.get("shots") - since.get("shots", 0))
    depth_sum = pp.get("depth_mm_sum") - since.get("depth_mm_sum", 0.0)
    return {"volume_ul": round(pp.get("volume_ul") - since.get("volume_ul", 0.0), 3), "shots": shots,
            "depth_mm": round(depth_sum / shots, 2) if shots else 0.0}


async def _record_row(runner: Any, pp: Any, status: str, **extra: float) -> None:
    """The result of the point's current intent: what was delivered under it, no more."""
    if pp.delivery_id is None:
        return
    await runner.store.delivery_result(pp.delivery_id, delivered={**_delivered(pp, pp.recorded), **extra},
                                       status=status)
    pp.recorded = {k: pp.get(k) for k in ("volume_ul", "shots", "depth_mm_sum")}
    pp.delivery_id = None


async def _point_done(runner: Any, step: Any, dev_id: str, pp: Any, status: str = "done") -> None:
    delivered = _delivered(pp)  # the whole point, for the event
    await _record_row(runner, pp, status)
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
    # the resumed point gets a fresh intent for the rest of its dose
    await _record_row(runner, pp, status, settle_ms=round((time.monotonic() - t0) * 1000, 3))
