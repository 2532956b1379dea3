"""The hash chains: canonical JSON, timestamps, the hashes of events and delivery rows,
and their verification (see docs/records.md). The canonical JSON spelling is what is
hashed: changing a byte of it breaks every recorded chain."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devicehub.records.errors import RecordError
from devicehub.timefmt import rfc3339

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
