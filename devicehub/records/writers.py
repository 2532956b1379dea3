"""The record's writes: a session's row, its events, its delivery intents and results,
and refused starts. Each is one transaction that extends the session's hash chain and
its head together."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from devicehub.records.chain import _delivery_hash, _event_hash, _genesis, _to_json, format_ts
from devicehub.records.connection import StoreConnection
from devicehub.records.derive import TERMINAL_STATES, _state_set_by
from devicehub.records.errors import RecordError, check_session_id


class RecordWriter(StoreConnection):
    """The append-only writes of :class:`devicehub.records.store.RecordStore`."""

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
