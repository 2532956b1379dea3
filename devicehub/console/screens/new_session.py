"""A new session: the program, the patient, the operator, and the dry run before anything.

Every finding of the dry run is listed: hard ones (and capability errors) in red, the
start impossible; soft ones each acknowledged one by one (Enter on its row), recorded
with who acknowledged it (the operator entered here).
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, OptionList, Static
from textual.widgets.option_list import Option

from devicehub.console import render
from devicehub.console.screens.base import HubScreen


def parse_params(text: str) -> dict[str, dict[str, Any]]:
    """``STEP.PARAM=VALUE`` items, separated by spaces or commas; ValueError naming the bad one."""
    from devicehub.commands.run import parse_params as parse

    return parse([item for item in re.split(r"[\s,]+", text.strip()) if item])


class NewSessionScreen(HubScreen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start (to the checklist)", priority=True),
        Binding("escape", "room", "Back to the room"),
    ]
    DEFAULT_CSS = """
    #picker { height: auto; }
    #programs { width: 44; height: auto; max-height: 40; }
    #form { width: 1fr; height: auto; }
    #findings { height: auto; max-height: 12; }
    Input { width: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.programs: list[dict[str, Any]] = []
        self.program: str | None = None
        self.check: dict[str, Any] | None = None
        self.check_error = ""
        #: soft-limit id -> who acknowledged it
        self.acks: dict[str, str] = {}
        #: the patient of the last dry run
        self.patient = ""
        self._asked = 0
        self._loading = False
        self._loaded = False

    def body(self) -> ComposeResult:
        with Horizontal(id="picker"):
            yield OptionList(id="programs")
            with Vertical(id="form"):
                yield Static("program: (pick one on the left, arrows and Enter)", id="picked", classes="panel")
                yield Input(placeholder="patient reference (a clinic reference, no names)", id="patient")
                yield Input(placeholder="operator (who runs the session)", id="operator")
                yield Input(placeholder="overrides: STEP.PARAM=VALUE ... (optional)", id="params")
                yield Static("findings (Enter on a soft one: acknowledged by the operator)", classes="panel")
                yield DataTable(id="findings", cursor_type="row")
                yield Static(id="error", classes="error")
                yield Button("Start: to the checklist (ctrl+s)", id="start", variant="success", disabled=True)
                yield Static(id="dryrun", classes="panel")

    def on_mount(self) -> None:
        table = self.query_one("#findings", DataTable)
        table.add_columns("severity", "id", "value", "limit", "acknowledged by", "finding")
        self.query_one("#operator", Input).value = self.hub.by
        super().on_mount()  # its first drawing loads the programs

    async def _load_programs(self) -> None:
        try:
            programs = await self.hub.ask("programs")
        finally:
            self._loading = False
        if programs is None:
            return  # not answered: asked again at the next drawing with the hub connected
        self._loaded = True
        ol = self.query_one("#programs", OptionList)
        ol.clear_options()
        for p in programs:
            prompt = Text()
            prompt.append(f"{p.get('title', p['program'])}\n", style="bold")
            prompt.append(f"{p['program']} v{p.get('version')}  ~{float(p.get('est_duration_s') or 0) / 60:.1f} min"
                          f"  {p.get('steps')} steps",
                          style="dim")
            ol.add_option(Option(prompt, id=p["program"]))
        self.programs = programs
        ol.focus()

    # ------------------------------------------------------------------ input
    @on(OptionList.OptionHighlighted, "#programs")
    @on(OptionList.OptionSelected, "#programs")
    def _picked(self, event: Any) -> None:
        if event.option.id != self.program:
            self.program = event.option.id
            self.acks.clear()
            title = next((p.get("title") for p in self.programs if p["program"] == self.program), "")
            self.set("picked", Text.assemble("program: ", (f"{title} ({self.program})", "bold")))
            self.dry_run()
        if isinstance(event, OptionList.OptionSelected):
            self.query_one("#patient", Input).focus()

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        if event.input.id in ("patient", "params"):
            self.dry_run()
        else:
            self.update_view()

    @on(DataTable.RowSelected, "#findings")
    def _acknowledge(self, event: DataTable.RowSelected) -> None:
        fid = str(event.row_key.value)
        finding = next((f for f in (self.check or {}).get("findings", []) if f.get("id") == fid), None)
        if finding is None or finding.get("severity") != "soft":
            self.notify("a hard limit is never acknowledged: the program or its overrides must change",
                        severity="error")
            return
        who = self.query_one("#operator", Input).value.strip()
        if fid in self.acks:
            del self.acks[fid]
        elif not who:
            self.notify("enter the operator first: an acknowledgement names who made it", severity="error")
            return
        else:
            self.acks[fid] = who
        self.dry_run()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    # ------------------------------------------------------------------ the dry run
    def params(self) -> dict[str, dict[str, Any]] | None:
        return parse_params(self.query_one("#params", Input).value) or None

    def dry_run(self) -> None:
        if self.program is None:
            return
        try:
            params = self.params()
        except ValueError as exc:
            self.check, self.check_error = None, str(exc)
            self.update_view()
            return
        self._asked += 1
        self.hub.spawn(self._dry_run(self._asked, self.program, params))

    async def _dry_run(self, n: int, program: str, params: Any) -> None:
        patient = self.query_one("#patient", Input).value.strip()
        fields: dict[str, Any] = {"program": program, "params": params, "acknowledge": sorted(self.acks) or None}
        if patient:
            fields["patient_ref"] = patient
        reply = await self.hub.request("check", **fields)
        if n != self._asked:
            return  # a newer dry run is on its way
        self.patient = patient
        if reply.get("ok"):
            self.check, self.check_error = reply["data"], ""
            soft = {f["id"] for f in self.check.get("findings", []) if f.get("severity") == "soft"}
            for fid in set(self.acks) - soft:
                del self.acks[fid]  # no longer a finding: nothing to acknowledge
        else:
            err = reply.get("error") or {}
            self.check, self.check_error = None, f"{err.get('code')} [{err.get('field', '')}]: {err.get('message')}"
        self.update_view()

    def startable(self) -> bool:
        return bool(self.check and self.check.get("startable") and self.hub.state.connected
                    and self.query_one("#patient", Input).value.strip()
                    and self.query_one("#operator", Input).value.strip())

    def update_view(self) -> None:
        if not self._loaded and not self._loading and self.hub.state.connected:
            self._loading = True  # (also when the hub was away as the screen opened)
            self.hub.spawn(self._load_programs())
        self.set("dryrun", render.dry_run(self.check, self.check_error, self.patient))
        table = self.query_one("#findings", DataTable)
        row = table.cursor_row
        table.clear()
        for f in (self.check or {}).get("findings", []):
            sev = str(f.get("severity"))
            acked = self.acks.get(f["id"], "")
            style = render.finding_style(sev, bool(acked))
            table.add_row(Text(sev.upper(), style=style), Text(f["id"], style=style),
                          f"{f.get('value')} {f.get('unit') or ''}", f"{f.get('limit')} {f.get('unit') or ''}",
                          Text(acked or ("to acknowledge" if sev == "soft" else "start impossible"), style=style),
                          Text(str(f.get("message", "")), style=style), key=f["id"])
        if row is not None and table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        self.query_one("#start", Button).disabled = not self.startable()

    # ------------------------------------------------------------------ actions
    def action_room(self) -> None:
        self.back_to_room()

    def action_start(self) -> None:
        if not self.startable():
            self.notify("not startable yet: pick a program, enter the patient and operator, acknowledge "
                        "each soft limit; a hard limit makes a start impossible", severity="warning")
            return
        self.hub.spawn(self._start())

    async def _start(self) -> None:
        assert self.program is not None
        fields: dict[str, Any] = {
            "program": self.program, "patient_ref": self.query_one("#patient", Input).value.strip(),
            "operator": self.query_one("#operator", Input).value.strip(), "params": self.params(),
            "wait_for_start": True}
        if self.acks:
            fields.update(acknowledge=sorted(self.acks), acknowledged_by=dict(self.acks))
        reply = await self.hub.request("start", **fields)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            where = f" [{err['field']}]" if err.get("field") else ""
            self.set("error", f"start refused ({err.get('code')}){where}: {err.get('message')}")
            return
        self.set("error", "")  # the daemon's session stream takes the console to the checklist
