"""The control channel of every simulator: JSON lines over TCP (shared/simulator-control.md).

One reply line per request line: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
Several clients may connect at once. :class:`ControlClient` is the async client the
tests, the demo and the benchmarks use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from simulators.base import ControlError, DeviceSimulator

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


def handle_line(sim: DeviceSimulator, line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    try:
        result = sim.control(req)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the control port never dies
        log.exception("control request failed")
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
    return {"ok": True, **result}


async def serve_control(sim: DeviceSimulator, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok": false, "error": "line too long"}\n')
                    break
                except asyncio.IncompleteReadError:
                    break
                # a blank line is a request too (an empty one): one reply line per request
                reply = handle_line(sim, line) if line.strip() else {"ok": False, "error": "empty request"}
                writer.write(json.dumps(reply, default=_jsonable).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, host, port, limit=MAX_LINE)
    return server, server.sockets[0].getsockname()[1]


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if obj == float("inf"):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class ControlClient:
    """``async with ControlClient("127.0.0.1:40124") as c: await c.state()``"""

    def __init__(self, address: str | tuple[str, int], timeout: float = 5.0) -> None:
        if isinstance(address, str):
            host, _, port = address.rpartition(":")
            address = (host, int(port))
        self.address = address
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "ControlClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(*self.address, limit=MAX_LINE * 16)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None

    async def request(self, req: dict[str, Any] | bytes) -> dict[str, Any]:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        raw = req if isinstance(req, bytes) else json.dumps(req).encode()
        async with self._lock:
            self._writer.write(raw.rstrip(b"\n") + b"\n")
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
        return json.loads(line)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """A request that must succeed; raises ControlError with the simulator's message."""
        reply = await self.request({"op": op, **fields})
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "control request failed"))
        return reply

    async def state(self) -> dict[str, Any]:
        return await self.call("state")

    async def inject(self, fault: str, count: int = 1) -> dict[str, Any]:
        return await self.call("inject", fault=fault, count=count)

    async def clear(self, fault: str | None = None) -> dict[str, Any]:
        return await self.call("clear", **({"fault": fault} if fault else {}))

    async def set(self, name: str, value: float) -> dict[str, Any]:
        return await self.call("set", name=name, value=value)
