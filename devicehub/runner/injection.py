"""Injection step: per grid point, cap the gun, let the technician fire, count what was delivered.

Per point: the gun's cap is set to what this point and the session may still receive
(the device-side cap, so an overdose needs two failures), the gun is armed, and the
shots it reports (their delivered volumes, not the set ones) are counted until the
point's dose is reached. Between points the cap is set to zero, so a pull in between
is refused by the gun itself.

A point interrupted by a pause (or a shot cut short) is resumed with only what it still
needs: when that is less than one shot, the gun is set, for that point, to a shot of
exactly the rest (rounded down to the gun's 0.1 uL). Each delivery row records what the
gun's own totals counted under its own intent (after minus before; the gun is capped to
zero between points, so nothing else moves them), so the rows of a point add up to the
point's dose.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from devicehub.runner.context import StepContext, StepFailure
from drivers.inj import InjParams


log = logging.getLogger(__name__)

#: the gun's smallest shot (INJ-1 ICD): a point needing less than this is done
MIN_SHOT_UL = 1.0


def gun_cap(room_ul: float, shot_ul: float, scatter: float) -> float:
    """What the gun may still deliver (SET_CAP, in its 0.1 uL) so that ``room_ul`` is never
    passed: the gun fires a shot while its set volume fits what is left of the cap, and a
    shot may deliver up to ``scatter`` more than set, so the last shot it allows could
    carry the total past the cap by that much."""
    return max(0.0, math.floor((room_ul - scatter * shot_ul) * 10 + 1e-6) / 10.0)


def _shot_volume(step: Any) -> float:
    return float(getattr(step, "shot_ul", None) or step.dose_ul)


def _params(step: Any, volume_ul: float) -> InjParams:
    return InjParams(volume_ul=volume_ul, depth_mm=step.depth_mm, mode=step.mode,
                     rate_hz=int(getattr(step, "rate_hz", None) or 3))


async def run(runner: StepContext, step: Any) -> None:
    dev_id, gun = runner.device_for(step)
    sp = runner.progress[step.id]
    opts = runner.options
    shot_ul = _shot_volume(step)
    tol = opts.dose_tolerance
    await gun.configure(_params(step, shot_ul))
    configured = shot_ul
    await gun.set_cap(0.0)

    async with gun.subscribe() as q:
        armed = False
        for zone in step.zones:
            for pt in runner.program.points(zone):
                pp = sp.point(pt.id, zone)
                if pp.status in ("done", "skipped"):
                    continue
                if _point_complete(step, pp, tol):
                    await _point_done(runner, step, dev_id, pp)
                    continue
                # the intent, with the gun's totals before it; from here on any stop settles it
                delivery = await runner.open_delivery(dev_id, step, point=pp, planned={
                    "volume_ul": step.dose_ul, "depth_mm": step.depth_mm, "shot_ul": shot_ul, "mode": step.mode})
                while not _point_complete(step, pp, tol):
                    # a point with less than a shot to go (resumed after a pause, or after a
                    # shot cut short) gets a shot of exactly the rest: the gun refuses a shot
                    # larger than what is left of its cap, so the technician could pull forever
                    rest = step.dose_ul - pp.get("volume_ul")
                    this_shot = shot_ul if rest >= shot_ul - 1e-9 else int(rest * 10 + 1e-6) / 10.0
                    # never a shot whose scatter could pass the point's tolerance (the gun's
                    # 0.1 uL steps can leave a hair less room than the rest needs)
                    fits = math.floor(_point_room(runner, step, pp) / (1 + opts.shot_scatter) * 10 + 1e-6) / 10.0
                    if fits < this_shot and fits >= MIN_SHOT_UL:
                        this_shot = fits
                    if abs(this_shot - configured) > 1e-9:
                        if armed:
                            await gun.stop()  # the gun takes new parameters only when disarmed
                            armed = False
                        await gun.configure(_params(step, this_shot))
                        configured = this_shot
                    session_room = runner.totals.remaining("volume_ul")
                    cap = _cap(runner, step, pp, this_shot)
                    if cap + 1e-9 < this_shot:
                        raise StepFailure("dose_cap_reached", f"session volume cap leaves {session_room:.1f} uL, "
                                          f"less than one {this_shot:.1f} uL shot", alarm="dose_cap_reached")
                    await gun.set_cap(cap)
                    runner.publish_state()
                    if not armed:
                        await gun.start()
                        armed = True
                    # shots until the dose is reached, or the gun would refuse the shot set
                    # (more than what is left of its cap): then a shot of the rest, above
                    while not _point_complete(step, pp, tol) and _cap(runner, step, pp, configured) >= configured - 1e-9:
                        ev = await q.get()
                        if ev.kind == "shot":
                            _count_shot(runner, dev_id, step, pp, delivery, ev, configured)
                        elif ev.kind == "trigger_refused" and ev.data.get("reason") == 3:
                            raise StepFailure("reservoir_empty", f"{dev_id}: reservoir empty", alarm="device_fault",
                                              device=dev_id, code=7)
                        elif ev.kind == "trigger_refused" and ev.data.get("reason") == 2:
                            # the gun's cap is used up though the point still has room for
                            # a shot: a shot's report was lost on the wire. The gun's own
                            # totals say what it delivered; the cap is set again from them
                            await _catch_up(runner, dev_id, step, pp, delivery)
                            break
                await gun.set_cap(0.0)
                await runner.settle(delivery, "done", **_depth(pp))
                _drop_shot_events(q)  # their shots are in the gun's totals just read
                await _point_done(runner, step, dev_id, pp)
    await gun.stop()


def _cap(runner: Any, step: Any, pp: Any, shot_ul: float) -> float:
    """The gun's cap for ``pp`` now: neither the point's dose with its tolerance nor the
    session's cap can be passed, even by the last shot's scatter."""
    room = min(_point_room(runner, step, pp), runner.totals.remaining("volume_ul"))
    return gun_cap(room, shot_ul, runner.options.shot_scatter)


def _point_room(runner: Any, step: Any, pp: Any) -> float:
    """What ``pp`` may still take: its dose with the tolerance, less what it has had."""
    return step.dose_ul * (1 + runner.options.dose_tolerance) - pp.get("volume_ul")


def _point_complete(step: Any, pp: Any, tol: float) -> bool:
    """The point has its dose (within the tolerance), or less than the gun's smallest shot to go."""
    got = pp.get("volume_ul")
    return got >= step.dose_ul * (1 - tol) or step.dose_ul - got < MIN_SHOT_UL


