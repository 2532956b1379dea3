"""The ``check`` verb: what a start would find, without starting anything."""

from __future__ import annotations

from typing import Any

from devicehub.room_api import CommandError


def finding_detail(f: Any) -> dict[str, Any]:
    """``{id, field, value, limit, unit, severity}``: severity ``hard``, ``soft`` or ``error``
    (outside the device's capability)."""
    d = f.detail() if callable(getattr(f, "detail", None)) else None
    if not isinstance(d, dict):
        d = {"id": f.id, "field": f.field, "value": f.value, "limit": f.limit, "unit": f.unit}
    return {**d, "severity": f.severity}


def params_error(exc: Exception) -> CommandError:
    """A program's overrides that do not validate, as ``bad_request`` naming the first field."""
    problems = getattr(exc, "problems", [])
    first = problems[0] if problems else None
    return CommandError("bad_request", "; ".join(str(p) for p in problems) or str(exc),
                        field=getattr(first, "field", "params"), details=[p.to_dict() for p in problems])


def dry_run(room: Any, *, program: str, patient_ref: str | None = None, params: dict[str, Any] | None = None,
            acknowledge: list[str] | None = None) -> dict[str, Any]:
    """The analysis of ``program`` in ``room`` for ``patient_ref``: duration, points, totals,
    every finding (the course's included), which soft limits still need an acknowledgement,
    the preflight checklist and whether a start would be accepted."""
    from devicehub.clinical.course_verbs import dry_run_course
    from devicehub.models.loading import InputError
    from devicehub.validation import analyse

    prog, sha, _raw = room._get_program(program)
    try:
        analysis = analyse(prog, room.config, room.limits, params=params or None,
                           acknowledged=tuple(acknowledge or ()))
    except InputError as exc:
        raise params_error(exc) from None
    findings = list(analysis.findings) + (room._course_findings(prog, patient_ref) if patient_ref else [])
    acked = set(acknowledge or ())
    out = analysis.to_dict()
    out.update({
        "sha256": sha,
        "indication": getattr(prog, "indication", None),
        "findings": [{**finding_detail(f), "message": f.message} for f in findings],
        "needs_acknowledgement": sorted({f.id for f in findings if f.severity == "soft" and f.id not in acked}),
        "startable": not any(f.severity in ("error", "hard") for f in findings)
        and all(f.id in acked for f in findings if f.severity == "soft"),
        "preflight": [{"id": i.id, "text": i.text, "kind": i.kind, "required": i.required} for i in prog.preflight],
        "course": dry_run_course(room, patient_ref),
    })
    return out
