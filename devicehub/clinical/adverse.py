"""Adverse events (shared/mqtt-api.md, "Adverse events and the course").

An adverse event belongs to one session, in any state, also after it ended: it is
appended to that session's record (its hash chain) and published as the session's
``adverse_event`` event with the next index. The retained session state is not
republished for it.

A ``severe`` event or any ``allergic_reaction`` for a session that has not ended brings
every device to its safe state before anything else (no record write, lock or look-up
first), then the events ``adverse_event``, ``safe_state`` (trigger ``adverse_event``) and,
for a running session, ``paused`` (reason ``adverse_event``). The session then needs a
confirmation at the chair before any output, whatever the room's config.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from devicehub.bus import HubMessage, utcnow
from devicehub.room_api import CommandError
from devicehub.safety import safe_state_all

KINDS = ("pain", "redness", "swelling", "bruising", "itching", "allergic_reaction", "infection", "other")
SEVERITIES = ("mild", "moderate", "severe")
ENDED = ("completed", "aborted", "failed")

def is_urgent(kind: Any, severity: Any) -> bool:
    """Whether such an event brings a session that has not ended to its safe state."""
    return severity == "severe" or kind == "allergic_reaction"


def urgent_payload(body: Any) -> bool:
    """The same judged on a raw request payload (before it is validated)."""
    return isinstance(body, dict) and is_urgent(body.get("kind"), body.get("severity"))


def check_fields(*, kind: Any, severity: Any, by: Any, score: Any = None, onset: Any = None,
                 note: Any = None, now: datetime | None = None) -> None:
    """``bad_request`` naming the field, for every front end alike."""
    if kind not in KINDS:
        raise CommandError("bad_request", f"kind must be one of {', '.join(KINDS)}", field="kind")
    if severity not in SEVERITIES:
        raise CommandError("bad_request", f"severity must be one of {', '.join(SEVERITIES)}", field="severity")
    if not isinstance(by, str) or not by.strip():
        raise CommandError("bad_request", "by (who records it) must be a non-empty string", field="by")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
            raise CommandError("bad_request", "score must be an integer 0-10", field="score")
        if kind != "pain":
            raise CommandError("bad_request", "score is given only with kind pain", field="score")
    if onset is not None:
        when = parse_onset(onset)
        if when > (now or datetime.now(timezone.utc)):
            raise CommandError("bad_request", "onset is in the future", field="onset")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise CommandError("bad_request", "note must be text of at most 1000 characters", field="note")


def parse_onset(onset: Any) -> datetime:
    if not isinstance(onset, str):
        raise CommandError("bad_request", "onset must be an RFC 3339 time", field="onset")
    try:
        from devicehub.mqtt.envelope import parse_rfc3339

        return parse_rfc3339(onset)
    except Exception:  # noqa: BLE001 - any unreadable time is the caller's mistake
        raise CommandError("bad_request", f"onset {onset!r} is not an RFC 3339 time with an offset",
                           field="onset") from None


async def adverse_event(room: Any, *, session: Any, kind: Any, severity: Any, by: Any, score: Any = None,
                        onset: Any = None, note: Any = None, t_trigger: float | None = None) -> dict[str, Any]:
    """Record an adverse event; returns ``{session, index, action}``."""
    t0 = time.monotonic() if t_trigger is None else t_trigger
    runner = room.current if room.current is not None and room.current.session_id == session else None
    live = runner is not None and not runner.finished
    urgent = is_urgent(kind, severity)
    if not isinstance(session, str) or not session:
        raise CommandError("bad_request", "session must be a non-empty string", field="session")
    check_fields(kind=kind, severity=severity, by=by, score=score, onset=onset, note=note)  # no await
    report = None
    if urgent and live and (runner.state != "running" or runner.stopping):
        # not delivering: the room's devices to their safe state first, before any record
        # write or lock (a running session's own stop path does the same, below)
        report = await _safe_state(room, runner, t0)
    if runner is None and not await room.store.exists(session):
        raise CommandError("not_found", f"no session {session!r}", field="session")
    data = {"kind": kind, "severity": severity, "score": score, "onset": onset, "note": note, "by": by,
            "action": "safe_state" if urgent and live else "recorded"}
    if not (urgent and live):
        index = await _record(room, runner, session, data)
        _report_later(room, session)
        return {"session": session, "index": index, "action": data["action"]}

    got: list[int] = []

    async def record_first() -> None:
        got.append(await runner.event("adverse_event", **data))

    if report is None:
        # running: the runner's own stop path (safe state, this event, safe_state, paused)
        await runner.stop_for(trigger="adverse_event", reason="adverse_event", t_trigger=t0,
                              before_record=record_first)
    if not got:  # not running (or it stopped meanwhile): the room was made safe above
        if report is None:
            report = await _safe_state(room, runner, t0)
        await record_first()
        await runner.event("safe_state", **report.event_data())
    runner.chair_confirmation = True  # a confirmation at the chair before any output
    if runner.state in ("created", "preflight"):
        runner.confirmation_required = True
    if report is not None and not report.confirmed:
        bad = [d for d, s in report.devices.items() if s != "off"]
        await runner.record_alarm(runner.raise_alarm(source=",".join(bad), code="safe_state_unconfirmed",
                                                     text=f"safe state not confirmed by {', '.join(bad)}"))
    return {"session": session, "index": got[0], "action": "safe_state"}


async def _safe_state(room: Any, runner: Any, t0: float) -> Any:
    """Every device of the room off (joining a safe state already under way, where the room
    offers that), timed from the event's arrival."""
    now = getattr(room, "safe_state_now", None)
    if callable(now):
        return await now("adverse_event", t0)
    return await safe_state_all(room.devices.devices, "adverse_event", t_trigger=t0,
                                timeout=runner.options.safe_state_timeout_s)


async def _record(room: Any, runner: Any, session: str, data: dict[str, Any]) -> int:
    if runner is not None:
        return await runner.event("adverse_event", **data)
    lock = getattr(room, "_adverse_lock", None)
    if lock is None:
        lock = room._adverse_lock = asyncio.Lock()  # noqa: SLF001 - this module's own attribute
    async with lock:  # one writer, so indices and publication order agree
        ts = utcnow()
        idx = await room.store.append_event(session, "adverse_event", data, ts)
        room.bus.publish(HubMessage("session.event", {"event": "adverse_event", "index": idx, **data},
                                    session=session, ts=ts))
    return idx


def _report_later(room: Any, session: str) -> None:
    """The session's report again, with the event (a finished session's report is filed)."""
    rewrite = getattr(room, "report_later", None)
    if callable(rewrite):
        runner = room.current if room.current is not None and room.current.session_id == session else None
        if runner is None or runner.finished:
            rewrite(session)
