"""What the benchmark scripts share: timing loops, percentiles, simulators, the results file.

Timings on the 2-core machines this project is measured on vary by 20-30 % from run
to run (shared/measured.md), so the scripts never judge an absolute figure: each one
runs the thing measured beside a raw baseline in the same process, against the same
simulator, in alternating rounds, and reports the ratio.

Run a script as ``.venv/bin/python bench/NAME.py`` (``make bench`` runs them all); this
module puts the repository root on ``sys.path`` so the scripts import the project the
way the tests do.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear between ranks
    (numpy's default), so a p99 of 200 samples is not simply the second largest."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    """n, p50, p90, p99, max, mean of a sample (in whatever unit it is given)."""
    s = sorted(values)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "p50": round(percentile(s, 50), digits),
        "p90": round(percentile(s, 90), digits),
        "p99": round(percentile(s, 99), digits),
        "max": round(s[-1], digits),
        "mean": round(sum(s) / len(s), digits),
    }


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


# --------------------------------------------------------------------------- timing


@dataclass
class Round:
    """One fixed-duration round of sequential round trips."""

    count: int
    seconds: float
    latencies_us: list[float] = field(repr=False)
    #: CPU time of this thread during the round (user + system, loopback TCP included)
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.count * 1e6 if self.count else 0.0


async def timed_round(call: Callable[[], Awaitable[Any]], duration: float) -> Round:
    """Await ``call()`` back to back for ``duration`` seconds, timing every round trip.

    The garbage collector is run before and kept out of the round, so one variant does
    not pay for the other's garbage; ``perf_counter_ns`` is read once per call. The
    thread's CPU time is read around the round: wall-clock rates on two cores depend
    on how the scheduler places the two ends, CPU time per call much less so.
    """
    gc.collect()
    gc.disable()
    try:
        lat: list[float] = []
        clock = time.perf_counter_ns
        cpu0 = time.thread_time()
        start = clock()
        end = start + int(duration * 1e9)
        t = start
        while t < end:
            await call()
            now = clock()
            lat.append((now - t) / 1000.0)
            t = now
        return Round(len(lat), (t - start) / 1e9, lat, time.thread_time() - cpu0)
    finally:
        gc.enable()


async def interleaved_round(calls: list[Callable[[], Awaitable[Any]]], duration: float) -> list[list[float]]:
    """Await the calls in turn (a, b, c, a, b, c, ...) for ``duration`` seconds; the
    latencies (us) of each. Neighbouring calls meet the same machine, so the ratio of
    their mean latencies is far steadier than rates from separate rounds when other
    programs come and go on a 2-core machine."""
    gc.collect()
    gc.disable()
    try:
        lat: list[list[float]] = [[] for _ in calls]
        clock = time.perf_counter_ns
        end = clock() + int(duration * 1e9)
        t = clock()
        while t < end:
            for i, call in enumerate(calls):
                await call()
                now = clock()
                lat[i].append((now - t) / 1000.0)
                t = now
        return lat
    finally:
        gc.enable()


async def loop_iterations_per_call(call: Callable[[], Awaitable[Any]], calls: int = 300) -> float:
    """How many event-loop iterations one ``await call()`` takes, counted, not timed.

    Every iteration is a trip through ``epoll`` and the ready queue; a bare request and
    reply needs 2 (send and wait; the reply wakes the caller). Each extra one (a Task
    created per request, a callback that wakes another future) costs a few
    microseconds on every request, so this deterministic count explains much of a
    difference in rate that the noisy clocks only hint at. Counted outside the timed
    rounds because the counting wrapper itself costs a little.
    """
    loop = asyncio.get_running_loop()
    original = loop._run_once  # type: ignore[attr-defined]
    n = 0

    def counting() -> None:
        nonlocal n
        n += 1
        original()

    loop._run_once = counting  # type: ignore[attr-defined]
    try:
        for _ in range(calls):
            await call()
    finally:
        del loop._run_once  # type: ignore[attr-defined]  # back to the class's method
    return n / calls


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("pymodbus", "serial", "numpy"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version is nice to have, never required
            info[f"{mod}_version"] = None
    info["event_loop"] = type(asyncio.new_event_loop()).__name__
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "drivers", "devicehub",
                                "simulators"], capture_output=True, text=True, timeout=5)
        info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


# --------------------------------------------------------------------------- simulators


@dataclass
class Sim:
    kind: str
    endpoint: str
    control: str
    #: the simulator object when it runs in this process (on the simulator thread's loop)
    obj: Any = None


class Simulators:
    """The simulators a benchmark needs, in a thread of this process or as subprocesses.

    ``mode="thread"``: ``simulators.harness.SimulatorThread``, one private event loop
    in a daemon thread (its objects are reachable, e.g. to read a run's start time on
    its own loop). ``mode="process"``: one ``python -m simulators KIND --port 0`` each,
    so the simulators do not share this process's GIL.
    """

    def __init__(self, kinds: list[str], mode: str = "process") -> None:
        if mode not in ("thread", "process"):
            raise ValueError("mode must be 'thread' or 'process'")
        self.kinds = kinds
        self.mode = mode
        self.sims: dict[str, Sim] = {}
        self._thread: Any = None
        self._procs: list[subprocess.Popen[str]] = []
        self._err_files: list[Any] = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the simulators (none when they run on a thread)."""
        return [p.pid for p in self._procs]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The simulators' event loop (thread mode only)."""
        return self._thread.loop if self._thread is not None else None

    def start(self) -> "Simulators":
        if self.mode == "thread":
            from simulators.harness import SimulatorThread

            self._thread = SimulatorThread()
            for kind in self.kinds:
                h = self._thread.start(kind, seed=1)
                self.sims[kind] = Sim(kind, h.endpoint, h.control, h.sim)
        else:
            for kind in self.kinds:
                # stderr to a file, not a pipe nobody reads: a chatty simulator would block on a full pipe
                err_file = tempfile.TemporaryFile(mode="w+")
                self._err_files.append(err_file)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "simulators", kind, "--port", "0", "--seed", "1"],
                    stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=str(ROOT),
                    env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                )
                self._procs.append(proc)
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    proc.wait(5)
                    err_file.seek(0)
                    err = err_file.read()
                    self.stop()
                    raise RuntimeError(f"simulator {kind} exited before announcing: {err}")
                ann = json.loads(line)
                self.sims[kind] = Sim(kind, ann["endpoint"], ann["control"])
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for f in self._err_files:
            f.close()
        self._err_files.clear()

    def __enter__(self) -> "Simulators":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def quiet_logging() -> Iterator[None]:
    """Driver warnings (a heartbeat late under load) would garble the tables; keep errors."""
    import logging

    root = logging.getLogger()
    old = root.level
    logging.basicConfig(level=logging.ERROR)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


