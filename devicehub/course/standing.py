"""Where a patient stands in a course: the ``course`` verb's data, computed from the record.

The rules are shared/mqtt-api.md "Courses": a session's ``number`` is its place among the
course's completed sessions; a phase ends after its number of completed sessions
(aborted and failed ones do not count); days are 24-hour periods from the ``ended`` time
of the patient's last session that delivered anything (in the course or not);
``next_due`` is that time plus the next session's phase ``min`` and ``max`` days.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from devicehub.course import records
from devicehub.course.plan import CoursePlan
from devicehub.records.store import RecordStore, format_ts, parse_ts


def plan_of(course: dict[str, Any]) -> CoursePlan:
    """The plan as recorded at enrolment (later edits of the file do not change a course)."""
    return CoursePlan.model_validate(course["plan"], strict=False)


def last_delivered_end(sessions: list[dict[str, Any]]) -> datetime | None:
    ends = [parse_ts(s["ended"]) for s in sessions if s["delivered"] and s["ended"]]
    return max(ends) if ends else None


def standing(store: RecordStore, patient_ref: str, now: datetime | None = None) -> dict[str, Any] | None:
    """The patient's latest course as the ``course`` verb returns it (None: never enrolled).

    Private keys (``_plan``, ``_completed``, ``_phase``, ``_last_end``) are for the hub's
    own checks; :func:`public` drops them.
    """
    course = records.latest(store, patient_ref)
    if course is None:
        return None
    now = now or datetime.now(timezone.utc)
    plan = plan_of(course)
    all_sessions = records.patient_sessions(store, patient_ref)
    enrolled = course["enrolled"]
    ended = course["ended"]
    listed = [s for s in all_sessions if s["created"] >= enrolled and (ended is None or s["created"] <= ended)]
    completed = 0
    out_sessions = []
    plan_end: str | None = None
    for s in listed:
        phase_id = number = None
        if s["state"] == "completed" and (plan_end is None):
            phase = plan.phase_at(completed)
            if phase is not None:
                completed += 1
                number, phase_id = completed, phase.id
                if completed == plan.total_sessions:
                    plan_end = s["ended"]
        out_sessions.append({"session": s["session"], "program": s["program"], "state": s["state"],
                             "created": s["created"], "ended": s["ended"], "phase": phase_id, "number": number})
    ended_reason = course["ended_reason"]
    if ended is None and plan_end is not None:
        ended, ended_reason = plan_end, "completed"
    current = plan.phase_at(completed)
    last_end = last_delivered_end(all_sessions)
    next_due = None
    if ended is None and current is not None and last_end is not None:
        next_due = {"from": format_ts(last_end + timedelta(days=current.interval_days.min)),
                    "to": format_ts(last_end + timedelta(days=current.interval_days.max))}
    overdue = next_due is not None and now > parse_ts(next_due["to"])
    phase_id = current.id if current is not None else plan.phases[-1].id
    return {
        "patient_ref": patient_ref, "course": course["course"], "enrolled": enrolled, "ended": ended,
        "ended_reason": ended_reason, "phase": phase_id, "sessions": out_sessions, "next_due": next_due,
        "overdue": overdue,
        "_plan": plan, "_completed": completed, "_phase": current, "_last_end": last_end,
        "_enrolled_by": course["by"], "_ended_by": course["ended_by"],
    }


def public(view: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if view is None else {k: v for k, v in view.items() if not k.startswith("_")}


def position(view: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{course, phase, number}`` of the next session for a course that has not ended."""
    if view is None or view["ended"] is not None or view["_phase"] is None:
        return None
    return {"course": view["course"], "phase": view["_phase"].id, "number": view["_completed"] + 1}


def phase_progress(view: dict[str, Any]) -> tuple[int, int]:
    """(k, n): the next session is the k-th of the n of its phase."""
    plan: CoursePlan = view["_plan"]
    done = view["_completed"]
    for phase in plan.phases:
        if done < phase.sessions:
            return done + 1, phase.sessions
        done -= phase.sessions
    last = plan.phases[-1]
    return last.sessions, last.sessions


def start_findings(view: dict[str, Any] | None, program_id: str, now: datetime | None = None) -> list[Any]:
    """The soft limits ``course.phase_interval`` and ``course.program`` of a start."""
    from devicehub.models.limits import Finding

    if view is None or view["ended"] is not None or view["_phase"] is None:
        return []
    phase = view["_phase"]
    out = []
    last_end = view["_last_end"]
    if last_end is not None:
        days = ((now or datetime.now(timezone.utc)) - last_end).total_seconds() / 86400.0
        if days < phase.interval_days.min:
            out.append(Finding(
                id="course.phase_interval", severity="soft", field="course.phase_interval", value=round(days, 2),
                limit=phase.interval_days.min, unit="days",
                message=(f"course.phase_interval: {days:.1f} days since the last session, the {phase.id} phase of "
                         f"{view['course']} asks at least {phase.interval_days.min} days")))
    if program_id not in phase.programs:
        out.append(Finding(
            id="course.program", severity="soft", field="course.program", value=program_id,
            limit=list(phase.programs), unit=None,
            message=(f"course.program: program {program_id} is not one of the {phase.id} phase's programs "
                     f"({', '.join(phase.programs)})")))
    return out
