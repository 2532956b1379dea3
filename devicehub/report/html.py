"""The session report as one self-contained HTML page, printable on A4.

Self-contained: the styles are inline and the dose maps are PNG data URIs, so the file
opens anywhere, offline, and fetches nothing. Every value from the record is escaped.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from devicehub.report import dosemap
from devicehub.report.collect import STATE_LABELS, local

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; font-size: 10.5pt; color: #1b1b1b;
       max-width: 186mm; margin: 0 auto; padding: 8px; line-height: 1.35; }
h1 { font-size: 16pt; margin: 0 0 2px 0; }
h2 { font-size: 12pt; margin: 16px 0 6px 0; border-bottom: 1.5px solid #2c3e50; padding-bottom: 2px;
     color: #2c3e50; break-after: avoid; }
h3 { font-size: 10.5pt; margin: 10px 0 4px 0; }
.sub { color: #555; margin: 0 0 10px 0; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px 0; break-inside: auto; }
th, td { border: 1px solid #c8ced3; padding: 3px 6px; text-align: left; vertical-align: top; font-size: 9.5pt; }
th { background: #eef1f4; }
tr { break-inside: avoid; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
table.kv th { width: 32%; }
.mono { font-family: "DejaVu Sans Mono", monospace; font-size: 8.5pt; word-break: break-all; }
.ok { color: #1e7e34; font-weight: bold; }
.bad { color: #b02a1e; font-weight: bold; }
.none { color: #666; font-style: italic; }
figure { margin: 6px 0 12px 0; break-inside: avoid; }
figure img { width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { font-size: 8.5pt; color: #555; }
ul.advice li { margin: 2px 0; }
.due { font-size: 11.5pt; font-weight: bold; }
.verify { margin-top: 14px; padding: 6px 8px; border: 1px solid #c8ced3; background: #f7f9fa; font-size: 9pt; }
"""


#: decimals a recorded quantity is shown with: its unit's resolution at the device
#: (shared/icd: 0.1 uL, whole mJ/cm2 = 0.001 J/cm2, 0.1 s), not the float's digits
DECIMALS = {"volume_ul": 1, "shots": 0, "pulses": 0, "field_pulses": 0, "charge_uc": 3, "energy_mj": 3,
            "fluence_j_cm2": 3, "exposure_s": 1, "field_time_s": 1}


def amount(quantity: str, value: Any) -> Any:
    """``value`` of ``quantity`` as the report shows it: 0.049999 J/cm2 is 0.050."""
    places = DECIMALS.get(quantity)
    if places is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return f"{value:.{places}f}"


def _e(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-")
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(_plain(v) for v in value) or "-")
    return html.escape(str(value))


def _plain(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[Any]], *, num: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in num else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _none(text: str) -> str:
    return f'<p class="none">{html.escape(text)}</p>'


