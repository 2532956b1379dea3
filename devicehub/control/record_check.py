"""The ``verify`` verb: does a session's record still verify (both hash chains, their head)?

Console only: the technician's ended screen shows it beside the report's path.
"""

from __future__ import annotations

from typing import Any

from devicehub.control import fields as f
from devicehub.control.table import Caller, verb
from devicehub.room_api import CommandError


async def verify_session(room: Any, session_id: str) -> dict[str, Any]:
    """``{session, ok, events, deliveries, first_bad, message}``; not_found for an unknown session."""
    from devicehub.records.store import SessionNotFound

    try:
        result = await room.store.verify(session_id)
    except SessionNotFound:
        raise CommandError("not_found", f"no session {session_id!r}", field="session") from None
    return {"session": session_id, "ok": result.ok, "events": result.events, "deliveries": result.deliveries,
            "first_bad": result.first_bad, "message": result.message}


@verb("verify", console=f.SessionFields, acts=False)
async def verify(room: Any, m: Any, caller: Caller) -> Any:
    """Check the session's record: both hash chains and their head."""
    return await verify_session(room, m.session)
