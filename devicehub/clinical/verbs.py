"""The clinical verbs in the room's command table: ``adverse_event``, ``course``, ``enrol``,
``course_end`` (MQTT and the console socket alike; shared/mqtt-api.md, "Adverse events and
the course"). The logic is in :mod:`devicehub.clinical.adverse` and
:mod:`devicehub.clinical.course_verbs`."""

from __future__ import annotations

from typing import Any

from devicehub.clinical import adverse, course_verbs
from devicehub.clinical import fields as f
from devicehub.control.table import Caller, verb


@verb("adverse_event", mqtt=f.AdverseEventFields, console=f.AdverseEventFields)
async def adverse_event(room: Any, m: Any, caller: Caller) -> Any:
    """Record an adverse event against a session; a severe one makes the room safe first."""
    return await adverse.adverse_event(room, session=m.session, kind=m.kind, severity=m.severity, by=m.by,
                                       score=m.score, onset=m.onset, note=m.note, t_trigger=caller.t_arrival)


@verb("course", mqtt=f.CourseFields, console=f.CourseFields, acts=False)
async def course(room: Any, m: Any, caller: Caller) -> Any:
    """A patient's latest course: sessions, phase, next due window."""
    return await course_verbs.course(room, patient_ref=m.patient_ref)


@verb("enrol", mqtt=f.EnrolFields, console=f.EnrolFields)
async def enrol(room: Any, m: Any, caller: Caller) -> Any:
    """Enrol a patient in a course plan."""
    return await course_verbs.enrol(room, patient_ref=m.patient_ref, course=m.course, by=m.by)


@verb("course_end", mqtt=f.CourseEndFields, console=f.CourseEndFields)
async def course_end(room: Any, m: Any, caller: Caller) -> Any:
    """End a patient's course."""
    return await course_verbs.course_end(room, patient_ref=m.patient_ref, by=m.by, reason=m.reason)
