"""The session's end: the result, the totals, the record's verification, the report, and
a key to record an adverse event."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from devicehub.console import render
from devicehub.console.screens.base import HubScreen
from devicehub.console.screens.dialogs import AdverseEventDialog

RESULT_STYLE = {"completed": "bold green", "aborted": "bold red", "failed": "bold red"}


class EndedScreen(HubScreen):
    BINDINGS = [
        Binding("e", "adverse", "Adverse event"),
        Binding("n", "new", "New session"),
        Binding("escape", "room", "Room"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summary: dict[str, Any] = {}
        self.verified: dict[str, Any] | None = None
        self.report: str = ""
        self.recorded: list[str] = []
        self.history: dict[str, Any] | None = None

    def body(self) -> ComposeResult:
        yield Static(id="result", classes="panel")
        yield Static(id="totals", classes="panel")
        yield Static(id="record", classes="panel")
        yield Static(id="alarms", classes="panel")
        yield Static(id="grid", classes="panel")
        yield Static(id="log", classes="panel")

    def on_mount(self) -> None:
        super().on_mount()
        sid = self.hub.state.session_id
        if sid:
            self.hub.spawn(self._learn(sid))

    async def _learn(self, sid: str) -> None:
        self.summary = await self.hub.ask("session", session=sid) or {}
        self.verified = await self.hub.ask("verify", session=sid, quiet=True)
        report = await self.hub.ask("report", session=sid, quiet=True) or {}
        self.report = str(report.get("path") or "")
        if self.summary.get("patient_ref"):  # not_found (never enrolled): no course to show
            self.history = await self.hub.ask("course", quiet=True, patient_ref=self.summary["patient_ref"])
        self.refresh_view()

    def update_view(self) -> None:
        st = self.hub.state
        s = {**(st.session or {}), **self.summary}
        state = s.get("state", st.state)
        head = Text()
        head.append(f"session {s.get('session', '-')}  ")
        head.append(str(state).upper(), style=RESULT_STYLE.get(str(state), "bold"))
        if s.get("reason"):
            head.append(f"  reason: {s['reason']}")
        head.append(f"\nprogram {s.get('program')} v{s.get('version', '?')}  patient {s.get('patient_ref')}"
                    f"  operator {s.get('operator')}  origin {s.get('origin', '?')}"
                    f"\nstarted {s.get('started_at') or '-'}  ended {s.get('ended_at') or '-'}")
        self.set("result", head)
        self.set("totals", render.totals(s.get("totals") or {}, st.planned or None, title="totals (the devices' own)"))
        lines: list[Any] = []
        v = self.verified
        if v is None:
            lines.append(Text("record: verifying ...", style="dim"))
        else:
            lines.append(Text(f"record: {'VERIFIES' if v.get('ok') else 'DOES NOT VERIFY'}: {v.get('message')}",
                              style="bold green" if v.get("ok") else "bold white on red"))
        lines.append(Text(f"report: {self.report or '(being written)'}"))
        lines.append(Text(f"record it all: devicehub sessions show {s.get('session')}", style="dim"))
        if self.history:
            lines.append(render.course_text(self.history))
        lines += [Text(f"adverse event recorded: {r}", style="yellow") for r in self.recorded]
        lines.append(Text("e: record an adverse event   n: new session   Esc: room", style="bold"))
        self.set("record", Group(*lines))
        self.set("alarms", render.alarms(st))
        self.set("grid", render.grid(st))
        self.set("log", render.event_log(st, 8))

    def action_adverse(self) -> None:
        sid = self.hub.state.session_id
        if not sid:
            return

        def recorded(form: dict[str, Any] | None) -> None:
            if form:
                self.hub.spawn(self._record(sid, form))

        self.app.push_screen(AdverseEventDialog(self.hub.by), recorded)

    async def _record(self, sid: str, form: dict[str, Any]) -> None:
        reply = await self.hub.request("adverse_event", session=sid, **form)
        if reply.get("ok"):
            self.recorded.append(f"{form['kind']} ({form['severity']}) by {form['by']}")
            self.notify("adverse event recorded")
        else:
            self.hub.tell_error("adverse_event", reply)
        self.refresh_view()

    def action_new(self) -> None:
        self.hub.show("new")

    def action_room(self) -> None:
        self.back_to_room()
