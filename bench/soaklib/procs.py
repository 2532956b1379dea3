"""The soak's separate processes and the wire between them.

- ``Simulators``: ``python -m simulators room --config ...`` (all four devices, seeded).
- ``TcpProxy``: a small proxy in front of each device port, so the soak can cut a
  device's TCP connection (the hub sees the link drop and reconnects through it).
- ``Broker``: a private Mosquitto with persistence, stopped and started on the same port.
- ``Hub``: ``devicehub serve`` as a process; SIGKILLed and started again on the same config.

The simulators' and the hub's processes are simulators/devsupport's, as in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from simulators.devsupport.processes import ServeProcess, SimulatorsProcess
from simulators.local_broker import LocalBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
DEVICES = (("epg-1", "epg"), ("inj-1", "inj"), ("led-1", "led"), ("pemf-1", "pemf"))


class Simulators(SimulatorsProcess):
    """The four simulators in one child process, seeded; ``endpoints`` and ``controls`` by device id."""

    def __init__(self, directory: Path, seed: int) -> None:
        super().__init__(directory, [{"id": d, "type": k, "seed": (seed * 31 + i) & 0xFFFFFFFF}
                                     for i, (d, k) in enumerate(DEVICES)], directory / "sims.log")
        self.seed = seed

    @property
    def endpoints(self) -> dict[str, str]:
        return {d: a["endpoint"] for d, a in self.announced.items()}

    @property
    def controls(self) -> dict[str, str]:
        return {d: a["control"] for d, a in self.announced.items()}


class TcpProxy:
    """Bytes both ways between the hub and one device port; ``cut()`` drops every connection."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.cuts = 0

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            writer.close()
            up_writer.close()

    def cut(self, *, count: bool = True) -> int:
        """Drop every connection through the proxy now (as a pulled cable); the port stays open."""
        n = 0
        for a, b in list(self._pairs):
            for w in (a, b):
                sock = w.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    if sock is not None:
                        sock.shutdown(2)
                w.close()
            n += 1
        self._pairs.clear()
        self.cuts += int(count)
        return n

    async def stop(self) -> None:
        self.cut(count=False)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def proxied(endpoint: str, port: int) -> str:
    """``socket://127.0.0.1:P`` or ``modbus-tcp://127.0.0.1:P?unit=1`` with the proxy's port."""
    scheme, rest = endpoint.split("://", 1)
    hostport, sep, query = rest.partition("?")
    host = hostport.rsplit(":", 1)[0]
    return f"{scheme}://{host}:{port}{sep}{query}"


def upstream_of(endpoint: str) -> tuple[str, int]:
    hostport = endpoint.split("://", 1)[1].partition("?")[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


class Broker:
    """Mosquitto on a fixed port with persistence (the followers' sessions outlive a restart)."""

    def __init__(self, directory: Path, log_all: bool = False) -> None:
        # mosquitto drops root privileges before writing its database: a directory it can
        # reach (the run's own directory is private to this user)
        self.store = Path(tempfile.mkdtemp(prefix="devicehub-soak-mosq-"))
        os.chmod(self.store, 0o777)
        self.port = free_port()
        self.log_path = directory / "mosquitto.log"  # every start's log, kept with the run
        self.broker = LocalBroker(port=self.port, log_path=self.log_path, extra_conf=(
            f"persistence true\npersistence_location {self.store}/\nautosave_interval 3600\n"
            + ("log_type all\n" if log_all else "")))
        self.restarts = 0

    def start(self) -> None:
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()
        shutil.rmtree(self.store, ignore_errors=True)

    def restart(self, down_s: float) -> None:
        self.broker.stop()
        time.sleep(down_s)
        self.broker.start()
        self.restarts += 1


class Hub(ServeProcess):
    """``devicehub serve --config CFG`` as a child process (simulators/devsupport); its kills counted."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(config, log)
        self.kills = 0

    def start(self, timeout: float = 60.0) -> "Hub":
        super().start(timeout)
        return self

    def kill(self) -> None:
        if self.alive():
            super().kill()
            self.kills += 1

    def terminate(self, timeout: float = 20.0) -> int | None:
        return super().terminate(timeout)

    def resources(self) -> dict[str, Any]:
        """RSS (kB) and open file descriptors of the hub process, from /proc."""
        pid = self.pid
        if pid is None:
            return {}
        rss = 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        kinds: dict[str, int] = {}
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            names = []
        peers = _socket_peers(pid)
        for name in names:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                if target.startswith("socket:["):  # which socket: its TCP peer port or unix path
                    kind = "socket " + peers.get(target[8:-1], "?")
                else:
                    kind = target.split(":")[0] if ":" in target else ("file:" + Path(target).name)
                kinds[kind] = kinds.get(kind, 0) + 1
        return {"pid": pid, "rss_kb": rss, "fds": len(names) if names else -1, "fd_kinds": kinds}


def _socket_peers(pid: int) -> dict[str, str]:
    """Socket inode -> "tcp :PORT->:PORT STATE" or "unix PATH", from /proc (for a leak's post-mortem)."""
    out: dict[str, str] = {}
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                local, remote = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
                out[f[9]] = f"tcp :{local}->:{remote} {states.get(f[3], f[3])}"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            f = line.split()
            out[f[6]] = "unix " + (Path(f[7]).name if len(f) > 7 else "(unnamed)")
    return out


def write_hub_config(directory: Path, endpoints: dict[str, str], mqtt_port: int, site: str) -> Path:
    doc: dict[str, Any] = {
        "site": site,
        "room": "room-1",
        "devices": [{"id": d, "type": k, "endpoint": endpoints[d]} for d, k in DEVICES],
        "store": str(directory / "devicehub.sqlite"),
        "console_socket": str(directory / "devicehub.sock"),
        "limits": str(ROOT / "configs" / "limits.yaml"),
        "programs": str(ROOT / "configs" / "programs"),
        "remote_confirmation": True,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
    }
    path = directory / "hub.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
