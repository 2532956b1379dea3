"""What the console knows of the room: folded from the daemon's messages, nothing else.

The console decides nothing: every figure here is what the daemon said, and when the
daemon is lost the session is shown as unknown, never as running.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

from devicehub.console_view import SessionView

ENDED = ("completed", "aborted", "failed")
LIVE = ("created", "preflight", "awaiting_confirmation", "running", "paused")


@dataclass
class Tick:
    done: bool
    by: str
    ts: str


@dataclass
class RoomState:
    connected: bool = False
    lost_reason: str = "connecting"
    hub: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    readings: dict[str, dict[str, Any]] = field(default_factory=dict)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    session: dict[str, Any] | None = None
    program: dict[str, Any] = field(default_factory=dict)
    #: the recorded summary of the session (origin, acknowledged, params), asked once per session
    meta: dict[str, Any] = field(default_factory=dict)
    #: the dry run of the session's program with its params: the planned totals
    planned: dict[str, Any] = field(default_factory=dict)
    points: dict[tuple[str, str], str] = field(default_factory=dict)
    preflight: dict[str, Tick] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    #: why the session waits at the chair ("start" or "resume"), from its state event
    await_reason: str = ""
    #: bumped on every change the screens show
    version: int = 0
    #: device telemetry messages received (how busy the stream is)
    telemetry: int = 0
    _last_status: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived
    @property
    def session_id(self) -> str | None:
        return (self.session or {}).get("session")

    @property
    def state(self) -> str:
        """The session's state as the daemon last said, or ``unknown`` while it is lost."""
        if not self.connected:
            return "unknown"
        return (self.session or {}).get("state") or "idle"

    @property
    def live(self) -> bool:
        return self.connected and self.state in LIVE

    @property
    def waiting_for(self) -> str:
        """What waits for the chair's confirmation and who asked, or ""."""
        if self.state != "awaiting_confirmation":
            return ""
        started = (self.session or {}).get("started_at") or self.meta.get("started_at")
        why = self.await_reason or ("resume" if started else "start")
        s = self.session or {}
        if why == "resume":  # only a resume from afar waits for the chair; it names nobody
            return "resume requested from afar (MQTT); every output stays off until confirmed here"
        who = self.meta.get("operator") or s.get("operator") or "?"
        return (f"start requested by {who} (origin {self.meta.get('origin') or '?'}) for patient "
                f"{s.get('patient_ref') or self.meta.get('patient_ref') or '?'}, program {s.get('program') or '?'}")

    @property
    def prompt(self) -> dict[str, Any] | None:
        return (self.session or {}).get("prompt") if self.connected else None

    # ------------------------------------------------------------------ input
    def lost(self, reason: str) -> None:
        self.connected, self.lost_reason = False, reason
        self._last_status = {}
        self.version += 1

    def found(self) -> None:
        self.connected, self.lost_reason = True, ""
        self.version += 1

    def feed(self, kind: str, data: dict[str, Any]) -> bool:
        """Fold one hub message in; True when a new session id appeared."""
        new = False
        if kind == "status":
            if data == self._last_status:
                return False  # the quarter-second ping: nothing new to draw
            self._last_status = data
            self.hub = data.get("hub") or self.hub
            for d in data.get("devices") or []:
                if isinstance(d, dict) and "id" in d:
                    self.devices.setdefault(d["id"], {}).update(d)
            if isinstance(data.get("alarms"), list):
                self.alarms = data["alarms"]
            sess = data.get("session")
            if isinstance(sess, dict) and sess.get("session"):
                new = self._session(sess, partial=True)
        elif kind == "program":
            self.program = data
        elif kind == "session.state":
            new = self._session(data)
        elif kind == "session.event":
            self._event(data)
        elif kind == "device.state":
            self.devices[data.get("id", "?")] = data
        elif kind == "device.telemetry":
            self.readings[data.get("device", "?")] = data
            self.telemetry += 1
            return False  # only the readings changed: ``telemetry`` says so, not ``version``
        elif kind == "alarms":
            alarms = data.get("alarms", [])
            self.alarms = list(alarms) if isinstance(alarms, list) else []
        else:
            return False
        self.version += 1
        return new

    def _session(self, data: dict[str, Any], partial: bool = False) -> bool:
        sid = data.get("session")
        new = sid != self.session_id
        if new:
            self.points.clear()
            self.preflight.clear()
            self.events.clear()
            self.meta, self.planned, self.await_reason = {}, {}, ""
            if partial:  # the status only names it: the stream or the summary fills it in
                self.session = dict(data)
                return True
        if partial:
            if self.session is not None and data.get("state"):
                self.session["state"] = data["state"]
            return new
        self.session = dict(data)
        return new

    def _event(self, data: dict[str, Any]) -> None:
        ev = data.get("event", "?")
        if ev in ("point_done", "point_skipped"):
            self.points[(data.get("step", ""), data.get("point", ""))] = "done" if ev == "point_done" else "skipped"
        elif ev == "preflight_item":
            # when the hub published it (a hub without stream times: when the console heard it)
            ts = str(data.get("ts") or datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self.preflight[str(data.get("item"))] = Tick(bool(data.get("done")), str(data.get("by", "?")), ts)
        elif ev == "state" and data.get("state") == "awaiting_confirmation":
            self.await_reason = data.get("reason") or "start"
        line = SessionView._describe(data)
        if line:
            ts = str(data.get("ts", ""))[11:19]
            self.events.append(f"{ts} {line}" if ts else line)

    def adopt_summary(self, summary: dict[str, Any]) -> None:
        """The recorded summary of the current session: who, from where, what was done so far."""
        self.meta = summary
        if self.session is not None:
            for k in ("patient_ref", "operator", "program"):
                self.session.setdefault(k, summary.get(k))
            if summary.get("state") in ENDED:
                # an end the stream did not carry (it ended while the hub was away, say):
                # the record's word is final, an ended session never changes again
                for k in ("state", "reason", "totals", "started_at", "ended_at"):
                    if summary.get(k) is not None:
                        self.session[k] = summary[k]
                self.session.pop("prompt", None)
        # points a console attached late did not see: the record counts them per step, in order
        for step in summary.get("steps") or []:
            done = int(step.get("points_done") or 0)
            for point in self.point_ids(step.get("step", ""))[:done]:
                self.points.setdefault((step["step"], point), "done")
        self.version += 1

    # ------------------------------------------------------------------ the grid
    def grid_steps(self) -> list[dict[str, Any]]:
        return [st for st in self.program.get("steps", []) if st.get("kind") in ("injection", "electroporation")]

    def zones(self) -> list[dict[str, Any]]:
        return list((self.program.get("grid") or {}).get("zones") or [])

    def point_ids(self, step_id: str) -> list[str]:
        step = next((s for s in self.grid_steps() if s.get("id") == step_id), None)
        if step is None:
            return []
        out = []
        for z in self.zones():
            if z.get("id") in step.get("zones", []):
                out += [f"{z['id']}-r{r}c{c}" for r in range(1, z["rows"] + 1) for c in range(1, z["columns"] + 1)]
        return out

    def point_status(self, step_id: str, point: str) -> str:
        status = self.points.get((step_id, point), "pending")
        live_step = (self.session or {}).get("step") == step_id and self.state in ("running", "paused")
        if status != "pending" or not live_step:
            return status
        first = next((p for p in self.point_ids(step_id) if (step_id, p) not in self.points), None)
        return "current" if first == point else "pending"
