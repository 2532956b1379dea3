"""What the room (devices + runner + records) offers to its front ends: MQTT, the local
console socket and the CLI. One interface, so every front end behaves the same.

Errors are :class:`CommandError` with the codes of shared/mqtt-api.md.
"""

from __future__ import annotations

from typing import Any, Protocol

from devicehub.bus import Bus

ERROR_CODES = (
    "bad_request", "expired", "retained_command", "unknown_verb", "unknown_program",
    "hard_limit", "soft_limit", "busy", "not_found", "invalid_state", "device_unavailable",
    "outbox_full",
)


class CommandError(Exception):
    def __init__(self, code: str, message: str, *, field: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out


class RoomAPI(Protocol):
    bus: Bus

    def programs(self) -> list[dict[str, Any]]:
        """mqtt-api ``programs`` reply data."""

    def program(self, program_id: str) -> dict[str, Any]:
        """The whole program as JSON; CommandError('unknown_program')."""

    def status(self) -> dict[str, Any]:
        """mqtt-api ``status`` reply data."""

    def session_summary(self, session_id: str) -> dict[str, Any]:
        """Recorded summary of any session; CommandError('not_found')."""

    async def start(self, *, program: str, patient_ref: str, operator: str,
                    params: dict[str, dict[str, Any]] | None = None,
                    acknowledge: list[str] | None = None, origin: str = "mqtt") -> dict[str, Any]:
        """Checks in mqtt-api order; returns {session, state}."""

    async def preflight(self, *, session: str, item: str, done: bool, by: str) -> dict[str, Any]: ...

    async def confirm(self, *, session: str, by: str) -> dict[str, Any]: ...

    async def pause(self, *, session: str, reason: str | None = None) -> dict[str, Any]: ...

    async def resume(self, *, session: str, origin: str = "mqtt", by: str | None = None) -> dict[str, Any]: ...

    async def abort(self, *, session: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Never refused; returns {session, state, safe_state_ms}."""

    def republish(self) -> None:
        """Publish every retained state again on the bus: device states, the session state
        (the last one, from an earlier boot too) and the alarms (``rebirth``)."""
