"""Replies remembered by request id, so a repeated request is answered, not redone.

shared/mqtt-api.md: the hub remembers the reply to every request id for at least one
hour and at least the last 10 000 requests, across restarts, and answers a repeat with
the same reply without acting again, errors included. A repeat whose payload differs
(ignoring ``reply_to``, ``correlation_id`` and ``expires_at``) is a ``bad_request``.

SQLite on disk (so restarts keep it), used from one worker thread (so the event loop
never waits on the disk). A row is pruned only when it is both older than
``keep_seconds`` and not among the newest ``keep_last``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: payload members that do not make a request different
IGNORED_IN_FINGERPRINT = ("reply_to", "correlation_id", "expires_at")


@dataclass(frozen=True)
class StoredReply:
    fingerprint: str
    #: ``{"ok": bool, "data"?: ..., "error"?: {...}}``, re-wrapped in a fresh envelope on a repeat
    reply: dict[str, Any]
    created: float


def fingerprint(verb: str, payload: dict[str, Any]) -> str:
    """sha256 of the verb and the canonical JSON of the payload without the ignored members.

    The verb is part of it: one request id reused for another verb is another request.
    """
    body = {k: v for k, v in payload.items() if k not in IGNORED_IN_FINGERPRINT}
    canonical = json.dumps([verb, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class IdempotencyStore:
    """request_id -> (fingerprint, reply); first reply wins; survives restarts."""

    PRUNE_EVERY = 256

    def __init__(self, path: str | Path, *, keep_seconds: float = 3600.0, keep_last: int = 10_000) -> None:
        self.path = Path(path)
        self.keep_seconds = keep_seconds
        self.keep_last = keep_last
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " request_id TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL, reply TEXT NOT NULL,"
            " created REAL NOT NULL)")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency")
        self._puts = 0
        self._closed = False

    fingerprint = staticmethod(fingerprint)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the store's worker thread, in order with its reads and writes."""
        return await self._run(fn, *args)

    async def get(self, request_id: str) -> StoredReply | None:
        row = await self._run(self._get, request_id)
        if row is None:
            return None
        return StoredReply(row[0], json.loads(row[1]), row[2])

    def _get(self, request_id: str) -> tuple[str, str, float] | None:
        return self._db.execute("SELECT fingerprint, reply, created FROM replies WHERE request_id = ?",
                                (request_id,)).fetchone()

    async def put(self, request_id: str, fingerprint_: str, reply: dict[str, Any]) -> bool:
        """Remember the first reply to ``request_id``; returns False when one was there."""
        self._puts += 1
        prune = self._puts % self.PRUNE_EVERY == 0
        return await self._run(self._put, request_id, fingerprint_, json.dumps(reply, separators=(",", ":")),
                               time.time(), prune)

    def _put(self, request_id: str, fp: str, reply: str, now: float, prune: bool) -> bool:
        cur = self._db.execute("INSERT OR IGNORE INTO replies (request_id, fingerprint, reply, created)"
                               " VALUES (?,?,?,?)", (request_id, fp, reply, now))
        if prune:
            self._prune(now)
        return cur.rowcount == 1

    def _prune(self, now: float) -> None:
        self._db.execute(
            "DELETE FROM replies WHERE created < ? AND seq <= (SELECT COALESCE(MAX(seq), 0) FROM replies) - ?",
            (now - self.keep_seconds, self.keep_last))

    async def prune(self, now: float | None = None) -> None:
        """Forget what is both old and not among the newest ``keep_last`` (also done every 256 puts)."""
        await self._run(self._prune, time.time() if now is None else now)

    async def count(self) -> int:
        return (await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM replies").fetchone()))[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._db.close()
