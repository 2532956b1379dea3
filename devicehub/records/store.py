"""The session record: an append-only, crash-safe, tamper-evident SQLite store.

Why it is built this way:

* **Append-only.** A treatment record is evidence. Rows of ``sessions``, ``events``,
  ``deliveries`` and ``refusals`` are never changed or removed; SQLite triggers abort any
  UPDATE or DELETE. A session's state, end time, reason and totals are *derived* from
  its events (the last state-changing event), never written in place.
* **Crash-safe.** WAL journal with ``synchronous=FULL``: when a write method returns,
  the row is on disk and survives a process kill or a power loss. Every write is its
  own transaction, so a crash leaves either the whole row or nothing.
* **Tamper-evident.** Each session's events form a SHA-256 hash chain that starts at a
  hash of the session row; its deliveries form a second chain from the same start. A
  ``heads`` table holds the last index and hash of both chains, so a removed tail is
  found as well as a changed, removed or reordered row. (Someone who rewrites the whole
  chain *and* the head can only be caught by a copy of the head kept elsewhere: the
  session report prints it.)

One :class:`RecordStore` owns one connection and is used from one thread only; the hub
uses it through :class:`devicehub.records.async_store.AsyncRecordStore`, which keeps it
on a worker thread. The rules for deriving a session's state are in docs/records.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devicehub.ids import new_ulid
from devicehub.timefmt import parse_ts, rfc3339  # noqa: F401 - parse_ts re-exported

SCHEMA_VERSION = 1

#: every state of shared/mqtt-api.md "Session states"
STATES = ("created", "preflight", "awaiting_confirmation", "running", "paused",
          "completed", "aborted", "failed")
TERMINAL_STATES = ("completed", "aborted", "failed")
#: the event that carries a state change in ``data.state``
STATE_EVENT = "state"
#: events whose name is itself the (terminal) state they set
TERMINAL_EVENTS = TERMINAL_STATES
STATE_CHANGING_EVENTS = (STATE_EVENT, *TERMINAL_EVENTS)
#: the other events a session summary reads (start time, per-step results)
SUMMARY_EVENTS = ("started", "step_started", "step_done", "delivery_settled")
#: delivery statuses the runner is expected to use; ``done`` counts as a point done
DELIVERY_DONE = "done"

#: session ids go into MQTT topics and report file names: no ``/ + #``, no ``..``
_SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

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


class RecordError(Exception):
    """A write the record refuses (bad input, a state change after the end, ...)."""


class SessionNotFound(RecordError, LookupError):
    """No session with that id in the record."""


class RecordIntegrityError(RecordError):
    """The store's own bookkeeping disagrees with its rows: it was tampered with."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`RecordStore.verify`.

    ``first_bad`` is the first event index that does not verify (a changed, missing or
    misplaced event); ``first_bad_delivery`` the same for the delivery rows (their id).
    ``head`` is the event chain's last hash: kept elsewhere (the printed report), it
    also exposes a rewrite of the whole chain.
    """

    ok: bool
    events: int
    first_bad: int | None
    message: str
    deliveries: int = 0
    first_bad_delivery: int | None = None
    head: str | None = None


# ---------------------------------------------------------------- helpers


def canonical_json(value: Any) -> str:
    """The one JSON spelling hashed and stored: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default)


def _to_json(value: Any, what: str) -> str:
    """canonical_json for a caller's value; what cannot be recorded is a RecordError."""
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{what} cannot be recorded as JSON: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable in a record: {type(value).__name__}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def format_ts(ts: datetime) -> str:
    """RFC 3339, UTC, microseconds (``2026-11-21T10:00:00.123456Z``), as on the wire."""
    if ts.tzinfo is None:
        raise RecordError("timestamps in the record must be timezone-aware")
    return rfc3339(ts)


def new_session_id(now: float | None = None) -> str:
    """A ULID (26 Crockford base-32 characters): sortable by creation time, unique."""
    return new_ulid(None if now is None else int(now * 1000))


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _SESSION_ID_RE.match(session_id):
        raise RecordError(f"session id must be 1-64 letters, digits, '-' or '_': {session_id!r}")
    return session_id


def _genesis(row: sqlite3.Row) -> str:
    """Start of both chains of a session: the hash of its row exactly as stored."""
    return _sha256(canonical_json({k: row[k] for k in row.keys()}))


