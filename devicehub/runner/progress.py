"""Where a session is: per step and per point, what has been delivered so far.

Progress is what makes pause and resume exact: a resumed step starts from it, so a
point is never dosed twice and never skipped. It is updated by the runner's single
accounting path (device events), never guessed from what was set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PointProgress:
    point: str
    zone: str
    delivered: dict[str, float] = field(default_factory=dict)
    status: str = "pending"  # pending | active | done | skipped
    delivery_id: int | None = None
    #: amounts already written in earlier delivery rows of this point (after a pause)
    recorded: dict[str, float] = field(default_factory=dict)

    def add(self, **amounts: float) -> None:
        for k, v in amounts.items():
            self.delivered[k] = self.delivered.get(k, 0.0) + float(v)

    def get(self, key: str) -> float:
        return self.delivered.get(key, 0.0)


@dataclass
class StepProgress:
    step: str
    kind: str
    status: str = "pending"  # pending | active | done
    points: dict[str, PointProgress] = field(default_factory=dict)
    #: exposures (LED/PEMF): amounts delivered by earlier runs of this step (before a pause)
    done_amounts: dict[str, float] = field(default_factory=dict)

    def point(self, point_id: str, zone: str) -> PointProgress:
        p = self.points.get(point_id)
        if p is None:
            p = self.points[point_id] = PointProgress(point_id, zone)
        return p

    def summary(self) -> dict[str, Any]:
        done = sum(1 for p in self.points.values() if p.status == "done")
        skipped = sum(1 for p in self.points.values() if p.status == "skipped")
        return {"step": self.step, "kind": self.kind, "status": self.status, "points_done": done,
                "points_skipped": skipped, **({"delivered": dict(self.done_amounts)} if self.done_amounts else {})}
