"""Course plans: what a course of sessions looks like, phase by phase.

A plan is a YAML file ``<id>.yaml`` in the hub config's ``courses`` directory. Each
phase lists the programs that may run in it, its number of (completed) sessions and
the days between two sessions as ``{min, max}``. Files are read afresh on every call,
like the program library, and a file that cannot be read never hides the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from devicehub.models.loading import InputError, read_yaml, validate_document

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
SUFFIXES = (".yaml", ".yml")


class CourseError(InputError):
    """A course plan that cannot be used as written."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DaysBetween(_Strict):
    min: int = Field(ge=1, le=365, description="fewest days between two sessions of the phase")
    max: int = Field(ge=1, le=365, description="most days between two sessions of the phase")

    @model_validator(mode="after")
    def _ordered(self) -> "DaysBetween":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class CoursePhase(_Strict):
    id: str = Field(pattern=SLUG_PATTERN, max_length=64, description="e.g. initial, maintenance")
    title: str | None = None
    programs: list[str] = Field(min_length=1, description="ids of the programs a session of this phase may run")
    sessions: int = Field(ge=1, le=100, description="completed sessions that make up the phase")
    interval_days: DaysBetween = Field(description="days between two sessions, counted from the last one's end")


class CoursePlan(_Strict):
    """configs/courses/<id>.yaml: one course plan of the clinic."""

    model_config = ConfigDict(extra="forbid", strict=True, title="CoursePlan")

    id: str = Field(pattern=SLUG_PATTERN, max_length=64, description="the file name without .yaml")
    version: int = Field(1, ge=1)
    title: str = Field(min_length=1)
    indication: Literal["androgenetic_alopecia", "telogen_effluvium", "alopecia_areata", "other"]
    description: str | None = None
    phases: list[CoursePhase] = Field(min_length=1, description="in the order they follow each other")

    @model_validator(mode="after")
    def _unique_phases(self) -> "CoursePlan":
        ids = [p.id for p in self.phases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"phase ids must be unique: {', '.join(dupes)} repeated")
        return self

    @property
    def total_sessions(self) -> int:
        return sum(p.sessions for p in self.phases)

    def phase_at(self, completed: int) -> CoursePhase | None:
        """The phase the next session counts for after ``completed`` completed sessions
        (None when the plan is done)."""
        n = 0
        for phase in self.phases:
            n += phase.sessions
            if completed < n:
                return phase
        return None

    def phase_id(self, phase_id: str) -> CoursePhase:
        for phase in self.phases:
            if phase.id == phase_id:
                return phase
        raise KeyError(phase_id)


def load_plan(path_or_text: str | bytes | Path, *, expect_id: str | None = None) -> CoursePlan:
    """Read and validate one plan; CourseError lists every problem with its field path."""
    data, lines, _raw, source = read_yaml(path_or_text, CourseError)
    plan = validate_document(CoursePlan, data, lines=lines, error=CourseError, source=source)
    if expect_id is not None and plan.id != expect_id:
        from devicehub.models.loading import Problem

        raise CourseError([Problem("id", f"{plan.id!r} differs from the file name {expect_id!r}",
                                   lines.get(("id",)))], source=source)
    return plan


@dataclass
class PlanEntry:
    plan: CoursePlan
    sha256: str
    path: Path


class CoursePlans:
    """The ``courses`` directory of the hub config."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file())

    def get(self, plan_id: str) -> PlanEntry:
        """The plan; KeyError when there is none by that id, CourseError when unreadable."""
        for path in self._files():
            if path.stem == plan_id:
                raw = path.read_bytes()
                plan = load_plan(path, expect_id=path.stem)
                return PlanEntry(plan, hashlib.sha256(raw).hexdigest(), path)
        raise KeyError(plan_id)

    def list(self) -> list[PlanEntry]:
        out = []
        for path in self._files():
            try:
                out.append(self.get(path.stem))
            except (KeyError, InputError):
                continue
        return out

    def plan_json(self, plan_id: str) -> dict[str, Any]:
        return self.get(plan_id).plan.model_dump(mode="json")
