"""Rich renderables of the room's state, for the console's screens (no Textual here)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from devicehub.console.state import RoomState

MARKS = {"done": ("●", "bold green"), "current": ("◉", "bold yellow"), "pending": ("·", "dim"),
         "skipped": ("×", "bold red")}
STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "awaiting_confirmation": "bold magenta",
               "preflight": "bold cyan", "created": "bold cyan", "failed": "bold red", "aborted": "bold red",
               "completed": "bold cyan", "unknown": "bold white on red", "idle": "bold"}


def bar(state: RoomState, by: str, socket: str) -> Text:
    """The line every screen starts with: the room's link and the session's state."""
    if not state.connected:
        t = Text(" LOST THE ROOM ", style="bold white on red")
        t.append(f" the hub is not answering ({state.lost_reason}). Reconnecting to {socket} ... "
                 "Nothing shown is live; the session (if any) is in the hub's hands.", style="bold red")
        return t
    hub = state.hub
    t = Text(" ROOM CONNECTED ", style="bold black on green")
    t.append(f"  hub {hub.get('version', '?')} boot {hub.get('boot', '?')}  ")
    sid = state.session_id
    t.append("session ")
    if sid:
        t.append(f"{sid} ")
        t.append(state.state.upper(), style=STATE_STYLE.get(state.state, "bold"))
    else:
        t.append("none")
    high = [a for a in state.alarms if a.get("priority") == "high"]
    if state.alarms:
        t.append(f"  alarms {len(state.alarms)}", style="bold red" if high else "yellow")
    t.append(f"  at the console: {by}", style="dim")
    return t


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def devices(state: RoomState) -> Table:
    t = Table(title="devices", title_justify="left", expand=True)
    for col in ("device", "connected", "state", "output", "readings"):
        t.add_column(col)
    for dev_id in sorted(set(state.devices) | set(state.readings)):
        d = state.devices.get(dev_id, {})
        r = state.readings.get(dev_id, {})
        readings = ", ".join(f"{k} {_num(v)}" for k, v in (r.get("readings") or {}).items())
        on = r.get("output_on", d.get("output_on"))
        fault = d.get("fault")
        t.add_row(dev_id, Text("yes", style="green") if d.get("connected", True) else Text("NO", style="bold red"),
                  Text(str(r.get("state", d.get("state", "?"))) + (f" ({fault})" if fault else ""),
                       style="red" if fault else ""),
                  Text("ON", style="bold red") if on else Text("off", style="green"), readings)
    return t


def alarms(state: RoomState) -> Any:
    if not state.alarms:
        return Text("no active alarms", style="green")
    t = Table(title="alarms (a: acknowledge)", title_justify="left", expand=True)
    for col in ("priority", "source", "alarm", "acknowledged"):
        t.add_column(col)
    for a in state.alarms:
        pr = str(a.get("priority", "?"))
        t.add_row(Text(pr.upper(), style="bold red" if pr == "high" else "yellow"), str(a.get("source", "")),
                  str(a.get("text", "")), "yes" if a.get("acknowledged") else "no")
    return t


def grid(state: RoomState) -> Any:
    zones, steps = state.zones(), state.grid_steps()
    if not zones or not steps:
        return Text("")
    t = Table()
    t.add_column("step")
    for z in zones:
        t.add_column(str(z["id"]))  # the label can be a sentence; the id is what the points are named by
    for st in steps:
        row: list[Any] = [Text(st["id"], style="bold" if (state.session or {}).get("step") == st["id"] else "")]
        for z in zones:
            if z["id"] not in st.get("zones", []):
                row.append("")
                continue
            lines = []
            for r in range(1, z["rows"] + 1):
                cells = Text()
                for c in range(1, z["columns"] + 1):
                    mark, style = MARKS[state.point_status(st["id"], f"{z['id']}-r{r}c{c}")]
                    cells.append(mark + " ", style=style)
                lines.append(cells)
            row.append(Text("\n").join(lines))
        t.add_row(*row)
    legend = Text("scalp grid  ")
    for name, (mark, style) in MARKS.items():
        legend.append(f"{mark} {name}  ", style=style)
    return Group(legend, t)


def event_log(state: RoomState, n: int = 12) -> Group:
    return Group(Text("event log", style="bold"), *[Text(line) for line in list(state.events)[-n:]])


def totals(delivered: dict[str, dict[str, Any]] | None, planned: dict[str, dict[str, Any]] | None = None,
           title: str = "delivered / planned") -> Table:
    """Per device: what the devices counted (None: no column) beside what was planned (None: no column)."""
    t = Table(title=title, title_justify="left", expand=True)
    t.add_column("device")
    if delivered is not None:
        t.add_column("delivered (the device's own figures)")
    if planned is not None:
        t.add_column("planned (dry run)")
    for dev in sorted(set(delivered or {}) | set(planned or {})):
        row = [dev]
        for figures in (delivered, planned):
            if figures is not None:
                row.append(", ".join(f"{k} {_num(v)}" for k, v in (figures.get(dev) or {}).items()) or "-")
        t.add_row(*row)
    return t


def session_head(state: RoomState) -> Text:
    s = state.session or {}
    t = Text()
    t.append(f"{s.get('program', state.program.get('id', '?'))}", style="bold")
    t.append(f"  session {s.get('session', '-')}  ")
    t.append(state.state.upper(), style=STATE_STYLE.get(state.state, "bold"))
    if s.get("reason"):
        t.append(f" ({s['reason']})")
    t.append(f"\nstep {s.get('step') or '-'}  steps {s.get('steps_done', 0)}/{s.get('steps_total', 0)}"
             f"  points {s.get('points_done', 0)}/{s.get('points_planned', 0)}"
             f"  patient {s.get('patient_ref', '?')}  operator {s.get('operator', '?')}")
    cur = next((p for p in state.point_ids(s.get("step") or "") if state.point_status(s["step"], p) == "current"),
               None) if s.get("step") else None
    if cur:
        t.append(f"  point {cur}", style="bold yellow")
    return t


def finding_style(severity: str, acknowledged: bool) -> str:
    if severity in ("hard", "error"):
        return "bold red"
    return "green" if acknowledged else "bold yellow"


def course_text(course: dict[str, Any]) -> Text:
    """A patient's course (the ``course`` verb): the plan, its phase, sessions, next due window."""
    t = Text(f"course {course.get('course')}", style="cyan")
    if course.get("ended"):
        t.append(f": ended {str(course['ended'])[:10]}" + (f" ({course['ended_reason']})"
                                                             if course.get("ended_reason") else ""))
        return t
    done = [s for s in course.get("sessions") or [] if s.get("state") == "completed"]
    t.append(f": phase {course.get('phase') or '-'}, {len(done)} session(s) completed")
    due = course.get("next_due") or {}
    if due:
        t.append(f"; next session due {str(due.get('from'))[:10]} to {str(due.get('to'))[:10]}")
        if course.get("overdue"):
            t.append(" (OVERDUE)", style="bold red")
    return t


