"""The room: every device, the active alarms, the session now or the last one. Nothing
energised from here."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from devicehub.console import render
from devicehub.console.screens.base import HubScreen


class RoomScreen(HubScreen):
    BINDINGS = [
        Binding("n", "new", "New session"),
        Binding("s", "session", "Session"),
        Binding("a", "ack_alarms", "Acknowledge alarms"),
        Binding("f", "clear_faults", "Clear device faults"),
        Binding("q", "app.quit", "Quit console"),
    ]

    def body(self) -> ComposeResult:
        yield Static(id="devices", classes="panel")
        yield Static(id="alarms", classes="panel")
        yield Static(id="session", classes="panel")

    def update_view(self) -> None:
        st = self.hub.state
        self.set("devices", render.devices(st))
        self.set("alarms", render.alarms(st))
        sid = st.session_id
        if not sid:
            text = Text("no session yet in this room (n: new session)", style="dim")
        elif st.live:
            text = Text(f"session {sid} is {st.state}: s shows it", style="bold")
        else:
            s = st.session or {}
            text = Text(f"last session {sid}: {st.state}" + (f" ({s['reason']})" if s.get("reason") else "")
                        + f", program {s.get('program', '?')}, patient {s.get('patient_ref', '?')}"
                        + " (s: its result, n: new session)")
        self.set("session", text)

    def action_new(self) -> None:
        if self.hub.state.live:
            self.notify(f"session {self.hub.state.session_id} is {self.hub.state.state}: one at a time")
            return
        self.hub.show("new")

    def action_session(self) -> None:
        stage = self.hub.stage()
        if stage:
            self.hub.show(stage)

    def action_ack_alarms(self) -> None:
        self.hub.act("alarm_ack")

    def action_clear_faults(self) -> None:
        """Ask the daemon to clear each device's fault (it decides whether the cause is gone)."""
        faulted = [d for d, info in self.hub.state.devices.items() if info.get("fault")]
        if not faulted:
            self.notify("no device is in fault")
        for dev in faulted:
            self.hub.spawn(self._clear(dev))

    async def _clear(self, dev: str) -> None:
        """The device's own clear command; a device that still reports its fault says so."""
        data = await self.hub.ask("clear_fault", device=dev, by=self.hub.by)
        if data is not None and not data.get("cleared", True):
            self.hub.tell_error("clear_fault", {"error": {
                "code": "invalid_state", "field": "device",
                "message": f"{dev} still reports fault {data.get('fault')} ({data.get('fault_text')}): "
                           "the cause is still there"}})
