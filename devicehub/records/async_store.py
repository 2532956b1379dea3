"""The record store for asyncio code: every call runs on one dedicated worker thread.

Why: a record write waits for an fsync (``synchronous=FULL``), which can take
milliseconds. Done on the event loop it would stall device I/O and watchdog timers.
Here the SQLite connection is created on, and only ever used from, a single worker
thread; calls are queued to it in the order they are made, so two writes issued by
the same task land in that order. The caller awaits each write: the runner records a
delivery intent *before* telling a device and its result after.

A write whose awaiting task is cancelled still completes on the worker (a thread
cannot be interrupted mid-transaction); it is either fully recorded or not at all.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from devicehub.records.store import RecordError, RecordStore, VerifyResult

T = TypeVar("T")


class AsyncRecordStore:
    """:class:`RecordStore` with the same methods as coroutines, on its own thread.

    ``AsyncRecordStore(path)`` returns at once (the store opens on the worker, before
    any later call); ``await AsyncRecordStore.open(path)`` also waits for the open so
    that a bad path fails there. Use ``async with`` or ``await close()``.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
        self._store: RecordStore | None = None
        self._closed = False
        self._opening = self._executor.submit(self._open, path, readonly)

    def _open(self, path: str | os.PathLike[str], readonly: bool) -> None:
        self._store = RecordStore(path, readonly=readonly)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> "AsyncRecordStore":
        store = cls(path, readonly=readonly)
        try:
            await asyncio.wrap_future(store._opening)
        except BaseException:
            store._executor.shutdown(wait=False)
            store._closed = True
            raise
        return store

    async def __aenter__(self) -> "AsyncRecordStore":
        await asyncio.wrap_future(self._opening)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _on_worker(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._opening.result()  # already done: the worker ran the open first
        if self._store is None:
            raise RecordError("record store is not open")
        return fn(self._store, *args, **kwargs)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RecordError("record store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._on_worker, fn, *args, **kwargs))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(store, *args, **kwargs)`` on the worker thread, e.g.
        ``await astore.call(render_report, session_id)``."""
        return await self._run(fn, *args, **kwargs)

    async def close(self) -> None:
        """Close the connection on its own thread, then let the thread go."""
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        finally:
            self._executor.shutdown(wait=False)

    # ------------------------------------------------------------ same API as RecordStore

    async def next_boot(self) -> int:
        return await self._run(RecordStore.next_boot)

    async def current_boot(self) -> int:
        return await self._run(RecordStore.current_boot)

    async def create_session(self, session_id: str, *, program_id: str, program_version: str,
                             program_sha256: str, program_json: dict[str, Any] | str,
                             patient_ref: str, operator: str, origin: str,
                             params: dict[str, Any] | None, acknowledgements: Iterable[str] | None,
                             created_at: datetime | None = None) -> None:
        await self._run(RecordStore.create_session, session_id, program_id=program_id,
                        program_version=program_version, program_sha256=program_sha256,
                        program_json=program_json, patient_ref=patient_ref, operator=operator,
                        origin=origin, params=params, acknowledgements=list(acknowledgements or []),
                        created_at=created_at)

    async def append_event(self, session_id: str, event: str, data: dict[str, Any] | None = None,
                           ts: datetime | None = None) -> int:
        return await self._run(RecordStore.append_event, session_id, event, dict(data or {}), ts)

    async def delivery_intent(self, session_id: str, *, step_id: str, zone: str | None,
                              point: int | str | None, device: str, planned: dict[str, Any],
                              ts: datetime | None = None) -> int:
        return await self._run(RecordStore.delivery_intent, session_id, step_id=step_id, zone=zone,
                               point=point, device=device, planned=planned, ts=ts)

    async def delivery_result(self, delivery_id: int, *, delivered: dict[str, Any], status: str,
                              event_idx: int | None = None, ts: datetime | None = None) -> int:
        return await self._run(RecordStore.delivery_result, delivery_id, delivered=delivered,
                               status=status, event_idx=event_idx, ts=ts)

    async def record_refusal(self, *, program_id: str, patient_ref: str, operator: str, origin: str,
                             code: str, details: list[dict[str, Any]] | None = None,
                             ts: datetime | None = None) -> int:
        return await self._run(RecordStore.record_refusal, program_id=program_id, patient_ref=patient_ref,
                               operator=operator, origin=origin, code=code, details=details, ts=ts)

    async def exists(self, session_id: str) -> bool:
        return await self._run(RecordStore.exists, session_id)

    async def recorded_program(self, session_id: str) -> dict[str, Any] | None:
        return await self._run(RecordStore.recorded_program, session_id)

    async def session(self, session_id: str) -> dict[str, Any] | None:
        return await self._run(RecordStore.session, session_id)

    async def events(self, session_id: str, after: int = 0) -> list[dict[str, Any]]:
        return await self._run(RecordStore.events, session_id, after)

    async def deliveries(self, session_id: str) -> list[dict[str, Any]]:
        return await self._run(RecordStore.deliveries, session_id)

    async def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(RecordStore.list_sessions, limit)

    async def unfinished_sessions(self) -> list[str]:
        return await self._run(RecordStore.unfinished_sessions)

    async def last_session_for_patient(self, patient_ref: str) -> dict[str, Any] | None:
        return await self._run(RecordStore.last_session_for_patient, patient_ref)

    async def refusals(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run(RecordStore.refusals, limit)

    async def verify(self, session_id: str) -> VerifyResult:
        return await self._run(RecordStore.verify, session_id)