def dry_run(check: dict[str, Any] | None, error: str = "", patient: str = "") -> Any:
    if error:
        return Text(error, style="bold red")
    if not check:
        return Text("pick a program: its dry run shows here", style="dim")
    parts: list[Any] = []
    head = Text()
    head.append(f"{check.get('title', check.get('program'))}", style="bold")
    head.append(f"  v{check.get('version')}  sha256 {str(check.get('sha256', ''))[:12]}"
                f"  indication {check.get('indication') or '-'}"
                f"  about {float(check.get('est_duration_s') or 0) / 60:.1f} min")
    parts.append(head)
    points = points_of(check)
    if points:
        pt = Table(title="points", title_justify="left")
        pt.add_column("step")
        zones = sorted({z for per in points.values() for z in per})
        for z in zones:
            pt.add_column(z)
        for step, per in points.items():
            pt.add_row(step, *[str(per.get(z, "")) for z in zones])
        parts.append(pt)
    parts.append(totals(None, planned_totals(check), title="planned totals per device"))
    course = check.get("course")
    if isinstance(course, dict) and course:
        parts.append(Text("course: " + str(course.get("text") or course), style="bold cyan"))
    elif patient:
        parts.append(Text(f"course: {patient} is not enrolled in a course (devicehub courses enrol)", style="cyan"))
    verdict = Text("startable" if check.get("startable") else "not startable yet",
                   style="bold green" if check.get("startable") else "bold red")
    parts.append(verdict)
    return Group(*parts)


def points_of(check: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{step: {zone: n}} from the dry run (its ``points``, or each step's ``points_per_zone``)."""
    if isinstance(check.get("points"), dict):
        return check["points"]
    return {st["id"]: st["points_per_zone"] for st in check.get("steps") or []
            if isinstance(st, dict) and st.get("points_per_zone")}


def planned_totals(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return check.get("totals") or check.get("totals_per_device") or {}
