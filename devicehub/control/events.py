"""The ``events`` verb: a session's recorded events, as they were published.

For a consumer that joined late or found a gap (shared/mqtt-api.md, ``events``): the
events come from the room's record (every event ever appended, an adverse event after
the end included), each the ``data`` object of its ``session.event`` message with the
``ts``, ``boot`` and ``seq`` of that message added.

Where those three come from: when the MQTT front end puts a session event into its
outbox it also writes ``(session, index) -> (boot, seq, ts)`` into the outbox's ledger
(table ``published_events``), in the same SQLite transaction (devicehub/mqtt/outbox.py).
An event the record holds but the ledger does not (a hub killed between appending the
event and queueing it, a window of milliseconds) was never published: it is returned
with the record's ``ts`` and ``boot`` and ``seq`` ``null``, so a consumer can tell.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from devicehub.room_api import CommandError

#: the contract's page bounds
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500

Published = Callable[[str, list[int]], Awaitable[dict[int, tuple[int, int, str]]]]


def _page(store: Any, session: str, after: int, limit: int) -> list[dict[str, Any]] | None:
    """On the record's worker thread: None for an unknown session, else up to ``limit + 1`` events."""
    from devicehub.records.store import RecordError, check_session_id

    try:
        check_session_id(session)
    except RecordError:
        return None
    if not store.exists(session):
        return None
    return store.events(session, after, limit + 1)


async def events(room: Any, *, session: str, after: int = 0, limit: int = DEFAULT_LIMIT,
                 published: Published | None = None) -> dict[str, Any]:
    """``{session, events, more}``: the recorded events of ``session`` with index above ``after``."""
    if not 1 <= limit <= MAX_LIMIT:  # the request model refuses these first; a direct caller too
        raise CommandError("bad_request", f"limit must be 1-{MAX_LIMIT}", field="limit")
    if after < 0:
        raise CommandError("bad_request", "after must be 0 or more", field="after")
    rows = await room.store.call(_page, session, after, limit)
    if rows is None:
        raise CommandError("not_found", f"no session {session!r}", field="session")
    more = len(rows) > limit
    rows = rows[:limit]
    stamps = await published(session, [r["index"] for r in rows]) if published is not None and rows else {}
    out = []
    for r in rows:
        boot, seq, ts = stamps.get(r["index"], (None, None, r["ts"]))
        out.append({**r["data"], "ts": ts, "boot": boot, "seq": seq})
    return {"session": session, "events": out, "more": more}
