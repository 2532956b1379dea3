"""The soak's invariants, judged by what the simulators say (their control ``state``) and
by the record, never by what the hub says it did.

1. every stop ends with every output off, within 50 ms of the trigger by the simulators'
   ``output_changed_at``, counting only the outputs that went off at or after it (a
   device the hub could not reach, stalled or cut, is switched off by its own watchdog:
   it must be off, not within 50 ms); a stop the hub started is timed from its own
   trigger, found in the record (``bench/soaklib/triggers.py``);
2. per point, delivered never exceeds planned beyond the device's tolerance, and the
   simulators' delivered totals (after minus before) equal the record's totals;
3. the record verifies and ends in a final state; a hub restart marks the interrupted
   session ``failed`` with ``hub_restart``;
4. (run-wide, in ``Follower.seq_report``) no seq gap per boot, no duplicate after msg_id;
5. (run-wide) the hub's RSS and open file descriptors do not grow.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.soaklib.session import FINAL, Outcome, Room
from bench.soaklib.triggers import last_stop_trigger

SAFE_STATE_S = 0.050
DOSE_TOLERANCE = 0.05  # RunnerOptions.dose_tolerance: the gun's cap allows dose x (1 + tolerance)

#: device -> [(record total name, simulator total name, factor sim -> record, tolerance)]
TOTALS = {
    "epg-1": [("pulses", "pulses", 1.0, 0.0), ("charge_uc", "charge_uC", 1.0, 0.01)],
    "inj-1": [("shots", "shots", 1.0, 0.0), ("volume_ul", "volume_ul", 1.0, 0.05)],
    "led-1": [("exposure_s", "elapsed_s", 1.0, 0.15), ("fluence_j_cm2", "fluence_mj_cm2", 0.001, 0.002)],
    "pemf-1": [("field_time_s", "elapsed_s", 1.0, 0.15), ("field_pulses", "pulses", 1.0, 1.0)],
}


def _changed_after(states: dict[str, dict[str, Any]], t: float, skip: set[str]) -> dict[str, float]:
    return {d: s["output_changed_at"] for d, s in states.items()
            if d not in skip and s.get("output_changed_at") is not None and s["output_changed_at"] >= t}


def invariant_1(out: Outcome, events: list[dict[str, Any]]) -> tuple[list[str], list[float]]:
    """Violations, and the safe-state times measured (ms). ``events``: the session's record.

    Pure: the soak's outcome (its stops, the simulators' states) and the record in, the
    verdict out (tests/soak/test_safe_state_check.py)."""
    bad: list[str] = []
    times: list[float] = []
    skip = set(out.unreachable)
    for d, s in out.after.items():
        if s.get("output_on"):
            bad.append(f"{d} output still on after the session")
    for stop in out.stops:
        if not stop.states:
            continue
        on = [d for d, s in stop.states.items() if s.get("output_on") and d not in skip]
        if on:
            bad.append(f"{stop.kind}: {', '.join(on)} still on when the stop returned")
        changed = _changed_after(stop.states, stop.t_trigger, skip)
        if stop.from_device_clock:  # the faulting device itself went off first: time the others
            changed.pop(stop.kind.split(":")[1], None)
        if changed:
            ms = (max(changed.values()) - stop.t_trigger) * 1000.0
            times.append(ms)
            if ms > SAFE_STATE_S * 1000.0:
                bad.append(f"{stop.kind}: last output off {ms:.1f} ms after the trigger{_hub_says(stop.kind, events)}")
    # a session the hub failed (a fault, a lost link, a limit): timed from the trigger of the
    # stop that ended it, by the record; an output off before it does not count
    soak_stopped = any(s.states and s.kind.startswith("abort") for s in out.stops)
    if out.state == "failed" and not soak_stopped and not out.hub_killed:
        trig = last_stop_trigger(events, session=out.session, wall_minus_mono=out.wall_minus_mono,
                                 states=out.after, injections=out.injections(), steps=out.steps)
        if trig is not None:
            changed = _changed_after(out.after, trig.t, skip)
            if trig.by == "device":
                changed.pop(trig.device or "", None)
            if changed:
                ms = (max(changed.values()) - trig.t) * 1000.0
                times.append(ms)
                if ms > SAFE_STATE_S * 1000.0:
                    last = max(changed, key=lambda d: changed[d])
                    bad.append(f"{trig.what}: last output off ({last}) {ms:.1f} ms after the trigger "
                               f"(by {trig.by})")
    return bad, times


def _hub_says(kind: str, events: list[dict[str, Any]]) -> str:
    """For a stop the soak sent (``pause:mqtt``, ``abort:console``): the hub's own figure
    from the record, from when it read the request, so that a violation shows whether the
    time went before the hub had the request (the soak, the broker, the machine) or after."""
    trigger = kind.split(":")[0]
    own = [e["data"].get("ms") for e in events
           if e.get("event") == "safe_state" and (e.get("data") or {}).get("trigger") == trigger]
    return f" (the hub's own safe_state ms, from its read of the request: {own[-1]})" if own else ""


def invariant_2(out: Outcome, room: Room) -> list[str]:
    bad: list[str] = []
    if out.session is None:
        return bad
    rows = room.read("deliveries", out.session)
    per_point: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    planned: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["step_id"], r["zone"], r["point"], r["device"])
        planned.setdefault(key, r["planned"] or {})  # the first intent plans the whole point
        for k, v in (r["delivered"] or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                per_point[key][k] += v
    for key, got in per_point.items():
        plan = planned.get(key, {})
        if "pulses" in plan and got.get("pulses", 0) > plan["pulses"]:
            bad.append(f"{key}: {got['pulses']:g} pulses delivered, {plan['pulses']} planned")
        if "volume_ul" in plan and got.get("volume_ul", 0) > plan["volume_ul"] * (1 + DOSE_TOLERANCE) + 1e-6:
            bad.append(f"{key}: {got['volume_ul']:g} uL delivered, {plan['volume_ul']} planned")
    summary = room.read("session", out.session) or {}
    totals = summary.get("totals") or {}
    for dev, pairs in TOTALS.items():
        rec = totals.get(dev) or {}
        for rec_name, sim_name, factor, tol in pairs:
            sim = (float(out.after[dev].get(sim_name) or 0) - float(out.before[dev].get(sim_name) or 0)) * factor
            got = float(rec.get(rec_name) or 0)
            if abs(sim - got) > tol + 1e-4 * abs(sim):
                bad.append(f"{dev} {rec_name}: record {got:g}, device {sim:g}")
    return bad


def invariant_2_exposures(out: Outcome) -> list[str]:
    """Invariant 2 for LED-1 and PEMF-1, counted apart: what each emitter delivered in the
    session (its own totals) never beyond the step's plan (no second exposure after a
    pause, a resume, a recovery or a reconnect)."""
    bad: list[str] = []
    if out.session is None:
        return bad
    # LED-1's FLUENCE counter is whole mJ/cm2 and truncates: each run after the first may
    # add what the device had delivered beyond its last whole mJ/cm2 (< 1 mJ/cm2 a resumption)
    resumptions = sum(1 for s in out.stops if s.kind.startswith(("pause:", "fault-pause:")))
    for dev, st_key, planned in _planned_exposures(out):
        got = float(out.after[dev].get(st_key) or 0) - float(out.before[dev].get(st_key) or 0)
        if st_key == "elapsed_s":
            allowed = 0.15  # 0.1 s registers
        else:
            allowed = 0.01 * planned + 1.0 * resumptions  # 1 % light noise; the counter's resolution
        if got > planned + allowed:
            bad.append(f"{dev} delivered {got:g} {st_key}, the program plans {planned:g}")
    return bad


def _planned_exposures(out: Outcome) -> list[tuple[str, str, float]]:
    """(device, simulator total, planned amount) of the session's LED and PEMF steps, from the plan."""
    found = []
    for step in out.steps:
        p = out.params.get(step["id"], {})
        if step["kind"] == "led":
            if "duration_s" in p or "duration_s" in step:
                found.append(("led-1", "elapsed_s", float(p.get("duration_s", step.get("duration_s", 0)))))
            else:
                found.append(("led-1", "fluence_mj_cm2",
                              1000.0 * float(p.get("fluence_j_cm2", step.get("fluence_j_cm2", 0)))))
        elif step["kind"] == "pemf":
            found.append(("pemf-1", "elapsed_s", float(p.get("duration_s", step.get("duration_s", 0)))))
    return found


