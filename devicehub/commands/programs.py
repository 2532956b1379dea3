"""``devicehub programs check|list``: the dry run of session programs and the library.

``check FILE...`` loads each program and analyses it against the room's config and the
clinic's limits exactly as a start would: estimated duration, points per zone, totals
per device, soft limits as warnings with the ids to acknowledge, errors. Exit 0 when
every file is startable (with the ``--ack``s given), 2 when one is not or cannot be
read. Every bad input is one line per problem, never a traceback.

``list`` shows the library of the config with each program's sha256.

Tables are drawn with rich on a terminal; piped output is plain text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from devicehub.models.config import HubConfig
from devicehub.models.limits import Finding, Limits, fmt_number
from devicehub.models.loading import InputError, Problem
from devicehub.programs_library import ProgramLibrary
from devicehub.validation import Analysis, analyse, load_program

DEFAULT_CONFIG = Path("configs/hub.yaml")

TOTAL_LABELS = {
    "volume_ul": ("volume", "uL"), "shots": ("shots", ""), "pulses": ("pulses", ""),
    "charge_uc": ("charge", "uC"), "energy_mj": ("energy", "mJ"), "fluence_j_cm2": ("fluence", "J/cm2"),
    "exposure_s": ("exposure", "s"), "field_time_s": ("field time", "s"),
}


class _Usage(Exception):
    """Bad input the user can fix; ``lines`` are printed one per problem, exit 2."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("programs", help="check session programs and list the library",
                                   description="Dry-run session programs and list the program library.")
    sub = parser.add_subparsers(dest="programs_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", type=Path,
                        help=f"hub config (default: $DEVICEHUB_CONFIG or {DEFAULT_CONFIG})")

    p = sub.add_parser("check", parents=[config], help="dry-run programs: duration, points, totals, limits",
                       description="Analyse programs as a start would. Exit 0 when startable, 2 when not.")
    p.add_argument("files", nargs="+", metavar="FILE", type=Path)
    p.add_argument("--ack", action="append", default=[], metavar="ID",
                   help="acknowledge a soft limit by its id (repeat for several)")
    p.add_argument("--param", action="append", default=[], metavar="STEP.PARAM=VALUE",
                   help="override a step parameter, e.g. ep.amplitude_v=30 (repeat for several)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("list", parents=[config], help="the program library with each program's sha256")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)


# ---------------------------------------------------------------- helpers


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return args.config
    return Path(os.environ.get("DEVICEHUB_CONFIG") or DEFAULT_CONFIG)


def _load_room(args: argparse.Namespace) -> tuple[HubConfig, Limits]:
    path = _config_path(args)
    try:
        config = HubConfig.load(path)
    except InputError as exc:
        lines = exc.lines()
        if args.config is None and not path.exists():
            lines = [f"{path}: no such file (give the hub config with --config)"]
        raise _Usage(lines) from None
    try:
        limits = Limits.load(config.limits)
    except InputError as exc:
        raise _Usage(exc.lines()) from None
    return config, limits


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ep.amplitude_v=30", ...]`` -> ``{"ep": {"amplitude_v": 30}}`` (values read as YAML)."""
    params: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for item in items:
        key, eq, text = item.partition("=")
        step, dot, param = key.partition(".")
        if not eq or not dot or not step or not param:
            bad.append(f"--param {item!r}: expected STEP.PARAM=VALUE")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        params.setdefault(step, {})[param] = value
    if bad:
        raise _Usage(bad)
    return params


def fmt_duration(seconds: float) -> str:
    """``1206`` -> ``20 min 6 s``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {sec} s" if sec else f"{m} min"


def fmt_totals(totals: dict[str, float]) -> str:
    parts = []
    for key, value in totals.items():
        label, unit = TOTAL_LABELS.get(key, (key, ""))
        shown = fmt_number(round(value, 6))
        parts.append(f"{label} {shown} {unit}".rstrip())
    return ", ".join(parts)


def _use_rich(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _finding_line(f: Finding, acknowledged: tuple[str, ...]) -> str:
    if f.severity == "error":
        return f"error: {f.message}"
    if f.severity == "hard":
        return f"hard limit (never startable): {f.message}"
    if f.id in acknowledged:
        return f"soft limit {f.id} (acknowledged): {f.message}"
    return f"warning: soft limit {f.id} (start with --ack {f.id}): {f.message}"


def _verdict(a: Analysis) -> str:
    if a.startable:
        n = len(a.soft)
        return "startable" + (f" ({n} soft limit{'s' if n != 1 else ''} acknowledged)" if n else "")
    parts = []
    if a.errors:
        parts.append(f"{len(a.errors)} error{'s' if len(a.errors) != 1 else ''}")
    if a.hard:
        parts.append(f"{len(a.hard)} hard limit{'s' if len(a.hard) != 1 else ''}")
    if a.unacknowledged_soft:
        n = len(a.unacknowledged_soft)
        parts.append(f"{n} soft limit{'s' if n != 1 else ''} not acknowledged")
    return "NOT startable: " + ", ".join(parts)


def _step_rows(a: Analysis) -> list[list[str]]:
    rows = []
    for plan in a.steps:
        if plan.runs_alongside:
            when = f"alongside {plan.runs_alongside}"
        else:
            when = f"at {fmt_duration(plan.start_s)}"
        points = ", ".join(f"{z} {n}" for z, n in plan.points_per_zone.items())
        rows.append([str(plan.index + 1), plan.id, plan.kind, plan.device or "-",
                     f"{plan.points} ({points})" if plan.points else "-",
                     fmt_duration(plan.est_duration_s), when, fmt_totals(plan.totals) or "-"])
    return rows


STEP_HEADERS = ["#", "step", "kind", "device", "points", "duration", "starts", "delivers"]


def _plain_table(headers: list[str], rows: list[list[str]], indent: str = "    ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = [indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        out.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return out


def render_analysis(source: str, a: Analysis, out: TextIO) -> None:
    """The dry run of one program, as text (rich tables on a terminal)."""
    p = a.program
    head = [
        f"{source}: {p.id} v{p.version} - {p.title}",
        f"  estimated duration: {fmt_duration(a.est_duration_s)} ({fmt_number(round(a.est_duration_s))} s)",
        "  points per zone: " + (", ".join(f"{z} {n}" for z, n in a.points_per_zone.items()) or "none (no grid)"),
    ]
    if a.params:
        head.append("  overrides: " + ", ".join(f"{s}.{k}={v!r}" for s, ch in a.params.items() for k, v in ch.items()))
    findings = sorted(a.findings, key=lambda f: ("error", "hard", "soft").index(f.severity))
    tail = [f"  {_finding_line(f, a.acknowledged)}" for f in findings]
    tail += [f"  note: --ack {i} names no soft limit of this program" for i in a.unmatched_acknowledgements]
    tail.append(f"  result: {_verdict(a)}")
    if _use_rich(out):
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        for line in head:
            console.print(line, markup=False, highlight=False)
        steps = Table(title="steps", title_justify="left")
        for header in STEP_HEADERS:
            steps.add_column(header, overflow="fold")  # wrap, never elide an id
        for row in _step_rows(a):
            steps.add_row(*row)
        console.print(steps)
        devices = Table("device", "totals", title="totals per device", title_justify="left")
        for dev, totals in a.totals_per_device.items():
            devices.add_row(dev, fmt_totals(totals))
        console.print(devices)
        for line in tail:
            style = "red" if "error" in line[:9] or "hard" in line[:7] or "NOT" in line else (
                "yellow" if "warning" in line else None)
            console.print(line, style=style, markup=False, highlight=False)
        return
    lines = head + ["  steps:"] + _plain_table(STEP_HEADERS, _step_rows(a)) + ["  totals per device:"]
    lines += _plain_table(["device", "totals"], [[d, fmt_totals(t)] for d, t in a.totals_per_device.items()])
    lines += tail
    out.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.param)
        config, limits = _load_room(args)
    except _Usage as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    acknowledged = tuple(args.ack)
    ok = True
    reports: list[dict[str, Any]] = []
    for path in args.files:
        try:
            program = load_program(path)
            analysis = analyse(program, config, limits, params=params, acknowledged=acknowledged)
        except InputError as exc:
            ok = False
            source = exc.source or str(path)
            problems: list[Problem] = exc.problems
            if args.json:
                reports.append({"file": str(path), "startable": False, "problems": [p.to_dict() for p in problems]})
            else:
                for p in problems:
                    print(p.format(source), file=sys.stderr)
            continue
        ok = ok and analysis.startable
        if args.json:
            reports.append({"file": str(path), **analysis.to_dict()})
        else:
            render_analysis(str(path), analysis, sys.stdout)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0 if ok else 2


def cmd_list(args: argparse.Namespace) -> int:
    try:
        config, limits = _load_room(args)
    except _Usage as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    library = ProgramLibrary(config.programs, config=config, limits=limits)
    entries = library.list()
    if args.json:
        print(json.dumps({
            "programs": [{**e.to_api(), "path": str(e.path), "blocking": e.blocking} for e in entries],
            "problems": [{"path": str(lp.path), "problems": [p.to_dict() for p in lp.problems]} for lp in library.problems],
        }, indent=2))
        return 0
    headers = ["program", "version", "steps", "duration", "preflight", "soft limits", "sha256", "title"]
    rows = [[e.id, str(e.version), str(e.steps), fmt_duration(e.est_duration_s), str(len(e.preflight)),
             ", ".join(e.soft_limits) or "-", e.sha256, e.title + ("  [cannot start here]" if e.blocking else "")]
            for e in entries]
    if _use_rich(sys.stdout):
        from rich.console import Console
        from rich.table import Table

        # the sha256 goes on lines of its own: a table cell would cut it on a narrow terminal
        table = Table(title=f"programs in {config.programs}", title_justify="left")
        for header in headers[:-2] + headers[-1:]:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row[:-2], row[-1])
        console = Console()
        console.print(table)
        for entry in entries:
            console.print(f"{entry.id}  sha256 {entry.sha256}", markup=False, highlight=False, soft_wrap=True)
    else:
        print(f"programs in {config.programs}:")
        print("\n".join(_plain_table(headers, rows, indent="  ")))
    for entry in entries:
        for message in entry.blocking:
            print(f"{entry.path}: {message}", file=sys.stderr)
    for problem in library.problems:
        for line in problem.lines():
            print(line, file=sys.stderr)
    if not entries and not library.problems:
        print(f"no programs in {config.programs}", file=sys.stderr)
    return 0
