"""A pseudo-terminal a simulator serves on: the host opens its slave path like a serial port.

The simulator holds the master side and keeps a slave descriptor open itself, so the
host may open and close the port as often as it likes without the master seeing EOF.
Both the serial-device simulators (``simulators.stream.PtyPort``) and Modbus RTU
(``simulators.modbus_server.RtuPtyPort``) use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tty
from collections.abc import Callable

log = logging.getLogger(__name__)


class PseudoTerminal:
    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EAGAIN, EINTR, EIO while no host has the port open
            return
        if data:
            self._on_data(data)

    def write(self, data: bytes) -> None:
        """Write what the terminal takes; the rest is lost, as on a line nobody reads."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except OSError:
                log.debug("%s: %d bytes not written (nobody reads)", self.path, len(view))
                return
            view = view[n:]

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.master)
            except (ValueError, OSError, RuntimeError):
                pass
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