# --------------------------------------------------------------------------- results


def write_results(name: str, doc: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``doc`` as ``bench/results/NAME.json`` (or ``path``), pretty and stable."""
    target = path or RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return target


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table, right-aligned numbers, for the terminal and the README."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(c: Any) -> str:
    if isinstance(c, float):
        if c != c:  # NaN
            return "-"
        return f"{c:,.0f}" if abs(c) >= 100 else f"{c:.3g}" if abs(c) < 1 else f"{c:.2f}"
    return str(c)


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` (sched_setaffinity alone moves one thread)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process has ended
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


@contextmanager
def pinned(pin: bool, others: list[int], what: str) -> Iterator[str | None]:
    """This process on the first CPU, the processes ``others`` (``what``) on the rest.

    On a 2-core machine the scheduler otherwise moves the benchmark and its peers (a
    broker, a subscriber, simulators) between cores from round to round, and a round's
    rate follows where they landed as much as what it measures. Yields a description of
    the placement, or None when not pinned (asked not to, one CPU, or no /proc).
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2 or not os.path.isdir("/proc/self/task"):
        yield None
        return
    everything = set(cpus)
    _set_affinity(os.getpid(), {cpus[0]})
    for pid in others:
        _set_affinity(pid, set(cpus[1:]))
    try:
        yield f"bench on CPU {cpus[0]}, {what} on {','.join(map(str, cpus[1:]))}"
    finally:
        for pid in [os.getpid(), *others]:
            _set_affinity(pid, everything)
