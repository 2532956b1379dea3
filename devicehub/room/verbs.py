"""The RoomAPI verbs on the active session: start, preflight, confirm, recover, pause and
resume, with the runner's refusals answered as command errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from devicehub.room_api import CommandError
from devicehub.runner.session import InvalidState, NotFound, SessionRunner


class RoomVerbs:
    """The session verbs of :class:`devicehub.room.Room` (abort is in ``safe_state.py``)."""

    # ================================================================== RoomAPI verbs
    async def start(self, *, program: str, patient_ref: str, operator: str,
                    params: dict[str, dict[str, Any]] | None = None,
                    acknowledge: list[str] | None = None, origin: str = "mqtt", **at_chair: Any) -> dict[str, Any]:
        """The ``start`` verb; ``at_chair`` carries the console's members (start_session's keywords)."""
        runner = await self.start_session(program=program, patient_ref=patient_ref, operator=operator,
                                          params=params, acknowledge=acknowledge, origin=origin, **at_chair)
        return {"session": runner.session_id, "state": runner.state, "course": runner.course}

    def _session(self, session_id: str | None) -> SessionRunner:
        if not isinstance(session_id, str) or not session_id:
            raise CommandError("bad_request", "session must be a non-empty string", field="session")
        runner = self.current
        if runner is None or runner.session_id != session_id:
            if self.store.read_session(session_id) is not None:
                raise CommandError("invalid_state", f"session {session_id} is not the room's active session",
                                   field="session")
            raise CommandError("not_found", f"no session {session_id!r}", field="session")
        return runner

    async def preflight(self, *, session: str, item: str, done: bool, by: str) -> dict[str, Any]:
        runner = self._session(session)
        with _as_command_errors(not_found_field="item"):
            await runner.preflight(item, done, by)
        return {"session": runner.session_id, "state": runner.state, "pending_items": runner.pending_preflight()}

    async def confirm(self, *, session: str, by: str) -> dict[str, Any]:
        from devicehub.faults import check_devices_for_rest

        runner = self._session(session)
        if runner.state == "awaiting_confirmation" and runner.started_at is not None:
            await check_devices_for_rest(self, runner)  # a resume's confirmation: the room again
        with _as_command_errors():
            await runner.confirm(by)
        return {"session": runner.session_id, "state": runner.state}

    async def recover(self, *, session: str, by: str) -> dict[str, Any]:
        """Clear the device fault a session is paused by (console only); the session stays paused."""
        from devicehub.runner.recovery import RecoveryRefused

        runner = self._session(session)
        try:
            with _as_command_errors():
                recovery = await runner.recover(by)
        except RecoveryRefused as exc:
            recovery = runner.recovery or {}
            raise CommandError("invalid_state", str(exc), field="session",
                               details=[{k: recovery.get(k) for k in ("device", "code", "text", "hint")}]) from None
        return {"session": runner.session_id, "state": runner.state, "recovered": recovery}

    async def pause(self, *, session: str, reason: str | None = None) -> dict[str, Any]:
        runner = self._session(session)
        with _as_command_errors():
            await runner.pause(reason)
        # a delivery its device could not say at the pause is settled at the device's next answer
        self.devices.unsettled.update(runner.unsettled_devices())
        return {"session": runner.session_id, "state": runner.state}

    async def resume(self, *, session: str, origin: str = "mqtt", by: str | None = None) -> dict[str, Any]:
        from devicehub.faults import check_devices_for_rest

        runner = self._session(session)
        if runner.state != "paused":
            raise CommandError("invalid_state", f"session is {runner.state}; only a paused session can resume")
        if runner.recovery is not None:  # invalid_state comes before device_unavailable (mqtt-api)
            with _as_command_errors():
                await runner.resume(remote=origin == "mqtt", by=by)  # refused: recover first
        await check_devices_for_rest(self, runner)  # the session stays paused when one is missing
        with _as_command_errors():
            await runner.resume(remote=origin == "mqtt", by=by)
        return {"session": runner.session_id, "state": runner.state}


@contextlib.contextmanager
def _as_command_errors(not_found_field: str | None = None) -> Iterator[None]:
    """The runner's refusals, as the error codes the front ends answer with."""
    try:
        yield
    except NotFound as exc:
        raise CommandError("not_found", str(exc), field=not_found_field) from None
    except InvalidState as exc:
        raise CommandError("invalid_state", str(exc)) from None

