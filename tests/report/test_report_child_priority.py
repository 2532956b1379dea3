"""The report is drawn by a child process at a lower scheduling priority than the hub's:
a second or two of CPU after every session must not take the CPU from the stop path of the
next one (docs/decisions/0013). Seen from outside, in /proc, as the child runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from devicehub.records.store import RecordStore
from devicehub.report.files import write_in_child
from simulators.devsupport.waiting import poll
from tests.report.test_report import make_session


def _report_children() -> dict[int, int]:
    """This process's children running ``devicehub.report``: pid -> niceness (/proc/<pid>/stat)."""
    found: dict[int, int] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        if int(fields[1]) == me and b"devicehub.report" in cmdline:
            found[int(name)] = int(fields[16])  # field 19 of stat: nice
    return found


async def test_the_report_child_runs_ten_nice_steps_below_the_hub(tmp_path: Path) -> None:
    store_path = tmp_path / "room.sqlite"
    with RecordStore(store_path) as store:
        session = make_session(store)
    config = SimpleNamespace(store=store_path, site="clinic-a", room="room-1", timezone="UTC", aftercare=None)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    wanted = min(19, mine + 10)

    async def niced() -> bool:
        return any(n == wanted for n in _report_children().values())

    write = asyncio.create_task(write_in_child(config, session))
    await poll(niced, timeout=30, interval=0.01, what=f"a report child at niceness {wanted}")
    path = await write
    assert path is not None and path.is_file()
