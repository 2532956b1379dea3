"""``devicehub courses``: course plans and the patients enrolled in them.

``check FILE...`` validates plans (exit 0, or 2 with one line per problem naming the
field); ``enrol``, ``show``, ``due`` and ``end`` work on the record (through the hub
daemon's console socket when one holds the room, else on the store directly). Dates are
shown in the clinic's time zone (hub config ``timezone``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from devicehub.commands.sessions import _guarded, _open, config_doc


def register(subparsers: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", metavar="PATH", help="the record store (SQLite file); wins over --config")
    where.add_argument("--config", metavar="FILE", help="hub config (default configs/hub.yaml)")
    parser = subparsers.add_parser("courses", help="course plans and enrolled patients",
                                   description="Check course plans; enrol patients, show and end their courses.")
    sub = parser.add_subparsers(dest="courses_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("check", help="validate course plan files (exit 0 ok, 2 not)")
    p.add_argument("files", nargs="+", metavar="FILE", type=Path)
    p.add_argument("--config", metavar="FILE",
                   help="hub config whose program library the phases' programs must be in (default configs/hub.yaml)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("enrol", parents=[where], help="enrol a patient in a course plan")
    p.add_argument("patient_ref")
    p.add_argument("course", help="a course plan id (configs/courses/<id>.yaml)")
    p.add_argument("--by", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(cmd_enrol))

    p = sub.add_parser("show", parents=[where], help="a patient's course: sessions, next due window")
    p.add_argument("patient_ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(cmd_show))

    p = sub.add_parser("due", parents=[where], help="patients due (within --days) or overdue")
    p.add_argument("--days", type=int, default=7, help="due within this many days (default 7)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(cmd_due))

    p = sub.add_parser("end", parents=[where], help="end a patient's course")
    p.add_argument("patient_ref")
    p.add_argument("--by", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(cmd_end))


def cmd_check(args: argparse.Namespace) -> int:
    from devicehub.course.plan import load_plan
    from devicehub.models.loading import InputError

    bad = 0
    for path in args.files:
        try:
            plan = load_plan(path, expect_id=path.stem)
        except InputError as exc:
            bad += 1
            for line in exc.lines():
                print(line, file=sys.stderr)
            continue
        missing = _unknown_programs(args, plan)
        if missing:
            bad += 1
            for field, program in missing:
                print(f"{path}: {field}: no program {program!r} in the library", file=sys.stderr)
            continue
        phases = "; ".join(f"{p.id}: {p.sessions} sessions of {', '.join(p.programs)} every "
                           f"{p.interval_days.min}-{p.interval_days.max} days" for p in plan.phases)
        print(f"{path}: ok: {plan.id} ({plan.title}), {plan.total_sessions} sessions: {phases}")
    return 2 if bad else 0


def _unknown_programs(args: argparse.Namespace, plan: Any) -> list[tuple[str, str]]:
    """(field, program id) of every phase program not in the config's library (none when the
    library is not known: no config)."""
    from devicehub.commands.clinic_access import config_path_key

    library = config_path_key(args, "programs", None) if config_doc(args) else None
    if library is None or not library.is_dir():
        return []
    known = {p.stem for p in library.iterdir() if p.suffix in (".yaml", ".yml")}
    return [(f"phases[{i}].programs[{j}]", prog) for i, phase in enumerate(plan.phases)
            for j, prog in enumerate(phase.programs) if prog not in known]


def _zone(args: argparse.Namespace) -> str:
    from devicehub.report.collect import ReportOptions

    return ReportOptions.from_config(config_doc(args)).timezone


def _print_course(view: dict[str, Any], zone: str) -> None:
    from devicehub.report.collect import local

    print(f"Patient {view['patient_ref']}: course {view['course']}, enrolled {local(view['enrolled'], zone)}")
    if view["ended"]:
        print(f"  ended {local(view['ended'], zone)} ({view['ended_reason']})")
    else:
        print(f"  current phase: {view['phase']}")
    print(f"  sessions ({len(view['sessions'])}):")
    for s in view["sessions"]:
        where = f"{s['phase']} #{s['number']}" if s["number"] else "does not count"
        print(f"    {s['session']}  {s['program']:<18} {s['state']:<10} {local(s['created'], zone)}  {where}")
    due = view["next_due"]
    if due:
        print(f"  next due: {local(due['from'], zone, date_only=True)} to {local(due['to'], zone, date_only=True)}"
              + ("  OVERDUE" if view["overdue"] else ""))
    elif not view["ended"]:
        print("  next due: no session delivered yet; the first may be booked now")


def _reply(args: argparse.Namespace, reply: dict[str, Any], what: str) -> int:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        print(f"devicehub courses {what}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply["data"], indent=2))
    else:
        _print_course(reply["data"], _zone(args))
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    from devicehub.clinical.course_verbs import enrol
    from devicehub.commands.clinic_access import call

    reply = call(args, "enrol", enrol, {"patient_ref": args.patient_ref, "course": args.course, "by": args.by})
    return _reply(args, reply, "enrol")


def cmd_end(args: argparse.Namespace) -> int:
    from devicehub.clinical.course_verbs import course_end
    from devicehub.commands.clinic_access import call

    reply = call(args, "course_end", course_end,
                 {"patient_ref": args.patient_ref, "by": args.by, "reason": args.reason})
    return _reply(args, reply, "end")


def cmd_show(args: argparse.Namespace) -> int:
    from devicehub.course.standing import public, standing

    with _open(args) as store:
        view = public(standing(store, args.patient_ref))
    if view is None:
        print(f"devicehub courses show: patient {args.patient_ref!r} was never enrolled", file=sys.stderr)
        return 2
    return _reply(args, {"ok": True, "data": view}, "show")


def cmd_due(args: argparse.Namespace) -> int:
    from devicehub.course import records
    from devicehub.course.standing import public, standing
    from devicehub.report.collect import local

    now = datetime.now(timezone.utc)
    horizon = now + timedelta(days=args.days)
    due = []
    with _open(args) as store:
        for patient in records.patients(store):
            view = public(standing(store, patient, now))
            if view is None or view["ended"] or not view["next_due"]:
                continue
            if view["overdue"] or datetime.fromisoformat(view["next_due"]["from"].replace("Z", "+00:00")) <= horizon:
                due.append(view)
    if args.json:
        print(json.dumps(due, indent=2))
        return 0
    if not due:
        print(f"No patient due within {args.days} days.")
        return 0
    zone = _zone(args)
    for v in sorted(due, key=lambda v: v["next_due"]["to"]):
        print(f"{v['patient_ref']:<16} {v['course']:<20} {v['phase']:<14} "
              f"{local(v['next_due']['from'], zone, date_only=True)} to "
              f"{local(v['next_due']['to'], zone, date_only=True)}" + ("  OVERDUE" if v["overdue"] else ""))
    return 0
