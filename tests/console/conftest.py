"""The technician's console driven by Textual's pilot against a real daemon and the simulators.

The hub's fixtures (a simulated room, ``devicehub serve`` as a process, Mosquitto) are
those of tests/hub, with the simulators in a process of their own (simulators/devsupport's
``SimulatedRoomProcess``). ``until`` awaits what the screen shows, polling the app between
frames: there is no sleep that orders events.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devicehub.console.app import ConsoleApp
from simulators.devsupport.processes import SimulatedRoomProcess as RoomProcess
from tests.hub.conftest import Setup, hub_in, new_site

SIZE = (150, 52)


@pytest.fixture
async def setup(broker, tmp_path) -> AsyncIterator[Setup]:
    """tests/hub's ``setup`` (a simulated room and its hub, not started yet), the simulators
    in their own process."""
    with RoomProcess(tmp_path / "room", site=new_site(), mqtt_port=broker.port) as sr:
        async with hub_in(sr) as hub:
            yield Setup(sr, hub, broker.port)


def app_for(s: Setup, by: str = "tech-a") -> ConsoleApp:
    return ConsoleApp(s.room.directory / "devicehub.sock", by)


def on_screen(app: ConsoleApp, cls: type) -> bool:
    """The app shows a screen of ``cls``, mounted and drawn."""
    return isinstance(app.screen, cls) and bool(getattr(app.screen, "mounted_view", True))


def screen_text(app: ConsoleApp) -> str:
    """What the screen shows, as text (from Textual's own SVG screenshot)."""
    svg = app.export_screenshot()
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


async def until(pilot: Any, pred: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Let the app run until ``pred()`` is true (the deadline only keeps a broken test from hanging)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            st = pilot.app.state
            raise AssertionError(f"timed out waiting for {what}; connected {st.connected} ({st.lost_reason}), "
                                 f"session {st.session_id} {st.state}, screen {type(pilot.app.screen).__name__}; "
                                 f"refusals {pilot.app.refusals[-3:]}; "
                                 f"the screen shows:\n{screen_text(pilot.app)[-3000:]}")
        await pilot.pause(0.05)


async def until_shown(pilot: Any, text: str, what: str, guard: Callable[[], Any] | None = None,
                      timeout: float = 60.0) -> None:
    """Until the screen shows ``text``. A screenshot costs the process (and the simulators in
    its thread) CPU time, so it is taken only once ``guard()`` holds, and four times a second."""
    deadline = time.monotonic() + timeout
    while True:
        if guard is None or guard():
            if text in screen_text(pilot.app):
                return
            wait = 0.25
        else:
            wait = 0.05
        if time.monotonic() > deadline:
            await until(pilot, lambda: False, f"{what} ({text!r} on screen)", timeout=0)
        await pilot.pause(wait)


async def type_into(pilot: Any, selector: str, text: str) -> None:
    """Click a field and type into it, key by key, as a person would."""
    await pilot.click(selector)
    field = pilot.app.screen.query_one(selector)
    field.value = ""
    await pilot.press(*[_key(c) for c in text])


_KEYS = {".": "full_stop", "=": "equals_sign", "_": "underscore", "-": "minus", " ": "space", ",": "comma"}


def _key(c: str) -> str:
    return _KEYS.get(c, c)


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[ConsoleApp, str], Path]:
    """Save an SVG screenshot of the app's screen (into docs/console when DEVICEHUB_SCREENSHOTS is set)."""
    where = Path(os.environ.get("DEVICEHUB_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)

    def save(app: ConsoleApp, name: str) -> Path:
        return Path(app.save_screenshot(f"{name}.svg", str(where)))

    return save


def recorded_events(room: Any, session: str) -> list[dict[str, Any]]:
    """The session's events as the record holds them (read-only, beside the running hub)."""
    from devicehub.records.store import RecordStore

    store = RecordStore(room.directory / "devicehub.sqlite", readonly=True)
    try:
        return store.events(session)
    finally:
        store.close()
