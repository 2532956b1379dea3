"""Writing a report file (atomically: never a half-written report) in either format."""

from __future__ import annotations

import asyncio
import logging
import os
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


async def write_in_thread(config: Any, session_id: str) -> Path | None:
    """The HTML report of a session that ended, written beside the record off the loop."""
    try:
        return await asyncio.to_thread(write_from_path, config.store, session_id, report_dir(config),
                                       ReportOptions.from_config(config))
    except Exception:  # noqa: BLE001 - a report that cannot be written never disturbs the room
        log.exception("report of session %s not written", session_id)
        return None
