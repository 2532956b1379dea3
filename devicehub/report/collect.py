"""Everything a report shows, read from the record (never from what the hub believed).

``collect`` returns plain data; the renderers (HTML, Markdown) and the dose map only
lay it out. Times are stored in UTC and shown in the clinic's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from devicehub.records.store import RecordStore, SessionNotFound, parse_ts

_POINT_RE = re.compile(r"-r(\d+)c(\d+)$")
#: what a dose map compares per step kind: (delivered/planned key, planned key in the program step)
DOSE_KEYS = {"injection": ("volume_ul", "dose_ul"), "electroporation": ("pulses", "pulses_per_point")}
#: point states, in legend order
STATES = ("full", "over", "partial", "none", "skipped", "failed")
STATE_LABELS = {
    "full": "delivered 95-105 % of plan", "over": "delivered above 105 % of plan",
    "partial": "delivered 1-95 % of plan", "none": "nothing delivered (not reached)",
    "skipped": "skipped (e.g. impedance out of range)", "failed": "failed or outcome unknown",
}


@dataclass
class ReportOptions:
    """What the report needs beyond the record: the clinic's zone and default advice."""

    timezone: str = "UTC"
    aftercare: list[str] = field(default_factory=list)
    room: str | None = None  # "<site>/<room>" where known

    @classmethod
    def from_config(cls, config: Any) -> "ReportOptions":
        from devicehub.models.config import DEFAULT_AFTERCARE

        if isinstance(config, dict):
            tz, advice = config.get("timezone"), config.get("aftercare")
        else:
            tz, advice = getattr(config, "timezone", None), getattr(config, "aftercare", None)
        try:
            ZoneInfo(str(tz or "UTC"))
        except Exception:  # noqa: BLE001 - a report is still wanted; UTC then
            tz = "UTC"
        if not (isinstance(advice, list) and advice and all(isinstance(a, str) for a in advice)):
            advice = list(DEFAULT_AFTERCARE)
        get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
        room = f"{get('site')}/{get('room')}" if get("site") and get("room") else None
        return cls(timezone=str(tz or "UTC"), aftercare=list(advice), room=room)


def local(ts: str | None, zone: str, *, date_only: bool = False) -> str:
    """An RFC 3339 UTC stamp shown in the clinic's zone: ``2026-11-21 11:00:00 CET``."""
    if not ts:
        return "-"
    try:
        when = parse_ts(ts).astimezone(ZoneInfo(zone))
    except (ValueError, KeyError):
        return ts
    return when.strftime("%Y-%m-%d" if date_only else "%Y-%m-%d %H:%M:%S %Z")


@dataclass
class PointCell:
    zone: str
    point: str
    row: int
    col: int
    planned: float
    delivered: float
    state: str
    text: str


@dataclass
class DoseStep:
    step: str
    kind: str
    quantity: str
    zones: list[dict[str, Any]]  # {id, label, rows, columns}
    cells: list[PointCell]


def point_state(planned: float, delivered: float, statuses: list[str | None], skipped: bool) -> str:
    if skipped or "skipped" in statuses:
        return "skipped"
    if "failed" in statuses or None in statuses:  # None: an intent without a result
        return "failed"
    if not statuses or delivered <= 0:
        return "none"
    ratio = delivered / planned if planned > 0 else 1.0
    if ratio > 1.05:
        return "over"
    return "full" if ratio >= 0.95 else "partial"


def dose_steps(program: dict[str, Any], deliveries: list[dict[str, Any]], events: list[dict[str, Any]]
               ) -> list[DoseStep]:
    """One dose map per treated (injection or electroporation) step, every grid point in it."""
    grid = program.get("grid") or {}
    zones = {z["id"]: z for z in grid.get("zones") or [] if isinstance(z, dict) and "id" in z}
    skipped = {(e["data"].get("step"), e["data"].get("point")) for e in events if e["event"] == "point_skipped"}
    out = []
    for step in program.get("steps") or []:
        kind = step.get("kind")
        if kind not in DOSE_KEYS:
            continue
        key, planned_key = DOSE_KEYS[kind]
        planned = float(step.get(planned_key) or 0)
        rows: dict[str, list[dict[str, Any]]] = {}
        for d in deliveries:
            if d["step_id"] == step["id"]:
                rows.setdefault(str(d["point"]), []).append(d)
        cells = []
        used_zones = []
        for zid in step.get("zones") or []:
            zone = zones.get(zid)
            if zone is None:
                continue
            used_zones.append({"id": zid, "label": zone.get("label") or zid, "rows": zone["rows"],
                               "columns": zone["columns"]})
            for r in range(1, zone["rows"] + 1):
                for c in range(1, zone["columns"] + 1):
                    pid = f"{zid}-r{r}c{c}"
                    found = rows.get(pid, [])
                    got = sum(float((d["delivered"] or {}).get(key) or 0) for d in found)
                    statuses = [d["status"] if d["result_id"] is not None else None for d in found]
                    state = point_state(planned, got, statuses, (step["id"], pid) in skipped)
                    cells.append(PointCell(zid, pid, r, c, planned, got, state, _cell_text(kind, found, got)))
        out.append(DoseStep(step["id"], kind, "volume uL" if kind == "injection" else "pulses (charge uC)",
                            used_zones, cells))
    return out


