"""A TCP link that can be cut: a loopback port forwarding to a server (a broker), for the
tests that need a connection to die without a goodbye (no MQTT DISCONNECT, no FIN from
the server's side) or a server that stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable


class CutProxy:
    """Forwards a free loopback port (:attr:`port`) to ``host:port``.

    - :meth:`cut` aborts every connection; with ``block`` new ones are refused too until
      :meth:`restore` (a network link going down and up).
    - While :attr:`swallow_downstream` is true, what the server sends is dropped on the
      floor (for a broker: CONNACK, PUBACK, PINGRESP), a server that keeps the link up
      and never answers.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.blocked = False
        self.swallow_downstream = False
        self._server: asyncio.base_events.Server | None = None
        self._transports: list[asyncio.BaseTransport] = []

    async def __aenter__(self) -> "CutProxy":
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()

    def cut(self, *, block: bool = False) -> None:
        self.blocked = self.blocked or block
        for t in self._transports:
            t.abort()
        self._transports.clear()

    def restore(self) -> None:
        self.blocked = False

    async def _open_upstream(self, writer: asyncio.StreamWriter
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The server's side of a new connection (None, and the client's closed, when it refuses)."""
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return None
        self._transports += [writer.transport, up_writer.transport]
        return up_reader, up_writer

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            sock = w.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._transports.append(w.transport)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, downstream: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if downstream and self.swallow_downstream:
                        continue
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


async def _lines(r: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """EPG-1's wire: one line at a time."""
    while line := await r.readline():
        yield line


