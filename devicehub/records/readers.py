"""The record's reads: events, deliveries, session summaries and lists, refusals, and the
verification of a session's hash chains. Everything a summary says is derived from the
rows (docs/records.md)."""

from __future__ import annotations

import json
from typing import Any

from devicehub.records.chain import VerifyResult, _check_delivery_chain, _check_event_chain, _genesis, _loads
from devicehub.records.connection import StoreConnection
from devicehub.records.derive import (
    STATE_CHANGING_EVENTS,
    SUMMARY_EVENTS,
    TERMINAL_STATES,
    _add_numbers,
    _fold_states,
    _is_max_field,
    _in_flight,
    _steps,
)
from devicehub.records.errors import SessionNotFound


class RecordReader(StoreConnection):
    """The reads and the verification of :class:`devicehub.records.store.RecordStore`."""

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
        # what the devices counted, delivery by delivery: every result row, including those
        # settled late after the terminal event (a result row is written once per intent)
        totals: dict[str, dict[str, Any]] = {}
        for d in deliveries:
            if d["result_id"] is not None:
                # amounts only: a row's depth, peak, timing error or settling time is no total
                amounts = {k: v for k, v in (d["delivered"] or {}).items() if not _is_max_field(k)}
                _add_numbers(totals.setdefault(d["device"], {}), amounts)
        totals = {dev: {k: round(v, 6) for k, v in vals.items()} for dev, vals in totals.items() if vals}
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
