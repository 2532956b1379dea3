"""The on-disk outbox: every QoS 1 message is written here before it is sent.

Why on disk: a session never depends on the broker (shared/mqtt-api.md, "When the
broker is away"). A message leaves the outbox only on PUBACK, so an outage or a hub
restart loses nothing; after reconnecting the hub replays what is left, in order.

How: SQLite (WAL) driven by one worker thread, so the event loop never blocks on disk.
:meth:`Outbox.add` is synchronous and cheap: it gives the message its id (the replay
order) and queues the write; the worker commits queued writes in batches, in order.
Only committed messages are handed to the publisher (:meth:`read`), so nothing is sent
before it is on disk.

Beside the queue, the outbox keeps a ledger of every session event it was given:
``(session, index) -> (boot, seq, ts)`` in the table ``published_events``, written in the
same transaction as the event's outbox row and never deleted on PUBACK. The ``events``
verb (devicehub/control/events.py) answers from it: each recorded event with the
``boot``, ``seq`` and ``ts`` of the message that carried it.

The bound is a count of messages. It does not drop anything: past it :meth:`full` is
true (the room refuses new starts with ``outbox_full``) and every event of a running
session is still kept. ``on_alarm`` is called with ``"medium"`` past 80 % of the bound,
``"high"`` at the bound and ``None`` when the outbox is back under 80 %.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MEDIUM_RATIO = 0.8


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message: ``payload`` is the envelope as first built (historical false)."""

    id: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    """SQLite outbox with a bound, an alarm hook and ordered replay; survives restarts."""

    def __init__(self, path: str | Path, *, bound: int = 10_000,
                 on_alarm: Callable[[str | None], None] | None = None,
                 synchronous: str = "FULL") -> None:
        if bound < 1:
            raise ValueError("bound must be at least 1")
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous: OFF, NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self.bound = bound
        self.on_alarm = on_alarm
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, retain INTEGER NOT NULL, created REAL NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS published_events (session TEXT NOT NULL, idx INTEGER NOT NULL,"
            " boot INTEGER NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL, PRIMARY KEY (session, idx))"
            " WITHOUT ROWID")
        count, max_id = self._db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM outbox").fetchone()
        self._count = int(count)
        self._next_id = int(max_id) + 1
        self._committed_upto = int(max_id)
        #: messages from before this process (a restart's replay) are read from disk; those
        #: added since are also kept in memory until acknowledged, so the publisher never
        #: reads back what it has just written
        self._restored_upto = int(max_id)
        self._mem: dict[int, OutboxEntry] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._ops: list[tuple[str, object]] = []  # ("ins", row) | ("del", id) | ("evt", row), in order
        self._removing: set[int] = set()  # removed in memory, delete not committed yet
        self._flush_task: asyncio.Task[None] | None = None
        self._commit_evt: asyncio.Event | None = None
        self._alarm_level: str | None = None
        self._closed = False
        self._update_alarm()

    # ---- size, bound, alarm -------------------------------------------------------
    def __len__(self) -> int:
        """Messages waiting for a PUBACK (committed or not)."""
        return self._count

    def __bool__(self) -> bool:
        """Always true: an empty outbox is still an outbox (``outbox or default`` must not replace it)."""
        return True

    def fill_ratio(self) -> float:
        return self._count / self.bound

    def full(self) -> bool:
        """At or past the bound: no new session until it drains."""
        return self._count >= self.bound

    @property
    def alarm_level(self) -> str | None:
        return self._alarm_level

    def _update_alarm(self) -> None:
        ratio = self.fill_ratio()
        level = "high" if ratio >= 1.0 else "medium" if ratio > MEDIUM_RATIO else None
        if level != self._alarm_level:
            self._alarm_level = level
            if self.on_alarm is not None:
                try:
                    self.on_alarm(level)
                except Exception:  # an alarm hook must never stop the outbox
                    log.exception("outbox alarm hook failed")

    # ---- writing ------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        """Id of the newest message added (0 when none ever was)."""
        return self._next_id - 1

    @property
    def committed_upto(self) -> int:
        return self._committed_upto

    def add(self, topic: str, payload: bytes, retain: bool,
            event: tuple[str, int, int, int, str] | None = None) -> int:
        """Queue a message for writing; returns its id (its place in the replay order).

        Must be called on the event loop thread. The message is handed to the
        publisher once committed (see :meth:`wait_committed`). ``event`` is
        ``(session, index, boot, seq, ts)`` of a session event: it goes into the
        ledger in the same transaction as the message.
        """
        if self._closed:
            raise RuntimeError("outbox closed")
        entry_id = self._next_id
        self._next_id += 1
        payload = bytes(payload)
        self._ops.append(("ins", (entry_id, topic, payload, 1 if retain else 0, time.time())))
        if event is not None:
            self._ops.append(("evt", tuple(event)))
        self._mem[entry_id] = OutboxEntry(entry_id, topic, payload, bool(retain))
        self._count += 1
        self._update_alarm()
        self._kick()
        return entry_id

    async def put(self, topic: str, payload: bytes, retain: bool) -> int:
        """:meth:`add` and wait until the message is on disk."""
        entry_id = self.add(topic, payload, retain)
        await self.wait_committed(entry_id)
        return entry_id

    def remove(self, ids: Iterable[int]) -> None:
        """The broker acknowledged these: forget them (deleted on disk in order)."""
        if self._closed:
            return
        for entry_id in ids:
            if entry_id in self._removing or entry_id > self.last_id:
                continue
            self._removing.add(entry_id)
            self._mem.pop(entry_id, None)
            self._ops.append(("del", entry_id))
            self._count = max(0, self._count - 1)
        self._update_alarm()
        self._notify()
        self._kick()

    def _kick(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ops and not self._closed:
            batch, self._ops = self._ops, []
            try:
                await loop.run_in_executor(self._executor, self._apply, batch)
            except Exception:
                log.exception("outbox write failed; retrying")
                self._ops = batch + self._ops
                await asyncio.sleep(0.5)
                continue
            inserted = [row[0] for op, row in batch if op == "ins"]  # type: ignore[index]
            for op, value in batch:
                if op == "del":
                    self._removing.discard(value)  # type: ignore[arg-type]
            if inserted:
                self._committed_upto = max(self._committed_upto, max(inserted))
                self._notify()

    def _apply(self, batch: list[tuple[str, object]]) -> None:
        """Worker thread: one transaction per batch, operations in order."""
        cur = self._db.cursor()
        cur.execute("BEGIN")
        try:
            # runs of the same operation go in one executemany, in order
            i = 0
            while i < len(batch):
                op = batch[i][0]
                j = i
                while j < len(batch) and batch[j][0] == op:
                    j += 1
                if op == "ins":
                    cur.executemany("INSERT INTO outbox (id, topic, payload, retain, created) VALUES (?,?,?,?,?)",
                                    [value for _, value in batch[i:j]])  # type: ignore[misc]
                elif op == "evt":  # the first publication of an event is the one on record
                    cur.executemany("INSERT OR IGNORE INTO published_events (session, idx, boot, seq, ts)"
                                    " VALUES (?,?,?,?,?)", [value for _, value in batch[i:j]])  # type: ignore[misc]
                else:
                    cur.executemany("DELETE FROM outbox WHERE id = ?", [(value,) for _, value in batch[i:j]])
                i = j
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _event(self) -> asyncio.Event:
        if self._commit_evt is None:
            self._commit_evt = asyncio.Event()
        return self._commit_evt

    def _notify(self) -> None:
        """Wake everyone waiting for a commit or a removal (nothing to do when no one waits:
        the next waiter makes a fresh event)."""
        evt, self._commit_evt = self._commit_evt, None
        if evt is not None:
            evt.set()

    async def wait_committed(self, entry_id: int) -> None:
        """Wait until message ``entry_id`` (and every one before it) is on disk."""
        while self._committed_upto < entry_id:
            await self._event().wait()

    async def wait_empty(self) -> None:
        """Wait until every message has been acknowledged (removed)."""
        while self._count > 0:
            await self._event().wait()

    async def wait_new(self, after_id: int) -> None:
        """Wait until a message newer than ``after_id`` is committed."""
        await self.wait_committed(after_id + 1)

    # ---- reading ------------------------------------------------------------------
    async def read(self, after_id: int = 0, limit: int = 256) -> list[OutboxEntry]:
        """Committed messages with id > ``after_id``, oldest first (the replay order)."""
        upto = self._committed_upto
        if upto <= after_id:
            return []
        if after_id >= self._restored_upto:  # all written by this process: no disk read
            out = []
            for entry_id in range(after_id + 1, upto + 1):
                entry = self._mem.get(entry_id)
                if entry is not None:
                    out.append(entry)
                    if len(out) >= limit:
                        break
            return out
        rows = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._select, after_id, upto, limit)
        return [OutboxEntry(r[0], r[1], bytes(r[2]), bool(r[3])) for r in rows if r[0] not in self._removing]

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the outbox's worker thread, in order with its writes."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def published_events(self, session: str, indices: Iterable[int]) -> dict[int, tuple[int, int, str]]:
        """``{index: (boot, seq, ts)}`` of the given events of ``session`` that went into the
        outbox (every one queued so far is written first)."""
        await self.wait_committed(self.last_id)
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            return {}
        return await self.call(self._select_published, session, wanted[0], wanted[-1])

    def _select_published(self, session: str, lo: int, hi: int) -> dict[int, tuple[int, int, str]]:
        rows = self._db.execute("SELECT idx, boot, seq, ts FROM published_events WHERE session = ?"
                                " AND idx BETWEEN ? AND ?", (session, lo, hi)).fetchall()
        return {int(r[0]): (int(r[1]), int(r[2]), str(r[3])) for r in rows}

    def _select(self, after_id: int, upto: int, limit: int) -> list[tuple[int, str, bytes, int]]:
        return self._db.execute(
            "SELECT id, topic, payload, retain FROM outbox WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (after_id, upto, limit)).fetchall()

    # ---- closing ------------------------------------------------------------------
    async def aclose(self) -> None:
        """Write what is queued, then close."""
        if self._flush_task is not None and not self._flush_task.done():
            await self._flush_task
        self.close()

    def close(self) -> None:
        """Close now; writes still queued are written synchronously first."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._ops:
            batch, self._ops = self._ops, []
            self._apply(batch)
        self._db.close()
