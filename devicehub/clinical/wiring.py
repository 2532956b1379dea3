"""How the front ends call the clinical verbs: one function per verb taking the room and
the validated request model, so wiring a verb into the MQTT pipeline (or the room's
command table) is one table entry."""

from __future__ import annotations

from typing import Any

from devicehub.clinical import adverse, course_verbs

urgent_payload = adverse.urgent_payload


async def _adverse(room: Any, m: Any) -> dict[str, Any]:
    return await adverse.adverse_event(room, session=m.session, kind=m.kind, severity=m.severity, by=m.by,
                                       score=m.score, onset=m.onset, note=m.note)


async def _course(room: Any, m: Any) -> dict[str, Any]:
    return await course_verbs.course(room, patient_ref=m.patient_ref)


async def _enrol(room: Any, m: Any) -> dict[str, Any]:
    return await course_verbs.enrol(room, patient_ref=m.patient_ref, course=m.course, by=m.by)


async def _course_end(room: Any, m: Any) -> dict[str, Any]:
    return await course_verbs.course_end(room, patient_ref=m.patient_ref, by=m.by, reason=m.reason)


#: verb -> handler(room, request model); MQTT and the console socket use the same
CLINICAL_VERBS = {"adverse_event": _adverse, "course": _course, "enrol": _enrol, "course_end": _course_end}


class _Fields:
    """A console request's fields with attribute access (absent fields are None)."""

    def __init__(self, req: dict[str, Any]) -> None:
        self._req = req

    def __getattr__(self, name: str) -> Any:
        return self._req.get(name)


async def console_op(room: Any, op: str, req: dict[str, Any]) -> dict[str, Any] | None:
    """The console socket's clinical ops (same names as the verbs), or None for another op."""
    handler = CLINICAL_VERBS.get(op)
    if handler is None:
        return None
    return await handler(room, _Fields(req))
