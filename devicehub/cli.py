"""``devicehub`` console script: one subcommand module per area under devicehub/commands/.

Exit codes: 0 success (a session completed), 2 not startable / bad input,
3 session aborted, 4 session failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from devicehub import __version__

#: each module has ``register(subparsers)`` adding its subcommands with ``func=`` defaults
COMMAND_MODULES = (
    "devicehub.commands.schema",
    "devicehub.commands.programs",
    "devicehub.commands.sessions",
    "devicehub.commands.courses",
    "devicehub.commands.run",
    "devicehub.commands.serve",
    "devicehub.commands.site",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicehub", description="Drives a scalp-treatment room and runs its sessions.")
    parser.add_argument("--version", action="version", version=f"devicehub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 3


if __name__ == "__main__":
    sys.exit(main())
