"""A Modbus client link (TCP or RTU) with the driver's typed errors.

Wraps pymodbus' ``AsyncModbusTcpClient`` / ``AsyncModbusSerialClient`` for
``modbus-tcp://`` and ``modbus-rtu://`` endpoints, so the emitter drivers never see a
pymodbus type:

- a Modbus exception response -> :class:`DeviceRefused` (code 1..4 and its name),
- no reply within the timeout -> :class:`DeviceTimeout`,
- a closed or refused connection -> :class:`NotConnected`,
- a reply of the wrong kind or size -> :class:`ProtocolError`.

Timeouts are short (0.3 s by default: a 10-register RTU read at 19200 baud takes 23 ms).
pymodbus' own retries are off; reads may be retried once here, writes are never re-sent
blindly (writing OUTPUT=1 twice could start a finished exposure again). A write whose
reply is lost may still have been done (a reply lost on the wire), so with ``confirm`` a
lost reply is settled by reading back what was written (:meth:`write_registers`,
:meth:`write_coil`): what reads back as written took; a holding register that does not
is written once more, a coil only when ``rewrite`` allows (never OUTPUT=1). pymodbus would close a TCP
connection after a few unanswered requests; that is turned off, because a device that
stops answering is a device fault to report, not a connection to drop. A lost
connection is re-opened on the next request.

Pseudo-terminals: parity has no meaning on a pty and some kernels refuse PARENB there
(EINVAL), so on a pty the line is opened without parity whatever the endpoint says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from drivers.base import DeviceRefused, DeviceTimeout, NotConnected, ProtocolError
from drivers.endpoints import Endpoint

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

DEFAULT_TIMEOUT = 0.3
#: how long an urgent write waits for a request in flight before it takes its own connection
URGENT_WAIT_S = 0.01


def to_u32(value: int) -> list[int]:
    """A 32-bit unsigned value as two registers, high word first (both ICDs)."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in 32 bits")
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


def from_u32(registers: Sequence[int]) -> int:
    """Two registers, high word first, as one 32-bit unsigned value."""
    hi, lo = registers
    return (hi << 16) | lo


