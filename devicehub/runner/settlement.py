"""Settlement: every delivery the hub starts ends with what the device itself counted.

A *delivery* is one injection point, one EP train, or one run of an LED or PEMF
exposure (a paused exposure has one delivery per run). Before the device is told
anything, the hub reads the device's counters (:func:`read_counters`) and writes the
delivery's *intent* with them; when the delivery ends, however it ends (done, pause,
abort, fault, a device lost, a hub restart), :func:`settle` reads the device again and
writes the *result*: what the device counted for this delivery, and nothing else.

Counters, not registers (shared/mqtt-api.md, "What the record says was delivered"):
- INJ-1: the gun's own totals (``shots_total``, ``volume_total``) after minus before.
- EPG-1: the last-train report (``TRAIN:REP?``), counted only for a train the device
  confirmed it started (``OUTP:TRIG`` answered OK, recorded as ``delivery_started``),
  or one whose report is no longer the one read before the intent (the trigger reached
  the device but its OK was lost with the hub).
- LED-1 / PEMF-1: the run registers (ELAPSED, FLUENCE / PULSES), which the device
  resets when a run starts; counted only for a run the device confirmed it started, or
  whose registers moved. A run the device refused delivered nothing, whatever its
  registers still hold from the run before. The registers resolve 0.1 s and 1 mJ/cm2
  (truncated); within that step the run's length is placed by the hub's own clock of
  the start and the stop, never outside what the device says.

A device that cannot be read at the stop (stalled, link cut, hub killed) leaves the
delivery open: ``in_flight`` in the record until the hub reads the device again (on
reconnect, or when the hub comes back), which settles it *late* through the same
function (``delivery_settled`` with ``late: true``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import Any, Protocol

from devicehub.runner.totals import QUANTITIES

log = logging.getLogger(__name__)

#: device type of each step kind
KIND_OF_STEP = {"injection": "inj", "electroporation": "epg", "led": "led", "pemf": "pemf"}

#: the emitters' register resolution (ICDs): ELAPSED 0.1 s, FLUENCE 1 mJ/cm2, truncated
ELAPSED_STEP_S = 0.1
FLUENCE_STEP_MJ = 1.0


class Unsettled(Exception):
    """The device cannot say now what it delivered (no answer, or its output is still on)."""


@dataclass
class Delivery:
    """One delivery the hub started, from its intent to its result."""

    device_id: str
    kind: str  # inj | epg | led | pemf
    step: str
    zone: str | None
    point: str | None  # None for an exposure
    before: dict[str, float] = field(default_factory=dict)
    planned: dict[str, Any] = field(default_factory=dict)
    intent_id: int | None = None
    #: the device confirmed the run began (a train triggered, an emitter on)
    started: bool = False
    #: time.monotonic() of the start and of the stop command, for the emitters' resolution
    t_started: float | None = None
    t_stopped: float | None = None
    #: amounts already entered live (the gun's shot events); the settlement adds the rest
    accounted: dict[str, float] = field(default_factory=dict)
    settled: bool = False
    #: the result as written
    delivered: dict[str, float] | None = None
    #: the step's progress object for this point (None for an exposure); runner-side only
    progress: Any = None
    #: the intent's write while under way (a stop waits for it: no intent is left without its result)
    intent_write: Any = None
    #: the step's own figures for the result, read when it is written (e.g. the EP timing error)
    details: Callable[[], dict[str, Any]] | None = None
    #: EPG-1: the driver's trigger mark before this train (its pulse and end events after it
    #: say the train ran, even when the trigger's OK was lost); None: not known (hub restart)
    trigger_mark: int | None = None
    #: EPG-1, settled late after a hub restart: the device's state (``OUTP:STAT?``) as the
    #: new hub found it on connecting, before it sent anything (:func:`_ran_unheard`)
    found: str | None = None
    #: the settlement under way: once the device is read, its result, event and accounting are
    #: written to the end whatever happens to its caller; a stop waits for it
    settling: asyncio.Future[dict[str, float] | None] | None = None
    #: ``delivery_settled`` is in the record (or queued behind a stop's events)
    announced: bool = False

    def event_data(self, delivered: dict[str, Any], late: bool) -> dict[str, Any]:
        return {"device": self.device_id, "step": self.step, "zone": self.zone, "point": self.point,
                "delivered": delivered, "late": late}


class RecordSink(Protocol):
    """Where a settlement is written: the result row and the ``delivery_settled`` event."""

    async def result(self, intent_id: int, delivered: dict[str, Any], status: str) -> None: ...

    async def event(self, name: str, **data: Any) -> Any: ...


# ====================================================================== reading the device
async def read_counters(kind: str, device: Any) -> dict[str, float]:
    """What the device's counters say before a delivery (kept in its intent)."""
    if kind == "epg":
        rep = await device.train_report()
        return {"pulses": int(rep.pulses), "charge_uc": float(rep.charge_uc), "energy_mj": float(rep.energy_mj),
                "peak_ma": float(rep.peak_ma)}
    st = await device.status()
    r = st.readings
    if kind == "inj":
        return {"shots_total": int(r.get("shots_total", 0)), "volume_total_ul": float(r.get("volume_total_ul", 0.0))}
    if kind == "led":
        return {"elapsed_s": float(r.get("elapsed_s", 0.0)), "fluence_mj_cm2": float(r.get("fluence_mj_cm2", 0.0))}
    if kind == "pemf":
        return {"elapsed_s": float(r.get("elapsed_s", 0.0)), "pulses": int(r.get("pulses", 0))}
    raise ValueError(f"no counters for device kind {kind!r}")


