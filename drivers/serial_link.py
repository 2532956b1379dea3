"""An async byte link over pyserial's ``serial_for_url``.

Works for ``socket://`` (simulators, serial device servers), pseudo-terminals and real
ports. Blocking serial I/O never runs on the event loop: the port is opened in a worker
thread, then switched to non-blocking mode and watched with ``loop.add_reader``, so a
read only takes what the kernel already holds (whole chunks, never a byte per system
call, see shared/measured.md). Protocol framing (lines, CRC frames) is the driver's job:
the link hands every chunk to ``on_data``.
"""

from __future__ import annotations

import asyncio
import logging
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

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    async def open(self, timeout: float = 3.0) -> None:
        self._loop = asyncio.get_running_loop()
        ep = self.endpoint

        def _open() -> serial.SerialBase:
            kwargs = {"baudrate": ep.baud, "timeout": 0, "write_timeout": 1.0}
            if ep.scheme != "socket":
                kwargs.update(parity=ep.parity, stopbits=ep.stopbits, bytesize=8)
            return serial.serial_for_url(ep.serial_url, **kwargs)

        try:
            self._ser = await asyncio.wait_for(asyncio.to_thread(_open), timeout)
        except (OSError, serial.SerialException, asyncio.TimeoutError) as exc:
            raise NotConnected(f"cannot open {ep}: {exc}") from exc
        sock = getattr(self._ser, "_socket", None)
        if isinstance(sock, socket.socket):
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
            self._sock = sock
        self._fd = self._ser.fileno()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            if self._sock is not None:
                data = self._sock.recv(CHUNK)
                if not data:
                    raise ConnectionResetError("peer closed the connection")
            else:
                assert self._ser is not None
                data = self._ser.read(CHUNK)
                if not data:
                    return
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, serial.SerialException) as exc:
            self._lost(exc)
            return
        try:
            self._on_data(data)
        except Exception:  # pragma: no cover - a parser bug must not kill the reader
            log.exception("%s: data handler failed", self.endpoint)

    def write(self, data: bytes) -> None:
        if self._ser is None:
            raise NotConnected(f"{self.endpoint}: link is closed")
        try:
            if self._sock is not None:
                self._sock.sendall(data)  # small frames; the kernel buffer takes them at once
            else:
                self._ser.write(data)
        except (OSError, serial.SerialException) as exc:
            self._lost(exc)
            raise NotConnected(f"{self.endpoint}: write failed: {exc}") from exc

    def _lost(self, exc: Exception | None) -> None:
        if self._ser is None:
            return
        self.close()
        if self._on_lost is not None:
            self._on_lost(exc)

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is None:
            return
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):  # pragma: no cover
                pass
        self._fd = None
        sock, self._sock = self._sock, None
        if sock is not None:
            # pyserial's socket:// close() sleeps 0.3 s "for quick reconnects": that would
            # freeze the event loop (every heartbeat in the room), so close the socket here
            # and let the port object finish its bookkeeping on a worker thread
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            threading.Thread(target=_quiet_close, args=(ser,), daemon=True).start()
            return
        _quiet_close(ser)


def _quiet_close(ser: serial.SerialBase) -> None:
    try:
        ser.close()
    except Exception:  # pragma: no cover
        pass