def is_pty(path: str) -> bool:
    """True for a pseudo-terminal slave (Unix98 ptys have majors 136-143)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143


class ModbusLink:
    """One Modbus connection to one unit, with typed errors and short timeouts."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        read_retries: int = 1,
        on_lost: Callable[[], None] | None = None,
        name: str | None = None,
    ) -> None:
        if endpoint.scheme not in ("modbus-tcp", "modbus-rtu"):
            raise ValueError(f"{endpoint}: a Modbus link needs a modbus-tcp:// or modbus-rtu:// endpoint")
        self.endpoint = endpoint
        self.unit = endpoint.unit
        self.timeout = timeout
        self.read_retries = read_retries
        #: how the log names this link's device (its id; the endpoint when not given)
        self.name = name or str(endpoint)
        self._on_lost = on_lost
        self._closing = False
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ lifetime
    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        ep = self.endpoint
        common: dict[str, Any] = dict(
            timeout=self.timeout, retries=0, reconnect_delay=0, trace_connect=self._trace_connect,
        )
        if ep.scheme == "modbus-tcp":
            client: Any = AsyncModbusTcpClient(ep.host, port=ep.port, **common)
        else:
            parity = "N" if is_pty(ep.path) else ep.parity
            client = AsyncModbusSerialClient(
                ep.path, baudrate=ep.baud, bytesize=8, parity=parity, stopbits=ep.stopbits, **common,
            )
        # a silent device is reported per request; the connection stays
        client.set_max_no_responses(1_000_000)
        return client

    async def open(self) -> None:
        self._closing = False
        if self._client is None:
            self._client = self._make_client()
        await self._connect()

    async def _connect(self) -> None:
        assert self._client is not None
        try:
            ok = await asyncio.wait_for(self._client.connect(), self.timeout + 1.0)
        except (asyncio.TimeoutError, OSError, ModbusException, Exception) as exc:  # noqa: BLE001
            raise NotConnected(f"cannot connect to {self.endpoint}: {exc}") from exc
        if not ok:
            raise NotConnected(f"cannot connect to {self.endpoint}")

    async def close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self._set_nodelay()
        elif not self._closing and self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:  # pragma: no cover - a callback bug must not break the link
                log.exception("%s: on_lost callback failed", self.endpoint)

    def _set_nodelay(self) -> None:
        client = self._client
        transport = getattr(getattr(client, "ctx", None), "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass

    # ------------------------------------------------------------------ requests
    async def _call(self, what: str, method: str, *args: Any, retries: int = 0, **kwargs: Any) -> Any:
        """Run one request; returns the response PDU or raises a typed error."""
        last: Exception | None = None
        for _attempt in range(retries + 1):
            if self._client is None:
                raise NotConnected(f"{self.endpoint}: link is closed")
            if not self._client.connected:
                await self._connect()
            self._in_flight += 1
            self._idle.clear()
            try:
                # a guard above pymodbus' own timeout; asyncio.timeout runs the call in this
                # task (wait_for would add a task and loop iterations to every request)
                async with asyncio.timeout(self.timeout * 2 + 0.5):
                    rr = await getattr(self._client, method)(*args, device_id=self.unit, **kwargs)
            except ConnectionException as exc:
                raise NotConnected(f"{self.endpoint}: {what}: {exc}") from exc
            except TimeoutError as exc:
                last = DeviceTimeout(f"{self.endpoint}: {what}: no reply")
                last.__cause__ = exc
                continue
            except ModbusIOException as exc:
                if "No response" in str(exc) or "no response" in str(exc).lower():
                    last = DeviceTimeout(f"{self.endpoint}: {what}: no reply within {self.timeout} s")
                    last.__cause__ = exc
                    continue
                raise ProtocolError(f"{self.endpoint}: {what}: {exc}") from exc
            except ModbusException as exc:
                raise ProtocolError(f"{self.endpoint}: {what}: {exc}") from exc
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.set()
            if rr is None:
                raise ProtocolError(f"{self.endpoint}: {what}: empty reply")
            if isinstance(rr, ExceptionResponse) or rr.isError():
                code = int(getattr(rr, "exception_code", 0))
                raise DeviceRefused(code, EXCEPTION_NAMES.get(code, "modbus exception"))
            return rr
        assert last is not None
        raise last

    def _check_fc(self, rr: Any, fc: int, what: str) -> None:
        if rr.function_code != fc:
            raise ProtocolError(f"{self.endpoint}: {what}: reply has function code {rr.function_code}, expected {fc}")

    async def read_coils(self, address: int, count: int = 1, *, retries: int | None = None) -> list[bool]:
        what = f"read coils {address}+{count}"
        rr = await self._call(what, "read_coils", address, count=count,
                              retries=self.read_retries if retries is None else retries)
        self._check_fc(rr, 0x01, what)
        if len(rr.bits) < count:
            raise ProtocolError(f"{self.endpoint}: {what}: {len(rr.bits)} bits in the reply")
        return [bool(b) for b in rr.bits[:count]]

    async def read_holding(self, address: int, count: int = 1, *, retries: int | None = None) -> list[int]:
        what = f"read holding {address}+{count}"
        rr = await self._call(what, "read_holding_registers", address, count=count,
                              retries=self.read_retries if retries is None else retries)
        self._check_fc(rr, 0x03, what)
        return self._registers(rr, count, what)

    async def read_input(self, address: int, count: int = 1, *, retries: int | None = None) -> list[int]:
        what = f"read input {address}+{count}"
        rr = await self._call(what, "read_input_registers", address, count=count,
                              retries=self.read_retries if retries is None else retries)
        self._check_fc(rr, 0x04, what)
        return self._registers(rr, count, what)

    def _registers(self, rr: Any, count: int, what: str) -> list[int]:
        regs = list(rr.registers)
        if len(regs) != count:
            raise ProtocolError(f"{self.endpoint}: {what}: {len(regs)} registers in the reply")
        return regs

    async def write_coil(self, address: int, value: bool, *, confirm: bool = False, rewrite: bool = False) -> None:
        """FC 0x05. With ``confirm``, a lost reply is settled by reading the coil back: if it
        reads as written, the write took; if not, it is written once more only when
        ``rewrite`` (a write that energises must never be), else the DeviceTimeout stands."""
        what = f"write coil {address}={int(value)}"
        try:
            rr = await self._call(what, "write_coil", address, bool(value))
        except DeviceTimeout as lost:
            if not confirm:
                raise
            back = await self._read_back(lost, self.read_coils, address, 1)
            if back == [bool(value)]:
                log.warning("%s: %s: reply lost; the coil reads back %d: the write took", self.name, what, value)
                return
            if not rewrite:
                log.warning("%s: %s: reply lost; the coil reads back %d: not written again", self.name, what,
                            back[0])
                raise DeviceTimeout(f"{lost}; the coil reads back {int(back[0])}, not written again") from lost
            log.warning("%s: %s: reply lost; the coil reads back %d: written once more", self.name, what, back[0])
            await self.write_coil(address, value, confirm=True, rewrite=False)
            return
        self._check_fc(rr, 0x05, what)

    async def _read_back(self, lost: DeviceTimeout, read: Callable[..., Any], address: int, count: int) -> Any:
        """A read-back after a lost reply; when it gets no reply either, the write's DeviceTimeout
        stands. Not retried: one lost reply is what this settles, and a device that answers
        neither is silent, to be reported one reply timeout later, not two."""
        try:
            return await read(address, count, retries=0)
        except DeviceTimeout as exc:
            raise lost from exc

    async def write_coil_urgent(self, address: int, value: bool) -> None:
        """``write_coil`` that does not queue behind a request in flight: pymodbus sends one
        request at a time, and a request whose reply was lost holds the link for a whole
        reply timeout. Over TCP, when the link is not free within ``URGENT_WAIT_S`` (a reply
        that comes takes a millisecond or two), the write goes on a connection of its own,
        opened for it (a Modbus TCP server serves several); on RTU there is one bus, so it waits."""
        if self._in_flight and self.endpoint.scheme == "modbus-tcp":
            try:
                async with asyncio.timeout(URGENT_WAIT_S):
                    await self._idle.wait()
            except TimeoutError:
                await self._write_coil_on_own_connection(address, value)
                return
        await self.write_coil(address, value)

    async def _write_coil_on_own_connection(self, address: int, value: bool) -> None:
        what = f"write coil {address}={int(value)} (own connection)"
        side = AsyncModbusTcpClient(self.endpoint.host, port=self.endpoint.port, timeout=self.timeout,
                                    retries=0, reconnect_delay=0)
        try:
            try:
                ok = await asyncio.wait_for(side.connect(), self.timeout + 1.0)
            except (asyncio.TimeoutError, OSError, ModbusException) as exc:
                raise NotConnected(f"cannot connect to {self.endpoint}: {exc}") from exc
            if not ok:
                raise NotConnected(f"cannot connect to {self.endpoint}")
            try:
                async with asyncio.timeout(self.timeout * 2 + 0.5):
                    rr = await side.write_coil(address, bool(value), device_id=self.unit)
            except TimeoutError as exc:
                raise DeviceTimeout(f"{self.endpoint}: {what}: no reply") from exc
            except ModbusIOException as exc:
                raise DeviceTimeout(f"{self.endpoint}: {what}: {exc}") from exc
            except ModbusException as exc:
                raise ProtocolError(f"{self.endpoint}: {what}: {exc}") from exc
            if rr is None or isinstance(rr, ExceptionResponse) or rr.isError():
                code = int(getattr(rr, "exception_code", 0) or 0)
                raise DeviceRefused(code, EXCEPTION_NAMES.get(code, "modbus exception"))
            self._check_fc(rr, 0x05, what)
        finally:
            side.close()

    async def write_register(self, address: int, value: int, *, confirm: bool = False) -> None:
        """FC 0x06; ``confirm`` as for :meth:`write_registers`."""
        await self._write_holding(f"write register {address}={value}", "write_register", 0x06,
                                  address, [int(value)], confirm)

    async def write_registers(self, address: int, values: Sequence[int], *, confirm: bool = False) -> None:
        """FC 0x10. With ``confirm``, a lost reply is settled by reading the registers back:
        if they hold what was written, the write took; if not, they are written once more
        and read back again; only then the DeviceTimeout stands. (A holding register holds
        a value: writing the same value twice does what writing it once does.)"""
        await self._write_holding(f"write registers {address}+{len(values)}", "write_registers", 0x10,
                                  address, [int(v) for v in values], confirm)

    async def _write_holding(self, what: str, method: str, fc: int, address: int, values: list[int],
                             confirm: bool) -> None:
        arg: Any = values[0] if fc == 0x06 else values
        lost: DeviceTimeout | None = None
        for attempt in range(2 if confirm else 1):
            try:
                rr = await self._call(what, method, address, arg)
            except DeviceTimeout as exc:
                if not confirm:
                    raise
                lost = lost or exc
                back = await self._read_back(lost, self.read_holding, address, len(values))
                if back == values:
                    log.warning("%s: %s: reply lost; the registers read back as written: the write took",
                                self.name, what)
                    return
                log.warning("%s: %s: reply lost; the registers read back as %s, not %s%s", self.name, what,
                            back, values, ": written once more" if attempt == 0 else "")
                continue
            self._check_fc(rr, fc, what)
            if lost is not None:
                log.warning("%s: %s: written once more, answered", self.name, what)
            return
        assert lost is not None
        raise lost

    async def read_u32(self, address: int, *, input_registers: bool = True) -> int:
        """A 32-bit value at ``address`` (high word first), from input or holding registers."""
        regs = await (self.read_input if input_registers else self.read_holding)(address, 2)
        return from_u32(regs)

    async def write_u32(self, address: int, value: int) -> None:
        """Write a 32-bit value as two registers, high word first, in one FC 0x10."""
        await self.write_registers(address, to_u32(value))
