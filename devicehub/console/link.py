"""The console's connection to the room's daemon (its Unix console socket).

Four connections, so that nothing urgent ever waits behind something slow:
``watch`` (the stream of hub messages), ``requests`` (the verbs, one at a time),
``abort`` (kept open and free for the one request that must never wait) and ``ping``
(a ``status`` every quarter second: a daemon that stops answering is noticed within a
second even when its socket stays open).

The link knows nothing of Textual: it calls ``on_message(kind, data)`` for every hub
message and ``on_link(connected, reason)`` when the connection comes or goes, and it
reconnects by itself while the console runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from devicehub.local_console import ConsoleClient

log = logging.getLogger(__name__)

#: how often the daemon is asked for its status, and how long an answer may take
PING_EVERY_S = 0.25
PING_TIMEOUT_S = 0.7
RECONNECT_EVERY_S = 0.3
CONNECT_TIMEOUT_S = 2.0


class HubUnavailable(Exception):
    """The daemon is not reachable: nothing was sent."""


class HubLink:
    def __init__(self, path: str | os.PathLike[str], on_message: Callable[[str, dict[str, Any]], None],
                 on_link: Callable[[bool, str], None]) -> None:
        self.path = str(path)
        self.on_message = on_message
        self.on_link = on_link
        self.connected = False
        self.reason = "not connected yet"
        #: op -> time.monotonic() when its last request was written to the daemon
        self.sent_at: dict[str, float] = {}
        self._requests: ConsoleClient | None = None
        self._abort: ConsoleClient | None = None
        self._clients: list[ConsoleClient] = []
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                self._set(False, f"the hub at {self.path} accepts but does not answer")
            except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
                self._set(False, _why(exc, self.path))
            except Exception as exc:  # noqa: BLE001 - the console keeps trying
                log.exception("console link failed")
                self._set(False, f"{type(exc).__name__}: {exc}")
            await self._drop()
            await asyncio.sleep(RECONNECT_EVERY_S)  # retry interval while the daemon is away

    async def _session(self) -> None:
        """One connected period: open every connection, stream until something is lost."""
        self._lost.clear()
        # a daemon that accepts but does not answer (stopped, overloaded) is retried, not waited on
        watch = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
        self._requests = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
        self._abort = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
        ping = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
        reply = await asyncio.wait_for(watch.request("watch"), CONNECT_TIMEOUT_S)
        if not reply.get("ok"):
            raise ConnectionError(f"the hub refused to stream: {reply.get('error')}")
        self._set(True, "")
        self.on_message("status", reply.get("data") or {})
        reader = asyncio.ensure_future(self._read(watch))
        pinger = asyncio.ensure_future(self._ping(ping))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({reader, pinger, lost}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not lost and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            raise ConnectionError("the hub closed the console connection")
        finally:
            for t in (reader, pinger, lost):
                t.cancel()

    async def _open(self) -> ConsoleClient:
        client = await ConsoleClient(self.path).__aenter__()
        self._clients.append(client)
        return client

    async def _drop(self) -> None:
        clients, self._clients = self._clients, []
        self._requests = self._abort = None
        for c in clients:
            with contextlib.suppress(Exception):
                await c.__aexit__(None, None, None)

    async def _read(self, watch: ConsoleClient) -> None:
        async for msg in watch.messages():
            if isinstance(msg, dict) and isinstance(msg.get("kind"), str):
                data = msg.get("data")
                data = data if isinstance(data, dict) else {"value": data}
                if isinstance(msg.get("ts"), str) and "ts" not in data:
                    data = {**data, "ts": msg["ts"]}  # when the hub published it
                try:
                    self.on_message(msg["kind"], data)
                except Exception:  # noqa: BLE001 - a drawing fault must not cut the room's link
                    log.exception("console: a hub message could not be shown")

    async def _ping(self, ping: ConsoleClient) -> None:
        while True:
            await asyncio.sleep(PING_EVERY_S)  # the ping period
            try:
                reply = await asyncio.wait_for(ping.request("status"), PING_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise ConnectionError(f"the hub did not answer within {PING_TIMEOUT_S:g} s") from None
            if reply.get("ok"):
                self.on_message("status", reply.get("data") or {})

    def _set(self, connected: bool, reason: str) -> None:
        if connected == self.connected and reason == self.reason:
            return
        self.connected, self.reason = connected, reason
        self.on_link(connected, reason)

    # ------------------------------------------------------------------ requests
    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One verb; the daemon's reply ``{"ok", "data"|"error"}``. HubUnavailable when not connected."""
        client = self._requests
        if client is None or not self.connected:
            raise HubUnavailable(f"the hub is not connected: {self.reason}")
        self.sent_at[op] = time.monotonic()
        try:
            return await client.request(op, **fields)
        except (OSError, ConnectionError, ValueError) as exc:
            self._lost.set()
            raise HubUnavailable(_why(exc, self.path)) from None

    async def abort(self, reason: str) -> dict[str, Any]:
        """Abort now, on the connection kept free for it (or a fresh one if that is gone)."""
        self.sent_at["abort"] = time.monotonic()
        client = self._abort
        if client is not None:
            try:
                return await client.request("abort", reason=reason)
            except (OSError, ConnectionError, ValueError):
                self._lost.set()
        try:  # the kept connection is gone: one fresh attempt, the daemon may be back
            async with ConsoleClient(self.path) as fresh:
                return await fresh.request("abort", reason=reason)
        except (OSError, ConnectionError, ValueError) as exc:
            raise HubUnavailable(_why(exc, self.path)) from None


def _why(exc: BaseException, path: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no hub is serving at {path}"
    if isinstance(exc, ConnectionRefusedError):
        return f"the hub at {path} refuses connections (not running)"
    if isinstance(exc, PermissionError):
        return f"no permission to open {path}"
    return str(exc) or type(exc).__name__
