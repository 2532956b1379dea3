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

The store is built from modules that each hold one part: ``connection.py`` (the
connection, its transactions, shared lookups), ``schema.py`` (tables and triggers),
``chain.py`` (canonical JSON and the hash chains), ``derive.py`` (state, totals and steps
derived from the rows), ``writers.py`` and ``readers.py`` (the methods of the store).
This module assembles :class:`RecordStore` and keeps the names callers import from here.
"""

from __future__ import annotations

from devicehub.records.chain import (  # noqa: F401 - re-exported
    VerifyResult,
    _delivery_hash,
    _event_hash,
    _genesis,
    _sha256,
    canonical_json,
    format_ts,
)
from devicehub.records.derive import (  # noqa: F401 - re-exported
    DELIVERY_DONE,
    MAX_FIELDS,
    STATE_CHANGING_EVENTS,
    STATE_EVENT,
    STATES,
    SUMMARY_EVENTS,
    TERMINAL_EVENTS,
    TERMINAL_STATES,
    _add_numbers,
    _fold_states,
)
from devicehub.records.errors import (  # noqa: F401 - re-exported
    RecordError,
    RecordIntegrityError,
    SessionNotFound,
    check_session_id,
    new_session_id,
)
from devicehub.records.readers import RecordReader
from devicehub.records.schema import SCHEMA_VERSION  # noqa: F401 - re-exported
from devicehub.records.writers import RecordWriter
from devicehub.timefmt import parse_ts  # noqa: F401 - re-exported


class RecordStore(RecordWriter, RecordReader):
    """The session record on one SQLite file; see the module docstring for why.

    ``readonly=True`` opens an existing store for reading (the CLI), never creating it.
    """
