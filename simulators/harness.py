"""Run simulators for tests, the demo and benchmarks.

``run_simulator`` starts one in-process, on its own event loop in a background thread,
so its clock and watchdogs are not disturbed by the code under test. ``spawn_simulator``
starts ``python -m simulators`` as a subprocess, as another program would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from simulators.control import ControlClient
from simulators.server import ServedSimulator, serve


@dataclass
class SimHandle:
    kind: str
    endpoint: str
    control: str
    #: the simulator object (in-process runs only; touch it only through the control port
    #: from tests, it lives on another thread's loop)
    sim: Any = None

    def client(self) -> ControlClient:
        return ControlClient(self.control)


class SimulatorThread:
    """One or more simulators served from a private event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="simulators")
        self._thread.start()
        self._served: list[ServedSimulator] = []

    def start(self, kind: str, **opts: Any) -> SimHandle:
        fut = asyncio.run_coroutine_threadsafe(serve(kind, **opts), self.loop)
        served = fut.result(10)
        self._served.append(served)
        return SimHandle(kind, served.endpoint, served.control, served.sim)

    def stop(self) -> None:
        async def _close() -> None:
            for s in self._served:
                await s.close()
            # connections still open (a control client the test did not close) end here,
            # on a running loop, not as coroutines collected after the loop has closed
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        self.loop.close()


@contextlib.asynccontextmanager
async def run_simulator(kind: str, **opts: Any) -> AsyncIterator[SimHandle]:
    thread = SimulatorThread()
    try:
        handle = await asyncio.to_thread(thread.start, kind, **opts)
        yield handle
    finally:
        await asyncio.to_thread(thread.stop)


@contextlib.contextmanager
def spawn_simulator(kind: str, *args: str, expect: int = 1, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], list[dict[str, Any]]]]:
    """Start ``python -m simulators KIND ARGS...``; yields the process and its first ``expect`` announcement lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", kind, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(expect):
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"simulator {kind} exited before announcing: {err}")
            lines.append(json.loads(line))
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
