"""Serving a serial-device simulator's byte stream over TCP or a pseudo-terminal."""

from __future__ import annotations

import asyncio
import socket

from simulators.base import Connection, StreamDeviceSimulator
from simulators.pty import PseudoTerminal


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
    """A serial-device simulator on a pseudo-terminal (``simulators.pty``)."""

    def __init__(self, sim: StreamDeviceSimulator) -> None:
        self.sim = sim
        self.pty = PseudoTerminal(lambda data: self.sim.data_received(self.conn, data))
        self.path = self.pty.path
        self.conn = Connection(self.pty.write, name=self.path)

    def start(self) -> None:
        self.sim.connection_made(self.conn)
        self.pty.start()

    def close(self) -> None:
        self.pty.close()
        self.sim.connection_lost(self.conn)
