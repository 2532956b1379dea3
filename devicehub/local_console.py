"""The hub daemon's local console: a Unix socket in the room.

Who may use it is decided by the socket file's permissions (0660, the group of the
room's technicians): being able to open it means being at the chair. JSON lines, one
reply per request: ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": {...}}``.

Requests: ``{"op": <verb>, ...members}``, every verb of the room's command table that
the console may use (``devicehub.control``: programs, program, status, session, check,
start, preflight, confirm, pause, resume, abort, prompt_ack, alarm_ack, report, verify,
adverse_event, ...), validated by the same models as over MQTT. ``abort`` brings the room
to its safe state before anything else, whatever else is wrong with the line. ``watch``: after its reply the
connection streams every hub message as ``{"kind": ..., "data": ..., "ts": ...}`` lines
(the console's live view; ``ts`` is when the hub published it, RFC 3339 UTC).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from devicehub.control.table import CONSOLE, Caller, dispatch, validate
from devicehub.room_api import CommandError
from devicehub.timefmt import rfc3339

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Returns when the peer closes its end (what it sends after ``watch`` is ignored)."""
    with contextlib.suppress(ConnectionError, asyncio.LimitOverrunError, ValueError):
        while await reader.read(4096):
            pass


class ConsoleServer:
    def __init__(self, room: Any, path: str | os.PathLike[str]) -> None:
        self.room = room
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False, "error": {"code": "bad_request", "message": "line too long"}})
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                reply, watch = await self.handle(line)
                await self._send(writer, reply)
                if watch:
                    await self._stream(reader, writer)
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await writer.drain()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The hub's messages until the client goes: its end of the line (EOF) is watched
        too, so a watcher that leaves while the room is quiet does not hold its socket
        until the next message."""
        gone = asyncio.ensure_future(_until_eof(reader))
        try:
            await self._stream_until(writer, gone)
        finally:
            gone.cancel()

    async def _stream_until(self, writer: asyncio.StreamWriter, gone: asyncio.Future[None]) -> None:
        room = self.room
        async with room.bus.subscription(lossy=True, maxsize=2000) as sub:
            runner = room.current
            if runner is not None:
                await self._send(writer, {"kind": "program", "data": runner.program_json or {}})
                await self._send(writer, {"kind": "session.state", "data": runner.snapshot()})
            for dev in room.devices.describe():
                await self._send(writer, {"kind": "device.state", "data": dev})
            await self._send(writer, {"kind": "alarms", "data": {"alarms": room.alarms.active()}})
            while True:
                nxt = asyncio.ensure_future(sub.get())
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    return
                msg = nxt.result()
                if msg.kind == "session.event" and msg.data.get("event") == "created" and room.current is not None:
                    await self._send(writer, {"kind": "program", "data": room.current.program_json or {}})
                await self._send(writer, {"kind": msg.kind, "data": msg.data, "ts": rfc3339(msg.ts)})

    async def handle(self, line: bytes) -> tuple[dict[str, Any], bool]:
        """One request line -> (reply, whether the connection now streams the hub's messages)."""
        t_arrival = time.monotonic()
        try:
            req = json.loads(line)
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return _error("bad_request", "expected a JSON object with 'op'", "op"), False
        op = req.pop("op")
        room = self.room
        if op == "abort":
            # safe state first, whatever else the line holds; the room's abort joins it
            await room.safe_state_now("abort", t_arrival)
        if op == "watch":
            return {"ok": True, "data": room.status()}, True
        caller = Caller(CONSOLE, t_arrival)
        try:
            if op == "abort":
                try:
                    request = validate(op, CONSOLE, req)
                except CommandError:  # an abort acts whatever is wrong with its members
                    request = validate(op, CONSOLE, {})
            else:
                request = validate(op, CONSOLE, req)
            return {"ok": True, "data": await dispatch(room, op, request, caller)}, False
        except CommandError as exc:
            return {"ok": False, "error": exc.to_dict()}, False
        except Exception as exc:  # noqa: BLE001 - the console never takes the hub down
            log.exception("console request %s failed", op)
            return _error("internal_error", f"{type(exc).__name__}: {exc}"), False


def _error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"ok": False, "error": error}


class ConsoleClient:
    """The client side, for ``devicehub confirm`` and ``devicehub console``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._one_at_a_time = asyncio.Lock()  # a reply belongs to the request before it

    async def __aenter__(self) -> "ConsoleClient":
        self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=16 * MAX_LINE)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.reader is not None and self.writer is not None
        async with self._one_at_a_time:
            self.writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self.writer.drain()
            line = await self.reader.readline()
        if not line:
            raise ConnectionError("the hub closed the console connection")
        return json.loads(line)

    async def messages(self) -> Any:
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if not line:
                return
            yield json.loads(line)
