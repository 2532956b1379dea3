"""Batches of rows into PostgreSQL, one transaction per batch (psycopg 3).

``executemany`` of psycopg 3 sends every row of a statement in pipeline mode (one round
trip per batch, not per row); the statements of a batch run in :data:`rows.ORDER` in
one transaction. :meth:`Writer.write` returns only once the batch is committed, and
raises when it is not: the caller acknowledges the batch's messages only after it
returned (docs/decisions/0002-collector-manual-ack.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from devicehub.site.rows import ORDER, S, Rows
from devicehub.site.schema import migrate

log = logging.getLogger(__name__)


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=5, application_name="devicehub-collector")


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
            with conn.transaction(), conn.cursor() as cur:
                for name in ORDER:
                    params = rows.by.get(name)
                    if params:
                        cur.executemany(S[name], params)
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
