"""One screen per stage of a session; ``SCREENS`` maps a stage's name to its screen."""

from __future__ import annotations

from typing import Any


class _Screens(dict[str, Any]):
    def __missing__(self, name: str) -> Any:
        from devicehub.console.screens.ended import EndedScreen
        from devicehub.console.screens.new_session import NewSessionScreen
        from devicehub.console.screens.preflight import PreflightScreen
        from devicehub.console.screens.room import RoomScreen
        from devicehub.console.screens.running import RunningScreen

        self.update(room=RoomScreen, new=NewSessionScreen, preflight=PreflightScreen, running=RunningScreen,
                    ended=EndedScreen)
        return dict.__getitem__(self, name)


SCREENS = _Screens()
