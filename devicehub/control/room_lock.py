"""One process owns a room: an OS lock on a file beside the room's store.

Whatever opens a room's devices (``devicehub serve``, or ``devicehub run`` with no
daemon) takes the lock first and keeps it for its lifetime. The kernel drops it when the
holder dies, however it dies, so a killed hub never leaves the room locked. The file
holds the holder's pid, command and start time, so a refusal can name it. Readers
(``devicehub sessions``, ``programs check``) never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from devicehub.timefmt import rfc3339, utcnow

#: exit code of a command refused because another process owns the room
EXIT_ROOM_HELD = 5


class RoomHeld(Exception):
    """The room is owned by another process; ``holder`` is what its lock file says."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder or {}
        super().__init__(self.line())

    def line(self) -> str:
        h = self.holder
        who = f"pid {h.get('pid', '?')} ({h.get('command', '?')}) since {h.get('since', '?')}"
        return f"the room is held by {who}; lock {self.path}"


def lock_path(config: Any) -> Path:
    store = Path(config.store)
    return store.with_name(store.name + ".lock")


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RoomLock:
    """``with RoomLock(path):`` or ``acquire()`` / ``release()``; raises :class:`RoomHeld`."""

    def __init__(self, path: str | os.PathLike[str], command: str | None = None) -> None:
        self.path = Path(path)
        self.command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RoomHeld(self.path, read_holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "command": self.command, "since": rfc3339(utcnow())}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the lock

    def __enter__(self) -> "RoomLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