def render(data: dict[str, Any]) -> str:
    s, zone = data["summary"], data["zone"]
    t = lambda ts: local(ts, zone)  # noqa: E731
    title = data["program"].get("title") if isinstance(data["program"], dict) else None
    final = s["state"] + (f" ({s['reason']})" if s.get("reason") else "")
    pos = data["position"]
    position = (f"{pos['course']}: phase {pos['phase']}, session {pos['number']}" if isinstance(pos, dict)
                else "not in a course")
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>Session report {html.escape(s['session'])}</title><style>{CSS}</style></head><body>",
           "<h1>Treatment session report</h1>",
           f'<p class="sub">Session <span class="mono">{html.escape(s["session"])}</span> &middot; times in '
           f"{html.escape(zone)}</p>"]
    out.append('<table class="kv"><tbody>' + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in (
        ("Patient ref", _e(s["patient_ref"])), ("Operator", _e(s["operator"])), ("Room", _e(data.get("room"))),
        ("Program", _e(f"{s['program']} version {s['version']}" + (f" - {title}" if title else ""))),
        ("Program SHA-256", f'<span class="mono">{_e(s["sha256"])}</span>'),
        ("Course position", _e(position)), ("Started from", _e(s["origin"])), ("Created", _e(t(s["created_at"]))),
        ("Started", _e(t(s["started_at"]))), ("Ended", _e(t(s["ended_at"]))), ("Final state", _e(final)),
    )) + "</tbody></table>")

    out.append("<h2>Dose maps</h2>")
    if not data["dose_steps"]:
        out.append(_none("This program treats no grid points (no injection or electroporation step)."))
    for step in data["dose_steps"]:
        uri = "data:image/png;base64," + base64.b64encode(dosemap.png(step)).decode("ascii")
        counts = {}
        for c in step.cells:
            counts[c.state] = counts.get(c.state, 0) + 1
        caption = "; ".join(f"{n} {STATE_LABELS[k]}" for k, n in counts.items())
        out.append(f'<figure><img alt="dose map of step {html.escape(step.step)}" src="{uri}">'
                   f"<figcaption>{html.escape(step.step)}: {html.escape(caption)}</figcaption></figure>")

    out.append("<h2>Planned and delivered per device</h2>")
    rows = []
    totals = s.get("totals") or {}
    for dev in sorted(set(totals) | set(data["planned"])):
        planned, got = data["planned"].get(dev, {}), totals.get(dev, {}) if isinstance(totals.get(dev), dict) else {}
        for q in sorted(set(planned) | set(got)):
            rows.append([dev, q, amount(q, planned.get(q)), amount(q, got.get(q))])
    out.append(_table(["device", "quantity", "planned", "delivered (device read-back)"], rows, num=(2, 3))
               if rows else _none("Nothing planned or delivered."))

    timing = [[d["step_id"], d["zone"], d["point"], d["delivered"].get("timing_error_us"), d["status"]]
              for d in data["deliveries"] if isinstance(d.get("delivered"), dict)
              and "timing_error_us" in d["delivered"]]
    if timing:  # EP: each train's largest pulse interval error, by the EPG-1's own offsets
        out.append("<h2>Pulse timing (electroporation)</h2>")
        out.append(_table(["step", "zone", "point", "timing error (us)", "status"], timing, num=(3,)))

    out.append("<h2>Timeline</h2>")
    out.append(_table(["time", "what", "details"], timeline(data, t)))
    if data["safe_states"]:
        out.append("<h3>Safe state</h3>")
        out.append(_table(["time", "trigger", "ms", "devices"],
                          [[t(e["ts"]), e["data"].get("trigger"), e["data"].get("ms"), e["data"].get("devices")]
                           for e in data["safe_states"]], num=(2,)))

    out.append("<h2>Preflight checklist</h2>")
    out.append(_table(["time", "item", "done", "by"], [[t(e["ts"]), e["data"].get("item"),
                                                       "yes" if e["data"].get("done") else "no", e["data"].get("by")]
                                                      for e in data["preflight"]])
               if data["preflight"] else _none("No checklist items recorded."))
    if data["confirmations"]:
        out.append("<p>Confirmed at the chair: " + "; ".join(
            f"{_e(e['data'].get('by'))} at {_e(t(e['ts']))}" for e in data["confirmations"]) + "</p>")

    out.append("<h2>Soft limits acknowledged</h2>")
    by = next((e["data"].get("acknowledged_by") for e in data["events"] if e["event"] == "created"), None) or {}
    out.append("<ul>" + "".join(f"<li>{_e(a)}" + (f" (by {_e(by[a])})" if a in by else "") + "</li>"
                                for a in s["acknowledged"]) + "</ul>"
               if s["acknowledged"] else _none("None."))

    out.append("<h2>Alarms</h2>")
    out.append(_table(["time", "priority", "source", "code", "text"],
                      [[t(e["ts"]), e["data"].get("priority"), e["data"].get("source"), e["data"].get("code"),
                        e["data"].get("text")] for e in data["alarms"]]) if data["alarms"] else _none("No alarms."))

    out.append("<h2>Adverse events</h2>")
    out.append(_table(["recorded", "kind", "severity", "pain score", "onset", "note", "by", "action"],
                      [[t(e["ts"]), e["data"].get("kind"), e["data"].get("severity"), e["data"].get("score"),
                        t(e["data"].get("onset")) if e["data"].get("onset") else None, e["data"].get("note"),
                        e["data"].get("by"), e["data"].get("action")] for e in data["adverse"]])
               if data["adverse"] else _none("No adverse event recorded."))

    out.append("<h2>Aftercare</h2>")
    source = "this program's advice" if data["aftercare_from"] == "program" else "the clinic's advice"
    out.append(f'<p class="sub">From {source}.</p><ul class="advice">'
               + "".join(f"<li>{_e(a)}</li>" for a in data["aftercare"]) + "</ul>")

    out.append("<h2>Next session</h2>")
    out.append(f'<p class="due">{_e(next_window(data))}</p>')

    v = data["verified"]
    if v["ok"]:
        line = (f'<span class="ok">Record verified</span>: {v["events"]} events and {v["deliveries"]} delivery rows; '
                f'chain head <span class="mono">{_e(v["head"])}</span>')
    else:
        line = f'<span class="bad">RECORD NOT VERIFIED</span>: {_e(v["message"])}'
    out.append(f'<div class="verify">{line}. Report generated {_e(data["generated"])}.</div>')
    out.append("</body></html>\n")
    return "\n".join(out)


