"""The store as the hub uses it: writes (and slow reads) on the record's worker thread,
plus a few quick read-only look-ups from the event loop for request checks.

The look-ups (one session's summary, a patient's last session) read a WAL database on
a separate read-only connection: readers never wait for the writer, and the queries
touch a handful of rows.
"""

from __future__ import annotations

import os
from typing import Any

from devicehub.records.async_store import AsyncRecordStore
from devicehub.records.store import RecordError, RecordStore, check_session_id


class HubStore(AsyncRecordStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._reader: RecordStore | None = None

    def _read(self) -> RecordStore:
        if self._reader is None:
            self._opening.result()  # the writer created the file and its schema
            self._reader = RecordStore(self.path, readonly=True)
        return self._reader

    def read(self, fn: Any, *args: Any) -> Any:
        """``fn(store, *args)`` on the read-only connection, from the event loop (quick look-ups
        only, e.g. a patient's course standing for a start's checks)."""
        return fn(self._read(), *args)

    def read_session(self, session_id: str) -> dict[str, Any] | None:
        try:
            check_session_id(session_id)
        except RecordError:
            return None
        return self._read().session(session_id)

    def read_last_session_for_patient(self, patient_ref: str) -> dict[str, Any] | None:
        return self._read().last_session_for_patient(patient_ref)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await super().close()
