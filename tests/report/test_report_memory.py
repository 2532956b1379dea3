"""The hub writes a report after every session: its own memory must not carry the drawing.

A process playing the hub's part (an event loop, the report writer the room uses) writes
the report of a recorded session again and again; its RSS, read from /proc, stays where it
was after the first report (which imports what any report needs), as the soak's invariant 5
asks of the hub after its tenth session. Drawn in the hub's process, the first report
brought matplotlib (some 15 MB) and the next nine about 20 MB more (fonts, text-metric
caches, Agg buffers; per worker thread), and it kept growing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devicehub.records.store import RecordStore
from tests.course.helpers import ROOT
from tests.report.test_report import make_session

REPORTS = 10
#: the hub's RSS after its reports, against after the first (kB)
GROWTH_KB = 4 * 1024

HUB = """
import asyncio, json, sys
from types import SimpleNamespace
from devicehub.report.files import write_in_child

def rss_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

async def main(store, session, n):
    config = SimpleNamespace(store=store, site="clinic-a", room="room-1", timezone="UTC", aftercare=None)
    paths = [str(await write_in_child(config, session))]
    before = rss_kb()
    paths += [str(await write_in_child(config, session)) for _ in range(n - 1)]
    print(json.dumps({"before": before, "after": rss_kb(), "paths": paths,
                      "matplotlib": "matplotlib" in sys.modules}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_reports_leave_the_hubs_memory_as_it_was(tmp_path: Path) -> None:
    store_path = tmp_path / "devicehub.sqlite"
    with RecordStore(store_path) as store:
        sid = make_session(store)
    out = subprocess.run([sys.executable, "-c", HUB, str(store_path), sid, str(REPORTS)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    hub = json.loads(out.stdout)
    assert hub["paths"] == [str(tmp_path / "reports" / f"{sid}.html")] * REPORTS
    assert (tmp_path / "reports" / f"{sid}.html").read_text().count('src="data:image/png;base64,') == 2
    assert not hub["matplotlib"]
    assert hub["after"] - hub["before"] < GROWTH_KB, hub
