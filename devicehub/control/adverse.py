"""The ``adverse_event`` verb (console only): what happened to the patient, appended to
the session's record (a hash-chained event, published like every other).

A minimal version so the technician's console can record one from its ended screen;
the treatment-course work (issue 10) may define the verb more fully, and then this
module gives way to it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from devicehub.bus import HubMessage, utcnow
from devicehub.control.fields import Fields, Id, Name, Text
from devicehub.control.table import Caller, verb
from devicehub.room_api import CommandError


class AdverseEventFields(Fields):
    session: Id
    kind: Name
    severity: Literal["mild", "moderate", "severe"]
    by: Name
    score: int | None = Field(None, ge=0, le=10, description="the patient's own score, 0-10, when asked")
    onset: Text | None = Field(None, description="when it began (free text or RFC 3339)")
    note: Text | None = None


async def record_adverse_event(room: Any, session_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Append ``adverse_event`` to the session's record; ``{session, index}``."""
    runner = room.current
    if runner is not None and runner.session_id == session_id:
        index = await runner.event("adverse_event", **data)  # in order with the runner's own events
        return {"session": session_id, "index": index}
    if room.store.read_session(session_id) is None:
        raise CommandError("not_found", f"no session {session_id!r}", field="session")
    ts = utcnow()
    index = await room.store.append_event(session_id, "adverse_event", data, ts)
    room.bus.publish(HubMessage("session.event", {"event": "adverse_event", "index": index, **data},
                                session=session_id, ts=ts))
    return {"session": session_id, "index": index}


@verb("adverse_event", console=AdverseEventFields)
async def adverse_event(room: Any, m: Any, caller: Caller) -> Any:
    """Record an adverse event with the session: kind, severity, who, and optionally score, onset, note."""
    data = m.model_dump(exclude={"session"}, exclude_none=True)
    return await record_adverse_event(room, m.session, data)