def _within(value: float, low: float, step: float) -> float:
    """``value`` kept inside the device's resolution step ``[low, low + step)``."""
    return min(max(value, low), low + step * 0.999)


async def read_delivered(d: Delivery, device: Any) -> dict[str, float]:
    """What the device counted for ``d``; :class:`Unsettled` when it cannot say now."""
    from drivers.base import DriverError

    try:
        if d.kind == "inj":
            st = await device.status()
            r = st.readings
            shots = int(r.get("shots_total", 0)) - int(d.before.get("shots_total", 0))
            volume = float(r.get("volume_total_ul", 0.0)) - float(d.before.get("volume_total_ul", 0.0))
            return {"volume_ul": round(max(volume, 0.0), 3), "shots": max(shots, 0)}
        if d.kind == "epg":
            rep = await device.train_report()
            now = {"pulses": int(rep.pulses), "charge_uc": float(rep.charge_uc), "energy_mj": float(rep.energy_mj),
                   "peak_ma": float(rep.peak_ma)}
            moved = any(not math.isclose(now[k], float(d.before.get(k, -1.0)), abs_tol=1e-9) for k in now)
            # a step's trains are alike: a report equal to the last one does not say that
            # this train did not run; the device's own events after its trigger do
            seen = d.trigger_mark is not None and device.train_seen_since(d.trigger_mark)
            if not (d.started or moved or seen or _ran_unheard(d)):
                return {"pulses": 0, "charge_uc": 0.0, "energy_mj": 0.0}
            return {"pulses": now["pulses"], "charge_uc": round(now["charge_uc"], 3),
                    "energy_mj": round(now["energy_mj"], 3), "peak_ma": round(now["peak_ma"], 3)}
        st = await device.status()
    except DriverError as exc:
        raise Unsettled(f"{d.device_id}: {exc}") from exc
    if st.output_on:
        raise Unsettled(f"{d.device_id}: output still on")
    r = st.readings
    elapsed = float(r.get("elapsed_s", 0.0))
    if d.kind == "led":
        fluence = float(r.get("fluence_mj_cm2", 0.0))
        moved = (elapsed, fluence) != (d.before.get("elapsed_s"), d.before.get("fluence_mj_cm2"))
        if not (d.started or moved):
            return {"exposure_s": 0.0, "fluence_j_cm2": 0.0}
        seconds, fluence = _placed(d, st.state, elapsed, fluence)
        return {"exposure_s": round(seconds, 3), "fluence_j_cm2": round(fluence / 1000.0, 6)}
    pulses = int(r.get("pulses", 0))
    moved = (elapsed, pulses) != (d.before.get("elapsed_s"), d.before.get("pulses"))
    if not (d.started or moved):
        return {"field_time_s": 0.0, "field_pulses": 0}
    seconds, _ = _placed(d, st.state, elapsed, None)
    return {"field_time_s": round(seconds, 3), "field_pulses": pulses}


