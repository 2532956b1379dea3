"""Writing a report file (atomically: never a half-written report) in either format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from devicehub.records.store import RecordStore, check_session_id
from devicehub.report.collect import ReportOptions, collect

log = logging.getLogger(__name__)
FORMATS = ("html", "md")


def render(store: RecordStore, session_id: str, fmt: str = "html", options: ReportOptions | None = None) -> str:
    data = collect(store, session_id, options)
    if fmt == "md":
        from devicehub.report.markdown import render as render_md

        return render_md(store, session_id, data)
    from devicehub.report.html import render as render_html

    return render_html(data)


def write_file(text: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_report(store: RecordStore, session_id: str, directory: str | os.PathLike[str], fmt: str = "html",
                 options: ReportOptions | None = None) -> Path:
    """Write ``<directory>/<session_id>.<fmt>`` and return its path."""
    check_session_id(session_id)
    text = render(store, session_id, fmt, options)
    return write_file(text, Path(directory) / f"{session_id}.{fmt}")


def report_dir(config: Any) -> Path:
    return Path(config.store).parent / "reports"


def write_from_path(store_path: str | os.PathLike[str], session_id: str, directory: Path,
                    options: ReportOptions | None = None) -> Path:
    with RecordStore(store_path, readonly=True) as store:
        return write_report(store, session_id, directory, "html", options)


#: a report not written by then is given up (logged); the child is killed
CHILD_TIMEOUT_S = 300.0


async def write_in_child(config: Any, session_id: str) -> Path | None:
    """The HTML report of a session that ended, written beside the record by a child process.

    Not in the hub's own process: matplotlib, its fonts and the Agg buffers of every dose map
    would stay in the hub's memory (tens of MB, and growing with each report rendered in a
    worker thread: per-thread font objects, text-metric caches, allocator arenas), and the
    drawing would hold the GIL the room's event loop needs. The child
    (``python -m devicehub.report``) reads the record read-only and exits; the hub never
    imports matplotlib. Returns the report's path, or None (logged) when it was not written."""
    options = ReportOptions.from_config(config)
    args = [str(config.store), session_id, str(report_dir(config)),
            json.dumps({"timezone": options.timezone, "aftercare": options.aftercare, "room": options.room})]
    root = str(Path(__file__).resolve().parents[2])  # where the devicehub package is, for the child's imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "devicehub.report", *args,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
    except OSError:
        log.exception("report of session %s not written", session_id)
        return None
    try:
        async with asyncio.timeout(CHILD_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        await _reap(proc)
        log.error("report of session %s not written: no answer in %.0f s", session_id, CHILD_TIMEOUT_S)
        return None
    except BaseException:  # the room closing: the child does not outlive the wait
        await _reap(proc)
        raise
    if proc.returncode != 0:
        log.error("report of session %s not written (exit %s): %s", session_id, proc.returncode,
                  err.decode(errors="replace").strip()[-2000:])
        return None
    return Path(out.decode().strip())


async def _reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await asyncio.shield(proc.wait())