def _count_shot(runner: Any, dev_id: str, step: Any, pp: Any, delivery: Any, ev: Any,
                configured: float) -> None:
    """A shot the gun reported: into the point, the delivery and the session's totals; a gun
    that reports more than it was set to, or a point past its dose, stops the step."""
    opts = runner.options
    vol = float(ev.data.get("volume_ul", 0.0))
    pp.delivered.setdefault("depth_mm_sum", 0.0)
    pp.delivered["depth_mm_sum"] += float(ev.data.get("depth_mm", 0.0))
    pp.delivered["depth_shots_sum"] = pp.delivered.get("depth_shots_sum", 0.0) + 1
    for k, v in (("volume_ul", vol), ("shots", 1.0)):
        delivery.accounted[k] = delivery.accounted.get(k, 0.0) + v
    runner.account(dev_id, pp, volume_ul=vol, shots=1)
    if vol > configured * (1 + opts.shot_overreport):
        raise StepFailure("device_overreport", f"{dev_id} reported {vol:.1f} uL for a {configured:.1f} uL shot",
                          alarm="dose_cap_reached")
    _check_point_dose(runner, step, pp)


async def _catch_up(runner: Any, dev_id: str, step: Any, pp: Any, delivery: Any) -> None:
    """Enter what the gun counted under ``delivery`` and no shot report brought (a report
    lost or garbled on the wire: the shot was delivered, the hub never heard of it)."""
    counted = await runner.counted(delivery)
    missing = {k: round(counted.get(k, 0.0) - delivery.accounted.get(k, 0.0), 3) for k in ("volume_ul", "shots")}
    if missing["shots"] <= 0 and missing["volume_ul"] <= 0:
        return
    log.warning("%s at %s: the gun counted %d shot(s), %.1f uL, that no shot report brought: entered from its totals",
                dev_id, pp.point, int(missing["shots"]), missing["volume_ul"])
    for k, v in missing.items():
        delivery.accounted[k] = delivery.accounted.get(k, 0.0) + v
    runner.account(dev_id, pp, volume_ul=missing["volume_ul"], shots=int(missing["shots"]))
    _check_point_dose(runner, step, pp)


def _check_point_dose(runner: Any, step: Any, pp: Any) -> None:
    """A point past its dose with the tolerance stops the step (the gun's cap should never let it)."""
    if _point_room(runner, step, pp) < -1e-9:
        raise StepFailure("dose_cap_reached", f"{pp.point}: {pp.get('volume_ul'):.1f} uL exceeds the point's dose",
                          alarm="dose_cap_reached")


def _drop_shot_events(q: Any) -> None:
    kept = []
    while not q.empty():
        ev = q.get_nowait()
        if ev.kind != "shot":
            kept.append(ev)
    for ev in kept:
        q.put_nowait(ev)


def _depth(pp: Any) -> dict[str, float]:
    n = pp.get("depth_shots_sum")
    return {"depth_mm": round(pp.get("depth_mm_sum") / n, 2)} if n else {}


def _delivered(pp: Any) -> dict[str, float]:
    """What the point received, over all its rows (for ``point_done``)."""
    return {"volume_ul": round(pp.get("volume_ul"), 3), "shots": int(pp.get("shots")), **_depth(pp)}


async def _point_done(runner: Any, step: Any, dev_id: str, pp: Any) -> None:
    pp.status = "done"
    await runner.event("point_done", step=step.id, zone=pp.zone, point=pp.point, device=dev_id,
                       delivered=_delivered(pp))
    runner.publish_state()
