"""The session record: what ran, for whom, by whom, and what each device delivered.

Append-only, crash-safe and tamper-evident (see store.py and docs/records.md).
"""

from devicehub.records.store import (
    STATES,
    TERMINAL_STATES,
    RecordError,
    RecordIntegrityError,
    RecordStore,
    SessionNotFound,
    VerifyResult,
    canonical_json,
    new_session_id,
)

__all__ = [
    "STATES",
    "TERMINAL_STATES",
    "RecordError",
    "RecordIntegrityError",
    "RecordStore",
    "SessionNotFound",
    "VerifyResult",
    "canonical_json",
    "new_session_id",
]