def _event_hash(prev_hash: str, session_id: str, idx: int, ts: str, event: str, data: Any) -> str:
    return _sha256(prev_hash + canonical_json([session_id, idx, ts, event, data]))


def _delivery_hash(prev_hash: str, row: dict[str, Any]) -> str:
    fields = [row["id"], row["session_id"], row["step_id"], row["zone"], row["point"],
              row["device"], row["phase"], row["intent_id"],
              _loads(row["planned_json"]), _loads(row["delivered_json"]),
              row["status"], row["ts"], row["event_idx"]]
    return _sha256(prev_hash + canonical_json(fields))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


#: the amounts a late settlement adds to a session's totals (the runner's quantities)
LATE_AMOUNTS = frozenset({"volume_ul", "shots", "pulses", "charge_uc", "energy_mj", "exposure_s", "fluence_j_cm2",
                          "field_time_s", "field_pulses"})

#: delivered fields that are not amounts: their total is the largest value seen
MAX_FIELDS = frozenset({"depth_mm", "timing_error_us", "impedance_ohm", "settle_ms"})


def _is_max_field(key: str) -> bool:
    return key in MAX_FIELDS or key.startswith(("max_", "peak_")) or key.endswith(("_max", "_peak"))


def _add_numbers(into: dict[str, Any], values: dict[str, Any] | None) -> None:
    """Accumulate the numeric fields of ``values`` into ``into``: amounts (uL, pulses,
    charge_uC, energy_mJ, ...) are summed, depths and peaks keep their maximum;
    booleans and text are ignored."""
    for key, value in (values or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key not in into:
                into[key] = value
            elif _is_max_field(key):
                into[key] = max(into[key], value)
            else:
                into[key] = into[key] + value


# ---------------------------------------------------------------- the store


class RecordStore:
    """The session record on one SQLite file; see the module docstring for why.

    ``readonly=True`` opens an existing store for reading (the CLI), never creating it.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no record store at {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None)
        conn.row_factory = sqlite3.Row
        self._conn = conn
        try:
            self._configure()
        except BaseException:
            conn.close()
            raise

    def _configure(self) -> None:
        c = self._conn
        c.execute("PRAGMA foreign_keys = ON")
        # REPLACE deletes the old row; with recursive triggers the delete trigger fires too
        c.execute("PRAGMA recursive_triggers = ON")
        c.execute("PRAGMA busy_timeout = 5000")
        if self.readonly:
            version = self._schema_version()
            if version is None:
                raise RecordError(f"{self.path} is not a devicehub record store")
            self._check_version(version)
            return
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RecordError(f"record store needs WAL journaling, got {mode!r}")
        c.execute("PRAGMA synchronous = FULL")
        with self._transaction():
            for statement in _split_sql(_SCHEMA + _append_only_triggers()):
                c.execute(statement)
            version = self._schema_version()
            if version is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                self._check_version(version)

    def _schema_version(self) -> int | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else int(row[0])

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise RecordError(f"record store schema {version} is newer than this devicehub ({SCHEMA_VERSION})")

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE: take the write lock now, so the reads below see what we extend
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def _transaction(self) -> "RecordStore._Tx":
        if self.readonly:
            raise RecordError("record store opened read-only")
        return RecordStore._Tx(self._conn)

    def close(self) -> None:
        self._conn.close()

    def pragmas(self) -> dict[str, Any]:
        """The durability settings in force on this connection (for diagnostics and tests):
        journal_mode ``wal``, synchronous 2 (FULL), foreign_keys 1, recursive_triggers 1."""
        return {name: self._conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "recursive_triggers")}

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ hub counters

    def next_boot(self) -> int:
        """Increment and return the hub's boot counter (mqtt-api envelope ``boot``)."""
        with self._transaction() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            boot = (int(row[0]) if row else 0) + 1
            c.execute("INSERT INTO meta(key, value) VALUES ('boot', ?) "
                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(boot),))
        return boot

    def current_boot(self) -> int:
        """The last boot counter handed out (0 before the first :meth:`next_boot`)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ writes

    def create_session(self, session_id: str, *, program_id: str, program_version: str,
                       program_sha256: str, program_json: dict[str, Any] | str,
                       patient_ref: str, operator: str, origin: str,
                       params: dict[str, Any] | None, acknowledgements: Iterable[str] | None,
                       created_at: datetime | None = None) -> None:
        """Record a new session: the program exactly as it will run, who and for whom.

        ``program_json`` is the program document (a dict, or its JSON text). The row is
        the start of the session's hash chains. Raises RecordError if the id exists.
        """
        check_session_id(session_id)
        if isinstance(program_json, str):
            try:
                program_doc = json.loads(program_json)
            except ValueError as exc:
                raise RecordError(f"program_json is not JSON: {exc}") from exc
        else:
            program_doc = program_json
        row = (
            session_id, str(program_id), str(program_version), str(program_sha256),
            _to_json(program_doc, "program_json"), str(patient_ref), str(operator), str(origin),
            _to_json(params or {}, "params"), _to_json(list(acknowledgements or []), "acknowledgements"),
            format_ts(created_at or datetime.now(timezone.utc)),
        )
        with self._transaction() as c:
            try:
                c.execute("INSERT INTO sessions(session_id, program_id, program_version, program_sha256, "
                          "program_json, patient_ref, operator, origin, params_json, "
                          "acknowledgements_json, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            except sqlite3.IntegrityError as exc:
                raise RecordError(f"session {session_id} already recorded") from exc
            genesis = _genesis(self._session_row(session_id))
            c.execute("INSERT INTO heads(session_id, events, event_hash, deliveries, delivery_hash) "
                      "VALUES (?, 0, ?, 0, ?)", (session_id, genesis, genesis))

    def append_event(self, session_id: str, event: str, data: dict[str, Any] | None = None,
                     ts: datetime | None = None) -> int:
        """Append one event and return its index (1, 2, ...).

        The stored ``data`` is ``data`` plus ``event`` and ``index``: exactly the ``data``
        of the mqtt-api ``session.event`` message. A state-changing event (``state`` with
        ``data.state``, or ``completed``/``aborted``/``failed``) is refused after the
        session ended in another terminal state.
        """
        if not isinstance(event, str) or not event:
            raise RecordError("event name must be a non-empty string")
        body = dict(data or {})
        if body.get("event", event) != event:
            raise RecordError(f"data.event {body['event']!r} differs from event {event!r}")
        new_state = _state_set_by(event, body)
        stamp = format_ts(ts or datetime.now(timezone.utc))
        with self._transaction() as c:
            self._require_session(session_id)
            last_idx, last_hash = self._chain_end(session_id)
            if new_state is not None:
                current = self._derive_state(session_id)
                if current in TERMINAL_STATES and new_state != current:
                    raise RecordError(f"session {session_id} already ended {current}; "
                                      f"{event} ({new_state}) refused")
            idx = last_idx + 1
            body["event"] = event
            body["index"] = idx
            data_json = _to_json(body, f"data of event {event!r}")
            stored = json.loads(data_json)
            digest = _event_hash(last_hash, session_id, idx, stamp, event, stored)
            c.execute("INSERT INTO events(session_id, idx, ts, event, data_json, prev_hash, hash) "
                      "VALUES (?,?,?,?,?,?,?)", (session_id, idx, stamp, event, data_json, last_hash, digest))
            c.execute("UPDATE heads SET events = ?, event_hash = ? WHERE session_id = ?", (idx, digest, session_id))
        return idx

    def delivery_intent(self, session_id: str, *, step_id: str, zone: str | None,
                        point: int | str | None, device: str, planned: dict[str, Any],
                        ts: datetime | None = None) -> int:
        """Record what is about to be delivered, *before* the device is told; returns its id.

        An intent without a result after a crash is a delivery whose outcome is
        unknown (``in_flight`` in the summary).
        """
        if point is not None and (isinstance(point, bool) or not isinstance(point, (int, str))):
            raise RecordError(f"delivery point must be an int, a string or None: {point!r}")
        return self._insert_delivery(session_id, dict(
            step_id=str(step_id), zone=None if zone is None else str(zone), point=point, device=str(device), phase="intent",
            intent_id=None, planned_json=_to_json(planned or {}, "planned"), delivered_json=None,
            status=None, event_idx=None), ts)

    def delivery_result(self, delivery_id: int, *, delivered: dict[str, Any], status: str,
                        event_idx: int | None = None, ts: datetime | None = None) -> int:
        """Record what a device reports it delivered for an intent (a new row); returns its id.

        ``status`` is ``done`` for a point delivered as planned, else the runner's word
        (``partial``, ``failed``, ``skipped``, ...). ``event_idx`` may link the event
        (e.g. ``point_done``) that reported it.
        """
        if not isinstance(status, str) or not status:
            raise RecordError("delivery status must be a non-empty string")
        intent = self._conn.execute("SELECT * FROM deliveries WHERE id = ? AND phase = 'intent'",
                                    (int(delivery_id),)).fetchone()
        if intent is None:
            raise RecordError(f"no delivery intent {delivery_id}")
        try:
            return self._insert_delivery(intent["session_id"], dict(
                step_id=intent["step_id"], zone=intent["zone"], point=intent["point"],
                device=intent["device"], phase="result", intent_id=intent["id"], planned_json=None,
                delivered_json=_to_json(delivered or {}, "delivered"), status=status,
                event_idx=None if event_idx is None else int(event_idx)), ts)
        except sqlite3.IntegrityError as exc:
            raise RecordError(f"delivery {delivery_id} already has a result") from exc

    def _insert_delivery(self, session_id: str, row: dict[str, Any], ts: datetime | None) -> int:
        row["ts"] = format_ts(ts or datetime.now(timezone.utc))
        row["session_id"] = session_id
        with self._transaction() as c:
            self._require_session(session_id)
            count, prev_hash = self._delivery_chain_end(session_id)
            # ids are chosen here, under the write lock, so the row's hash (which covers
            # its id) is known before its one and only INSERT; rows are never deleted,
            # so an id is never reused
            row["id"] = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM deliveries").fetchone()[0]
            row["hash"] = _delivery_hash(prev_hash, row)
            row["prev_hash"] = prev_hash
            c.execute("INSERT INTO deliveries(id, session_id, step_id, zone, point, device, phase, intent_id, "
                      "planned_json, delivered_json, status, ts, event_idx, prev_hash, hash) "
                      "VALUES (:id, :session_id, :step_id, :zone, :point, :device, :phase, :intent_id, "
                      ":planned_json, :delivered_json, :status, :ts, :event_idx, :prev_hash, :hash)", row)
            c.execute("UPDATE heads SET deliveries = ?, delivery_hash = ? WHERE session_id = ?",
                      (count + 1, row["hash"], session_id))
        return int(row["id"])

    def record_refusal(self, *, program_id: str, patient_ref: str, operator: str, origin: str,
                       code: str, details: list[dict[str, Any]] | None = None,
                       ts: datetime | None = None) -> int:
        """Record a start refused for a limit (``hard_limit``/``soft_limit``); returns its id."""
        with self._transaction() as c:
            cur = c.execute("INSERT INTO refusals(ts, program_id, patient_ref, operator, origin, code, details_json) "
                            "VALUES (?,?,?,?,?,?,?)",
                            (format_ts(ts or datetime.now(timezone.utc)), str(program_id), str(patient_ref),
                             str(operator), str(origin), str(code), _to_json(details or [], "details")))
            return int(cur.lastrowid)

    # ------------------------------------------------------------ internals

    def _session_row(self, session_id: str) -> sqlite3.Row | None:
        return self._conn.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()

    def _require_session(self, session_id: str) -> None:
        if self._conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone() is None:
            raise SessionNotFound(f"no session {session_id!r} in the record")

    def _chain_end(self, session_id: str) -> tuple[int, str]:
        """Last event index and hash, checked against the head (a removed tail raises)."""
        head = self._conn.execute("SELECT events, event_hash FROM heads WHERE session_id = ?",
                                  (session_id,)).fetchone()
        last = self._conn.execute("SELECT idx, hash FROM events WHERE session_id = ? ORDER BY idx DESC LIMIT 1",
                                  (session_id,)).fetchone()
        last_idx, last_hash = (0, None) if last is None else (last["idx"], last["hash"])
        if head is None or head["events"] != last_idx or (last_hash is not None and last_hash != head["event_hash"]):
            raise RecordIntegrityError(f"events of session {session_id} disagree with their head: tampered")
        return last_idx, head["event_hash"]

    def _delivery_chain_end(self, session_id: str) -> tuple[int, str]:
        head = self._conn.execute("SELECT deliveries, delivery_hash FROM heads WHERE session_id = ?",
                                  (session_id,)).fetchone()
        count = self._conn.execute("SELECT COUNT(*) FROM deliveries WHERE session_id = ?", (session_id,)).fetchone()[0]
        last = self._conn.execute("SELECT hash FROM deliveries WHERE session_id = ? ORDER BY id DESC LIMIT 1",
                                  (session_id,)).fetchone()
        if head is None or head["deliveries"] != count or (last is not None and last["hash"] != head["delivery_hash"]):
            raise RecordIntegrityError(f"deliveries of session {session_id} disagree with their head: tampered")
        return count, head["delivery_hash"]

    def _state_rows(self, session_id: str) -> list[tuple[int, str, str, dict[str, Any]]]:
        placeholders = ",".join("?" * len(STATE_CHANGING_EVENTS))
        rows = self._conn.execute(
            f"SELECT idx, ts, event, data_json FROM events WHERE session_id = ? AND event IN ({placeholders}) "
            "ORDER BY idx", (session_id, *STATE_CHANGING_EVENTS)).fetchall()
        return [(r["idx"], r["ts"], r["event"], json.loads(r["data_json"])) for r in rows]

    def _derive_state(self, session_id: str) -> str:
        return _fold_states(self._state_rows(session_id))["state"]

    # ------------------------------------------------------------ reads

    def exists(self, session_id: str) -> bool:
        return self._session_row(session_id) is not None

    def recorded_program(self, session_id: str) -> dict[str, Any] | None:
        """The program document exactly as the session ran it."""
        row = self._session_row(session_id)
        return None if row is None else json.loads(row["program_json"])

    def events(self, session_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with index > ``after``, in order (at most ``limit``): {session, index, ts, event, data,
        prev_hash, hash}."""
        rows = self._conn.execute("SELECT * FROM events WHERE session_id = ? AND idx > ? ORDER BY idx LIMIT ?",
                                  (session_id, int(after), -1 if limit is None else int(limit))).fetchall()
        return [{"session": r["session_id"], "index": r["idx"], "ts": r["ts"], "event": r["event"],
                 "data": json.loads(r["data_json"]), "prev_hash": r["prev_hash"], "hash": r["hash"]}
                for r in rows]

    def deliveries(self, session_id: str) -> list[dict[str, Any]]:
        """Every intent joined with its result (``result_id`` None while in flight), in order."""
        rows = self._conn.execute(
            "SELECT i.id, i.session_id, i.step_id, i.zone, i.point, i.device, i.planned_json, i.ts AS intent_ts, "
            "r.id AS result_id, r.delivered_json, r.status, r.ts AS result_ts, r.event_idx "
            "FROM deliveries i LEFT JOIN deliveries r ON r.intent_id = i.id AND r.phase = 'result' "
            "WHERE i.session_id = ? AND i.phase = 'intent' ORDER BY i.id", (session_id,)).fetchall()
        return [{"id": r["id"], "session": r["session_id"], "step_id": r["step_id"], "zone": r["zone"],
                 "point": r["point"], "device": r["device"], "planned": _loads(r["planned_json"]),
                 "intent_ts": r["intent_ts"], "result_id": r["result_id"],
                 "delivered": _loads(r["delivered_json"]), "status": r["status"],
                 "result_ts": r["result_ts"], "event_index": r["event_idx"]} for r in rows]

    def open_deliveries(self, device: str | None = None, exclude_session: str | None = None) -> list[dict[str, Any]]:
        """Intents of any session that have no result yet (``in_flight``), oldest first;
        a late settlement reads the device's counters for each (docs/records.md)."""
        rows = self._conn.execute(
            "SELECT i.id, i.session_id, i.step_id, i.zone, i.point, i.device, i.planned_json, i.ts "
            "FROM deliveries i LEFT JOIN deliveries r ON r.intent_id = i.id AND r.phase = 'result' "
            "WHERE i.phase = 'intent' AND r.id IS NULL AND (? IS NULL OR i.device = ?) "
            "AND (? IS NULL OR i.session_id != ?) ORDER BY i.id",
            (device, device, exclude_session, exclude_session)).fetchall()
        return [{"id": r["id"], "session": r["session_id"], "step_id": r["step_id"], "zone": r["zone"],
                 "point": r["point"], "device": r["device"], "planned": _loads(r["planned_json"]),
                 "ts": r["ts"]} for r in rows]

    def started_deliveries(self, session_id: str) -> set[int]:
        """Ids of the session's deliveries whose device confirmed the run began
        (``delivery_started`` events)."""
        rows = self._conn.execute("SELECT data_json FROM events WHERE session_id = ? AND event = 'delivery_started'",
                                  (session_id,)).fetchall()
        out = set()
        for r in rows:
            d = json.loads(r["data_json"]).get("delivery")
            if isinstance(d, int):
                out.add(d)
        return out

    def session(self, session_id: str) -> dict[str, Any] | None:
        """The recorded summary (mqtt-api ``session`` reply data), or None if unknown.

        Keys: session, program, version, sha256, patient_ref, operator, origin,
        acknowledged, params, created_at, state, started_at, ended_at, reason, totals,
        steps, states, events_count, in_flight. All derived from the rows; see
        docs/records.md.
        """
        row = self._session_row(session_id)
        if row is None:
            return None
        # only the events a summary needs (by the (session, event) index): a long session
        # has thousands of progress events, and the hub answers this from its loop
        wanted = (*STATE_CHANGING_EVENTS, *SUMMARY_EVENTS)
        rows = self._conn.execute(
            f"SELECT idx, ts, event, data_json FROM events WHERE session_id = ? "
            f"AND event IN ({','.join('?' * len(wanted))}) ORDER BY idx", (session_id, *wanted)).fetchall()
        events = [{"index": r["idx"], "ts": r["ts"], "event": r["event"], "data": json.loads(r["data_json"])}
                  for r in rows]
        events_count = self._conn.execute("SELECT COUNT(*) FROM events WHERE session_id = ?",
                                          (session_id,)).fetchone()[0]
        deliveries = self.deliveries(session_id)
        folded = _fold_states([(e["index"], e["ts"], e["event"], e["data"]) for e in events
                               if e["event"] in STATE_CHANGING_EVENTS], created_at=row["created_at"])
        started_at = folded["started_at"]
        for e in events:
            if e["event"] == "started":
                if started_at is None or e["ts"] < started_at:
                    started_at = e["ts"]
                break
        totals = folded["totals"]
        if totals is not None:
            # deliveries settled late, after the terminal event: the devices counted them too
            end_idx = max((e["index"] for e in events if e["event"] in TERMINAL_EVENTS), default=None)
            late = [e for e in events if e["event"] == "delivery_settled" and e["data"].get("late")
                    and end_idx is not None and e["index"] > end_idx]
            if late:
                totals = {dev: dict(vals) for dev, vals in totals.items()}
                for e in late:
                    amounts = {k: v for k, v in (e["data"].get("delivered") or {}).items()
                               if k in LATE_AMOUNTS}
                    _add_numbers(totals.setdefault(str(e["data"].get("device")), {}), amounts)
        if totals is None:
            totals = {}
            for d in deliveries:
                if d["result_id"] is not None:
                    _add_numbers(totals.setdefault(d["device"], {}), d["delivered"])
        return {
            "session": row["session_id"],
            "program": row["program_id"],
            "version": row["program_version"],
            "sha256": row["program_sha256"],
            "patient_ref": row["patient_ref"],
            "operator": row["operator"],
            "origin": row["origin"],
            "acknowledged": json.loads(row["acknowledgements_json"]),
            "params": json.loads(row["params_json"]),
            "created_at": row["created_at"],
            "state": folded["state"],
            "started_at": started_at,
            "ended_at": folded["ended_at"],
            "reason": folded["reason"],
            "totals": totals,
            "steps": _steps(events, deliveries),
            "states": folded["states"],
            "events_count": events_count,
            "in_flight": [_in_flight(d) for d in deliveries if d["result_id"] is None],
        }

    def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: {session, program, version, patient_ref, operator, origin, state, created_at, ended_at}."""
        rows = self._conn.execute("SELECT session_id, program_id, program_version, patient_ref, operator, origin, "
                                  "created_at FROM sessions ORDER BY created_at DESC, session_id DESC LIMIT ?",
                                  (int(limit),)).fetchall()
        out = []
        for r in rows:
            folded = _fold_states(self._state_rows(r["session_id"]))
            out.append({"session": r["session_id"], "program": r["program_id"], "version": r["program_version"],
                        "patient_ref": r["patient_ref"], "operator": r["operator"], "origin": r["origin"],
                        "state": folded["state"], "created_at": r["created_at"], "ended_at": folded["ended_at"]})
        return out

    def unfinished_sessions(self) -> list[str]:
        """Sessions not ended (last state not completed/aborted/failed), oldest first.

        On restart the hub appends ``failed`` with reason ``hub_restart`` to each.
        """
        ids = [r[0] for r in self._conn.execute("SELECT session_id FROM sessions ORDER BY created_at, session_id")]
        return [sid for sid in ids if self._derive_state(sid) not in TERMINAL_STATES]

    def last_session_for_patient(self, patient_ref: str) -> dict[str, Any] | None:
        """The patient's most recently ended *completed* session (its summary), for the
        course interval limit; None if the patient has none."""
        best: tuple[str, str] | None = None
        for r in self._conn.execute("SELECT session_id FROM sessions WHERE patient_ref = ?", (str(patient_ref),)):
            folded = _fold_states(self._state_rows(r[0]))
            if folded["state"] == "completed" and folded["ended_at"] is not None:
                if best is None or folded["ended_at"] > best[0]:
                    best = (folded["ended_at"], r[0])
        return None if best is None else self.session(best[1])

    def refusals(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recorded start refusals, newest first."""
        rows = self._conn.execute("SELECT * FROM refusals ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [{"id": r["id"], "ts": r["ts"], "program": r["program_id"], "patient_ref": r["patient_ref"],
                 "operator": r["operator"], "origin": r["origin"], "code": r["code"],
                 "details": json.loads(r["details_json"])} for r in rows]

    # ------------------------------------------------------------ verification

    def verify(self, session_id: str) -> VerifyResult:
        """Check both hash chains of a session and their head. Raises SessionNotFound for
        an id with no trace in the store; a session row removed while its events remain
        is reported as tampering."""
        c = self._conn
        row = self._session_row(session_id)
        head = c.execute("SELECT * FROM heads WHERE session_id = ?", (session_id,)).fetchone()
        event_rows = c.execute("SELECT * FROM events WHERE session_id = ? ORDER BY idx", (session_id,)).fetchall()
        delivery_rows = c.execute("SELECT * FROM deliveries WHERE session_id = ? ORDER BY id",
                                  (session_id,)).fetchall()
        if row is None:
            if head is None and not event_rows and not delivery_rows:
                raise SessionNotFound(f"no session {session_id!r} in the record")
            return VerifyResult(False, len(event_rows), 1 if event_rows else None,
                                f"session row of {session_id} is missing but its records remain",
                                deliveries=len(delivery_rows))
        genesis = _genesis(row)
        first_bad, problem, last_hash = _check_event_chain(session_id, genesis, event_rows)
        bad_delivery, delivery_problem, last_delivery_hash = _check_delivery_chain(genesis, delivery_rows)
        if first_bad is None:
            if head is None:
                problem = "chain head of the session is missing"
            elif head["events"] > len(event_rows):
                first_bad, problem = len(event_rows) + 1, (
                    f"events {len(event_rows) + 1}..{head['events']} missing (chain head says {head['events']})")
            elif head["events"] < len(event_rows):
                first_bad, problem = head["events"] + 1, (
                    f"events after {head['events']} were added outside the record (chain head says {head['events']})")
            elif head["event_hash"] != last_hash:
                first_bad, problem = len(event_rows), "last event does not match the chain head"
        if bad_delivery is None and delivery_problem is None and head is not None:
            if head["deliveries"] != len(delivery_rows) or head["delivery_hash"] != last_delivery_hash:
                delivery_problem = (f"delivery rows do not match their chain head "
                                    f"({len(delivery_rows)} present, head says {head['deliveries']})")
        problems = [p for p in (problem, delivery_problem) if p]
        ok = not problems
        message = (f"ok: {len(event_rows)} events and {len(delivery_rows)} delivery rows verify"
                   if ok else "; ".join(problems))
        return VerifyResult(ok, len(event_rows), first_bad, message, deliveries=len(delivery_rows),
                            first_bad_delivery=bad_delivery, head=last_hash if ok else None)


