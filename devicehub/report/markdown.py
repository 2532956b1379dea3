"""The report as Markdown: the record's tables (devicehub.records.report) plus adverse
events, aftercare and the next session window."""

from __future__ import annotations

from typing import Any

from devicehub.records.report import _table, render_report
from devicehub.records.store import RecordStore
from devicehub.report.collect import local
from devicehub.report.html import next_window


def render(store: RecordStore, session_id: str, data: dict[str, Any]) -> str:
    text = render_report(store, session_id)
    # the older closing note is replaced by the sections below
    text = text.split("\n## After the session\n")[0].rstrip("\n")
    zone = data["zone"]
    pos = data["position"]
    out = [text, "", "## Course", "",
           (f"Course {pos['course']}, phase {pos['phase']}, session {pos['number']}." if isinstance(pos, dict)
            else "Not in a course."), "", "## Adverse events", ""]
    rows = [[local(e["ts"], zone), e["data"].get("kind"), e["data"].get("severity"), e["data"].get("score"),
             e["data"].get("onset"), e["data"].get("note"), e["data"].get("by"), e["data"].get("action")]
            for e in data["adverse"]]
    out += _table(["recorded", "kind", "severity", "pain score", "onset", "note", "by", "action"], rows) if rows \
        else ["No adverse event recorded."]
    out += ["", "## Aftercare", ""] + [f"- {a}" for a in data["aftercare"]]
    out += ["", "## Next session", "", next_window(data), ""]
    return "\n".join(out)
