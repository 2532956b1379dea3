"""What ``devicehub site rooms|sessions|patient|alarms`` reads (plain dicts, JSON-ready)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

TERMINAL = ("completed", "aborted", "failed")


def _iso(value: Any) -> Any:
    """Times as RFC 3339 UTC with microseconds, as on the wire."""
    if isinstance(value, datetime):
        from devicehub.mqtt.envelope import rfc3339

        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=5, row_factory=dict_row,
                           application_name="devicehub-site", options="-c TimeZone=UTC")
    return conn


def rooms(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT site, room, COALESCE(status, 'unknown') AS status, last_seen,"
        " CASE WHEN session_state IS NOT NULL AND session_state <> ALL(%s) THEN session END AS active_session,"
        " CASE WHEN session_state IS NOT NULL AND session_state <> ALL(%s) THEN session_state END AS session_state,"
        " alarms AS active_alarms FROM rooms ORDER BY site, room", (list(TERMINAL), list(TERMINAL))).fetchall()
    return [_clean(r) for r in rows]


def sessions(conn: psycopg.Connection[Any], *, room: str | None = None, patient: str | None = None,
             since: date | None = None, site: str | None = None) -> list[dict[str, Any]]:
    where, params = [], []
    if room is not None:
        where.append("room = %s")
        params.append(room)
    if site is not None:
        where.append("site = %s")
        params.append(site)
    if patient is not None:
        where.append("patient_ref = %s")
        params.append(patient)
    if since is not None:
        where.append("created >= %s")
        params.append(since)
    sql = ("SELECT session, site, room, program, patient_ref, operator, state, created, ended, events,"
           " (events = last_index AND NOT incomplete) AS complete FROM sessions"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created NULLS LAST, session")
    return [_clean(r) for r in conn.execute(sql, params).fetchall()]


def patient(conn: psycopg.Connection[Any], patient_ref: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT session, site, room, program, version, operator, state, created, ended, reason, course,"
        " events, (events = last_index AND NOT incomplete) AS complete FROM sessions WHERE patient_ref = %s"
        " ORDER BY created NULLS LAST, session", (patient_ref,)).fetchall()
    adverse = conn.execute(
        "SELECT a.session, a.idx AS index, a.kind, a.severity, a.score, a.onset, a.note, a.by_name AS by, a.action,"
        " a.ts FROM adverse_events a JOIN sessions s USING (session) WHERE s.patient_ref = %s"
        " ORDER BY a.ts, a.idx", (patient_ref,)).fetchall()
    by_session: dict[str, list[dict[str, Any]]] = {}
    for a in adverse:
        by_session.setdefault(a["session"], []).append(_clean({k: v for k, v in a.items() if k != "session"}))
    out = []
    for r in rows:
        course = r.pop("course") or None
        entry = _clean(r)
        entry["course"] = course
        entry["adverse_events"] = by_session.get(r["session"], [])
        out.append(entry)
    return {"patient_ref": patient_ref, "sessions": out}


def alarms(conn: psycopg.Connection[Any], *, active_only: bool = False) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT site, room, id, priority, source, code, text, since, latched, session, first_ts, cleared"
        " FROM alarms" + (" WHERE cleared IS NULL" if active_only else "") + " ORDER BY first_ts DESC").fetchall()
    return [_clean(r) for r in rows]