def _ran_unheard(d: Delivery) -> bool:
    """A train its hub armed, then died before it heard whether the trigger arrived (soak
    #430): did it run? Its report cannot say when it equals the train before (a step's
    trains are alike); the device's state as the next hub found it can. The intent was
    written with the device armed (``armed``); an armed device left alone latches its
    watchdog fault after 500 ms (EPG-1 ICD), and only the trigger makes it idle again
    without a fault (the dead hub's own ``OUTP:STOP`` comes before a settlement it never
    wrote: a stop and a kill within the same milliseconds, the one case this misreads).
    Found idle or running, the train ran."""
    return d.found in ("idle", "running") and bool(d.before.get("armed"))


def _placed(d: Delivery, state: str, elapsed: float, fluence: float | None) -> tuple[float, float]:
    """An emitter run's length (and LED fluence) inside the registers' resolution step.

    A run that reached its own end (``done``) lasted exactly what ELAPSED says; its
    fluence is placed inside FLUENCE's 1 mJ/cm2 step by the set irradiance. A run
    cut short was truncated to the registers' step: when the hub's own stop ended it
    (the device is idle after it), the hub's clock of the start and the stop places it
    inside that step, so a paused exposure's runs add up to what the device delivered
    and the rest is not delivered twice; when the device ended it itself (a fault, its
    watchdog) or the hub was not there to see, it is the middle of the step."""
    if state == "done":
        seconds = elapsed  # a run that ended by itself ends exactly on its DURATION
    elif d.t_started is not None and d.t_stopped is not None and state != "fault":
        seconds = _within(d.t_stopped - d.t_started, elapsed, ELAPSED_STEP_S)
    else:
        seconds = elapsed + ELAPSED_STEP_S / 2.0
    if fluence is None:
        return seconds, 0.0
    rate = float(d.planned.get("rate_mw_cm2") or 0.0)  # mW/cm2 = mJ/cm2 per second
    placed = _within(rate * seconds, fluence, FLUENCE_STEP_MJ) if rate > 0 else fluence + FLUENCE_STEP_MJ / 2.0
    return seconds, placed


# ====================================================================== the one settlement
async def settle(d: Delivery, device: Any, sink: RecordSink, *, status: str, late: bool = False,
                 announce: bool = True, extra: dict[str, Any] | None = None,
                 account: Callable[[Delivery, dict[str, float]], None] | None = None) -> dict[str, float] | None:
    """Read what the device counted for ``d``, write its result, enter what was not yet entered.

    Every stop path calls this (the step's own end, pause, abort, fault, a device lost,
    a hub restart, a reconnect). Returns the delivered amounts, or None when the device
    cannot say now (the delivery stays open: ``in_flight``) or ``d`` has no intent in the
    record. ``account`` receives the amounts not yet accounted (may raise CapExceeded,
    after the result is written). ``announce``: append ``delivery_settled``.
    """
    if d.settling is not None and not d.settling.done():
        # one settlement at a time: a stop that meets the step's own settlement waits for it
        return await asyncio.shield(d.settling)
    if d.settled:
        return d.delivered
    d.settling = asyncio.ensure_future(_settle_once(d, device, sink, status=status, late=late, announce=announce,
                                                    extra=extra, account=account))
    # shielded: a stop that cancels the caller does not cut the settlement between its
    # result row, its event and the totals (the one-hour soak's session #82)
    return await asyncio.shield(d.settling)