def _cell_text(kind: str, rows: list[dict[str, Any]], got: float) -> str:
    if not rows:
        return ""
    if kind == "injection":
        depths = [float((d["delivered"] or {}).get("depth_mm") or 0) for d in rows]
        return f"{got:.1f} uL\n{max(depths):.1f} mm"
    charge = sum(float((d["delivered"] or {}).get("charge_uc") or 0) for d in rows)
    return f"{got:.0f} p\n{charge:.0f} uC"


def collect(store: RecordStore, session_id: str, options: ReportOptions | None = None) -> dict[str, Any]:
    """The report's data; SessionNotFound for an unknown id."""
    from devicehub.course.standing import public, standing

    options = options or ReportOptions.from_config({})
    summary = store.session(session_id)
    if summary is None:
        raise SessionNotFound(f"no session {session_id!r} in the record")
    events = store.events(session_id)
    deliveries = store.deliveries(session_id)
    program = store.recorded_program(session_id) or {}
    try:
        check = store.verify(session_id)
        verified = {"ok": check.ok, "events": check.events, "deliveries": check.deliveries, "head": check.head,
                    "message": check.message, "first_bad": check.first_bad}
    except Exception as exc:  # noqa: BLE001 - a report is still wanted from a damaged store
        verified = {"ok": False, "message": str(exc), "events": len(events), "deliveries": None, "head": None,
                    "first_bad": None}
    created = next((e["data"] for e in events if e["event"] == "created"), {})
    try:
        course = public(standing(store, summary["patient_ref"]))
    except Exception:  # noqa: BLE001 - no course table in an older store
        course = None
    advice = program.get("aftercare") if isinstance(program.get("aftercare"), list) else None
    devices = {e["data"].get("step"): (e["data"].get("devices") or [None])[0]
               for e in events if e["event"] == "step_started"}
    planned = planned_totals(program, devices)
    return {
        "summary": summary, "events": events, "deliveries": deliveries, "program": program,
        "verified": verified, "position": created.get("course"), "course": course,
        "adverse": [e for e in events if e["event"] == "adverse_event"],
        "alarms": [e for e in events if e["event"] == "alarm"],
        "preflight": [e for e in events if e["event"] == "preflight_item"],
        "confirmations": [e for e in events if e["event"] == "confirmed"],
        "safe_states": [e for e in events if e["event"] == "safe_state"],
        "aftercare": advice or options.aftercare, "aftercare_from": "program" if advice else "clinic",
        "dose_steps": dose_steps(program, deliveries, events), "planned": planned,
        "zone": options.timezone, "room": options.room, "generated": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def planned_totals(program: dict[str, Any], devices: dict[str, str | None] | None = None
                   ) -> dict[str, dict[str, float]]:
    """What the program plans per device (the step's device as recorded, else its kind):
    uL, pulses, seconds or J/cm2, summed over the device's steps."""
    grid = program.get("grid") or {}
    sizes = {z["id"]: z["rows"] * z["columns"] for z in grid.get("zones") or [] if isinstance(z, dict)}
    out: dict[str, dict[str, float]] = {}
    for step in program.get("steps") or []:
        kind = step.get("kind")
        if kind == "confirm":
            continue
        points = sum(sizes.get(z, 0) for z in step.get("zones") or [])
        key = (devices or {}).get(step.get("id")) or step.get("device") or f"{kind} (step not reached)"
        into = out.setdefault(str(key), {})
        for name, value in _planned(kind, step, points).items():
            into[name] = into.get(name, 0) + value
    return out


def _planned(kind: str, step: dict[str, Any], points: int) -> dict[str, float]:
    if kind == "injection":
        return {"volume_ul": points * float(step.get("dose_ul") or 0)}
    if kind == "electroporation":
        return {"pulses": points * int(step.get("pulses_per_point") or 0)}
    if kind == "led":
        return ({"exposure_s": float(step["duration_s"])} if step.get("duration_s")
                else {"fluence_j_cm2": float(step.get("fluence_j_cm2") or 0)})
    if kind == "pemf":
        return {"field_time_s": float(step.get("duration_s") or 0)}
    return {}
