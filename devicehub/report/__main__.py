"""``python -m devicehub.report STORE SESSION DIRECTORY OPTIONS_JSON``: write one session's
HTML report and print its path. The hub runs this as a child process after each session
(:func:`devicehub.report.files.write_in_child`), so the report's drawing never lives in the
hub's memory; ``devicehub sessions report`` is the command for people."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

#: the child's scheduling niceness, raised before its imports: drawing a report is
#: background work (a second or two of CPU, most of it loading matplotlib), and on a room's
#: machine it must never take the CPU from the hub's stop path (docs/decisions/0013)
REPORT_NICENESS = 10

if __name__ == "__main__":
    os.nice(REPORT_NICENESS)

from devicehub.report.collect import ReportOptions
from devicehub.report.files import write_from_path


def main(argv: list[str] | None = None) -> int:
    store, session_id, directory, options = argv if argv is not None else sys.argv[1:]
    path = write_from_path(store, session_id, Path(directory), ReportOptions(**json.loads(options)))
    print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