async def _settle_once(d: Delivery, device: Any, sink: RecordSink, *, status: str, late: bool, announce: bool,
                       extra: dict[str, Any] | None,
                       account: Callable[[Delivery, dict[str, float]], None] | None) -> dict[str, float] | None:
    if d.intent_id is None:
        log.warning("delivery on %s at %s/%s has no intent in the record: not settled", d.device_id, d.step, d.point)
        d.settled = True
        return None
    t0 = time.monotonic()
    if not d.before:
        # an intent written before the hub kept the device's counters in it: nothing to
        # subtract from, so the result says so instead of guessing
        d.settled = True
        d.delivered = {}
        await sink.result(d.intent_id, {"counted": False, **({"late": True} if late else {})}, "unknown")
        return d.delivered
    try:
        delivered = await read_delivered(d, device)
    except Unsettled as exc:
        log.warning("delivery %s stays in flight: %s", d.intent_id, exc)
        return None
    d.settled = True
    d.delivered = delivered
    extra = {**(d.details() if d.details is not None else {}), **(extra or {})}
    row = {**delivered, **extra}
    if late:
        row["late"] = True
    row["settle_ms"] = round((time.monotonic() - t0) * 1000.0, 3)
    await sink.result(d.intent_id, row, status)
    if announce:
        d.announced = True
        await sink.event("delivery_settled", **d.event_data({**delivered, **(extra or {})}, late))
    if account is not None:
        rest = {k: v - d.accounted.get(k, 0.0) for k, v in delivered.items() if k in _AMOUNTS}
        rest = {k: v for k, v in rest.items() if abs(v) > 1e-12}
        if rest:
            for k, v in rest.items():
                d.accounted[k] = d.accounted.get(k, 0.0) + v
            account(d, rest)  # may raise CapExceeded: the result and its event are written first
    return delivered


#: the amounts a delivery adds to the session's totals (not peaks, depths or times to settle)
_AMOUNTS = frozenset(QUANTITIES)


# ====================================================================== settling late
class StoreSink:
    """A late settlement's writes: straight to the store, the event published on the bus."""

    def __init__(self, store: Any, bus: Any, session_id: str) -> None:
        self.store = store
        self.bus = bus
        self.session_id = session_id

    async def result(self, intent_id: int, delivered: dict[str, Any], status: str) -> None:
        await self.store.delivery_result(intent_id, delivered=delivered, status=status)

    async def event(self, name: str, **data: Any) -> int:
        from devicehub.bus import HubMessage, utcnow

        ts = utcnow()
        idx = await self.store.append_event(self.session_id, name, data, ts)
        self.bus.publish(HubMessage("session.event", {"event": name, "index": idx, **data}, session=self.session_id,
                                    ts=ts))
        return idx


def delivery_from_row(row: dict[str, Any], kind: str, started: bool, found: str | None = None) -> Delivery:
    """An open delivery as the record holds it (its intent row), for a late settlement."""
    planned = dict(row.get("planned") or {})
    return Delivery(device_id=row["device"], kind=kind, step=row["step_id"], zone=row.get("zone"),
                    point=row.get("point"), before=dict(planned.get("device_before") or {}), planned=planned,
                    intent_id=int(row["id"]), started=started, found=found)


async def settle_late(store: Any, bus: Any, device_id: str, kind: str, device: Any,
                      read_open: Callable[[str], Awaitable[list[dict[str, Any]]]],
                      read_started: Callable[[str], Awaitable[set[int]]], found: str | None = None,
                      restarted: Container[str] = ()) -> list[dict[str, Any]]:
    """Settle every open delivery of ``device_id`` from the device's counters (it answers again).

    ``found``: the device's state as this hub found it when it first connected, before it
    sent anything; it is evidence for the deliveries of ``restarted``, the sessions an
    earlier hub left running (:func:`_ran_unheard`). Returns the ``delivery_settled`` data
    of each one settled; one the device still cannot say stays open."""
    done: list[dict[str, Any]] = []
    started_by_session: dict[str, set[int]] = {}
    for row in await read_open(device_id):
        sid = row["session"]
        if sid not in started_by_session:
            started_by_session[sid] = await read_started(sid)
        d = delivery_from_row(row, kind, int(row["id"]) in started_by_session[sid],
                              found if sid in restarted else None)
        delivered = await settle(d, device, StoreSink(store, bus, sid), status="late", late=True)
        if delivered is None and not d.settled:
            break  # the device stopped answering again: the rest waits for the next time
        if delivered is not None:
            done.append({"session": sid, **d.event_data(delivered, True)})
    return done