def invariant_3(out: Outcome, room: Room) -> list[str]:
    if out.session is None:
        return []
    bad: list[str] = []
    check = room.read("verify", out.session)
    if not check.ok:
        bad.append(f"record does not verify: {check.message}")
    if out.state not in FINAL:
        bad.append(f"ended in {out.state}, not a final state")
    if out.interrupted_by_kill and (out.state, out.reason) != ("failed", "hub_restart"):
        bad.append(f"hub restart: ended {out.state} ({out.reason}), not failed (hub_restart)")
    return bad


def resources(samples: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Invariant 5, on the hub process that lives at the end (sampled after each session):
    its RSS within 10 MB of its RSS after its tenth session, and its open descriptors not
    above the most it had open during its first ten (a console connection or a reconnect
    in progress holds one for a moment: a single sample is no baseline)."""
    if not samples:
        return [], {"judged": False}
    last_pid = samples[-1].get("pid")
    mine = [s for s in samples if s.get("pid") == last_pid]
    if len(mine) < 11:
        return [], {"judged": False, "sessions_of_last_hub": len(mine)}
    base, end = mine[9], mine[-1]
    fds_base = max(s["fds"] for s in mine[:10])
    info = {"judged": True, "pid": last_pid, "rss_kb_after_10": base["rss_kb"], "rss_kb_end": end["rss_kb"],
            "fds_max_first_10": fds_base, "fds_end": end["fds"], "sessions_of_last_hub": len(mine)}
    bad = []
    if end["rss_kb"] - base["rss_kb"] > 10 * 1024:
        bad.append(f"RSS grew {(end['rss_kb'] - base['rss_kb']) / 1024:.1f} MB")
    if end["fds"] > fds_base:
        bad.append(f"open fds grew from at most {fds_base} to {end['fds']} "
                   f"(after 10: {base.get('fd_kinds')}; end: {end.get('fd_kinds')})")
    return bad, info
