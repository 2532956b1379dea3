"""Small questions: a yes/no confirmation, the adverse event form."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static

DIALOG_CSS = """
Vertical#dialog { width: 72; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
Vertical#dialog Horizontal { height: auto; }
Vertical#dialog Button { margin: 1 1 0 0; }
Vertical#dialog OptionList { height: auto; max-height: 9; }
"""


class ConfirmDialog(ModalScreen[bool]):
    """``y`` confirms, ``n`` or Escape does not."""

    DEFAULT_CSS = "ConfirmDialog { align: center middle; }\n" + DIALOG_CSS
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


SEVERITIES = ("mild", "moderate", "severe")
#: the kinds the ``adverse_event`` verb takes (devicehub/clinical/fields.py)
KINDS = ("pain", "redness", "swelling", "bruising", "itching", "allergic_reaction", "infection", "other")


class AdverseEventDialog(ModalScreen["dict[str, Any] | None"]):
    """What happened to the patient: kind, severity, who records it; a score, the onset, a note."""

    DEFAULT_CSS = "AdverseEventDialog { align: center middle; }\n" + DIALOG_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Record", priority=True)]

    def __init__(self, by: str) -> None:
        super().__init__()
        self.by = by

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Adverse event (recorded with the session)")
            yield Label("kind (arrows):")
            yield OptionList(*KINDS, id="kind")
            yield Label("severity (arrows):")
            yield OptionList(*SEVERITIES, id="severity")
            yield Input(value=self.by, placeholder="recorded by", id="by")
            yield Input(placeholder="pain score 0-10, the patient's own (pain only, optional)", id="score")
            yield Input(placeholder="onset, RFC 3339 with offset, e.g. 2026-12-04T14:05:00Z (optional)", id="onset")
            yield Input(placeholder="note (optional)", id="note")
            with Horizontal():
                yield Button("Record (ctrl+s)", id="save", variant="warning")
                yield Button("Cancel (Esc)", id="cancel")

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        kind_at = self.query_one("#kind", OptionList).highlighted
        kind = KINDS[kind_at] if kind_at is not None else ""
        chosen = self.query_one("#severity", OptionList).highlighted
        severity = SEVERITIES[chosen] if chosen is not None else None
        by = self.query_one("#by", Input).value.strip()
        if not kind or not isinstance(severity, str) or not by:
            self.notify("kind, severity and who records it are required", severity="error")
            return
        out: dict[str, Any] = {"kind": kind, "severity": severity, "by": by}
        score = self.query_one("#score", Input).value.strip()
        if score:
            if not score.isdigit() or not 0 <= int(score) <= 10:
                self.notify(f"score: {score!r} is not a whole number from 0 to 10", severity="error")
                return
            if kind != "pain":
                self.notify("score: a pain score goes with kind pain only", severity="error")
                return
            out["score"] = int(score)
        for name in ("onset", "note"):
            value = self.query_one(f"#{name}", Input).value.strip()
            if value:
                out[name] = value
        self.dismiss(out)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
