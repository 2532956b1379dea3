"""``devicehub run PROGRAM``: a session at the chair, with the live view.

One code path whoever owns the room: when the room's daemon (``devicehub serve``)
answers on its console socket, the session is started through it (it is the daemon's
session: clinic software sees it over MQTT, its ``created`` event says ``origin:
console``). With no daemon, ``run`` takes the room's lock, serves the room itself on the
same socket (without MQTT) for this one session, and talks to it the same way. Either
way every step goes through the room's command table: start, the preflight items,
confirm-step prompts, abort.

Exit codes: 0 completed, 2 not startable, 3 aborted, 4 failed, 5 the room is held by
another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

EXIT = {"completed": 0, "aborted": 3, "failed": 4}
FINAL = ("completed", "aborted", "failed")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a session program at the chair with a live view")
    p.add_argument("program", help="program id from the library (devicehub programs list)")
    p.add_argument("--config", default="configs/hub.yaml", help="hub config (default configs/hub.yaml)")
    p.add_argument("--patient", required=True, help="patient reference (no names: a clinic reference)")
    p.add_argument("--operator", required=True, help="who runs the session")
    p.add_argument("--ack", action="append", default=[], metavar="ID",
                   help="acknowledge a soft limit by its id (recorded as acknowledged by --operator)")
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


async def room_owner(path: str | Path) -> str | None:
    """Which kind of process serves the room's console socket at ``path`` now (``serve`` for
    the daemon, ``run`` for another ``devicehub run``), or None when nothing answers."""
    from devicehub.local_console import ConsoleClient

    try:
        async with ConsoleClient(path) as c:
            reply = await asyncio.wait_for(c.request("status"), 5.0)
    except (OSError, ConnectionError, ValueError, asyncio.TimeoutError):
        return None
    if not reply.get("ok"):
        return None
    return str(((reply.get("data") or {}).get("hub") or {}).get("owner") or "serve")


@contextlib.asynccontextmanager
async def hosted_room(config: Any) -> AsyncIterator[None]:
    """Serve the room in this process (no daemon): its lock held, its console socket open."""
    from devicehub.control.room_lock import RoomLock, lock_path
    from devicehub.daemon import serve_room

    with RoomLock(lock_path(config)):  # RoomHeld when another process owns the room
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(serve_room(config, ready=ready, stop=stop, mqtt=False))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # the room did not open: raise why
        try:
            yield
        finally:
            stop.set()
            await task


async def run_session(config: Any, args: argparse.Namespace, params: dict[str, Any]) -> int:
    from devicehub.control.room_lock import EXIT_ROOM_HELD, RoomHeld, lock_path, read_holder

    owner = await room_owner(config.console_socket)
    if owner == "serve":  # the room's daemon: the session is its own
        return await run_through(config.console_socket, args, params, config.store)
    if owner is not None:  # another run holds the room for its one session
        print(f"devicehub run: not started: {RoomHeld(lock_path(config), read_holder(lock_path(config))).line()}",
              file=sys.stderr)
        return EXIT_ROOM_HELD
    try:
        async with hosted_room(config):
            return await run_through(config.console_socket, args, params, config.store)
    except RoomHeld as exc:
        print(f"devicehub run: not started: {exc.line()}", file=sys.stderr)
        return EXIT_ROOM_HELD


#: stdin bytes read but not yet asked for (a pipe may hand over several answers at once)
_stdin_pending = bytearray()
_stdin_lock = threading.Lock()


def _read_answer() -> str:
    """One line of stdin ("" at its end), read with ``os.read`` on the raw descriptor.

    Not ``input()``: a daemon thread blocked inside it holds stdin's buffer lock, and an
    interpreter that exits meanwhile (the session ended, aborted at the console) dies
    with "Fatal Python error: _enter_buffered_busy" (seen under load in
    tests/hub/test_room_owner.py). A thread blocked in ``os.read`` holds no such lock.
    """
    fd = sys.stdin.fileno()
    while True:
        with _stdin_lock:
            i = _stdin_pending.find(b"\n")
            if i >= 0:
                line = bytes(_stdin_pending[:i])
                del _stdin_pending[: i + 1]
                return line.decode(errors="replace").rstrip("\r")
        chunk = os.read(fd, 4096)
        with _stdin_lock:
            if not chunk:  # end of input: what is left is the last answer
                line = bytes(_stdin_pending)
                _stdin_pending.clear()
                return line.decode(errors="replace")
            _stdin_pending.extend(chunk)


async def _ask(prompt: str) -> str:
    """A line of stdin off the event loop, on a daemon thread: an abort never waits for a keypress."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    sys.stdout.write(prompt)
    sys.stdout.flush()

    def read() -> None:
        try:
            text = _read_answer()
        except (OSError, ValueError):
            text = ""
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(text))

    threading.Thread(target=read, name="run-input", daemon=True).start()
    return await answer


