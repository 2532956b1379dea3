"""The room: its devices, its program library, its limits, its record, and at most one session.

Every front end (the console's ``devicehub run``, the hub daemon's MQTT interface and
local console socket) goes through this one object, so a start is checked the same way
wherever it comes from, in the order shared/mqtt-api.md gives: unknown_program,
hard_limit, soft_limit, busy, outbox_full, device_unavailable.

:class:`Room` is assembled here from one module per part: ``lifetime.py`` (opening and
closing), ``starting.py`` (the start checks and the start), ``supervision.py`` (a
session watched to its end, its report), ``verbs.py`` (the session verbs) and
``safe_state.py`` (the safe state and the abort).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from devicehub import __version__
from devicehub.alarms import AlarmBoard
from devicehub.bus import Bus
from devicehub.devices import DeviceManager
from devicehub.room.lifetime import RoomLifetime
from devicehub.room.safe_state import RoomSafeState
from devicehub.room.starting import SESSION_CAPS, STOPPING_WAIT_S, RoomStarting  # noqa: F401 - re-exported
from devicehub.room.supervision import RoomSupervision
from devicehub.room.verbs import RoomVerbs
from devicehub.room_api import CommandError
from devicehub.runner.session import RunnerOptions, SessionRunner
from devicehub.safety import SafeStateReport
from devicehub.safety_watch import RuntimeLimitWatch
from devicehub.timefmt import rfc3339, utcnow

log = logging.getLogger(__name__)


class Room(RoomLifetime, RoomStarting, RoomSupervision, RoomVerbs, RoomSafeState):
    def __init__(
        self,
        config: Any,
        *,
        store: Any,
        limits: Any | None = None,
        bus: Bus | None = None,
        options: RunnerOptions | None = None,
        boot: int = 0,
        admission_checks: list[Callable[[], CommandError | None]] | None = None,
    ) -> None:
        from devicehub.models.limits import Limits
        from devicehub.programs_library import ProgramLibrary

        self.config = config
        self.store = store
        self.bus = bus or Bus()
        self.alarms = AlarmBoard(self.bus)
        self.limits = limits or Limits.load(config.limits)
        self.library = ProgramLibrary(config.programs)
        self.options = dataclasses.replace(options or RunnerOptions(),
                                           max_recoveries=getattr(config, "max_recoveries", 3))
        if self.options.pulse_timing is None:  # EP trains are held to the clinic's pulse-timing limit
            self.options = dataclasses.replace(self.options, pulse_timing=self.limits.electroporation.pulse_timing_error_us)
        self.boot = boot
        self.since = rfc3339(utcnow())
        self.admission_checks = list(admission_checks or [])
        self.devices = DeviceManager(config, self.bus, self.alarms)
        self.devices.telemetry_hooks.append(RuntimeLimitWatch(self))
        self.current: SessionRunner | None = None
        self._last: SessionRunner | None = None
        self._start_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        #: the sessions an earlier hub left unfinished, found when this one opened (late settlement)
        self.restarted_sessions: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._recorded_last: dict[str, Any] | None = None
        #: grows by one the moment an abort arrives: a start under way when it did stops there
        self._abort_epoch = 0
        #: the safe state being reached now (joined by every trigger that arrives meanwhile)
        self._off: asyncio.Future[tuple[SafeStateReport, float]] | None = None
        self._off_for = -1.0  # the trigger time it was started for
        self.reports_dir = Path(config.store).parent / "reports"
        #: which kind of process owns the room: "serve" (the daemon) or "run" (one session, no daemon)
        self.owner: str | None = None
        #: the MQTT front end's ledger of published session events (None without MQTT):
        #: ``await published_events(session, indices) -> {index: (boot, seq, ts)}``
        self.published_events: Callable[[str, list[int]], Awaitable[dict[int, Any]]] | None = None
        #: session id -> where its report was written
        self.reports: dict[str, Path] = {}
        #: reports are written one at a time, in order (the newest record wins)
        self._report_lock = asyncio.Lock()
        self._report_tasks: set[asyncio.Task[Any]] = set()

    # ================================================================== queries
    def programs(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.library.list(config=self.config, limits=self.limits):
            if getattr(entry, "error", None):
                continue
            out.append({"program": entry.id, "version": entry.version, "title": entry.title, "sha256": entry.sha256,
                        "steps": entry.steps, "est_duration_s": round(entry.est_duration_s, 1),
                        "preflight": list(entry.preflight), "soft_limits": list(entry.soft_limits)})
        return out

    def program(self, program_id: str) -> dict[str, Any]:
        program, _sha, _raw = self._get_program(program_id)
        return program.to_json()

    def _get_program(self, program_id: str) -> tuple[Any, str, bytes]:
        if not isinstance(program_id, str) or not program_id:
            raise CommandError("bad_request", "program must be a non-empty string", field="program")
        try:
            return self.library.get(program_id)
        except KeyError:
            raise CommandError("unknown_program", f"no program {program_id!r} in the library",
                               field="program") from None
        except Exception as exc:  # an unreadable program file is not startable
            raise CommandError("unknown_program", f"program {program_id!r} cannot be read: {exc}",
                               field="program") from None

    def status(self) -> dict[str, Any]:
        sess = self.current or self._last
        return {
            "hub": {"version": __version__, "boot": self.boot, "since": self.since,
                    **({"owner": self.owner} if self.owner else {})},
            "devices": [{k: d[k] for k in ("id", "type", "connected", "state", "fault")} for d in self.devices.describe()],
            "session": {"session": sess.session_id, "state": sess.state} if sess is not None else None,
            "alarms": self.alarms.active(),
        }

    def session_summary(self, session_id: str) -> dict[str, Any]:
        if not isinstance(session_id, str) or not session_id:
            raise CommandError("bad_request", "session must be a non-empty string", field="session")
        summary = self.store.read_session(session_id)
        if summary is None:
            raise CommandError("not_found", f"no session {session_id!r}", field="session")
        return summary

    @property
    def starting(self) -> bool:
        """A start is being checked or its session created right now."""
        return self._start_lock.locked()

    def active_session(self) -> SessionRunner | None:
        return self.current if self.current is not None and not self.current.finished else None

    def republish(self) -> None:
        """Every retained state again (the ``rebirth`` verb)."""
        self.devices.republish()
        sess = self.current or self._last
        if sess is not None:
            sess.publish_state()
        elif self._recorded_last is not None:  # a session of an earlier boot
            self.bus.emit("session.state", self._recorded_last, session=self._recorded_last["session"])
        self.bus.emit("alarms", {"alarms": self.alarms.active()})
