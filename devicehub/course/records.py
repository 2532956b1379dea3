"""Course enrolments in the hub's record store: append-only and hash-chained.

Why here and like this: an enrolment decides which start is "too soon" for a patient,
so it is evidence like a session. Its rows (``enrolled`` and ``ended``) live in the
session store's SQLite file, in their own table, never updated or deleted (triggers),
each hashed over the previous row of the same patient from a genesis hash of the
patient ref. The session tables and their canonical JSON are untouched, so stored
session chains still verify.

The functions take a :class:`devicehub.records.store.RecordStore` and run where it
lives (the hub calls them through ``AsyncRecordStore.call`` on the record's thread).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any

from devicehub.records.store import RecordError, RecordStore, _sha256, canonical_json, format_ts

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS course_records (
        id          INTEGER PRIMARY KEY,
        patient_ref TEXT NOT NULL,
        ts          TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('enrolled', 'ended')),
        data_json   TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS course_records_patient ON course_records(patient_ref, id)",
    "CREATE TRIGGER IF NOT EXISTS course_records_no_update BEFORE UPDATE ON course_records "
    "BEGIN SELECT RAISE(ABORT, 'course_records are append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS course_records_no_delete BEFORE DELETE ON course_records "
    "BEGIN SELECT RAISE(ABORT, 'course_records are append-only: DELETE refused'); END",
)


def _genesis(patient_ref: str) -> str:
    return _sha256(canonical_json(["course", patient_ref]))


def _row_hash(prev: str, row: dict[str, Any]) -> str:
    return _sha256(prev + canonical_json([row["id"], row["patient_ref"], row["ts"], row["kind"],
                                          json.loads(row["data_json"])]))


def _conn(store: RecordStore) -> sqlite3.Connection:
    return store._conn  # noqa: SLF001 - the same package's store, its one connection


def _has_table(store: RecordStore) -> bool:
    row = _conn(store).execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'course_records'"
                               ).fetchone()
    return row is not None


def ensure_schema(store: RecordStore) -> None:
    if store.readonly or _has_table(store):
        return
    with store._transaction() as c:  # noqa: SLF001
        for statement in _SCHEMA:
            c.execute(statement)


def append(store: RecordStore, patient_ref: str, kind: str, data: dict[str, Any],
           ts: datetime | None = None) -> dict[str, Any]:
    """Append one row (``enrolled`` or ``ended``) to the patient's chain; returns it."""
    ensure_schema(store)
    stamp = format_ts(ts or datetime.now(timezone.utc))
    data_json = canonical_json(data)
    with store._transaction() as c:  # noqa: SLF001
        last = c.execute("SELECT hash FROM course_records WHERE patient_ref = ? ORDER BY id DESC LIMIT 1",
                         (patient_ref,)).fetchone()
        prev = last[0] if last else _genesis(patient_ref)
        row_id = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM course_records").fetchone()[0]
        row = {"id": row_id, "patient_ref": patient_ref, "ts": stamp, "kind": kind, "data_json": data_json}
        digest = _row_hash(prev, row)
        c.execute("INSERT INTO course_records(id, patient_ref, ts, kind, data_json, prev_hash, hash) "
                  "VALUES (?,?,?,?,?,?,?)", (row_id, patient_ref, stamp, kind, data_json, prev, digest))
    return {**row, "data": data, "hash": digest}


def rows(store: RecordStore, patient_ref: str) -> list[dict[str, Any]]:
    if not _has_table(store):
        return []
    out = []
    for r in _conn(store).execute("SELECT * FROM course_records WHERE patient_ref = ? ORDER BY id",
                                  (patient_ref,)):
        out.append({"id": r["id"], "patient_ref": r["patient_ref"], "ts": r["ts"], "kind": r["kind"],
                    "data": json.loads(r["data_json"]), "prev_hash": r["prev_hash"], "hash": r["hash"]})
    return out


def patients(store: RecordStore) -> list[str]:
    if not _has_table(store):
        return []
    return [r[0] for r in _conn(store).execute("SELECT DISTINCT patient_ref FROM course_records ORDER BY patient_ref")]


def verify(store: RecordStore, patient_ref: str) -> tuple[bool, str]:
    """Check the patient's course chain: (ok, message)."""
    prev = _genesis(patient_ref)
    found = rows(store, patient_ref)
    for r in found:
        if r["prev_hash"] != prev:
            return False, f"course record {r['id']}: link to the previous record broken"
        row = {"id": r["id"], "patient_ref": r["patient_ref"], "ts": r["ts"], "kind": r["kind"],
               "data_json": canonical_json(r["data"])}
        if _row_hash(prev, row) != r["hash"]:
            return False, f"course record {r['id']} was changed after it was recorded"
        prev = r["hash"]
    return True, f"ok: {len(found)} course records verify"


def latest(store: RecordStore, patient_ref: str) -> dict[str, Any] | None:
    """The patient's latest course as recorded: {course, plan, plan_sha256, enrolled, by,
    ended, ended_by, ended_reason} or None if never enrolled."""
    current: dict[str, Any] | None = None
    for r in rows(store, patient_ref):
        if r["kind"] == "enrolled":
            current = {"course": r["data"]["course"], "plan": r["data"].get("plan"),
                       "plan_sha256": r["data"].get("plan_sha256"), "enrolled": r["ts"], "by": r["data"].get("by"),
                       "ended": None, "ended_by": None, "ended_reason": None}
        elif r["kind"] == "ended" and current is not None and current["ended"] is None:
            current.update(ended=r["data"].get("at") or r["ts"], ended_by=r["data"].get("by"),
                           ended_reason=r["data"].get("reason"))
    return current


def patient_sessions(store: RecordStore, patient_ref: str) -> list[dict[str, Any]]:
    """Every session of the patient, oldest first: {session, program, state, created,
    ended, delivered (bool), course (the created event's course or None)}."""
    from devicehub.records.store import _fold_states  # noqa: PLC0415 - the record's own derivation

    c = _conn(store)
    out = []
    for r in c.execute("SELECT session_id, program_id, created_at FROM sessions WHERE patient_ref = ? "
                       "ORDER BY created_at, session_id", (str(patient_ref),)):
        sid = r["session_id"]
        folded = _fold_states(store._state_rows(sid))  # noqa: SLF001
        delivered = any(_some_amount(json.loads(d[0])) for d in c.execute(
            "SELECT delivered_json FROM deliveries WHERE session_id = ? AND phase = 'result' "
            "AND delivered_json IS NOT NULL", (sid,)))
        created = c.execute("SELECT data_json FROM events WHERE session_id = ? AND event = 'created' "
                            "ORDER BY idx LIMIT 1", (sid,)).fetchone()
        course = json.loads(created[0]).get("course") if created else None
        totals = folded["totals"] or {}
        if not delivered and isinstance(totals, dict):
            delivered = any(_some_amount(v) for v in totals.values())
        out.append({"session": sid, "program": r["program_id"], "state": folded["state"],
                    "created": r["created_at"], "ended": folded["ended_at"], "delivered": delivered,
                    "course": course})
    return out


#: delivered figures that are amounts (not settings, depths or peaks)
AMOUNTS = ("volume_ul", "shots", "pulses", "charge_uc", "energy_mj", "fluence_j_cm2", "exposure_s", "field_time_s")


def _some_amount(values: Any) -> bool:
    return isinstance(values, dict) and any(
        isinstance(values.get(k), (int, float)) and values[k] > 0 for k in AMOUNTS)


def check_writable(store: RecordStore) -> None:
    if store.readonly:
        raise RecordError("record store opened read-only")
