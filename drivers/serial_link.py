"""An async byte link to a serial device: a real port, a pseudo-terminal or ``socket://``.

Ports (ttys, ptys) are opened with pyserial's ``serial_for_url`` and ``exclusive=True``,
so a second program opening the same port fails clearly (pyserial takes an advisory
``flock`` on it). ``socket://HOST:PORT`` (simulators, serial device servers) is a plain
TCP connection made with the standard library: no reach into pyserial's private socket
(docs/decisions/0008).

Blocking I/O never runs on the event loop: the port is opened in a worker thread, then
its file descriptor is put in non-blocking mode and watched with ``loop.add_reader``, so
a read only takes what the kernel already holds (whole chunks, never a byte per system
call, see shared/measured.md). Writes go out at once when the kernel takes them, else
the rest waits in a buffer flushed by ``loop.add_writer``: one stuck port never blocks
the loop, and so never delays the other devices. Protocol framing (lines, CRC frames) is
the driver's job: the link hands every chunk to ``on_data``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

import serial

from drivers.base import NotConnected
from drivers.endpoints import Endpoint

log = logging.getLogger(__name__)

CHUNK = 4096


class SerialLink:
    def __init__(
        self,
        endpoint: Endpoint,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._on_data = on_data
        self._on_lost = on_lost
        self._ser: serial.SerialBase | None = None
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = bytearray()  # what the kernel did not take yet

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def open(self, timeout: float = 3.0) -> None:
        self._loop = asyncio.get_running_loop()
        ep = self.endpoint
        self._pending.clear()
        if ep.scheme == "socket":
            try:
                async with asyncio.timeout(timeout):
                    sock = await _connect_tcp(self._loop, ep.host, ep.port)
            except (OSError, TimeoutError) as exc:
                raise NotConnected(f"cannot open {ep}: {exc}") from exc
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
            self._sock = sock
            self._fd = sock.fileno()
        else:
            def _open() -> serial.SerialBase:
                return serial.serial_for_url(ep.serial_url, baudrate=ep.baud, parity=ep.parity,
                                             stopbits=ep.stopbits, bytesize=8, timeout=0, write_timeout=0,
                                             exclusive=True)

            opening = self._loop.run_in_executor(None, _open)
            try:
                self._ser = await asyncio.wait_for(asyncio.shield(opening), timeout)
            except (OSError, ValueError, serial.SerialException, asyncio.TimeoutError) as exc:
                # a port that opens after the wait gave up belongs to nobody: close it then
                opening.add_done_callback(_close_late_port)
                raise NotConnected(f"cannot open {ep}: {exc}") from exc
            self._fd = self._ser.fileno()
            os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            if self._sock is not None:
                data = self._sock.recv(CHUNK)
                if not data:
                    raise ConnectionResetError("peer closed the connection")
            else:
                assert self._fd is not None
                data = os.read(self._fd, CHUNK)
                if not data:
                    return
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, serial.SerialException, AssertionError) as exc:
            self._lost(exc)
            return
        try:
            self._on_data(data)
        except Exception:  # pragma: no cover - a parser bug must not kill the reader
            log.exception("%s: data handler failed", self.endpoint)

    def _send(self, data: bytes | bytearray) -> int:
        try:
            if self._sock is not None:
                return self._sock.send(data)
            assert self._fd is not None
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the device; what the kernel takes now goes at once, never blocking."""
        if self._fd is None:
            raise NotConnected(f"{self.endpoint}: link is closed")
        try:
            if self._pending:  # keep the order: behind what is already waiting
                self._pending += data
                return
            sent = self._send(data)
            if sent < len(data):
                self._pending += data[sent:]
                assert self._loop is not None
                self._loop.add_writer(self._fd, self._writable)
        except (OSError, serial.SerialException) as exc:
            self._lost(exc)
            raise NotConnected(f"{self.endpoint}: write failed: {exc}") from exc

    def _writable(self) -> None:
        try:
            sent = self._send(self._pending)
        except (OSError, serial.SerialException) as exc:
            self._lost(exc)
            return
        del self._pending[:sent]
        if not self._pending and self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)

    def _lost(self, exc: Exception | None) -> None:
        if self._fd is None:
            return
        self.close()
        if self._on_lost is not None:
            self._on_lost(exc)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            for remove in (self._loop.remove_reader, self._loop.remove_writer):
                try:
                    remove(fd)
                except (ValueError, OSError, RuntimeError):  # pragma: no cover
                    pass
        self._pending.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        ser, self._ser = self._ser, None
        if ser is not None:
            # closing a port may wait for the line to drain: not on the event loop
            threading.Thread(target=_quiet_close, args=(ser,), daemon=True).start()


def _quiet_close(ser: serial.SerialBase) -> None:
    try:
        ser.close()
    except Exception:  # pragma: no cover
        pass


async def _connect_tcp(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected on the loop: the socket is this coroutine's
    from the start, so a timeout or a cancel closes it (a connect on a worker thread that
    finished after its caller gave up left a socket nobody closed)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"no address for {host}:{port}")


def _close_late_port(opening: "asyncio.Future[serial.SerialBase]") -> None:
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(Exception):
            opening.result().close()
