"""Serving a serial-device simulator's byte stream over TCP or a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import socket
import tty

from simulators.base import Connection, StreamDeviceSimulator


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, sim: StreamDeviceSimulator) -> None:
        self.sim = sim
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        assert isinstance(transport, asyncio.Transport)
        self.conn = Connection(transport.write, name=str(transport.get_extra_info("peername")),
                               close=transport.close)
        self.sim.connection_made(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.sim.data_received(self.conn, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.sim.connection_lost(self.conn)


async def serve_tcp(sim: StreamDeviceSimulator, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _TcpProtocol(sim), host, port)
    return server, server.sockets[0].getsockname()[1]


def drop_connections(sim: StreamDeviceSimulator) -> None:
    """Close every host connection (Python 3.11's Server.close() leaves them open)."""
    for conn in list(sim.connections):
        conn.close()


class PtyPort:
    """A pseudo-terminal whose slave path the host opens like a serial port.

    The simulator holds the master side and keeps a slave descriptor open itself, so
    the host may open and close the port as often as it likes.
    """

    def __init__(self, sim: StreamDeviceSimulator) -> None:
        self.sim = sim
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.conn = Connection(self._write, name=self.path)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue  # pty buffer full: a few bytes at 115200 baud; spin briefly
            view = view[n:]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sim.connection_made(self.conn)
        self._loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self.sim.data_received(self.conn, data)

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.master)
            except (ValueError, OSError, RuntimeError):
                pass
        self.sim.connection_lost(self.conn)
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
