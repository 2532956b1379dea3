"""The technician's live view of a session (rich), or plain lines when not on a terminal.

It is fed hub messages — ``(kind, data)`` pairs as the bus carries them, in process
(``devicehub run``) or streamed from the hub daemon (``devicehub console``) — and never
talks to devices: it observes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, TextIO

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

MARKS = {"done": ("●", "green"), "active": ("◉", "bold yellow"), "pending": ("·", "dim"), "skipped": ("×", "red")}


class SessionView:
    def __init__(self, program: dict[str, Any] | None = None, *, console: Console | None = None,
                 plain: bool | None = None, out: TextIO | None = None) -> None:
        self.console = console or Console(file=out)
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.program = program or {}
        self.session: dict[str, Any] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.readings: dict[str, dict[str, Any]] = {}
        self.alarms: list[dict[str, Any]] = []
        self.events: deque[str] = deque(maxlen=8)
        self.points: dict[tuple[str, str], str] = {}  # (step, point) -> status
        self.active_point: dict[str, str] = {}  # step -> point
        self.prompt: dict[str, Any] | None = None
        self.started = time.monotonic()

    # ------------------------------------------------------------------ input
    def feed(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "session.state":
            if self.plain and (data.get("state"), data.get("session")) != (self.session.get("state"),
                                                                        self.session.get("session")):
                self.console.print(f"session {data.get('session')} {data.get('state')}"
                                   + (f" ({data['reason']})" if data.get("reason") else ""), highlight=False)
            self.session = data
            self.prompt = data.get("prompt")
        elif kind == "session.event":
            self._on_event(data)
        elif kind == "device.state":
            self.devices[data.get("id", "?")] = data
        elif kind == "device.telemetry":
            self.readings[data.get("device", "?")] = data
        elif kind == "alarms":
            self.alarms = list(data.get("alarms", data) if isinstance(data, dict) else data)

    def _on_event(self, data: dict[str, Any]) -> None:
        ev = data.get("event", "?")
        if ev == "point_done":
            self.points[(data.get("step", ""), data.get("point", ""))] = "done"
        elif ev == "point_skipped":
            self.points[(data.get("step", ""), data.get("point", ""))] = "skipped"
        line = self._describe(data)
        if line is None:
            return
        self.events.append(line)
        if self.plain:
            self.console.print(line, highlight=False, soft_wrap=True)

    @staticmethod
    def _describe(data: dict[str, Any]) -> str | None:
        ev = data.get("event", "?")
        idx = data.get("index", "")
        if ev == "state":
            return f"[{idx}] state -> {data.get('state')}" + (f" ({data['reason']})" if data.get("reason") else "")
        if ev == "point_done":
            d = data.get("delivered", {})
            what = ", ".join(f"{k} {v}" for k, v in d.items())
            return f"[{idx}] {data.get('step')} {data.get('point')} on {data.get('device')}: {what}"
        if ev == "train_done":
            return (f"[{idx}] train {data.get('point')}: {data.get('pulses')} pulses, {data.get('charge_uC')} uC, "
                    f"timing error {data.get('timing_error_us')} us")
        if ev == "exposure_progress":
            rest = {k: v for k, v in data.items() if k not in ("event", "index", "ts", "step", "device")}
            return f"[{idx}] {data.get('step')} on {data.get('device')}: " + ", ".join(f"{k} {v}" for k, v in rest.items())
        if ev == "safe_state":
            devs = ", ".join(f"{k} {v}" for k, v in data.get("devices", {}).items())
            return f"[{idx}] SAFE STATE ({data.get('trigger')}) in {data.get('ms')} ms: {devs}"
        if ev in ("completed", "aborted", "failed"):
            return f"[{idx}] {ev.upper()}" + (f": {data['reason']}" if data.get("reason") else "")
        rest = {k: v for k, v in data.items() if k not in ("event", "index", "ts")}
        return f"[{idx}] {ev}" + (" " + ", ".join(f"{k}={v}" for k, v in rest.items()) if rest else "")

    # ------------------------------------------------------------------ rendering
    def render(self) -> Any:
        s = self.session
        head = Text()
        head.append(f"{s.get('program', self.program.get('id', '?'))}", style="bold")
        head.append(f"  session {s.get('session', '?')}  ")
        state = s.get("state", "?")
        head.append(state.upper(), style={"running": "bold green", "paused": "bold yellow", "failed": "bold red",
                                          "aborted": "bold red", "completed": "bold cyan"}.get(state, "bold"))
        head.append(f"  step {s.get('step') or '-'}  points {s.get('points_done', 0)}/{s.get('points_planned', 0)}"
                    f"  patient {s.get('patient_ref', '?')}  operator {s.get('operator', '?')}")
        parts: list[Any] = [head]
        if self.prompt:
            parts.append(Panel(Text(self.prompt.get("text", ""), style="bold"), title="confirm at the chair",
                               border_style="yellow"))
        parts.append(self._zone_map())
        parts.append(self._device_table())
        parts.append(self._totals_table())
        if self.alarms:
            t = Table(title="alarms", show_header=False, box=None)
            for a in self.alarms:
                t.add_row(Text(a.get("priority", "?").upper(), style="bold red" if a.get("priority") == "high" else "yellow"),
                          a.get("source", ""), a.get("text", ""))
            parts.append(t)
        parts.append(Panel("\n".join(self.events) or "-", title="events", border_style="dim"))
        return Group(*parts)

    def _zone_map(self) -> Any:
        grid = self.program.get("grid") or {}
        zones = grid.get("zones") or []
        steps = [st for st in self.program.get("steps", []) if st.get("kind") in ("injection", "electroporation")]
        if not zones or not steps:
            return Text("")
        table = Table(title="scalp grid", caption="● done  ◉ current  · pending  × skipped", box=None,
                      show_header=True, min_width=48)
        table.add_column("step")
        for z in zones:
            table.add_column(z["id"])
        current_step = self.session.get("step")
        for st in steps:
            row = [st["id"]]
            for z in zones:
                if z["id"] not in st.get("zones", []):
                    row.append("")
                    continue
                lines = []
                first_pending = True
                for r in range(1, z["rows"] + 1):
                    cells = Text()
                    for c in range(1, z["columns"] + 1):
                        status = self.points.get((st["id"], f"{z['id']}-r{r}c{c}"), "pending")
                        if status == "pending" and current_step == st["id"] and first_pending:
                            status, first_pending = "active", False
                        mark, style = MARKS[status]
                        cells.append(mark + " ", style=style)
                    lines.append(cells)
                row.append(Text("\n").join(lines))
            table.add_row(*row)
        return table

    def _device_table(self) -> Any:
        t = Table(title="devices", box=None)
        for col in ("device", "connected", "state", "output", "readings"):
            t.add_column(col)
        for dev_id in sorted(set(self.devices) | set(self.readings)):
            d = self.devices.get(dev_id, {})
            r = self.readings.get(dev_id, {})
            readings = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in (r.get("readings") or {}).items())
            on = r.get("output_on", d.get("output_on"))
            t.add_row(dev_id, "yes" if d.get("connected", True) else Text("NO", style="red"),
                      str(r.get("state", d.get("state", "?"))), Text("ON", style="bold red") if on else "off",
                      readings)
        return t

    def _totals_table(self) -> Any:
        totals = self.session.get("totals") or {}
        t = Table(title="delivered", box=None)
        t.add_column("device")
        t.add_column("totals")
        for dev, vals in totals.items():
            t.add_row(dev, ", ".join(f"{k} {v:.4g}" for k, v in vals.items()))
        return t
