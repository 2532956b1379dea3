"""The room's active alarms (shared/mqtt-api.md "Alarms").

High: a device fault during output, a watchdog, safe state not confirmed, a dose cap
reached. Medium: a device disconnected while idle, the outbox past 80 % of its bound.
Low: advisories. A latched alarm stays listed until acknowledged at the console; an
unlatched one leaves the list when its cause clears.

An alarm belongs to the session it was raised for (``session``, absent for the room's
own), and a session's record carries it as its ``alarm`` event: ``since`` is when it was
raised for that session. So one cause (``key``) raised again by the same session is the
same alarm, but raised by a later session it is a new alarm of that session (its id, its
``since``): an earlier session's latched alarm, never acknowledged, is not that session's
and stays listed beside it until acknowledged (issue 11). An earlier unlatched one of the
same cause is the same standing cause: the new one takes its place.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from devicehub.bus import Bus
from devicehub.timefmt import rfc3339, utcnow

PRIORITIES = ("high", "medium", "low")
#: device fault codes that mean its watchdog fired (EPG-1 -310; INJ-1, LED-1, PEMF-1 5)
WATCHDOG_CODES = frozenset({"-310", "5"})


@dataclass
class Alarm:
    id: str
    priority: str
    source: str
    code: str
    text: str
    since: str = field(default_factory=lambda: rfc3339(utcnow()))
    latched: bool = False
    session: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["session"] is None:
            del d["session"]
        return d


class AlarmBoard:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        #: (key, session) -> the alarm; one cause is one alarm per session
        self._active: dict[tuple[str, str | None], Alarm] = {}
        self._ids = itertools.count(1)

    def active(self) -> list[dict[str, Any]]:
        order = {p: i for i, p in enumerate(PRIORITIES)}
        return [a.to_dict() for a in sorted(self._active.values(), key=lambda a: (order[a.priority], a.since))]

    def raise_alarm(self, *, priority: str, source: str, code: str, text: str, latched: bool | None = None,
                    session: str | None = None, key: str | None = None) -> Alarm:
        """Raise (or refresh) an alarm; ``key`` de-duplicates one cause (default source/code)
        within one ``session`` (or among the room's own alarms, ``session`` None)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}")
        key = key or f"{source}:{code}"
        if (key, session) in self._active:
            return self._active[(key, session)]
        for k in [k for k, a in self._active.items() if k[0] == key and not a.latched]:
            del self._active[k]  # the same standing cause, now this session's alarm
        alarm = Alarm(id=f"A{next(self._ids)}-{key}", priority=priority, source=source, code=code, text=text,
                      latched=priority == "high" if latched is None else latched, session=session)
        self._active[(key, session)] = alarm
        self._publish()
        return alarm

    def clear(self, key: str) -> None:
        """The cause is gone: an unlatched alarm leaves the list; a latched one stays until acknowledged."""
        gone = [k for k, a in self._active.items() if k[0] == key and not a.latched]
        for k in gone:
            del self._active[k]
        if gone:
            self._publish()

    def acknowledge(self, alarm_id: str | None = None) -> int:
        """Acknowledge one latched alarm (by id) or all; returns how many left the list.

        Only latched alarms leave by acknowledgement: an unlatched one says its cause is
        still there (it leaves by :meth:`clear` when the cause goes)."""
        gone = [k for k, a in self._active.items() if a.latched and (alarm_id is None or a.id == alarm_id)]
        for k in gone:
            del self._active[k]
        if gone:
            self._publish()
        return len(gone)

    def _publish(self) -> None:
        self.bus.emit("alarms", {"alarms": self.active()})
