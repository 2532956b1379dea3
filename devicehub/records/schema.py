"""The record's SQLite schema: tables, indexes and the triggers that keep it append-only."""

from __future__ import annotations

import sqlite3

from devicehub.records.errors import RecordError

SCHEMA_VERSION = 1

_APPEND_ONLY_TABLES = ("sessions", "events", "deliveries", "refusals")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id            TEXT PRIMARY KEY,
    program_id            TEXT NOT NULL,
    program_version       TEXT NOT NULL,
    program_sha256        TEXT NOT NULL,
    program_json          TEXT NOT NULL,
    patient_ref           TEXT NOT NULL,
    operator              TEXT NOT NULL,
    origin                TEXT NOT NULL,
    params_json           TEXT NOT NULL,
    acknowledgements_json TEXT NOT NULL,
    created_at            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_patient ON sessions(patient_ref, created_at);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL REFERENCES sessions(session_id),
    idx        INTEGER NOT NULL CHECK (idx >= 1),
    ts         TEXT NOT NULL,
    event      TEXT NOT NULL,
    data_json  TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_name ON events(session_id, event, idx);
CREATE TABLE IF NOT EXISTS deliveries (
    id             INTEGER PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(session_id),
    step_id        TEXT NOT NULL,
    zone           TEXT,
    point,
    device         TEXT NOT NULL,
    phase          TEXT NOT NULL CHECK (phase IN ('intent', 'result')),
    intent_id      INTEGER REFERENCES deliveries(id),
    planned_json   TEXT,
    delivered_json TEXT,
    status         TEXT,
    ts             TEXT NOT NULL,
    event_idx      INTEGER,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    CHECK ((phase = 'intent' AND intent_id IS NULL) OR (phase = 'result' AND intent_id IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS deliveries_session ON deliveries(session_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_one_result ON deliveries(intent_id) WHERE intent_id IS NOT NULL;
-- the anchor of both chains of a session (the only row kind that is updated)
CREATE TABLE IF NOT EXISTS heads (
    session_id     TEXT PRIMARY KEY REFERENCES sessions(session_id),
    events         INTEGER NOT NULL,
    event_hash     TEXT NOT NULL,
    deliveries     INTEGER NOT NULL,
    delivery_hash  TEXT NOT NULL
);
-- starts refused for a limit (shared/limits.md: every hard-limit refusal is recorded)
CREATE TABLE IF NOT EXISTS refusals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts           TEXT NOT NULL,
    program_id   TEXT NOT NULL,
    patient_ref  TEXT NOT NULL,
    operator     TEXT NOT NULL,
    origin       TEXT NOT NULL,
    code         TEXT NOT NULL,
    details_json TEXT NOT NULL
);
-- an event index is the next one of its session, never a gap or a rewrite
CREATE TRIGGER IF NOT EXISTS events_in_sequence BEFORE INSERT ON events
WHEN NEW.idx != (SELECT COALESCE(MAX(idx), 0) + 1 FROM events WHERE session_id = NEW.session_id)
BEGIN SELECT RAISE(ABORT, 'event index out of sequence'); END;
"""


def _append_only_triggers() -> str:
    parts = []
    for table in _APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            parts.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} are append-only: {op} refused'); END;"
            )
    return "\n".join(parts)


def _split_sql(script: str) -> list[str]:
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        raise RecordError("incomplete SQL in the schema")
    return statements
