"""The session report: self-contained HTML whose dose maps say, point by point, what the
record says was delivered. The PNGs are read back pixel by pixel."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from collections import Counter, deque
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from devicehub.records.store import RecordStore
from devicehub.report.dosemap import COLOURS
from devicehub.report.files import write_report
from tests.course.helpers import ROOT, day, demo_program

#: point -> (delivered uL or pulses, status; None: an intent without a result) per step
INJECT = {"left-r1c1": (20.0, "done"), "left-r1c2": (19.5, "done"), "left-r2c1": (8.0, "interrupted"),
          "left-r2c2": (0.0, "failed"), "right-r1c1": (20.0, None), "right-r1c2": (25.0, "done")}
# right-r2c1 and right-r2c2: never reached
EP = {"left-r1c1": (10, "done"), "left-r1c2": (10, "done")}
EP_SKIPPED = ["left-r2c1"]
EXPECTED = {"inject": {"full": 2, "partial": 1, "failed": 2, "over": 1, "none": 2},
            "ep": {"full": 2, "skipped": 1, "none": 5}}


def make_session(store: RecordStore, aftercare: list[str] | None = None) -> str:
    sid = "S-REPORT"
    program = demo_program()
    if aftercare:
        program["aftercare"] = aftercare
    t = day(0)
    store.create_session(sid, program_id="demo", program_version="1", program_sha256="ab" * 32,
                         program_json=program, patient_ref="P-<script>", operator="dr-a", origin="mqtt",
                         params={}, acknowledgements=["ep.amplitude_v"], created_at=t)
    store.append_event(sid, "state", {"state": "running", "previous": "created"}, t + timedelta(minutes=1))
    store.append_event(sid, "preflight_item", {"item": "consent", "done": True, "by": "nurse"}, t)
    for step, table, key in (("inject", INJECT, "volume_ul"), ("ep", EP, "pulses")):
        store.append_event(sid, "step_started", {"step": step, "kind": "x", "devices": [
            "inj-1" if step == "inject" else "epg-1"]}, t)
        for point, (amount, status) in table.items():
            zone = point.split("-")[0]
            intent = store.delivery_intent(sid, step_id=step, zone=zone, point=point,
                                           device="inj-1" if step == "inject" else "epg-1", planned={key: 1})
            if status is not None:
                store.delivery_result(intent, delivered={key: amount, "depth_mm": 1.5, "charge_uc": 2.0},
                                      status=status)
    for point in EP_SKIPPED:
        store.append_event(sid, "point_skipped", {"step": "ep", "zone": "left", "point": point,
                                                  "reason": "impedance_out_of_range"}, t)
    store.append_event(sid, "alarm", {"id": "a1", "priority": "high", "source": "inj-1", "code": "device_fault",
                                      "text": "occlusion"}, t)
    store.append_event(sid, "failed", {"reason": "device_fault:inj-1", "totals": {"inj-1": {"volume_ul": 92.5}}},
                       t + timedelta(minutes=20))
    store.append_event(sid, "adverse_event", {"kind": "redness", "severity": "mild", "score": None, "onset": None,
                                              "note": "<b>left temple</b>", "by": "nurse", "action": "recorded"},
                       t + timedelta(minutes=25))
    return sid


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.tags: Counter[str] = Counter()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data") and value:
                (self.images if value.startswith("data:image/png;base64,") else self.urls).append(value)

    def handle_data(self, data):
        self.text.append(data)


def blobs(rgb: np.ndarray, colour: tuple[int, int, int], min_area: int) -> list[tuple[float, float]]:
    """Centres (x, y) of the 4-connected regions of exactly ``colour`` of ``min_area`` pixels or more."""
    mask = np.all(rgb == np.array(colour, dtype=np.uint8), axis=2)
    seen = np.zeros_like(mask)
    h, w = mask.shape
    areas = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        area, todo, sx, sy = 0, deque([(y, x)]), 0, 0
        seen[y, x] = True
        while todo:
            cy, cx = todo.popleft()
            area += 1
            sx, sy = sx + cx, sy + cy
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    todo.append((ny, nx))
        if area >= min_area:
            areas.append((sx / area, sy / area))
    return areas


def expected_grid(step: str) -> list[str]:
    """The state of each point as the record says, in picture order: zone left then right,
    column by column, row 1 above row 2."""
    table = INJECT if step == "inject" else EP
    planned = 20.0 if step == "inject" else 10
    out = []
    for zone in ("left", "right"):
        for c in (1, 2):
            for r in (1, 2):
                point = f"{zone}-r{r}c{c}"
                if step == "ep" and point in EP_SKIPPED:
                    out.append("skipped")
                    continue
                amount, status = table.get(point, (0.0, "unreached"))
                if status in ("failed", None):
                    out.append("failed")
                elif status == "unreached" or amount == 0:
                    out.append("none")
                elif amount > planned * 1.05:
                    out.append("over")
                else:
                    out.append("full" if amount >= planned * 0.95 else "partial")
    return out


def test_html_report_is_self_contained_and_its_dose_maps_show_each_point(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "r.sqlite") as store:
        sid = make_session(store)
        path = write_report(store, sid, tmp_path / "reports")
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert page.urls == []
    assert not re.search(r"(?i)(https?:|ftp:|//[a-z0-9.-]+\.[a-z]{2,}|url\(|@import)", text.replace(
        "data:image/png;base64,", ""))
    words = " ".join(page.text)
    for heading in ("Dose maps", "Planned and delivered per device", "Timeline", "Preflight checklist",
                    "Soft limits acknowledged", "Alarms", "Adverse events", "Aftercare", "Next session"):
        assert heading in words, heading
    assert "P-<script>" in words and "<script>" not in text and "<b>left temple</b>" in words
    assert "ep.amplitude_v" in words and "occlusion" in words and "No course" in words
    assert "Record verified" in words and "ab" * 32 in words
    assert "no alcohol, no smoking" in words  # the clinic's default advice
    assert page.tags["img"] == 2 and len(page.images) == 2
    for uri, step in zip(page.images, ("inject", "ep")):
        rgba = mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        rgb = (rgba[..., :3] * 255).round().astype(np.uint8)
        cells = [(x, y, state) for state, colour in COLOURS.items() for x, y in blobs(rgb, colour, min_area=400)]
        found = Counter(state for _x, _y, state in cells)
        assert found == EXPECTED[step], (step, found)
        assert len(cells) == 8  # one square per point, nothing else that large
        by_column = sorted(cells)  # x: zone left then right, column 1 then 2
        columns = [sorted(by_column[i:i + 2], key=lambda c: c[1]) for i in range(0, 8, 2)]  # y: row 1 on top
        assert [state for col in columns for _x, _y, state in col] == expected_grid(step)


def test_markdown_report_and_the_program_aftercare(tmp_path: Path) -> None:
    store_path = tmp_path / "r.sqlite"
    with RecordStore(store_path) as store:
        sid = make_session(store, aftercare=["Keep the scalp dry tonight."])
    out = subprocess.run([sys.executable, "-m", "devicehub.cli", "sessions", "report", sid, "--format", "md",
                          "--store", str(store_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "## Adverse events" in out.stdout and "left temple" in out.stdout
    assert "- Keep the scalp dry tonight." in out.stdout and "no alcohol" not in out.stdout
    target = tmp_path / "x" / "report.html"
    out = subprocess.run([sys.executable, "-m", "devicehub.cli", "sessions", "report", sid, "--out", str(target),
                          "--store", str(store_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(target) and target.read_text().startswith("<!DOCTYPE")
    out = subprocess.run([sys.executable, "-m", "devicehub.cli", "sessions", "report", "NOPE",
                          "--store", str(store_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr


@pytest.mark.parametrize("state", list(COLOURS))
def test_the_scale_colours_are_apart(state: str) -> None:
    others = [c for s, c in COLOURS.items() if s != state]
    mine = np.array(COLOURS[state])
    assert min(np.abs(mine - np.array(o)).sum() for o in others) > 60
    assert np.abs(mine - 255).sum() > 60  # not the page's white


def test_times_are_shown_in_the_clinics_zone(tmp_path: Path) -> None:
    store_path = tmp_path / "r.sqlite"
    with RecordStore(store_path) as store:
        sid = make_session(store)
    config = tmp_path / "hub.yaml"
    config.write_text(f"store: {store_path}\ntimezone: Europe/Paris\nsite: clinic-a\nroom: room-9\n")
    out = subprocess.run([sys.executable, "-m", "devicehub.cli", "sessions", "report", sid, "--config", str(config)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "2026-01-05 10:00:00 CET" in out.stdout and "times in Europe/Paris" in out.stdout  # 09:00 UTC
    assert "clinic-a/room-9" in out.stdout


def test_amounts_are_shown_to_their_units_resolution(tmp_path: Path) -> None:
    """A fluence summed in floats (0.049999 J/cm2) reads 0.050: whole mJ/cm2, as the LED-1 counts."""
    with RecordStore(tmp_path / "r.sqlite") as store:
        sid, t = "S-AMOUNTS", day(0)
        store.create_session(sid, program_id="demo", program_version="1", program_sha256="ab" * 32,
                             program_json=demo_program(), patient_ref="P-1", operator="dr-a", origin="mqtt",
                             params={}, acknowledgements=[], created_at=t)
        store.append_event(sid, "state", {"state": "running", "previous": "created"}, t)
        # the totals are the result rows' sums: floats that do not add up exactly
        for dev, delivered in (("led-1", {"fluence_j_cm2": 0.02, "exposure_s": 0.1}),
                               ("led-1", {"fluence_j_cm2": 0.029999, "exposure_s": 0.2}),
                               ("inj-1", {"volume_ul": 92.49999999})):
            d = store.delivery_intent(sid, step_id="s", zone=None, point=None, device=dev, planned={})
            store.delivery_result(d, delivered=delivered, status="interrupted")
        store.append_event(sid, "failed", {"reason": "soak", "totals": {
            "led-1": {"fluence_j_cm2": 0.049999, "exposure_s": 0.30000000000000004},
            "inj-1": {"volume_ul": 92.49999999}}}, t + timedelta(minutes=30))
        path = write_report(store, sid, tmp_path / "reports")
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    cells = [t.strip() for t in page.text if t.strip()]
    for quantity, shown in (("fluence_j_cm2", "0.050"), ("exposure_s", "0.3"), ("volume_ul", "92.5")):
        assert any(c == quantity and shown in cells[i + 1:i + 3] for i, c in enumerate(cells)), quantity
    assert "0.049999" not in cells and "0.30000000000000004" not in cells