async def _unless(aw: Any, first: asyncio.Future[Any]) -> Any:
    """What ``aw`` gives, or None (``aw`` dropped) when ``first`` is done before it."""
    task = asyncio.ensure_future(aw)
    await asyncio.wait([task, first], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _ask_unless(prompt: str, ended: asyncio.Future[Any]) -> str | None:
    """The answer, or None when the session ended first (aborted at the console, say)."""
    return await _unless(_ask(prompt), ended)


def _print_refusal(error: dict[str, Any]) -> None:
    print(f"not startable ({error.get('code')}): {error.get('message')}", file=sys.stderr)
    for d in error.get("details") or []:
        if "id" in d:
            print(f"  {d.get('id', '')}: {d.get('field', '')} = {d.get('value', '')} "
                  f"(limit {d.get('limit', '')} {d.get('unit', '')})", file=sys.stderr)
        else:
            print(f"  {d.get('field', '')}: {d.get('message', '')}", file=sys.stderr)


async def run_through(path: str | Path, args: argparse.Namespace, params: dict[str, Any],
                      store: str | Path = "") -> int:
    """One session through the room's console socket at ``path``; returns the exit code."""
    from rich.live import Live

    from devicehub.console_view import SessionView
    from devicehub.local_console import ConsoleClient

    loop = asyncio.get_running_loop()
    async with ConsoleClient(path) as ctl, ConsoleClient(path) as feed:
        watching = await feed.request("watch")  # first, so no event of the session is missed
        if not watching.get("ok"):
            _print_refusal(watching.get("error") or {})
            return 2
        start = await ctl.request(
            "start", program=args.program, patient_ref=args.patient, operator=args.operator,
            **({"params": params} if params else {}),
            **({"acknowledge": list(args.ack), "acknowledged_by": {i: args.operator for i in args.ack}}
               if args.ack else {}),
            **({"preflight_done_by": f"{args.operator} (--preflight-done)"} if args.preflight_done else {}))
        if not start.get("ok"):
            _print_refusal(start.get("error") or {})
            return 2
        sid = start["data"]["session"]
        interrupted = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted.set)
        view = SessionView(None, plain=args.plain or None)
        final: asyncio.Future[dict[str, Any]] = loop.create_future()
        prompts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            async for m in feed.messages():
                kind, data = m.get("kind", ""), m.get("data") or {}
                if kind == "program":
                    view.program = data
                    continue
                if data.get("session", sid) != sid and kind.startswith("session"):
                    continue  # another session's last state, before ours began
                view.feed(kind, data)
                if kind == "session.event" and data.get("event") == "prompt":
                    prompts.put_nowait(data)
                if kind == "session.state" and data.get("session") == sid and data.get("state") in FINAL:
                    if not final.done():
                        final.set_result(data)
                    return
            if not final.done():
                final.set_exception(ConnectionError("the hub closed the console connection"))

        async def on_interrupt() -> None:
            await interrupted.wait()
            # a connection of its own: the abort never waits behind, nor is mixed up with,
            # another request's reply (this task is cancelled when the session ends)
            async with ConsoleClient(path) as emergency:
                await emergency.request("abort", session=sid, reason="console_interrupt")

        async def acknowledge_prompts() -> None:
            while True:
                prompt = await prompts.get()
                if not args.yes and await _ask_unless(
                        f"{prompt.get('text') or prompt.get('step')}: press Enter when done ", final) is None:
                    return
                await ctl.request("prompt_ack", by=args.operator)

        tasks = [loop.create_task(pump()), loop.create_task(on_interrupt())]
        try:
            if start["data"]["state"] in ("created", "preflight"):
                program = (await ctl.request("program", program=args.program)).get("data") or {}
                for item in program.get("preflight", []):
                    if interrupted.is_set() or final.done():
                        break
                    answer = await _ask_unless(f"preflight {item['id']}: {item.get('text', '')} - done? [y/N] ",
                                               final)
                    if answer is None:
                        break
                    answer = answer.strip().lower()
                    reply = await ctl.request("preflight", session=sid, item=item["id"],
                                              done=answer in ("y", "yes"), by=args.operator)
                    if reply.get("ok") and reply["data"]["state"] not in ("created", "preflight"):
                        break
                else:
                    status = await ctl.request("session", session=sid)
                    if (status.get("data") or {}).get("state") in ("created", "preflight"):
                        print("preflight not complete: the session cannot start", file=sys.stderr)
                        await ctl.request("abort", session=sid, reason="preflight_incomplete")
            tasks.append(loop.create_task(acknowledge_prompts()))
            if view.plain:
                ended = await final
            else:
                with Live(view.render(), console=view.console, refresh_per_second=4, transient=False) as live:
                    while not final.done():
                        await asyncio.wait([final], timeout=0.25)
                        live.update(view.render())
                ended = final.result()
            state = ended.get("state", "failed")
            print(f"result: session {sid} {state}" + (f" ({ended['reason']})" if ended.get("reason") else ""))
            print(f"record: {store} (devicehub sessions show {sid} --config {args.config})")
            # the room is safe and the record final: an interrupted run ends here. The report
            # is drawn by a child process that a loaded machine may starve for many seconds
            # (decision 0013); a Ctrl-C never waits for it, before or during the wait
            report = None if interrupted.is_set() else await _unless_interrupted(
                ctl.request("report", session=sid), interrupted)
        finally:
            for t in tasks:
                t.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if report is not None and report.get("ok"):
            print(f"report: {report['data']['path']}")
        else:
            why = "not waited for (interrupted)" if report is None else \
                f"not written ({(report.get('error') or {}).get('message', 'no reason given')})"
            print(f"report: {why}; write it with: devicehub sessions report {sid} "
                  f"--config {args.config} --out {Path(store).parent / 'reports'}")
        return EXIT.get(state, 4)


async def _unless_interrupted(request: Any, interrupted: asyncio.Event) -> dict[str, Any] | None:
    """The reply to ``request``, or None when SIGINT/SIGTERM came first (the request is dropped)."""
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        return await _unless(request, stop)
    finally:
        stop.cancel()
