"""The ``course`` verb (console only, minimal): where a patient stands in their course,
as far as the record and the limits tell.

From the patient's last completed session in this room's record: when it ended, the days
since, and the window for the next one by the clinic's course limit (``course.
interval_days``: a floor; before the hard floor a start is refused, before the soft one
it needs an acknowledgement; ``typical`` is the usual interval). The course plan itself
(session k of n) belongs to the treatment-course work (issue 10); this verb gives way to
its ``course`` when that lands.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from devicehub.control import fields as f
from devicehub.control.table import Caller, verb


class CourseFields(f.Fields):
    patient_ref: f.Name


def _day(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).date().isoformat()


def course_of(room: Any, patient_ref: str, now: datetime | None = None) -> dict[str, Any]:
    """``{patient_ref, last_session, last_ended_at, days_since_last, next_due}`` (None where unknown)."""
    now = now or datetime.now(timezone.utc)
    last = room.store.read_last_session_for_patient(patient_ref)
    out: dict[str, Any] = {"patient_ref": patient_ref, "last_session": None, "last_ended_at": None,
                           "days_since_last": None, "next_due": None}
    if not last or not last.get("ended_at"):
        return out
    try:
        ended = datetime.fromisoformat(str(last["ended_at"]).replace("Z", "+00:00"))
    except ValueError:
        return out
    limit = room.limits.course.interval_days
    out.update(last_session=last.get("session"), last_program=last.get("program"), last_ended_at=last["ended_at"],
               days_since_last=round((now - ended).total_seconds() / 86400.0, 1))
    window: dict[str, Any] = {}
    for name, days in (("not_before", limit.hard), ("without_acknowledgement_from", limit.soft),
                       ("typical", getattr(limit, "typical", None))):
        if days is not None:
            window[name] = _day(ended + timedelta(days=float(days)))
    out["next_due"] = window or None
    return out


@verb("course", console=CourseFields, acts=False)
async def course(room: Any, m: Any, caller: Caller) -> Any:
    """The patient's last completed session, the days since, and the next session's window."""
    return course_of(room, m.patient_ref)
