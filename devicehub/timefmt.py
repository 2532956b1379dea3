"""Times as the hub writes and reads them: one helper for the whole package.

Stored and sent times are RFC 3339 in UTC with microseconds and ``Z``
(``2026-11-21T10:00:00.123456Z``). Incoming ones must carry an offset.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(ts: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: ``2026-11-21T10:00:00.123456Z``."""
    if ts.tzinfo is not timezone.utc:
        if ts.tzinfo is None:
            raise ValueError("naive datetime: an aware time is needed")
        ts = ts.astimezone(timezone.utc)
    if not 1 <= ts.year <= 9999:  # pragma: no cover - isoformat and strftime agree on 4 digits
        raise ValueError("year out of range")
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"  # drops "+00:00"; a third of strftime's cost


_RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time; an offset (``Z`` or ``+hh:mm``) is required.

    Raises ValueError for anything else (a time without offset is ambiguous, so a
    request's ``expires_at`` without one is a bad request, not a guess).
    """
    if not isinstance(text, str) or not _RFC3339_RE.match(text):
        raise ValueError("not an RFC 3339 date-time with offset")
    body = text.upper()
    frac = re.search(r"\.(\d+)", body)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds
        body = body.replace(frac.group(0), "." + frac.group(1)[:6], 1)
    return datetime.fromisoformat(body.replace("Z", "+00:00"))


def parse_ts(text: str) -> datetime:
    """A time the hub wrote itself (the record's ``ts``, ``ended_at``): ISO 8601 with ``Z``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
