"""``devicehub run PROGRAM``: a session at the chair, with the live view.

Exit codes: 0 completed, 2 not startable, 3 aborted, 4 failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

EXIT = {"completed": 0, "aborted": 3, "failed": 4}


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a session program at the chair with a live view")
    p.add_argument("program", help="program id from the library (devicehub programs list)")
    p.add_argument("--config", default="configs/hub.yaml", help="hub config (default configs/hub.yaml)")
    p.add_argument("--patient", required=True, help="patient reference (no names: a clinic reference)")
    p.add_argument("--operator", required=True, help="who runs the session")
    p.add_argument("--ack", action="append", default=[], metavar="ID", help="acknowledge a soft limit by its id")
    p.add_argument("--param", action="append", default=[], metavar="STEP.PARAM=VALUE",
                   help="override a step parameter for this session")
    p.add_argument("--preflight-done", action="store_true",
                   help="take every preflight item as done (recorded as taken by this flag)")
    p.add_argument("--yes", action="store_true", help="acknowledge confirm steps without asking")
    p.add_argument("--plain", action="store_true", help="plain event lines instead of the live view")
    p.set_defaults(func=main)


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        step, dot, param = key.partition(".")
        if not sep or not dot or not step or not param:
            raise ValueError(f"--param {item!r}: expected STEP.PARAM=VALUE")
        out.setdefault(step, {})[param] = yaml.safe_load(value)
    return out


def main(args: argparse.Namespace) -> int:
    from devicehub.models.config import HubConfig
    from devicehub.models.loading import InputError

    try:
        config = HubConfig.load(args.config)
        params = parse_params(args.param)
    except InputError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_session(config, args, params))


async def _ask(prompt: str) -> str:
    return await asyncio.to_thread(input, prompt)


async def run_session(config: Any, args: argparse.Namespace, params: dict[str, Any],
                      attach: Any = None) -> int:
    """Run one session at the chair. ``attach(room, store, boot)``, if given, is an async
    context manager factory for services living beside the room (the demo's MQTT interface)."""
    from rich.live import Live

    from devicehub.console_view import SessionView
    from devicehub.records.hub_store import HubStore
    from devicehub.room import Room
    from devicehub.room_api import CommandError
    from devicehub.runner.session import RunnerOptions

    store = HubStore(config.store)
    boot = await store.next_boot()
    room = Room(config, store=store, boot=boot, options=RunnerOptions(auto_acknowledge_prompts=args.yes))
    sub = room.bus.subscribe(lossy=True, maxsize=2000)
    await room.open()
    loop = asyncio.get_running_loop()
    runner = None
    services = contextlib.AsyncExitStack()
    if attach is not None:
        await services.enter_async_context(attach(room, store, boot))
    try:
        try:
            runner = await room.start_session(
                program=args.program, patient_ref=args.patient, operator=args.operator, params=params,
                acknowledge=args.ack, origin="console",
                preflight_done_by=f"{args.operator} (--preflight-done)" if args.preflight_done else None,
                confirmation_required=False)
        except CommandError as exc:
            print(f"not startable ({exc.code}): {exc.message}", file=sys.stderr)
            for d in exc.details:
                print(f"  {d.get('id', '')}: {d.get('field', '')} = {d.get('value', '')} "
                      f"(limit {d.get('limit', '')} {d.get('unit', '')})", file=sys.stderr)
            return 2
        interrupted = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        loop.add_signal_handler(signal.SIGTERM, interrupted.set)

        async def watch_interrupt() -> None:
            await interrupted.wait()
            await runner.abort("console_interrupt")

        interrupt_task = loop.create_task(watch_interrupt())
        for item in list(runner.pending_preflight()):
            if runner.state not in ("created", "preflight"):
                break
            text = next((i.text for i in runner.program.preflight if i.id == item), item)
            answer = (await _ask(f"preflight {item}: {text} - done? [y/N] ")).strip().lower()
            await runner.preflight(item, answer in ("y", "yes"), args.operator)
        if runner.state in ("created", "preflight"):
            print("preflight not complete: the session cannot start", file=sys.stderr)
            await runner.abort("preflight_incomplete")

        view = SessionView(runner.program_json, plain=args.plain or None)
        view.feed("session.state", runner.snapshot())

        async def pump() -> None:
            while True:
                msg = await sub.get()
                view.feed(msg.kind, msg.data)

        pump_task = loop.create_task(pump())

        async def prompts() -> None:
            while not runner.finished:
                if runner.prompt_pending and not args.yes:
                    await _ask(f"{runner.prompt_pending}: press Enter when done ")
                    runner.acknowledge_prompt(args.operator)
                await asyncio.sleep(0.1)

        prompt_task = loop.create_task(prompts())
        if view.plain:
            final = await runner.wait()
        else:
            with Live(view.render(), console=view.console, refresh_per_second=4, transient=False) as live:
                waiter = loop.create_task(runner.wait())
                while not waiter.done():
                    await asyncio.wait([waiter], timeout=0.25)
                    live.update(view.render())
                final = waiter.result()
        for t in (pump_task, prompt_task, interrupt_task):
            t.cancel()
        while (msg := sub.get_nowait()) is not None:
            view.feed(msg.kind, msg.data)
        report = await room.report_later(runner.session_id)  # the HTML report, written after every session
        print(f"result: session {runner.session_id} {final}" + (f" ({runner.reason})" if runner.reason else ""))
        print(f"record: {config.store} (devicehub sessions show {runner.session_id} --config {args.config})")
        print(f"report: {report}")
        return EXIT.get(final, 4)
    finally:
        if runner is not None and not runner.finished:
            await runner.abort("console_exit")
        await services.aclose()
        await room.close()
        await store.close()
