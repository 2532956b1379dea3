"""Child processes of the tests and the benchmarks, each ready once it prints its line.

- :class:`ChildProcess`: a command whose first stdout line says it is ready (read with a
  deadline on a thread, so a child that hangs before it fails the caller, not hangs it).
- :class:`ServeProcess`: ``devicehub serve --config CFG`` (the hub of one room).
- :class:`CollectorProcess`: ``devicehub collect --config CFG --client-id ID``.
- :class:`SimulatorsProcess`: ``python -m simulators room --config SPEC``, the simulators in
  a process of their own, each announced on one JSON line.
- :class:`SimulatedRoomProcess`: the simulated room with its simulators in such a process.
- :func:`stop_process`: SIGTERM, then SIGKILL when it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from simulators.harness import SimHandle
from simulators.simroom import ROOM, SimulatedRoom

ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """Stop ``proc`` (SIGTERM, SIGKILL after ``timeout`` s) and reap it; its return code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ChildProcess:
    """``argv`` run from the repository root; stderr appended to ``log``; ready when its
    first stdout line starts with ``ready``."""

    what = "the process"

    def __init__(self, argv: list[str], log: Path, ready: str) -> None:
        self.argv = argv
        self.log = log
        self.ready = ready
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self, timeout: float = 30.0) -> "ChildProcess":
        err = open(self.log, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err.close()
        proc = self.proc
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith(self.ready):
            self.kill()
            raise RuntimeError(f"{self.what} did not get ready: {line!r}; log:\n{self.tail()}")
        self.ready_line = line[0].strip()
        return self

    async def astart(self, timeout: float = 30.0) -> "ChildProcess":
        return await asyncio.to_thread(self.start, timeout)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() else None


def devicehub_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "devicehub.cli", *args]


class ServeProcess(ChildProcess):
    """``devicehub serve --config CFG`` as a child process; :attr:`boot` from its ready line."""

    what = "the hub"

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(devicehub_argv("serve", "--config", str(config)), log, "devicehub serving")
        self.config = config

    @property
    def boot(self) -> int:
        return int(self.ready_line.split(" boot ")[1].split(";")[0])


@contextlib.asynccontextmanager
async def hub_in(room: Any) -> AsyncIterator[ServeProcess]:
    """The hub of a :class:`~simulators.simroom.SimulatedRoom` (not started: the caller
    starts it, after its clients subscribe); stopped at the end."""
    hub = ServeProcess(room.config_path, room.directory / "hub.log")
    try:
        yield hub
    finally:
        await asyncio.to_thread(hub.terminate)


class CollectorProcess(ChildProcess):
    """``devicehub collect --config CFG --client-id ID`` as a child process."""

    what = "the collector"

    def __init__(self, config: Path, client_id: str, log: Path) -> None:
        super().__init__(devicehub_argv("collect", "--config", str(config), "--client-id", client_id), log,
                         "devicehub collecting")
        self.config = config
        self.client_id = client_id

    def terminate(self, timeout: float = 20.0) -> int | None:
        return super().terminate(timeout)


class SimulatorsProcess:
    """``python -m simulators room --config SPEC``: ``devices`` (``{"id", "type", "seed"}``
    each) in one child process; :attr:`announced` holds each one's announcement by id
    (``device``, ``endpoint``, ``control``)."""

    def __init__(self, directory: Path, devices: list[dict[str, Any]], log: Path) -> None:
        self.directory = directory
        self.devices = devices
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.announced: dict[str, dict[str, Any]] = {}

    def start(self) -> "SimulatorsProcess":
        self.directory.mkdir(parents=True, exist_ok=True)
        spec = self.directory / "sim-room.yaml"
        spec.write_text(yaml.safe_dump({"devices": self.devices}))
        err = open(self.log, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "simulators", "room", "--config", str(spec)],
                                     stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        err.close()
        assert self.proc.stdout is not None
        for _ in self.devices:  # one announcement line per device, then they serve
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the simulators exited before announcing themselves")
            ann = json.loads(line)
            self.announced[ann.get("id", ann["device"])] = ann
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10)


class SimulatedRoomProcess(SimulatedRoom):
    """:class:`~simulators.simroom.SimulatedRoom` (its config, its ``sims[...].control``,
    the same seeds) with the four simulators in a process of their own
    (:class:`SimulatorsProcess`): whatever the caller's process does (a console's drawing,
    a test's clinic reading every message) never holds up their replies and heartbeats, on
    a loaded machine neither (in the caller's process they share its GIL)."""

    procs: SimulatorsProcess | None = None

    def start(self) -> "SimulatedRoomProcess":
        self.procs = SimulatorsProcess(
            self.directory, [{"id": d, "type": k, "seed": zlib.crc32(d.encode()) & 0xFFFF} for d, k in ROOM],
            self.directory / "simulators.log").start()
        for dev_id, ann in self.procs.announced.items():
            self.sims[dev_id] = SimHandle(ann["device"], ann["endpoint"], ann["control"])
        self.write_config()
        return self

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop()
