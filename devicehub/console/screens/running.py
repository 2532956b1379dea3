"""The session as it runs: the scalp grid, the step and point, delivered against planned,
the devices, the alarms, the event log; the chair's confirmations with one key."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Static

from devicehub.console import render
from devicehub.console.screens.base import HubScreen
from devicehub.console.screens.dialogs import ConfirmDialog


class RunningScreen(HubScreen):
    BINDINGS = [
        Binding("c", "confirm", "Confirm"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("f", "recover", "Recover fault"),
        Binding("a", "ack_alarms", "Ack alarms"),
        Binding("escape", "room", "Room"),
    ]
    DEFAULT_CSS = """
    #grid { width: auto; min-width: 40; margin-right: 2; }
    #side { width: 1fr; height: auto; }
    #upper { height: auto; }
    #log { height: auto; max-height: 14; border: round $secondary; }
    """

    def body(self) -> ComposeResult:
        yield Static(id="head", classes="panel")
        yield Static(id="ask", classes="panel")
        with Horizontal(id="upper"):
            yield Static(id="grid", classes="panel")
            yield Static(id="totals", classes="panel")
        yield Static(id="devices", classes="panel")
        yield Static(id="alarms", classes="panel")
        yield Static(id="log")

    def update_view(self) -> None:
        st = self.hub.state
        self.set("head", render.session_head(st))
        ask = self.query_one("#ask", Static)
        ask.set_class(False, "waiting", "prompt")
        if st.waiting_for:
            ask.add_class("waiting")
            ask.update(Text(f"WAITING FOR THE CHAIR: {st.waiting_for}\nc: confirm here (nothing is energised "
                            "until then)", style="bold magenta"))
        elif st.prompt:
            ask.add_class("prompt")
            ask.update(Text(f"CONFIRM STEP {st.prompt.get('step')}: {st.prompt.get('text')}\nc: confirm",
                            style="bold yellow"))
        elif st.state == "paused" and (st.session or {}).get("recovery"):
            rec = st.session["recovery"]
            ask.add_class("prompt")
            ask.update(Text(f"PAUSED BY A FAULT on {rec.get('device')}: {rec.get('text')} ({rec.get('code')})\n"
                            f"check: {rec.get('hint')}\nf: recover (the device clears its fault), then r: resume",
                            style="bold yellow"))
        elif st.state == "paused":
            ask.add_class("prompt")
            ask.update(Text("PAUSED: every output off. r: resume (asks for confirmation)", style="bold yellow"))
        elif not st.connected:
            ask.update(Text("the hub is lost: the session's state is unknown here", style="bold red"))
        else:
            ask.update("")
        self.set("grid", render.grid(st))
        self.set("totals", render.totals((st.session or {}).get("totals") or {}, st.planned))
        self.set("devices", render.devices(st))
        self.set("alarms", render.alarms(st))
        self.set("log", render.event_log(st))

    def action_confirm(self) -> None:
        st = self.hub.state
        if st.state == "awaiting_confirmation":
            self.hub.act("confirm", session=st.session_id, by=self.hub.by)
        elif st.prompt:
            self.hub.act("prompt_ack", by=self.hub.by)
        else:
            self.notify("nothing waits for a confirmation")

    def action_pause(self) -> None:
        st = self.hub.state
        self.hub.act("pause", session=st.session_id, reason=f"paused at the console by {self.hub.by}")

    def action_resume(self) -> None:
        st = self.hub.state
        if st.state != "paused":
            self.notify(f"the session is {st.state}, not paused")
            return
        sid = st.session_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.hub.act("resume", session=sid, by=self.hub.by)

        self.app.push_screen(ConfirmDialog(f"Resume session {sid}? The devices are energised again "
                                           f"(confirmed by {self.hub.by})."), answered)

    def action_recover(self) -> None:
        st = self.hub.state
        if not (st.state == "paused" and (st.session or {}).get("recovery")):
            self.notify("no fault to recover: the session is not paused by one")
            return
        self.hub.act("recover", session=st.session_id, by=self.hub.by)

    def action_ack_alarms(self) -> None:
        self.hub.act("alarm_ack")

    def action_room(self) -> None:
        self.back_to_room()
