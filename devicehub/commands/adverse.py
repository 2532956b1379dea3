"""``devicehub sessions adverse SESSION --kind K --severity S --by NAME``: record an adverse
event against a session (during it or after it ended).

With a hub daemon holding the room (its console socket answers) the event goes through
it: a severe one or an allergic reaction during a session brings the room to its safe
state there. Otherwise it is appended to the record directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from devicehub.clinical.adverse import KINDS, SEVERITIES


def register_adverse(sub: Any, where: argparse.ArgumentParser, guarded: Any) -> None:
    p = sub.add_parser("adverse", parents=[where], help="record an adverse event against a session",
                       description="Record an adverse event (pain, redness, ...) against a session.")
    p.add_argument("session")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--severity", required=True, choices=SEVERITIES)
    p.add_argument("--score", type=int, help="pain score 0-10 (kind pain only)")
    p.add_argument("--onset", help="when it began, RFC 3339 with offset (not in the future)")
    p.add_argument("--note")
    p.add_argument("--by", required=True, help="who records it")
    p.add_argument("--socket", help="the daemon's console socket (default: console_socket of the config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=guarded(cmd_adverse))


def cmd_adverse(args: argparse.Namespace) -> int:
    from devicehub.clinical.adverse import adverse_event
    from devicehub.commands.clinic_access import call

    fields = {"session": args.session, "kind": args.kind, "severity": args.severity, "by": args.by,
              "score": args.score, "onset": args.onset, "note": args.note}
    reply = call(args, "adverse_event", adverse_event, fields)
    if args.json:
        print(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        err = reply.get("error") or {}
        print(f"devicehub sessions adverse: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 2
    data = reply["data"]
    if not args.json:
        print(f"session {data['session']}: adverse event recorded as event {data['index']} ({data['action']})")
    return 0
