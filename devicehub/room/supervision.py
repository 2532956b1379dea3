"""Watching a session to its end (the devices' running mode, what is left in flight) and
writing its report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from devicehub.room_api import CommandError
from devicehub.runner.session import SessionRunner


class RoomSupervision:
    """The session watch and reports of :class:`devicehub.room.Room`."""

    async def _watch(self, runner: SessionRunner) -> None:
        self.devices.set_running(True)
        try:
            await runner.wait()
        finally:
            self.devices.set_running(False)
            # a delivery its device could not say at the stop is settled at its next answer
            summary = self.store.read_session(runner.session_id) or {}
            for d in summary.get("in_flight") or []:
                self.devices.unsettled.add(d["device"])
        await self._write_report(runner.session_id)

    async def report(self, session_id: str) -> dict[str, Any]:
        """Where the session's report is; written now when it was not yet (the console's ``report``)."""

        self.session_summary(session_id)  # not_found for an unknown session
        runner = self.current
        if runner is not None and runner.session_id == session_id and runner.finished and self._watch_task is not None:
            await asyncio.shield(self._watch_task)  # a session's own report is written when it ends
        path = self.reports.get(session_id)
        if path is None:
            path = await self._write_report(session_id)
        if path is None:
            raise CommandError("invalid_state", f"the report of session {session_id} could not be written")
        return {"session": session_id, "path": str(path)}

    async def _write_report(self, session_id: str) -> Path | None:
        """The session's HTML report (devicehub/report), written when it ends and again when an
        adverse event is recorded after the end; off the event loop, one at a time."""
        from devicehub.report.files import write_in_child

        async with self._report_lock:
            path = await write_in_child(self.config, session_id)  # logs and returns None on failure
            if path is not None:
                self.reports[session_id] = path
            return path

    def report_later(self, session_id: str) -> asyncio.Task[Any]:
        """:meth:`_write_report` beside the caller (an adverse event after the end)."""
        task = asyncio.get_running_loop().create_task(self._write_report(session_id))
        self._report_tasks.add(task)
        task.add_done_callback(self._report_tasks.discard)
        return task
