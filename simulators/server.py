"""Start one simulator on its device port (TCP, pty or RTU pty) and its control port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from simulators.base import DeviceSimulator
from simulators.control import serve_control
from simulators.registry import create_simulator


@dataclass
class ServedSimulator:
    sim: DeviceSimulator
    endpoint: str
    control: str
    _closers: list[Any] = field(default_factory=list)

    def announcement(self, device_id: str | None = None) -> dict[str, Any]:
        line = {"device": self.sim.kind, "endpoint": self.endpoint, "control": self.control}
        if device_id is not None and device_id != self.sim.kind:
            line["id"] = device_id
        return line

    async def close(self) -> None:
        for closer in reversed(self._closers):
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        self._closers.clear()
        await self.sim.stop()


async def serve(
    kind: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    control_port: int = 0,
    pty: bool = False,
    rtu_pty: bool = False,
    unit: int | None = None,
    seed: int | None = None,
) -> ServedSimulator:
    options: dict[str, Any] = {"seed": seed}
    if unit is not None:
        options["unit"] = unit
    sim = create_simulator(kind, **options)
    await sim.start()
    closers: list[Any] = []

    if sim.transport == "stream":
        if rtu_pty:
            raise ValueError(f"{kind} is a serial device: use --pty, not --rtu-pty")
        if pty:
            from simulators.stream import PtyPort

            port_obj = PtyPort(sim)
            port_obj.start()
            closers.append(port_obj.close)
            endpoint = port_obj.path
        else:
            from simulators.stream import drop_connections, serve_tcp

            server, bound = await serve_tcp(sim, host, port)
            closers.append(_server_closer(server))
            closers.append(lambda: drop_connections(sim))
            endpoint = f"socket://{host}:{bound}"
    else:
        if pty:
            raise ValueError(f"{kind} is a Modbus device: use --rtu-pty, not --pty")
        from simulators import modbus_server

        if rtu_pty:
            port_obj = modbus_server.RtuPtyPort(sim)
            port_obj.start()
            closers.append(port_obj.close)
            # a pty carries no parity (this kernel refuses even parity on one): announce 8N1
            endpoint = f"modbus-rtu://{port_obj.path}?baud=19200&parity=N&unit={sim.unit}"
        else:
            server, bound = await modbus_server.serve_modbus_tcp(sim, host, port)
            closers.append(_server_closer(server))
            endpoint = f"modbus-tcp://{host}:{bound}?unit={sim.unit}"

    cserver, cport = await serve_control(sim, host, control_port)
    closers.append(_server_closer(cserver))
    return ServedSimulator(sim, endpoint, f"{host}:{cport}", closers)


def _server_closer(server: asyncio.AbstractServer) -> Any:
    async def close() -> None:
        server.close()
        if hasattr(server, "close_clients"):
            server.close_clients()
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
        except (asyncio.TimeoutError, Exception):
            pass

    return close