# ---------------------------------------------------------------- derivations


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


def _state_set_by(event: str, data: dict[str, Any]) -> str | None:
    """The state an event sets, or None; refuses a ``state`` event without a known state."""
    if event == STATE_EVENT:
        state = data.get("state")
        if state not in STATES:
            raise RecordError(f"state event needs data.state in {STATES}, got {state!r}")
        return state
    if event in TERMINAL_EVENTS:
        return event
    return None


def _fold_states(rows: Iterable[tuple[int, str, str, dict[str, Any]]],
                 created_at: str | None = None) -> dict[str, Any]:
    """Derive state, reason, timeline, start/end and final totals from state-changing events.

    A session starts ``created`` (at ``created_at``, the row's time, when given). A
    repeat of the current state (``state: aborted`` then ``aborted``) adds no timeline
    entry but may add the reason and the totals.
    """
    state, reason, totals = "created", None, None
    states: list[dict[str, Any]] = []
    if created_at is not None:
        states.append({"state": "created", "ts": created_at, "reason": None})
    started_at = ended_at = None
    for _idx, ts, event, data in rows:
        new = _state_set_by(event, data)
        if new is None:
            continue
        if new != state or not states:
            state, reason = new, data.get("reason")
            states.append({"state": new, "ts": ts, "reason": reason})
            if new == "running" and started_at is None:
                started_at = ts
            if new in TERMINAL_STATES and ended_at is None:
                ended_at = ts
        elif data.get("reason") is not None:
            reason = data["reason"]
            states[-1]["reason"] = reason
        if new in TERMINAL_STATES and isinstance(data.get("totals"), dict):
            totals = data["totals"]
    return {"state": state, "reason": reason, "states": states, "started_at": started_at,
            "ended_at": ended_at, "totals": totals}


