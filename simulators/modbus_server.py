"""A small Modbus server for the emitter simulators: Modbus TCP (MBAP) and Modbus RTU on
a pseudo-terminal.

Written here rather than taken from pymodbus because the simulators need exact control
of what goes on the wire: exception responses chosen by the device model, requests
that are never answered (a stalled device) and replies that are dropped. Every request
goes to ``sim.handle_request(unit, pdu)``; its return value is the reply PDU, or None
for no reply at all.

RTU frames on a pty cannot be told apart by the 3.5-character silence (the kernel
delivers whatever is buffered), so requests are cut by the function code's length
rules, and the CRC decides: a bad CRC drops one byte and hunts for the next frame.
Only an unknown function code, whose length no rule gives, falls back to a short
silence; it is then answered with exception 0x01 when its CRC is right.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Protocol

from drivers.crc import crc16_modbus  # noqa: F401 - re-exported
from simulators.pty import PseudoTerminal

log = logging.getLogger(__name__)

#: a TCP client sending a frame longer than the Modbus maximum is dropped
MAX_MBAP_LENGTH = 254
#: RTU: a partial frame older than this is discarded (or tried whole, for unknown codes)
RTU_SILENCE_S = 0.02


class ModbusHandler(Protocol):
    unit: int

    def handle_request(self, unit: int, pdu: bytes) -> bytes | None: ...


# --------------------------------------------------------------------------- CRC


def _crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and struct.unpack("<H", frame[-2:])[0] == crc16_modbus(frame[:-2])


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16_modbus(body))


# --------------------------------------------------------------------------- TCP


class _MbapProtocol(asyncio.Protocol):
    def __init__(self, sim: ModbusHandler, clients: set["_MbapProtocol"]) -> None:
        self.sim = sim
        self.clients = clients
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.clients.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 7:
            tid, pid, length = struct.unpack(">HHH", self.buf[:6])
            if pid != 0 or not 2 <= length <= MAX_MBAP_LENGTH:
                log.warning("modbus tcp: bad MBAP header %s, dropping the client", bytes(self.buf[:7]).hex())
                assert self.transport is not None
                self.transport.close()
                self.buf.clear()
                return
            if len(self.buf) < 6 + length:
                return
            unit = self.buf[6]
            pdu = bytes(self.buf[7:6 + length])
            del self.buf[:6 + length]
            try:
                reply = self.sim.handle_request(unit, pdu)
            except Exception:  # noqa: BLE001 - a model bug must not kill the server
                log.exception("modbus tcp: request handler failed")
                reply = bytes((pdu[0] | 0x80, 0x04)) if pdu else None
            if reply is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.clients.discard(self)


class ModbusTcpServer(asyncio.AbstractServer):
    """The listening server plus its client connections: closing it closes them too (so a
    host sees the device go away; asyncio's own server leaves them open before 3.12)."""

    def __init__(self, sim: ModbusHandler) -> None:
        self.sim = sim
        self.clients: set[_MbapProtocol] = set()
        self._server: asyncio.base_events.Server | None = None

    def _protocol(self) -> _MbapProtocol:
        return _MbapProtocol(self.sim, self.clients)

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sockets(self) -> Any:
        return self._server.sockets if self._server is not None else ()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.close_clients()

    def close_clients(self) -> None:
        for proto in list(self.clients):
            if proto.transport is not None:
                proto.transport.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._server is not None
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        if self._server is not None:
            await self._server.start_serving()

    async def serve_forever(self) -> None:
        if self._server is not None:
            await self._server.serve_forever()


async def serve_modbus_tcp(sim: ModbusHandler, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    """Serve ``sim`` as a Modbus TCP server (any number of clients); returns the bound port."""
    server = ModbusTcpServer(sim)
    bound = await server.listen(host, port)
    return server, bound


# --------------------------------------------------------------------------- RTU

#: whole request length (address byte to CRC) by function code
_FIXED_LENGTH = {
    0x01: 8, 0x02: 8, 0x03: 8, 0x04: 8, 0x05: 8, 0x06: 8, 0x07: 4, 0x08: 8,
    0x0B: 4, 0x0C: 4, 0x11: 4, 0x16: 10, 0x18: 6, 0x2B: 7,
}
#: function codes with a byte count: (offset of the count, length without the data)
_COUNTED_LENGTH = {0x0F: (6, 9), 0x10: (6, 9), 0x17: (10, 13), 0x14: (2, 5), 0x15: (2, 5)}


def rtu_request_length(buf: bytes | bytearray) -> int | None:
    """Length of the request frame at the start of ``buf``: an int, 0 when more bytes are
    needed to know, None for a function code without a length rule."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc in _FIXED_LENGTH:
        return _FIXED_LENGTH[fc]
    if fc in _COUNTED_LENGTH:
        at, base = _COUNTED_LENGTH[fc]
        if len(buf) <= at:
            return 0
        return base + buf[at]
    return None


class RtuPtyPort:
    """Modbus RTU on a pseudo-terminal (``simulators.pty``); the host opens :attr:`path`
    like a serial port."""

    def __init__(self, sim: ModbusHandler) -> None:
        self.sim = sim
        self.pty = PseudoTerminal(self._on_data)
        self.path = self.pty.path
        self.buf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._silence: asyncio.TimerHandle | None = None
        self.crc_errors = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.pty.start()

    def _on_data(self, data: bytes) -> None:
        self.buf += data
        self._parse()
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        if self.buf and self._loop is not None:
            self._silence = self._loop.call_later(RTU_SILENCE_S, self._on_silence)

    def _parse(self) -> None:
        while len(self.buf) >= 4:
            length = rtu_request_length(self.buf)
            if length is None:
                # an unknown function code: noise before a good frame, or a whole request
                # of a function without a length rule (then the silence decides)
                skip = self._next_good_frame()
                if skip is None:
                    return
                self.crc_errors += 1
                del self.buf[:skip]
                continue
            if length == 0 or len(self.buf) < length:
                return  # a frame still arriving
            frame = bytes(self.buf[:length])
            if not _crc_ok(frame):
                self.crc_errors += 1
                del self.buf[:1]  # hunt for the next frame start
                continue
            del self.buf[:length]
            self._handle(frame)

    def _next_good_frame(self) -> int | None:
        """Offset of the next complete frame with a length rule and a good CRC."""
        for k in range(1, len(self.buf) - 3):
            length = rtu_request_length(self.buf[k:])
            if length and len(self.buf) - k >= length and _crc_ok(bytes(self.buf[k:k + length])):
                return k
        return None

    def _on_silence(self) -> None:
        """The line went quiet with bytes left: an unknown function code's whole frame,
        or the remains of noise."""
        self._silence = None
        frame, self.buf = bytes(self.buf), bytearray()
        if len(frame) >= 4 and rtu_request_length(frame) is None:
            if _crc_ok(frame):
                self._handle(frame)
                return
        self.crc_errors += 1

    def _handle(self, frame: bytes) -> None:
        unit, pdu = frame[0], frame[1:-2]
        try:
            reply = self.sim.handle_request(unit, pdu)
        except Exception:  # noqa: BLE001 - a model bug must not kill the port
            log.exception("modbus rtu: request handler failed")
            reply = bytes((pdu[0] | 0x80, 0x04))
        if reply is not None:
            self._write(rtu_frame(unit, reply))

    def _write(self, data: bytes) -> None:
        self.pty.write(data)

    def close(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        self.pty.close()

    def __repr__(self) -> str:  # pragma: no cover
        return f"RtuPtyPort({self.path!r})"


__all__: list[Any] = ["serve_modbus_tcp", "ModbusTcpServer", "RtuPtyPort", "crc16_modbus", "rtu_frame", "rtu_request_length"]
