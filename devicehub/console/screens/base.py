"""What every screen shares: the room's bar on top, the keys at the bottom."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Static

from devicehub.console import render

if TYPE_CHECKING:
    from devicehub.console.app import ConsoleApp


class HubScreen(Screen[None]):
    """A screen drawn from the app's :class:`RoomState`; ``body()`` yields its own widgets."""

    @property
    def hub(self) -> "ConsoleApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(id="bar")
        with VerticalScroll(id="body"):
            yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        return iter(())

    mounted_view = False

    def on_mount(self) -> None:
        self.mounted_view = True
        self.refresh_view()

    def refresh_view(self) -> None:
        if not self.mounted_view:
            return  # not mounted yet: its on_mount draws it
        try:
            bar = self.query_one("#bar", Static)
        except NoMatches:
            return
        bar.update(render.bar(self.hub.state, self.hub.by, self.hub.socket))
        self.update_view()

    def update_view(self) -> None:
        """Redraw this screen's own widgets from the state."""

    def refresh_readings(self) -> None:
        """Only the devices' readings changed: redraw the devices panel, if this screen has one."""
        if not self.mounted_view:
            return
        try:
            panel = self.query_one("#devices", Static)
        except NoMatches:
            return
        panel.update(render.devices(self.hub.state))

    def set(self, widget_id: str, content: Any) -> None:
        self.query_one(f"#{widget_id}", Static).update(content)

    def back_to_room(self) -> None:
        self.hub.show("room")
