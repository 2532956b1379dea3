"""How the clinical CLI commands reach the room: through the hub daemon's console socket
when a daemon holds the room (it answers there), else straight to the record store.

A daemon owns the room's record while it runs (and its devices); writing beside it
would race its event indices. Without a daemon there is nothing energised to stop, so a
direct write only records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from devicehub.commands.sessions import DEFAULT_CONFIG, _UsageError, config_doc, store_path
from devicehub.room_api import CommandError


def config_dir(args: argparse.Namespace) -> Path:
    config = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG
    return config.resolve().parent


def config_path_key(args: argparse.Namespace, key: str, default: str | None) -> Path | None:
    value = config_doc(args).get(key, default)
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_dir(args) / path


async def _via_socket(socket: Path, op: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's reply, or None when no daemon answers on the socket."""
    from devicehub.local_console import ConsoleClient

    if not socket.exists():
        return None
    try:
        async with asyncio.timeout(3.0):
            client = ConsoleClient(socket)
            await client.__aenter__()
    except (OSError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(30.0):
            return await client.request(op, **fields)
    finally:
        await client.__aexit__(None, None, None)


async def _direct(args: argparse.Namespace, verb: Any, fields: dict[str, Any]) -> dict[str, Any]:
    from devicehub.records.async_store import AsyncRecordStore

    path = store_path(args)
    if not path.is_file():
        raise _UsageError(f"no record store at {path}")
    store = await AsyncRecordStore.open(path)
    try:
        room = SimpleNamespace(store=store, current=None, bus=_NoBus(),
                               config=SimpleNamespace(courses=config_path_key(args, "courses", "courses")))
        try:
            return {"ok": True, "data": await verb(room, **fields)}
        except CommandError as exc:
            return {"ok": False, "error": exc.to_dict()}
    finally:
        await store.close()


class _NoBus:
    """No daemon, no subscribers: what would be published is in the record."""

    def publish(self, msg: Any) -> None:
        return None


def call(args: argparse.Namespace, op: str, verb: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """``{"ok": ..., "data"|"error": ...}`` from the daemon (socket) or the store directly."""

    async def go() -> dict[str, Any]:
        socket = getattr(args, "socket", None)
        socket = Path(socket) if socket else config_path_key(args, "console_socket", None)
        if socket is not None and not getattr(args, "store", None):
            with contextlib.suppress(ConnectionError):
                reply = await _via_socket(socket, op, fields)
                if reply is not None:
                    return reply
        return await _direct(args, verb, fields)

    return asyncio.run(go())
