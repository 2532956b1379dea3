"""``devicehub collect`` (the site's collector) and ``devicehub site`` (what it stored).

``collect --config configs/site.yaml [--client-id ID]``: serves until SIGTERM/SIGINT;
prints ``devicehub collecting as <client id>`` once the schema is migrated and MQTT is
starting. ``site rooms|sessions|patient P|alarms --config configs/site.yaml [--json]``:
a table on a terminal, JSON with ``--json``.

Exit codes: 0 success; 2 a bad config or arguments, a schema this devicehub cannot use, or (for
``site``) the database unreachable. ``collect`` waits for a database that is not there yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import date
from typing import Any

DEFAULT_CONFIG = "configs/site.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("collect", help="write everything the hubs publish into PostgreSQL",
                              description="The site's collector (docs/site.md).")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--client-id", metavar="ID", help="this replica's MQTT client id (wins over the config)")
    p.set_defaults(func=cmd_collect)

    site = subparsers.add_parser("site", help="read the site's database: rooms, sessions, a patient, alarms")
    sub = site.add_subparsers(dest="site_command", metavar="WHAT")
    site.set_defaults(func=lambda args: (site.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("rooms", parents=[common], help="every room: online, last seen, active session and alarms"
                   ).set_defaults(func=_read("rooms"))
    s = sub.add_parser("sessions", parents=[common], help="sessions, oldest first")
    s.add_argument("--room")
    s.add_argument("--site", dest="site_id")
    s.add_argument("--patient")
    s.add_argument("--since", type=date.fromisoformat, metavar="YYYY-MM-DD")
    s.set_defaults(func=_read("sessions"))
    pt = sub.add_parser("patient", parents=[common], help="every session of a patient, in every room")
    pt.add_argument("patient_ref")
    pt.set_defaults(func=_read("patient"))
    a = sub.add_parser("alarms", parents=[common], help="alarms, newest first")
    a.add_argument("--active", action="store_true", help="only those not cleared")
    a.set_defaults(func=_read("alarms"))


def _load(path: str) -> Any:
    from devicehub.models.loading import ConfigError
    from devicehub.site.config import SiteConfig

    try:
        return SiteConfig.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_collect(args: argparse.Namespace) -> int:
    from devicehub.site.collector import Collector
    from devicehub.site.schema import MigrationError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = _load(args.config)
    if config is None:
        return 2
    if args.client_id:
        config = config.model_copy(update={"client_id": args.client_id})
    collector = Collector(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: collector.stop())
    ready = threading.Event()
    threading.Thread(target=lambda: ready.wait() and print(
        f"devicehub collecting as {config.mqtt_client_id}", flush=True), daemon=True).start()
    try:
        return collector.run(ready)  # waits for the database when it is not there yet
    except MigrationError as exc:
        print(f"devicehub collect: {exc}", file=sys.stderr)
        return 2


def _read(what: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        import psycopg

        from devicehub.site import readers

        config = _load(args.config)
        if config is None:
            return 2
        try:
            with readers.connect(config.database) as conn:
                if what == "rooms":
                    data: Any = readers.rooms(conn)
                elif what == "sessions":
                    data = readers.sessions(conn, room=args.room, patient=args.patient, since=args.since,
                                            site=args.site_id)
                elif what == "patient":
                    data = readers.patient(conn, args.patient_ref)
                else:
                    data = readers.alarms(conn, active_only=args.active)
        except psycopg.Error as exc:
            print(f"devicehub site: {exc}".strip(), file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            _table(what, data)
        return 0

    return run


_COLUMNS = {
    "rooms": ("site", "room", "status", "last_seen", "active_session", "session_state", "active_alarms"),
    "sessions": ("session", "site", "room", "program", "patient_ref", "operator", "state", "created", "ended",
                 "events", "complete"),
    "alarms": ("site", "room", "priority", "code", "text", "since", "session", "cleared"),
    "patient": ("session", "site", "room", "program", "state", "created", "ended", "course", "adverse_events",
                "complete"),
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return str(len(value)) if value and isinstance(value[0], dict) else ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)


def _table(what: str, data: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = data["sessions"] if what == "patient" else data
    title = f"patient {data['patient_ref']}" if what == "patient" else what
    table = Table(title=title)
    cols = _COLUMNS[what]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in cols))
    # piped output keeps whole cells (a terminal's width otherwise cuts them)
    Console(width=None if sys.stdout.isatty() else 240).print(table)
