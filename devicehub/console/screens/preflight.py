"""The checklist: each item ticked by a named person, with its time; the start only
when every item is done (the daemon holds the session in awaiting_confirmation)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Button, DataTable, Input, Static

from devicehub.console import render
from devicehub.console.screens.base import HubScreen


class PreflightScreen(HubScreen):
    BINDINGS = [
        Binding("ctrl+s", "start", "START the session", priority=True),
        Binding("escape", "room", "Room (the session waits)"),
    ]
    DEFAULT_CSS = """
    #items { height: auto; }
    """

    def body(self) -> ComposeResult:
        yield Static(id="head", classes="panel")
        yield Static("ticked by (who checks each item):")
        yield Input(placeholder="ticked by (who checks the item)", id="by")
        yield Static("checklist (Enter on an item: done / not done, by the name above)", classes="panel")
        yield DataTable(id="items", cursor_type="row")
        yield Static(id="verdict", classes="panel")
        yield Button("START (ctrl+s)", id="start", variant="error", disabled=True)
        yield Static("Ctrl+C aborts the session at any moment", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#items", DataTable).add_columns("item", "text", "required", "done", "by", "at")
        st = self.hub.state
        self.query_one("#by", Input).value = (st.session or {}).get("operator") or self.hub.by
        super().on_mount()
        self.query_one("#items", DataTable).focus()

    def items(self) -> list[dict[str, object]]:
        return [i for i in self.hub.state.program.get("preflight", []) if isinstance(i, dict)]

    def all_done(self) -> bool:
        return self.hub.state.state == "awaiting_confirmation"

    def update_view(self) -> None:
        st = self.hub.state
        self.set("head", render.session_head(st))
        table = self.query_one("#items", DataTable)
        row = table.cursor_row
        table.clear()
        pending = set((st.session or {}).get("pending_items") or [])
        for item in self.items():
            iid = str(item.get("id"))
            tick = st.preflight.get(iid)
            done = iid not in pending if tick is None else tick.done
            if st.state == "awaiting_confirmation":
                done = True
            style = "green" if done else "yellow"
            table.add_row(iid, str(item.get("text", "")), "yes" if item.get("required", True) else "no",
                          Text("DONE" if done else "to do", style=style),
                          tick.by if tick else ("(before this console)" if done else ""),
                          tick.ts[11:19] if tick else "", key=iid)
        if row is not None and table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        ready = self.all_done() and st.connected
        self.set("verdict", Text("every item done: START is enabled" if ready else "the start waits for every item",
                                 style="bold green" if ready else "yellow"))
        self.query_one("#start", Button).disabled = not ready

    @on(DataTable.RowSelected, "#items")
    def _tick(self, event: DataTable.RowSelected) -> None:
        st = self.hub.state
        iid = str(event.row_key.value)
        who = self.query_one("#by", Input).value.strip()
        if not who:
            self.notify("enter who ticks the item", severity="error")
            return
        if st.state not in ("created", "preflight"):
            self.notify(f"the session is {st.state}: the checklist is closed", severity="warning")
            return
        tick = st.preflight.get(iid)
        pending = set((st.session or {}).get("pending_items") or [])
        done_now = tick.done if tick else iid not in pending
        self.hub.act("preflight", session=st.session_id, item=iid, done=not done_now, by=who)

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if not (self.all_done() and self.hub.state.connected):
            self.notify("every checklist item must be done first", severity="warning")
            return
        who = self.query_one("#by", Input).value.strip() or self.hub.by
        self.hub.act("confirm", session=self.hub.state.session_id, by=who)

    def action_room(self) -> None:
        self.back_to_room()
