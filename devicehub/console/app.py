"""The technician's console: a Textual app over the room's daemon.

The daemon decides everything; the app shows what it says and sends the technician's
requests through its command table. Ctrl+C aborts at once from every screen (no
dialog); closing the app never changes a session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from textual import events
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen

from devicehub.console.link import HubLink, HubUnavailable
from devicehub.console.render import planned_totals
from devicehub.console.state import ENDED, RoomState

log = logging.getLogger(__name__)

#: how often the screens redraw from the state (telemetry may arrive far faster)
REFRESH_S = 0.1


class ConsoleApp(App[int]):
    TITLE = "devicehub console"
    CSS = """
    #bar { height: auto; }
    .panel { height: auto; margin: 0 0 1 0; }
    .error { color: red; text-style: bold; height: auto; }
    .waiting { border: heavy magenta; height: auto; padding: 0 1; }
    .prompt { border: heavy yellow; height: auto; padding: 0 1; }
    #log { height: 10; border: round $secondary; }
    """
    BINDINGS = [
        Binding("ctrl+c", "abort", "ABORT", priority=True),
        Binding("ctrl+q", "quit", "Quit console", priority=True, show=False),
    ]

    def __init__(self, socket: str | os.PathLike[str], by: str) -> None:
        super().__init__()
        self.socket = str(socket)
        self.by = by
        self.state = RoomState()
        self.link = HubLink(self.socket, self._hub_message, self._hub_link)
        #: key -> ``time.monotonic()`` when the app took up its last press, and when that
        #: press's event was created (the responsiveness figures)
        self.key_at: dict[str, float] = {}
        self.key_created: dict[str, float] = {}
        self._shown = -1
        self._shown_readings = -1
        self._followed: tuple[str | None, str] = (None, "")
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the daemon's refusals told on screen, newest last
        self.refusals: list[str] = []

    # ------------------------------------------------------------------ lifetime
    def on_mount(self) -> None:
        from devicehub.console.screens.room import RoomScreen

        self.push_screen(RoomScreen())
        self.link.start()
        self.set_interval(REFRESH_S, self._tick)

    async def on_unmount(self) -> None:
        await self.link.close()  # closing the console leaves every session as it is

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            # when the app takes the key up (its creation is event.time: the difference is
            # the queue's wait, the machine's more than the app's)
            self.key_at[event.key] = time.monotonic()
            self.key_created[event.key] = event.time
        await super().on_event(event)

    # ------------------------------------------------------------------ from the daemon
    def _hub_message(self, kind: str, data: dict[str, Any]) -> None:
        new = self.state.feed(kind, data)
        if new and self.state.session_id:
            self.spawn(self._learn_session(self.state.session_id))
        if kind == "session.state":
            self._tick()

    def _hub_link(self, connected: bool, reason: str) -> None:
        if connected:
            self.state.found()
            if self.state.session_id:
                self.spawn(self._learn_session(self.state.session_id))
        else:
            self.state.lost(reason)
        self._tick()

    async def _learn_session(self, sid: str) -> None:
        """The session's record (origin, acknowledgements, params, points done) and its plan."""
        summary = await self.ask("session", session=sid)
        if summary is None or self.state.session_id != sid:
            return
        self.state.adopt_summary(summary)
        if not self.state.program and summary.get("program"):
            prog = await self.ask("program", program=summary["program"])
            if prog is not None and self.state.session_id == sid:
                self.state.program = prog
        check = await self.ask("check", program=summary["program"], params=summary.get("params") or None,
                               acknowledge=summary.get("acknowledged") or None, quiet=True)
        if check is not None and self.state.session_id == sid:
            self.state.planned = planned_totals(check)
        self.state.version += 1

    # ------------------------------------------------------------------ to the daemon
    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("console task failed", exc_info=exc)
            self.notify(f"console error: {type(exc).__name__}: {exc}", severity="error", timeout=10)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """The daemon's reply, or a reply saying the hub is unavailable."""
        try:
            return await self.link.request(op, **fields)
        except HubUnavailable as exc:
            return {"ok": False, "error": {"code": "hub_unavailable", "message": str(exc)}}

    async def ask(self, op: str, quiet: bool = False, **fields: Any) -> Any:
        """The reply's data, or None (told on screen unless ``quiet``)."""
        reply = await self.request(op, **fields)
        if reply.get("ok"):
            return reply.get("data")
        if not quiet:
            self.tell_error(op, reply)
        return None

    def act(self, op: str, **fields: Any) -> None:
        """Send a request now, from a key; a refusal is told on screen."""
        self.spawn(self.ask(op, **fields))

    def tell_error(self, op: str, reply: dict[str, Any]) -> None:
        err = reply.get("error") or {}
        where = f" [{err['field']}]" if err.get("field") else ""
        text = f"{op} refused ({err.get('code')}){where}: {err.get('message')}"
        self.refusals = [*self.refusals[-19:], text]
        self.notify(text, severity="error", timeout=8)

    def action_abort(self) -> None:
        """Ctrl+C: abort at once, no question asked."""
        self.spawn(self._abort())

    async def _abort(self) -> None:
        try:
            data = (await self.link.abort(f"aborted at the console by {self.by}")).get("data") or {}
            self.notify(f"ABORTED: every output off ({data.get('safe_state_ms', '?')} ms); "
                        f"session {data.get('session') or '-'} {data.get('state', '')}", severity="warning")
        except HubUnavailable as exc:
            text = f"ABORT NOT DELIVERED: {exc}. Use the room's emergency stop."
            self.refusals = [*self.refusals[-19:], text]
            self.notify(text, severity="error", timeout=30)

    # ------------------------------------------------------------------ screens
    def _tick(self) -> None:
        self._follow()
        if self.state.version != self._shown:
            self._shown, self._shown_readings = self.state.version, self.state.telemetry
            refresh = getattr(self.screen, "refresh_view", None)
            if refresh is not None:
                refresh()
        elif self.state.telemetry != self._shown_readings:
            # telemetry alone: redraw only the readings (the whole screen costs more CPU time)
            self._shown_readings = self.state.telemetry
            readings = getattr(self.screen, "refresh_readings", None)
            if readings is not None:
                readings()

    def stage(self) -> str:
        """Which screen the session belongs on: preflight, running, ended or '' (none)."""
        st = self.state
        s = st.state
        if s in ("created", "preflight"):
            return "preflight"
        if s == "awaiting_confirmation":
            started = (st.session or {}).get("started_at") or st.meta.get("started_at")
            return "preflight" if st.meta.get("origin") == "console" and not started else "running"
        if s in ("running", "paused"):
            return "running"
        if s in ENDED:
            return "ended"
        return ""

    def _follow(self) -> None:
        """Go to the screen of the session's stage when it changes (never on a lost link)."""
        if not self.state.connected:
            return
        target = (self.state.session_id, self.stage())
        if target == self._followed:
            return
        previous, self._followed = self._followed, target
        if not target[1]:
            return
        if target[1] == "ended" and previous[0] != target[0]:
            return  # an ended session met on attaching: the room screen shows it as the last one
        self.show(target[1])

    def show(self, name: str) -> None:
        from devicehub.console.screens import SCREENS

        while isinstance(self.screen, ModalScreen):
            self.pop_screen()
        current = type(self.screen).__name__
        screen = SCREENS[name]()
        if current == type(screen).__name__ and name != "new":
            return
        self.switch_screen(screen)
        self._shown = -1

    def responsiveness(self, key: str, op: str) -> float | None:
        """Seconds the app took from taking up the key to its request leaving for the daemon."""
        if key not in self.key_at or op not in self.link.sent_at:
            return None
        return self.link.sent_at[op] - self.key_at[key]

    def key_wait(self, key: str) -> float | None:
        """Seconds the key's event waited before the app took it up."""
        if key not in self.key_at or key not in self.key_created:
            return None
        return self.key_at[key] - self.key_created[key]


def run(socket: str, by: str) -> int:
    app = ConsoleApp(socket, by)
    app.run()
    return 0 if app.return_code in (None, 0) else int(app.return_code)