def _steps(events: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-step results, in the order steps first appear (events, then deliveries)."""
    steps: dict[str, dict[str, Any]] = {}

    def entry(step_id: str) -> dict[str, Any]:
        return steps.setdefault(step_id, {
            "step": step_id, "kind": None, "devices": [], "started_at": None, "done_at": None,
            "points_planned": 0, "points_done": 0, "results": {}, "delivered": {}, "totals": None})

    for e in events:
        if e["event"] not in ("step_started", "step_done"):
            continue
        data = e["data"]
        step_id = data.get("step", data.get("step_id"))
        if step_id is None:
            continue
        s = entry(str(step_id))
        s["kind"] = data.get("kind", s["kind"])
        devices = data.get("devices", data.get("device"))
        for dev in devices if isinstance(devices, list) else ([devices] if devices else []):
            if dev not in s["devices"]:
                s["devices"].append(dev)
        if e["event"] == "step_started" and s["started_at"] is None:
            s["started_at"] = e["ts"]
        if e["event"] == "step_done":
            s["done_at"] = e["ts"]
            if isinstance(data.get("totals"), dict):
                s["totals"] = data["totals"]
    for d in deliveries:
        s = entry(d["step_id"])
        if d["device"] not in s["devices"]:
            s["devices"].append(d["device"])
        s["points_planned"] += 1
        if d["result_id"] is not None:
            s["results"][d["status"]] = s["results"].get(d["status"], 0) + 1
            if d["status"] == DELIVERY_DONE:
                s["points_done"] += 1
            _add_numbers(s["delivered"].setdefault(d["device"], {}), d["delivered"])
    return list(steps.values())


def _in_flight(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": d["id"], "step_id": d["step_id"], "zone": d["zone"], "point": d["point"],
            "device": d["device"], "planned": d["planned"], "ts": d["intent_ts"]}


def _check_event_chain(session_id: str, genesis: str,
                       rows: list[sqlite3.Row]) -> tuple[int | None, str | None, str]:
    prev = genesis
    for expected, r in enumerate(rows, start=1):
        if r["idx"] != expected:
            return expected, f"event {expected} missing or out of place (found {r['idx']})", prev
        if r["session_id"] != session_id:
            return expected, f"event {expected} belongs to another session", prev
        try:
            data = json.loads(r["data_json"])
        except ValueError:
            return expected, f"event {expected} data is not JSON", prev
        if r["prev_hash"] != prev:
            what = "session row changed or " if expected == 1 else ""
            return expected, f"event {expected}: {what}link to the previous event broken", prev
        if not isinstance(data, dict) or data.get("index") != expected or data.get("event") != r["event"]:
            return expected, f"event {expected}: data does not carry its own index and name", prev
        digest = _event_hash(prev, session_id, r["idx"], r["ts"], r["event"], data)
        if digest != r["hash"]:
            return expected, f"event {expected} was changed after it was recorded", prev
        prev = digest
    return None, None, prev


def _check_delivery_chain(genesis: str, rows: list[sqlite3.Row]) -> tuple[int | None, str | None, str]:
    prev = genesis
    for r in rows:
        row = dict(r)
        if row["prev_hash"] != prev:
            return row["id"], f"delivery row {row['id']}: link to the previous row broken (removed or reordered)", prev
        try:
            digest = _delivery_hash(prev, row)
        except ValueError:
            return row["id"], f"delivery row {row['id']} is not valid JSON", prev
        if digest != row["hash"]:
            return row["id"], f"delivery row {row['id']} was changed after it was recorded", prev
        prev = digest
    return None, None, prev