async def _mbap_frames(r: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Modbus TCP: the MBAP header (its length field counts what follows it), then the rest."""
    while True:
        head = await r.readexactly(6)
        yield head + await r.readexactly(int.from_bytes(head[4:6], "big"))


async def _inj_frames(r: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """INJ-1: 0x7E, LEN, then SEQ, CMD, the payload and the CRC (LEN + 2 bytes)."""
    while True:
        if await r.readexactly(1) != b"\x7e":
            continue
        length = await r.readexactly(1)
        yield b"\x7e" + length + await r.readexactly(length[0] + 2)


class FramedProxy(CutProxy):
    """A link that relays whole frames (:meth:`frames`) both ways and lets a subclass see
    each: :meth:`to_device` says what reaches the device for a frame the host sent (it may
    add frames of its own), :meth:`to_host` whether a frame the device sent reaches the host."""

    def frames(self, r: asyncio.StreamReader) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def to_device(self, frame: bytes) -> list[bytes]:
        return [frame]

    def to_host(self, frame: bytes) -> bool:
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_link = await self._open_upstream(writer)
        if upstream_link is None:
            return
        up_reader, up_writer = upstream_link

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                        each: Callable[[bytes], list[bytes]]) -> None:
            with contextlib.suppress(Exception):
                async for frame in self.frames(src):
                    for out in each(frame):
                        dst.write(out)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(relay(reader, up_writer, self.to_device),
                             relay(up_reader, writer, lambda f: [f] if self.to_host(f) else []))


class ReplyDropper(FramedProxy):
    """A line-protocol link (EPG-1) that loses one reply: the reply to the ``nth`` host line
    starting with ``prefix`` (an ``OK`` the device sent, lost on the wire). Event lines
    (``!...``) pass; :attr:`dropped` is set once the reply is gone.

    The host sends one line at a time and waits for its reply, so the first reply line
    after the matching host line is its reply."""

    frames = staticmethod(_lines)

    def __init__(self, target_port: int, prefix: bytes, nth: int = 1) -> None:
        super().__init__(target_port)
        self.prefix = prefix
        self.nth = nth
        self.seen = 0
        self._armed = False
        self.dropped = asyncio.Event()

    def to_device(self, frame: bytes) -> list[bytes]:
        if frame.strip().upper().startswith(self.prefix.upper()):
            self.seen += 1
            self._armed = self._armed or self.seen == self.nth
        return [frame]

    def to_host(self, frame: bytes) -> bool:
        if self._armed and not frame.startswith(b"!"):
            self._armed = False
            self.dropped.set()
            return False
        return True


class OnHostLine(FramedProxy):
    """A line-protocol link (EPG-1) that calls :attr:`action` when the ``nth`` host line
    starting with ``prefix`` passes, before that line goes on to the device: a test stops
    the host's process there (SIGSTOP), and the device carries the line out with no host
    left to hear the reply. With ``forward=False`` that line never reaches the device (the
    host died as it was writing it). :attr:`seen_line` is set once the action ran."""

    frames = staticmethod(_lines)

    def __init__(self, target_port: int, prefix: bytes, action: Callable[[], None], nth: int = 1,
                 forward: bool = True) -> None:
        super().__init__(target_port)
        self.prefix = prefix
        self.action = action
        self.nth = nth
        self.forward = forward
        self.seen = 0
        self.seen_line = asyncio.Event()

    def to_device(self, frame: bytes) -> list[bytes]:
        if frame.strip().upper().startswith(self.prefix.upper()):
            self.seen += 1
            if self.seen == self.nth:
                self.action()
                self.seen_line.set()
                return [frame] if self.forward else []
        return [frame]


class StartBehindStop(FramedProxy):
    """A Modbus TCP link on which a start reaches the device right behind the host's stop:
    once :attr:`armed`, after forwarding the host's write of coil 0 (OUTPUT) to 0 the link
    writes coil 0 to 1 itself (as a start sent on another connection, or delayed, would)
    and drops that write's reply. :attr:`injected` is set once it has."""

    STOP = bytes((0x05, 0x00, 0x00, 0x00, 0x00))
    START = bytes((0x05, 0x00, 0x00, 0xFF, 0x00))
    TID = 0xFFF0

    frames = staticmethod(_mbap_frames)

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.armed = False
        self.injected = asyncio.Event()

    def to_device(self, frame: bytes) -> list[bytes]:
        if not (self.armed and frame[7:] == self.STOP):
            return [frame]
        self.armed = False
        pdu = self.START
        start = self.TID.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + frame[6:7] + pdu
        self.injected.set()
        return [frame, start]

    def to_host(self, frame: bytes) -> bool:
        return int.from_bytes(frame[:2], "big") != self.TID  # the reply to the link's own write is not the host's


class StartHeld(FramedProxy):
    """A Modbus TCP link that holds the host's start on the wire: once :attr:`armed`, the
    host's write of coil 0 (OUTPUT) to 1 is kept back (:attr:`held` set) until
    :meth:`release`, then reaches the device, behind whatever went meanwhile on other
    connections (a safe state's off)."""

    START = StartBehindStop.START
    frames = staticmethod(_mbap_frames)

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.armed = False
        self.held = asyncio.Event()
        self._kept: tuple[bytes, asyncio.StreamWriter] | None = None
        self._upstreams: list[asyncio.StreamWriter] = []

    async def _open_upstream(self, writer: asyncio.StreamWriter
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        link = await super()._open_upstream(writer)
        if link is not None:
            self._upstreams.append(link[1])
        return link

    def to_device(self, frame: bytes) -> list[bytes]:
        if not (self.armed and frame[7:] == self.START):
            return [frame]
        self.armed = False
        self._kept = (frame, self._upstreams[0])  # the host's first connection carries its start
        self.held.set()
        return []

    def release(self) -> None:
        assert self._kept is not None
        frame, up = self._kept
        self._kept = None
        up.write(frame)


class ModbusTap(FramedProxy):
    """A Modbus TCP link that keeps the host's requests and can lose one reply.

    :attr:`requests` holds every request PDU the host sent, in order (function code
    first). :meth:`drop_reply` arms the link to lose the reply to the next request whose
    PDU ``match`` accepts: the request reaches the device, which does it; only its reply
    never comes back. The returned event is set once that reply is gone.
    """

    frames = staticmethod(_mbap_frames)

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.requests: list[bytes] = []
        self._grown = asyncio.Event()
        self._match: Callable[[bytes], bool] | None = None
        self._dropped = asyncio.Event()
        self._drop_tids: set[bytes] = set()

    def drop_reply(self, match: Callable[[bytes], bool]) -> asyncio.Event:
        self._match, self._dropped = match, asyncio.Event()
        return self._dropped

    async def request(self, match: Callable[[bytes], bool], start: int = 0) -> int:
        """The index in :attr:`requests` of the first request from ``start`` on that
        ``match`` accepts, once the host has sent it."""
        while True:
            for i in range(start, len(self.requests)):
                if match(self.requests[i]):
                    return i
            start = len(self.requests)
            self._grown.clear()
            await self._grown.wait()

    def to_device(self, frame: bytes) -> list[bytes]:
        pdu = frame[7:]
        if self._match is not None and self._match(pdu):
            self._match = None
            self._drop_tids.add(frame[:2])
        self.requests.append(pdu)
        self._grown.set()
        return [frame]

    def to_host(self, frame: bytes) -> bool:
        if frame[:2] in self._drop_tids:
            self._drop_tids.discard(frame[:2])
            self._dropped.set()
            return False
        return True


class InjReplyDropper(FramedProxy):
    """An INJ-1 link (frames over TCP) that loses one reply: :meth:`drop_reply` arms it
    for the next host request with command ``cmd``; that request reaches the gun, which
    does it, and the reply carrying its SEQ is dropped. Events (SEQ 0) pass. The returned
    event is set once the reply is gone."""

    frames = staticmethod(_inj_frames)

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._cmd: int | None = None
        self._seq: int | None = None
        self._dropped = asyncio.Event()

    def drop_reply(self, cmd: int) -> asyncio.Event:
        self._cmd, self._dropped = cmd, asyncio.Event()
        return self._dropped

    def to_device(self, frame: bytes) -> list[bytes]:
        if self._cmd is not None and frame[3] == self._cmd:
            self._cmd, self._seq = None, frame[2]
        return [frame]

    def to_host(self, frame: bytes) -> bool:
        if self._seq is not None and frame[2] == self._seq:
            self._seq = None
            self._dropped.set()
            return False
        return True


class InjEventDropper(FramedProxy):
    """An INJ-1 link that loses the ``nth`` unsolicited event frame (SEQ 0) with command
    ``cmd`` (0x90: a SHOT report): what the gun did, the host never hears of.
    :attr:`dropped` is set once it is gone."""

    frames = staticmethod(_inj_frames)

    def __init__(self, target_port: int, cmd: int, nth: int = 1) -> None:
        super().__init__(target_port)
        self.cmd = cmd
        self.nth = nth
        self.seen = 0
        self.dropped = asyncio.Event()

    def to_host(self, frame: bytes) -> bool:
        if frame[2] == 0 and frame[3] == self.cmd:
            self.seen += 1
            if self.seen == self.nth:
                self.dropped.set()
                return False
        return True
