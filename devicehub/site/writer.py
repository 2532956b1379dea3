"""Batches of rows into PostgreSQL, one transaction per batch (psycopg 3).

The bulk (messages, session events, deliveries, telemetry) goes with ``COPY`` into
per-connection staging tables and from there with one ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` per table; the ``RETURNING`` of what was really inserted keeps the
counters the gap check reads (``boots.seqs``/``max_seq``, ``sessions.events``/
``last_index``), so a duplicate never counts. The guarded upserts of the retained states
keep only the newest per key of a batch and go with ``executemany`` (pipeline mode).
:meth:`Writer.write` returns only once the batch is committed, and raises when it is
not: the caller acknowledges the batch's messages only after it returned
(docs/decisions/0009-collector-manual-ack.md).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from devicehub.site.rows import LATEST, ORDER, S, STAGED, Rows
from devicehub.site.schema import migrate

log = logging.getLogger(__name__)

_COUNT = {
    "message": ("INSERT INTO boots AS b (site, room, boot, seqs, max_seq) SELECT site, room, boot, count(*), max(seq)"
                " FROM ins WHERE seq IS NOT NULL GROUP BY site, room, boot ORDER BY site, room, boot"
                " ON CONFLICT (site, room, boot) DO UPDATE SET seqs = b.seqs + EXCLUDED.seqs,"
                " max_seq = GREATEST(b.max_seq, EXCLUDED.max_seq), last_seen = now()", "site, room, boot, seq"),
    "event": ("INSERT INTO sessions AS s (session, site, room, events, last_index, last_event_at)"
              " SELECT session, min(site), min(room), count(*), max(idx), now() FROM ins GROUP BY session"
              " ORDER BY session ON CONFLICT (session) DO UPDATE SET events = s.events + EXCLUDED.events,"
              " last_index = GREATEST(s.last_index, EXCLUDED.last_index), last_event_at = now()",
              "session, site, room, idx"),
}


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=5, application_name="devicehub-collector")


def _latest(name: str, params: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    keylen, ts_at = LATEST[name]
    newest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for p in params:
        key = p[:keylen]
        old = newest.get(key)
        if old is None or p[ts_at] >= old[ts_at]:
            newest[key] = p
    return [newest[k] for k in sorted(newest)]  # one lock order for every writer


def write_rows(conn: psycopg.Connection[Any], rows: Rows) -> None:
    """Write ``rows`` in one transaction on ``conn`` (committed on return)."""
    with conn.transaction(), conn.cursor() as cur:
        for name in ORDER:
            params = rows.by.get(name)
            if not params:
                continue
            if name in STAGED:
                table, cols = STAGED[name]
                columns = ", ".join(cols)
                target = table if name == "telemetry" else f"stage_{table}"
                if name != "telemetry":
                    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {target} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                with cur.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
                    for p in params:
                        copy.write_row(p)
                if name in _COUNT:
                    count, returning = _COUNT[name]
                    cur.execute(f"WITH ins AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM {target}"
                                f" ON CONFLICT DO NOTHING RETURNING {returning}) {count}")
                elif name != "telemetry":
                    cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {target}"
                                " ON CONFLICT DO NOTHING")
            else:
                cur.executemany(S[name], _latest(name, params) if name in LATEST else params)


class Writer:
    """Owns one connection; reconnects (and migrates) on demand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.batches = 0
        self.rows = 0
        self.failures = 0

    def open(self) -> None:
        if self._conn is None or self._conn.closed:
            conn = connect(self.url)
            try:
                migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, rows: Rows) -> None:
        """Commit ``rows`` in one transaction; raises ``psycopg.Error`` (rolled back) when not."""
        self.open()
        conn = self._conn
        assert conn is not None
        try:
            write_rows(conn, rows)
        except psycopg.Error:
            self.failures += 1
            if conn.closed or conn.broken:
                self.close()
            raise
        self.batches += 1
        self.rows += len(rows)

    def write_until_done(self, rows: Rows, stop: Any, *, backoff_max_s: float = 2.0) -> bool:
        """Retry until committed (True) or ``stop`` (a threading.Event) is set (False)."""
        delay = 0.05
        while True:
            try:
                self.write(rows)
                return True
            except (psycopg.Error, OSError) as exc:
                log.warning("database write failed (%s); retrying in %.2f s", exc, delay)
                self.close()
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, backoff_max_s)