#: events the timeline shows, and the members of each worth a reader's eye
TIMELINE = {"state": ("state", "reason"), "confirmed": ("by",), "step_started": ("step", "devices"),
            "step_done": ("step", "totals"), "prompt_acknowledged": ("step", "by"), "safe_state": ("trigger", "ms"),
            "alarm": ("priority", "code", "text"), "recovered": ("device", "by"), "adverse_event": ("kind", "severity"),
            "delivery_settled": ("device", "late"), "paused": ("reason",)}


def timeline(data: dict[str, Any], t: Any) -> list[list[Any]]:
    """The session's states (as the record derives them) and its notable events, in time order."""
    rows: list[tuple[str, int, list[Any]]] = []
    paused_events = any(e["event"] == "paused" for e in data["events"])
    for n, st in enumerate(data["summary"]["states"]):
        if st["state"] == "paused" and paused_events:
            continue  # the paused event says it, with its reason
        rows.append((st["ts"], n, [t(st["ts"]), st["state"], {"reason": st["reason"]} if st.get("reason") else None]))
    for e in data["events"]:
        keys = TIMELINE.get(e["event"])
        if keys is None or e["event"] == "state":
            continue
        details = {k: e["data"][k] for k in keys if e["data"].get(k) is not None}
        rows.append((e["ts"], 10_000 + e["index"], [t(e["ts"]), e["event"].replace("_", " "), details or None]))
    return [r for _ts, _n, r in sorted(rows, key=lambda x: (x[0], x[1]))]


def next_window(data: dict[str, Any]) -> str:
    """The next session window in words, from the patient's course (or "no course")."""
    course, zone = data.get("course"), data["zone"]
    if not course:
        return "No course: the patient is not enrolled in a course at this hub."
    if course["ended"]:
        return f"Course {course['course']} ended {local(course['ended'], zone, date_only=True)} " \
               f"({course['ended_reason'] or 'ended'}): no further session planned."
    due = course.get("next_due")
    if not due:
        return f"Course {course['course']}, phase {course['phase']}: the next session may be booked now."
    text = (f"Course {course['course']}, phase {course['phase']}: between {local(due['from'], zone, date_only=True)} "
            f"and {local(due['to'], zone, date_only=True)}")
    return text + (" (overdue)" if course.get("overdue") else "")
