"""The record store's one SQLite connection: opening it (WAL, ``synchronous=FULL``, the
schema), its write transactions, the hub's boot counter, and the lookups the writers and
readers share (a session's row, the ends of its chains, its state)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Self

from devicehub.records.derive import STATE_CHANGING_EVENTS, _fold_states
from devicehub.records.errors import RecordError, RecordIntegrityError, SessionNotFound
from devicehub.records.schema import _SCHEMA, SCHEMA_VERSION, _append_only_triggers, _split_sql


class StoreConnection:
    """One SQLite connection to a record store, used from one thread only.

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

    def _transaction(self) -> "StoreConnection._Tx":
        if self.readonly:
            raise RecordError("record store opened read-only")
        return StoreConnection._Tx(self._conn)

    def close(self) -> None:
        self._conn.close()

    def pragmas(self) -> dict[str, Any]:
        """The durability settings in force on this connection (for diagnostics and tests):
        journal_mode ``wal``, synchronous 2 (FULL), foreign_keys 1, recursive_triggers 1."""
        return {name: self._conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "recursive_triggers")}

    def __enter__(self) -> Self:
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
