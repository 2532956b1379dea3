"""The course verbs (``course``, ``enrol``, ``course_end``) and the course checks of a start.

Each verb is ``async def verb(room, ...) -> dict`` raising ``CommandError``, so the MQTT
pipeline, the console socket and (later) the room's command table only wire them.
"""

from __future__ import annotations

from typing import Any

from devicehub.course import records
from devicehub.course.plan import CoursePlans
from devicehub.course.standing import position, public, standing, start_findings
from devicehub.models.loading import InputError
from devicehub.room_api import CommandError


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise CommandError("bad_request", f"{field} must be a non-empty string", field=field)
    return value


def view_now(room: Any, patient_ref: str) -> dict[str, Any] | None:
    """The patient's standing, read from the event loop (a handful of rows) on the hub
    store's read-only connection (a plain RecordStore is read directly)."""
    read = getattr(room.store, "read", None)
    # no try: a course record that cannot be read refuses the start rather than skip its checks
    return read(standing, patient_ref) if callable(read) else standing(room.store, patient_ref)


def start_checks(room: Any, program_id: str, patient_ref: str) -> list[Any]:
    """Soft limits ``course.phase_interval`` and ``course.program`` for an enrolled patient."""
    return start_findings(view_now(room, patient_ref), program_id)


def start_position(room: Any, patient_ref: str) -> dict[str, Any] | None:
    return position(view_now(room, patient_ref))


def dry_run_course(room: Any, patient_ref: str | None) -> dict[str, Any] | None:
    """The ``check`` verb's ``course``: where a start for this patient would stand, with a line
    for the technician: "session k of n of phase P (course C), next due D1 to D2"."""
    from devicehub.course.standing import phase_progress
    from devicehub.report.collect import local

    view = view_now(room, patient_ref) if patient_ref else None
    pos = position(view)
    if view is None or pos is None:
        return None
    k, n = phase_progress(view)
    zone = getattr(room.config, "timezone", "UTC")
    due = view["next_due"]
    when = (f"next due {local(due['from'], zone, date_only=True)} to {local(due['to'], zone, date_only=True)}"
            + (" (overdue)" if view["overdue"] else "") if due else "no session delivered yet: due now")
    return {**pos, "session_in_phase": k, "sessions_in_phase": n, "next_due": due, "overdue": view["overdue"],
            "text": f"session {k} of {n} of phase {pos['phase']} (course {pos['course']}), {when}"}


async def course(room: Any, *, patient_ref: Any) -> dict[str, Any]:
    patient = _name(patient_ref, "patient_ref")
    view = await room.store.call(standing, patient)
    if view is None:
        raise CommandError("not_found", f"patient {patient!r} was never enrolled in a course", field="patient_ref")
    return public(view)


async def enrol(room: Any, *, patient_ref: Any, course: Any, by: Any) -> dict[str, Any]:
    patient = _name(patient_ref, "patient_ref")
    plan_id = _name(course, "course")
    who = _name(by, "by")
    plans = CoursePlans(getattr(room.config, "courses", None))
    try:
        entry = plans.get(plan_id)
    except KeyError:
        raise CommandError("not_found", f"no course plan {plan_id!r}", field="course") from None
    except InputError as exc:
        raise CommandError("not_found", f"course plan {plan_id!r} cannot be read: {exc}", field="course") from None
    current = await room.store.call(standing, patient)
    if current is not None and current["ended"] is None:
        raise CommandError("invalid_state", f"patient {patient} is in course {current['course']} since "
                                            f"{current['enrolled']}; end it first", field="patient_ref")
    active = room.active_session() if callable(getattr(room, "active_session", None)) else None
    under_way = active is not None and active.patient_ref == patient
    if not under_way:
        sessions = await room.store.call(records.patient_sessions, patient)
        under_way = any(s["state"] not in ("completed", "aborted", "failed") for s in sessions)
    if under_way:
        raise CommandError("invalid_state", f"patient {patient} has a session under way", field="patient_ref")
    await room.store.call(records.append, patient, "enrolled",
                          {"course": plan_id, "by": who, "plan": entry.plan.model_dump(mode="json"),
                           "plan_sha256": entry.sha256})
    return public(await room.store.call(standing, patient))


async def course_end(room: Any, *, patient_ref: Any, by: Any, reason: Any) -> dict[str, Any]:
    patient = _name(patient_ref, "patient_ref")
    who = _name(by, "by")
    why = _name(reason, "reason")
    current = await room.store.call(standing, patient)
    if current is None or current["ended"] is not None:
        raise CommandError("not_found", f"patient {patient} has no course that has not ended", field="patient_ref")
    await room.store.call(records.append, patient, "ended", {"course": current["course"], "by": who, "reason": why})
    return public(await room.store.call(standing, patient))
