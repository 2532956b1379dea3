"""``devicehub serve`` (the hub daemon), and the local console's ``confirm`` and ``console``.

Exit codes: 0 done, 2 bad config or refused request, 1 the hub is not reachable, 5 the
room is held by another process (``serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the hub daemon of a room (MQTT interface and local console)")
    p.add_argument("--config", default="configs/hub.yaml")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=serve_main)

    c = sub.add_parser("confirm", help="confirm, at the chair, a session waiting in awaiting_confirmation")
    c.add_argument("session", help="session id")
    c.add_argument("--config", default="configs/hub.yaml")
    c.add_argument("--by", default=None, help="who confirms (default: the logged-in user)")
    c.set_defaults(func=confirm_main)

    k = sub.add_parser("console", help="the technician's console on the running hub (full screen); "
                                       "flags for one-shot actions in scripts")
    k.add_argument("--config", default="configs/hub.yaml")
    k.add_argument("--by", default=None, help="who is at the console (default: the logged-in user)")
    k.add_argument("--plain", action="store_true", help="plain event lines instead of the full-screen console")
    k.add_argument("--pause", metavar="SESSION", help="pause the session and exit")
    k.add_argument("--resume", metavar="SESSION", help="resume the session (confirmed by --by) and exit")
    k.add_argument("--abort", nargs="?", const="", metavar="SESSION", help="abort (the active session) and exit")
    k.add_argument("--ack-prompt", action="store_true", help="acknowledge the waiting confirm step and exit")
    k.add_argument("--ack-alarms", action="store_true", help="acknowledge every latched alarm and exit")
    k.add_argument("--clear-fault", metavar="DEVICE",
                   help="send DEVICE its clear command for a latched fault (--by who); exit 0 when it then "
                        "shows no fault, 1 with its fault text while the cause is still there")
    k.add_argument("--recover", metavar="SESSION",
                   help="clear the device fault that paused the session (by --by) and exit; resume after it")
    k.set_defaults(func=console_main)


def _load(path: str) -> Any:
    from devicehub.models.config import HubConfig
    from devicehub.models.loading import InputError

    try:
        return HubConfig.load(path)
    except InputError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER", "technician")


#: the GIL's switch interval in ``serve`` (CPython's default is 0.005 s)
SWITCH_INTERVAL_S = 0.0005


async def _serve_frozen(serve: Any, config: Any) -> int:
    """``serve``, with everything alive once the room is open moved out of the garbage
    collector's reach (``gc.freeze``): what start-up loaded (pydantic, the drivers,
    matplotlib's modules) is never scanned again, so a full collection during a session
    is short and does not stand between an abort and the devices (docs/decisions/0011)."""
    import gc
    import sys

    # The record's, the outbox's and the idempotency store's worker threads run Python
    # code (canonical JSON, hashes): a thread holding the GIL keeps the event loop out
    # for up to the switch interval, 5 ms by default, right when an abort is read. A
    # shorter interval bounds that wait (docs/decisions/0012).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    ready = asyncio.Event()

    async def freeze_when_ready() -> None:
        await ready.wait()
        gc.collect()
        gc.freeze()

    freezer = asyncio.ensure_future(freeze_when_ready())
    try:
        return await serve(config, ready=ready)
    finally:
        freezer.cancel()


def serve_main(args: argparse.Namespace) -> int:
    from devicehub.daemon import serve

    config = _load(args.config)
    if config is None:
        return 2
    from devicehub.control.room_lock import EXIT_ROOM_HELD, RoomHeld

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_serve_frozen(serve, config))
    except RoomHeld as exc:
        print(f"devicehub serve: not started: {exc.line()}", file=sys.stderr)
        return EXIT_ROOM_HELD


def _print_reply(reply: dict[str, Any]) -> int:
    if reply.get("ok"):
        data = reply.get("data") or {}
        print(" ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else data)
        return 0
    err = reply.get("error", {})
    print(f"refused ({err.get('code')}): {err.get('message')}", file=sys.stderr)
    return 2


async def _one(config: Any, op: str, **fields: Any) -> int:
    from devicehub.local_console import ConsoleClient

    try:
        async with ConsoleClient(config.console_socket) as c:
            return _print_reply(await c.request(op, **fields))
    except (FileNotFoundError, ConnectionError, PermissionError) as exc:
        print(f"the hub is not reachable at {config.console_socket}: {exc}", file=sys.stderr)
        return 1


async def _clear_fault(config: Any, device: str, by: str) -> int:
    from devicehub.local_console import ConsoleClient

    try:
        async with ConsoleClient(config.console_socket) as c:
            reply = await c.request("clear_fault", device=device, by=by)
    except (FileNotFoundError, ConnectionError, PermissionError) as exc:
        print(f"the hub is not reachable at {config.console_socket}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        return _print_reply(reply)
    data = reply.get("data") or {}
    if data.get("cleared"):
        print(f"{device}: fault cleared by {by}; state {data.get('state')}")
        return 0
    print(f"{device}: still in fault {data.get('fault')}: {data.get('fault_text')}", file=sys.stderr)
    return 1


def confirm_main(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    return asyncio.run(_one(config, "confirm", session=args.session, by=_who(args.by)))


def console_main(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    by = _who(args.by)
    if args.pause:
        return asyncio.run(_one(config, "pause", session=args.pause, reason=f"paused at the console by {by}"))
    if args.resume:
        return asyncio.run(_one(config, "resume", session=args.resume, by=by))
    if args.abort is not None:
        return asyncio.run(_one(config, "abort", **({"session": args.abort} if args.abort else {}),
                                reason=f"aborted at the console by {by}"))
    if args.ack_prompt:
        return asyncio.run(_one(config, "prompt_ack", by=by))
    if args.recover:
        return asyncio.run(_one(config, "recover", session=args.recover, by=by))
    if args.ack_alarms:
        return asyncio.run(_one(config, "alarm_ack"))
    if args.clear_fault:
        return asyncio.run(_clear_fault(config, args.clear_fault, by))
    if args.plain or not sys.stdout.isatty():
        return asyncio.run(_watch(config))
    from devicehub.console.app import run

    return run(config.console_socket, by)  # the full-screen console (devicehub/console/)


async def _watch(config: Any) -> int:
    """The plain line-by-line view of the hub's session (``--plain``, or not on a terminal);
    Ctrl-C leaves (it does not abort: use --abort)."""
    from devicehub.console_view import SessionView
    from devicehub.local_console import ConsoleClient

    try:
        async with ConsoleClient(config.console_socket) as c:
            reply = await c.request("watch")
            if not reply.get("ok"):
                return _print_reply(reply)
            view = SessionView(plain=True)

            async def feed() -> None:
                async for m in c.messages():
                    if m.get("kind") == "program":
                        view.program = m.get("data") or {}
                    else:
                        view.feed(m.get("kind", ""), m.get("data") or {})

            await feed()
            return 0
    except (FileNotFoundError, ConnectionError, PermissionError) as exc:
        print(f"the hub is not reachable at {config.console_socket}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
