"""What the record refuses, and the session ids it accepts."""

from __future__ import annotations

import re

from devicehub.ids import new_ulid

#: session ids go into MQTT topics and report file names: no ``/ + #``, no ``..``
_SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RecordError(Exception):
    """A write the record refuses (bad input, a state change after the end, ...)."""


class SessionNotFound(RecordError, LookupError):
    """No session with that id in the record."""


class RecordIntegrityError(RecordError):
    """The store's own bookkeeping disagrees with its rows: it was tampered with."""


def new_session_id(now: float | None = None) -> str:
    """A ULID (26 Crockford base-32 characters): sortable by creation time, unique."""
    return new_ulid(None if now is None else int(now * 1000))


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID_RE.match(session_id):
        raise RecordError(f"session id must be 1-64 letters, digits, '-' or '_': {session_id!r}")
    return session_id
