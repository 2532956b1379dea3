"""The dose map of one treated step: the scalp grid per zone, a square per point coloured
by what the record says it received against the plan, drawn with matplotlib (Agg).

The colours are a discrete scale (:data:`COLOURS`), one per point state of
:mod:`devicehub.report.collect`, so a reader (and a test reading the PNG's pixels) finds
every point's state without guessing a gradient. Each square is drawn apart from its
neighbours; legend swatches are far smaller than a square.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from devicehub.report.collect import STATE_LABELS, STATES, DoseStep

#: state -> RGB (0-255); distinct from each other, from white and from black text
COLOURS: dict[str, tuple[int, int, int]] = {
    "full": (46, 160, 67),      # green
    "over": (142, 68, 173),     # violet
    "partial": (243, 156, 18),  # amber
    "none": (214, 219, 223),    # light grey
    "skipped": (93, 109, 126),  # slate
    "failed": (192, 57, 43),    # red
}
#: cell size in inches and the gap between cells (fraction of a cell)
CELL_IN = 0.55
GAP = 0.16
DPI = 110


def _rgb(state: str) -> tuple[float, float, float]:
    r, g, b = COLOURS[state]
    return r / 255, g / 255, b / 255


def draw(step: DoseStep) -> Figure:
    zones = step.zones or [{"id": "-", "label": "-", "rows": 1, "columns": 1}]
    max_rows = max(z["rows"] for z in zones)
    widths = [max(z["columns"], 2) for z in zones]
    fig_w = max(6.5, CELL_IN * (sum(widths) + len(zones)) + 0.6)
    fig_h = CELL_IN * max_rows + 1.45
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)  # not pyplot's: no global figure registry, no GUI backend
    grid = fig.add_gridspec(1, len(zones), width_ratios=widths, left=0.03, right=0.97,
                            top=1 - 0.55 / fig_h, bottom=0.8 / fig_h, wspace=0.25)
    by_zone: dict[str, list[Any]] = {}
    for cell in step.cells:
        by_zone.setdefault(cell.zone, []).append(cell)
    for i, zone in enumerate(zones):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xlim(0.5, max(zone["columns"], 2) + 0.5)
        ax.set_ylim(max_rows + 0.5, 0.5)  # row 1 at the top, as the program's grid reads
        ax.set_aspect("equal")
        ax.set_xticks(range(1, zone["columns"] + 1))
        ax.set_yticks(range(1, zone["rows"] + 1))
        ax.tick_params(length=0, labelsize=7, colors="#555555")
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(f"{zone['label']} ({zone['id']})", fontsize=9)
        for cell in by_zone.get(zone["id"], []):
            half = (1 - GAP) / 2
            ax.add_patch(Rectangle((cell.col - half, cell.row - half), 1 - GAP, 1 - GAP,
                                   facecolor=_rgb(cell.state), edgecolor="none", antialiased=False))
            if cell.state in ("skipped", "failed"):  # marked beyond colour, for a black-and-white print
                ax.plot([cell.col - half * 0.5, cell.col + half * 0.5], [cell.row - half * 0.5, cell.row + half * 0.5],
                        color="white", linewidth=1.2)
                ax.plot([cell.col - half * 0.5, cell.col + half * 0.5], [cell.row + half * 0.5, cell.row - half * 0.5],
                        color="white", linewidth=1.2)
            elif cell.text:
                ax.text(cell.col, cell.row, cell.text, ha="center", va="center", fontsize=5.2, color="black"
                        if cell.state in ("none", "partial") else "white", linespacing=1.1)
    fig.suptitle(f"Step {step.step} ({step.kind}): {step.quantity} per point, delivered against planned",
                 fontsize=9.5, y=1 - 0.15 / fig_h, va="top")
    handles = [Patch(facecolor=_rgb(s), edgecolor="none", label=STATE_LABELS[s]) for s in STATES]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False, handlelength=1.0,
               handleheight=0.8, bbox_to_anchor=(0.5, 0.0))
    return fig


def png(step: DoseStep) -> bytes:
    """The dose map as PNG bytes."""
    fig = draw(step)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()
