"""``devicehub sessions``: read the session record (list, show, verify, report).

The store is opened read-only, so these commands are safe to run while the hub is
writing. Where it is: ``--store PATH``, else the ``store`` key of ``--config`` (a path
relative to the config file), else ``configs/hub.yaml`` in the current directory.
The config is read with a bare YAML load on purpose: listing the record must work
even when the rest of the hub config does not validate.

Exit codes: 0 success; ``verify``: 1 the record was tampered with; 2 unknown session,
no store, or bad arguments. Never a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import yaml

from devicehub.records.store import RecordError, RecordStore, SessionNotFound

DEFAULT_CONFIG = Path("configs/hub.yaml")


class _UsageError(Exception):
    """A problem the user can fix (no store, unknown id): message, exit 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", metavar="PATH", help="the record store (SQLite file); wins over --config")
    where.add_argument("--config", metavar="FILE",
                       help=f"hub config whose 'store' key names the store (default {DEFAULT_CONFIG})")

    parser = subparsers.add_parser("sessions", help="read the session record",
                                   description="List, show, verify and report recorded sessions.")
    sub = parser.add_subparsers(dest="sessions_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("list", parents=[where], help="recorded sessions, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guarded(cmd_list))

    p = sub.add_parser("show", parents=[where], help="one session: summary, events, deliveries")
    p.add_argument("session")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guarded(cmd_show))

    p = sub.add_parser("verify", parents=[where],
                       help="check a session's hash chain (exit 0 ok, 1 tampered, 2 not found)")
    p.add_argument("session")
    p.set_defaults(func=_guarded(cmd_verify))

    p = sub.add_parser("report", parents=[where], help="the session's report (self-contained HTML, or Markdown)")
    p.add_argument("session")
    p.add_argument("--format", choices=("html", "md"), default="html", help="html (default) or md")
    p.add_argument("--out", metavar="PATH",
                   help="write the report there (a directory: <PATH>/<session>.<format>) instead of printing it")
    p.set_defaults(func=_guarded(cmd_report))

    from devicehub.commands.adverse import register_adverse

    register_adverse(sub, where, _guarded)


def _guarded(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _UsageError as exc:
            print(f"devicehub sessions: {exc}", file=sys.stderr)
            return 2
        except SessionNotFound:
            print(f"devicehub sessions: no session {args.session!r} in the record", file=sys.stderr)
            return 2
        except (RecordError, sqlite3.DatabaseError, OSError) as exc:
            print(f"devicehub sessions: {exc}", file=sys.stderr)
            return 2
    return run


def store_path(args: argparse.Namespace) -> Path:
    """Where the record store is, from --store, --config or the default config."""
    if args.store:
        return Path(args.store)
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    if not config.is_file():
        if args.config:
            raise _UsageError(f"config file {config} not found")
        raise _UsageError(f"give --store PATH or --config FILE ({DEFAULT_CONFIG} not found)")
    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _UsageError(f"config file {config} is not valid YAML: {exc}") from exc
    store = doc.get("store") if isinstance(doc, dict) else None
    if not isinstance(store, str) or not store:
        raise _UsageError(f"config file {config} has no 'store' path")
    path = Path(store).expanduser()
    return path if path.is_absolute() else config.resolve().parent / path


def _open(args: argparse.Namespace) -> RecordStore:
    path = store_path(args)
    if not path.is_file():
        raise _UsageError(f"no record store at {path}")
    return RecordStore(path, readonly=True)


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.list_sessions(limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No sessions recorded.")
        return 0
    header = ["session", "program", "patient", "operator", "state", "created", "ended"]
    table = [[r["session"], f"{r['program']} {r['version']}", r["patient_ref"], r["operator"], r["state"],
              r["created_at"], r["ended_at"] or "-"] for r in rows]
    _print_columns(header, table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        summary = store.session(args.session)
        if summary is None:
            raise SessionNotFound(args.session)
        events = store.events(args.session)
        deliveries = store.deliveries(args.session)
    if args.json:
        print(json.dumps({"summary": summary, "events": events, "deliveries": deliveries}, indent=2))
        return 0
    state = summary["state"] + (f" ({summary['reason']})" if summary["reason"] else "")
    print(f"Session {summary['session']}")
    for label, value in (("program", f"{summary['program']} {summary['version']}  sha256 {summary['sha256']}"),
                         ("patient", summary["patient_ref"]), ("operator", summary["operator"]),
                         ("origin", summary["origin"]), ("state", state), ("created", summary["created_at"]),
                         ("started", summary["started_at"] or "-"), ("ended", summary["ended_at"] or "-"),
                         ("acknowledged", ", ".join(summary["acknowledged"]) or "-"),
                         ("params", json.dumps(summary["params"]) if summary["params"] else "-")):
        print(f"  {label + ':':<14}{value}")
    print("Totals:")
    for device, values in (summary["totals"] or {}).items():
        print(f"  {device}: {_kv(values)}")
    if not summary["totals"]:
        print("  nothing delivered")
    print("Steps:")
    for s in summary["steps"]:
        print(f"  {s['step']}: {s['points_done']}/{s['points_planned']} points done; "
              f"{_kv(s['totals'] or s['delivered'])}")
    if summary["in_flight"]:
        print(f"In flight (no result recorded): {len(summary['in_flight'])}")
        for d in summary["in_flight"]:
            print(f"  #{d['id']} {d['step_id']} {d['zone']}/{d['point']} {d['device']} planned {_kv(d['planned'])}")
    print(f"Events ({len(events)}):")
    for e in events:
        data = {k: v for k, v in e["data"].items() if k not in ("event", "index")}
        print(f"  {e['index']:>4}  {e['ts']}  {e['event']:<18} {json.dumps(data) if data else ''}".rstrip())
    print(f"Deliveries ({len(deliveries)}):")
    for d in deliveries:
        print(f"  #{d['id']} {d['step_id']} {d['zone']}/{d['point']} {d['device']}  planned {_kv(d['planned'])}"
              f"  delivered {_kv(d['delivered']) if d['delivered'] is not None else '-'}"
              f"  {d['status'] or 'IN FLIGHT'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args) as store:
        result = store.verify(args.session)
    if result.ok:
        print(f"{args.session}: {result.message}; head {result.head}")
        return 0
    where = f" (first bad event {result.first_bad})" if result.first_bad is not None else ""
    if result.first_bad_delivery is not None:
        where += f" (first bad delivery row {result.first_bad_delivery})"
    print(f"{args.session}: TAMPERED: {result.message}{where}")
    return 1


def cmd_report(args: argparse.Namespace) -> int:
    from devicehub.report.collect import ReportOptions
    from devicehub.report.files import render, write_file

    options = ReportOptions.from_config(config_doc(args))
    with _open(args) as store:
        text = render(store, args.session, args.format, options)
    if args.out:
        out = Path(args.out)
        target = out / f"{args.session}.{args.format}" if out.is_dir() or not out.suffix else out
        print(write_file(text, target))
    else:
        sys.stdout.write(text)
    return 0


def config_doc(args: argparse.Namespace) -> dict[str, Any]:
    """The hub config as bare YAML (timezone, aftercare, site, room), {} when there is none."""
    config = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG
    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _kv(values: Any) -> str:
    if not isinstance(values, dict) or not values:
        return "-"
    parts = []
    for k, v in values.items():
        if isinstance(v, dict):
            parts.append(f"{k}: {{{_kv(v)}}}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:.6g}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _print_columns(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
