"""A session's report for the patient file: Markdown rendered from the record alone.

Why from the record alone: the report must say what the record says, nothing the
hub merely believed at the time. It also prints whether the record's hash chain
verifies and the chain's head hash; a printed or filed report is thereby a copy of
the head kept outside the store, which exposes even a rewrite of the whole chain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from devicehub.records.store import RecordStore, SessionNotFound, check_session_id


def _cell(value: Any) -> str:
    """One Markdown table cell: no pipes or line breaks from the data may break the table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_plain(v) for v in value) or "-"
    else:
        text = _plain(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) + "}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _safe_state_devices(data: dict[str, Any]) -> dict[str, Any]:
    devices = data.get("devices")
    if isinstance(devices, dict):
        return devices
    return {k: v for k, v in data.items() if v in ("off", "unconfirmed")}


def render_report(store: RecordStore, session_id: str) -> str:
    """The Markdown report of one session. Raises SessionNotFound for an unknown id."""
    summary = store.session(session_id)
    if summary is None:
        raise SessionNotFound(f"no session {session_id!r} in the record")
    events = store.events(session_id)
    deliveries = store.deliveries(session_id)
    try:
        check = store.verify(session_id)
        if check.ok:
            record = (f"verified: {check.events} events and {check.deliveries} delivery rows; "
                      f"chain head `{check.head}`")
        else:
            record = f"**NOT VERIFIED: {check.message}** (first bad event: {check.first_bad})"
    except Exception as exc:  # a report is still wanted from a damaged store
        record = f"**NOT VERIFIED: {exc}**"
    program = store.recorded_program(session_id) or {}
    title = program.get("title") if isinstance(program, dict) else None

    final = summary["state"]
    if summary["reason"]:
        final += f" ({summary['reason']})"
    out: list[str] = [f"# Treatment session report {summary['session']}", ""]
    out += _table(["", ""], [
        ["Patient ref", summary["patient_ref"]],
        ["Operator", summary["operator"]],
        ["Started from", summary["origin"]],
        ["Program", f"{summary['program']} version {summary['version']}" + (f": {title}" if title else "")],
        ["Program SHA-256", summary["sha256"]],
        ["Created", summary["created_at"]],
        ["Started", summary["started_at"]],
        ["Ended", summary["ended_at"]],
        ["Final state", final],
    ])
    out += ["", f"Record: {record}", "", "Times are UTC.", ""]

    out += ["## Soft limits acknowledged", ""]
    out += [f"- {ack}" for ack in summary["acknowledged"]] or ["None."]
    out += ["", "## Parameter overrides", ""]
    overrides = [[step, name, value] for step, params in (summary["params"] or {}).items()
                 for name, value in (params.items() if isinstance(params, dict) else [("", params)])]
    out += _table(["step", "parameter", "value"], overrides) if overrides else ["None."]

    out += ["", "## Preflight checklist", ""]
    items = [[e["ts"], e["data"].get("item"), e["data"].get("done"), e["data"].get("by")]
             for e in events if e["event"] == "preflight_item"]
    out += _table(["time", "item", "done", "by"], items) if items else ["No checklist items recorded."]

    out += ["", "## Confirmation at the chair", ""]
    confirmations = [f"- confirmed by {_cell(e['data'].get('by'))} at {e['ts']}"
                     for e in events if e["event"] == "confirmed"]
    out += confirmations or ["Not confirmed at the chair."]

    out += ["", "## Timeline", ""]
    out += _table(["time", "state", "reason"], [[s["ts"], s["state"], s.get("reason")] for s in summary["states"]])

    out += ["", "## Steps", ""]
    if summary["steps"]:
        out += _table(["step", "kind", "devices", "points done / planned", "delivered", "started", "done"],
                      [[s["step"], s["kind"], s["devices"], f"{s['points_done']} / {s['points_planned']}",
                        s["totals"] or s["delivered"], s["started_at"], s["done_at"]] for s in summary["steps"]])
    else:
        out += ["No steps recorded."]

    out += ["", "## Deliveries", ""]
    if deliveries:
        zones: dict[Any, list[dict[str, Any]]] = {}
        for d in deliveries:
            zones.setdefault(d["zone"], []).append(d)
        for zone, rows in zones.items():
            out += [f"### Zone {_cell(zone)}", ""]
            out += _table(["step", "point", "device", "planned", "delivered", "status", "time"],
                          [[d["step_id"], d["point"], d["device"], d["planned"], d["delivered"],
                            d["status"] or "IN FLIGHT (no result recorded)", d["result_ts"] or d["intent_ts"]]
                           for d in rows])
            out += [""]
    else:
        out += ["No deliveries recorded.", ""]

    timing = [[d["step_id"], d["zone"], d["point"], d["delivered"].get("timing_error_us"), d["status"]]
              for d in deliveries if isinstance(d["delivered"], dict) and "timing_error_us" in d["delivered"]]
    if timing:  # EP: each train's largest pulse interval error, by the device's own offsets
        out += ["## Pulse timing (electroporation)", ""]
        out += _table(["step", "zone", "point", "timing error us", "status"], timing) + [""]

    out += ["## Totals per device", ""]
    totals = [[device, name, value] for device, values in (summary["totals"] or {}).items()
              for name, value in (values.items() if isinstance(values, dict) else [("", values)])]
    out += _table(["device", "quantity", "total"], totals) if totals else ["Nothing delivered."]

    out += ["", "## Safe state", ""]
    safe = [[e["ts"], e["data"].get("trigger"), e["data"].get("ms"), _safe_state_devices(e["data"])]
            for e in events if e["event"] == "safe_state"]
    out += _table(["time", "trigger", "ms", "devices"], safe) if safe else ["No safe-state events."]

    out += ["", "## Alarms", ""]
    alarms = []
    for e in events:
        if e["event"] == "alarm":
            a = e["data"].get("alarm") if isinstance(e["data"].get("alarm"), dict) else e["data"]
            alarms.append([e["ts"], a.get("priority"), a.get("source"), a.get("code"), a.get("text")])
    out += _table(["time", "priority", "source", "code", "text"], alarms) if alarms else ["No alarms."]

    if summary["in_flight"]:
        out += ["", "## Deliveries with unknown outcome", "",
                "A device was told to deliver these and no result was recorded (e.g. the hub stopped).", ""]
        out += _table(["step", "zone", "point", "device", "planned", "since"],
                      [[d["step_id"], d["zone"], d["point"], d["device"], d["planned"], d["ts"]]
                       for d in summary["in_flight"]])

    out += ["", "## After the session", "",
            "Not part of the device record; for the clinician at follow-up. Mild redness or "
            "sensitivity for 24-48 hours is expected. Record any pain, redness, swelling, bruising "
            "or itching, and any allergic reaction or infection.", ""]
    return "\n".join(out)


def write_report(store: RecordStore, session_id: str, directory: str | os.PathLike[str]) -> Path:
    """Write ``<directory>/<session_id>.md`` (atomically: never a half-written report)."""
    from devicehub.report.files import write_file

    check_session_id(session_id)
    return write_file(render_report(store, session_id), Path(directory) / f"{session_id}.md")
