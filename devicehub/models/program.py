"""Session programs: what a treatment session does, step by step, over a grid of scalp points.

A program is a YAML file in the library (configs/programs/). Its shape is checked here
(types, unknown fields, references between steps, zones); whether it may run in a room
(device capabilities, clinic limits, devices present) is checked by
:mod:`devicehub.validation`.

Steps run in the order listed. A step may name one LED or PEMF step in ``with``: that
partner runs alongside it (both start together) and is **not** also run on its own.

The step models are in ``steps.py``, the shared constants and field types in
``program_fields.py``; both are importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from devicehub.models.loading import Problem, ProgramError, field_path, problems_from_validation
from devicehub.models.program_fields import (  # noqa: F401 - re-exported
    ALONGSIDE_KINDS,
    ID_PATTERN,
    NOT_OVERRIDABLE,
    PREFLIGHT_ID_PATTERN,
    RESERVED_STEP_IDS,
    SLUG_PATTERN,
    STANDARD_PREFLIGHT_IDS,
    STEP_DEVICE_TYPE,
    STEP_KINDS,
    DeviceId,
    StepId,
    ZoneId,
    _Strict,
)
from devicehub.models.steps import (  # noqa: F401 - re-exported
    ConfirmStep,
    DeviceStep,
    ElectroporationStep,
    Impedance,
    InjectionStep,
    LedStep,
    PemfStep,
    Step,
)


# ---------------------------------------------------------------- course, checklist, grid


class IntervalDays(_Strict):
    min: int = Field(ge=1, description="fewest days between two sessions")
    max: int = Field(ge=1, description="most days between two sessions")


class Course(_Strict):
    """Where the program sits in a course of sessions (information for the clinic)."""

    phase: Literal["initial", "maintenance"]
    interval_days: IntervalDays | None = None
    sessions: int | None = Field(None, ge=1, description="sessions in this phase")


class PreflightItem(_Strict):
    """A checklist item ticked before the room is energised."""

    id: str = Field(pattern=PREFLIGHT_ID_PATTERN, max_length=64)
    text: str = Field(min_length=1)
    kind: Literal["consent", "contraindication", "preparation", "documentation"]
    required: bool = True


class Zone(_Strict):
    """A rectangle of grid points on the scalp, ``rows`` x ``columns`` at the grid spacing."""

    id: ZoneId
    rows: int = Field(ge=1, le=100)
    columns: int = Field(ge=1, le=100)
    label: str | None = None

    @property
    def point_count(self) -> int:
        return self.rows * self.columns


class Grid(_Strict):
    spacing_mm: float = Field(gt=0, description="distance between neighbouring points")
    zones: list[Zone] = Field(min_length=1)


@dataclass(frozen=True)
class Point:
    """One grid point; ``id`` is ``<zone>-r<row>c<col>`` (1-based)."""

    zone: str
    row: int
    col: int

    @property
    def id(self) -> str:
        return f"{self.zone}-r{self.row}c{self.col}"



# ---------------------------------------------------------------- program


class Program(_Strict):
    """A session program (one YAML file of configs/programs/)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="Program")

    id: str = Field(pattern=SLUG_PATTERN, max_length=64, description="the file name without .yaml")
    version: int = Field(ge=1)
    title: str = Field(min_length=1)
    indication: Literal["androgenetic_alopecia", "telogen_effluvium", "alopecia_areata", "other"]
    description: str | None = None
    course: Course | None = None
    preflight: list[PreflightItem] = Field(default_factory=list)
    grid: Grid | None = None
    steps: list[Step] = Field(min_length=1)
    aftercare: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="aftercare advice for the patient's report; default: the clinic's (hub config aftercare)")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "Program":
        if info.context and info.context.get("defer_cross_checks"):
            return self
        problems = self.cross_check()
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return self

    # ------------------------------------------------------------ checks between fields

    def cross_check(self) -> list[Problem]:
        """Problems that involve more than one field: ids, references, zones, combinations."""
        out: list[Problem] = []
        if self.course and self.course.interval_days and self.course.interval_days.min > self.course.interval_days.max:
            out.append(Problem("course.interval_days", "min is above max"))
        seen: dict[str, int] = {}
        for i, item in enumerate(self.preflight):
            if item.id in seen:
                out.append(Problem(f"preflight[{i}].id", f"duplicate item id {item.id!r} (also preflight[{seen[item.id]}])"))
            seen.setdefault(item.id, i)
        zone_ids: list[str] = []
        if self.grid:
            seen = {}
            for i, zone in enumerate(self.grid.zones):
                if zone.id in seen:
                    out.append(Problem(f"grid.zones[{i}].id", f"duplicate zone id {zone.id!r} (also grid.zones[{seen[zone.id]}])"))
                seen.setdefault(zone.id, i)
            zone_ids = list(seen)
        index: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.id in index:
                out.append(Problem(f"steps[{i}].id", f"duplicate step id {step.id!r} (also steps[{index[step.id]}])"))
            elif step.id in RESERVED_STEP_IDS:
                out.append(Problem(f"steps[{i}].id", f"{step.id!r} is reserved (it prefixes program-wide limit ids)"))
            index.setdefault(step.id, i)
        partners: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            out.extend(self._step_problems(i, step, zone_ids))
            target = getattr(step, "with_", None)
            if target is None:
                continue
            where = f"steps[{i}].with"
            if target == step.id:
                out.append(Problem(where, "a step cannot run alongside itself"))
                continue
            if target not in index:
                out.append(Problem(where, f"no step {target!r} in this program"))
                continue
            other = self.steps[index[target]]
            if other.kind not in ALONGSIDE_KINDS:
                out.append(Problem(where, f"{target!r} is a {other.kind} step; only led and pemf steps run alongside another"))
            elif getattr(other, "with_", None) is not None:
                out.append(Problem(where, f"{target!r} names its own partner in 'with'; a step runs alongside one step at most"))
            elif target in partners:
                out.append(Problem(where, f"{target!r} already runs alongside steps[{partners[target]}]"))
            partners.setdefault(target, i)
        return out

    def _step_problems(self, i: int, step: Any, zone_ids: list[str]) -> list[Problem]:
        out: list[Problem] = []
        zones = getattr(step, "zones", None)
        if zones is not None:
            if self.grid is None:
                out.append(Problem(f"steps[{i}].zones", "the program has no grid"))
            else:
                for k, zone in enumerate(zones):
                    if zone not in zone_ids:
                        out.append(Problem(f"steps[{i}].zones[{k}]", f"no zone {zone!r} in the grid (zones: {', '.join(zone_ids)})"))
                    elif zone in zones[:k]:
                        out.append(Problem(f"steps[{i}].zones[{k}]", f"zone {zone!r} listed twice"))
        if isinstance(step, InjectionStep):
            if step.mode in ("burst", "nappage"):
                if step.rate_hz is None:
                    out.append(Problem(f"steps[{i}].rate_hz", f"required in {step.mode} mode"))
                if step.shot_ul is None:
                    out.append(Problem(f"steps[{i}].shot_ul", f"required in {step.mode} mode"))
            elif step.rate_hz is not None:
                out.append(Problem(f"steps[{i}].rate_hz", "applies only to burst and nappage modes"))
            shots = step.dose_ul / step.shot_volume_ul
            if shots < 1 - 1e-9:
                out.append(Problem(f"steps[{i}].shot_ul", "is larger than dose_ul"))
            elif not math.isclose(shots, round(shots), rel_tol=0, abs_tol=1e-6):
                out.append(Problem(f"steps[{i}].dose_ul", "must be a whole number of shots of shot_ul"))
        elif isinstance(step, ElectroporationStep):
            if step.impedance and step.impedance.min_ohm >= step.impedance.max_ohm:
                out.append(Problem(f"steps[{i}].impedance", "min_ohm must be below max_ohm"))
        elif isinstance(step, LedStep):
            if (step.duration_s is None) == (step.fluence_j_cm2 is None):
                out.append(Problem(f"steps[{i}]", "give exactly one of duration_s and fluence_j_cm2"))
            if step.duty_pct < 100 and step.pulse_hz == 0:
                out.append(Problem(f"steps[{i}].duty_pct", "below 100 needs pulse_hz above 0 (a continuous output has no duty cycle)"))
        return out

    # ------------------------------------------------------------ helpers for runners and reports

    def step(self, step_id: str) -> Any:
        """The step with this id; KeyError when there is none."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def step_index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise KeyError(step_id)

    def zone(self, zone_id: str) -> Zone:
        for zone in self.grid.zones if self.grid else ():
            if zone.id == zone_id:
                return zone
        raise KeyError(zone_id)

    def points(self, zone_id: str) -> list[Point]:
        """The zone's points in serpentine order: row 1 left to right, row 2 right to left, ..."""
        zone = self.zone(zone_id)
        out: list[Point] = []
        for row in range(1, zone.rows + 1):
            cols = range(1, zone.columns + 1) if row % 2 == 1 else range(zone.columns, 0, -1)
            out.extend(Point(zone.id, row, col) for col in cols)
        return out

    def step_points(self, step_id: str) -> list[Point]:
        """Every point a step treats, zone by zone in the step's order."""
        step = self.step(step_id)
        return [p for zone in getattr(step, "zones", None) or () for p in self.points(zone)]

    def alongside(self, step_id: str) -> Any | None:
        """The LED or PEMF step that runs alongside ``step_id`` (its ``with``), if any."""
        target = getattr(self.step(step_id), "with_", None)
        return self.step(target) if target else None

    def runs_alongside(self, step_id: str) -> str | None:
        """Id of the step that ``step_id`` runs alongside, when it is named in a ``with``."""
        for step in self.steps:
            if getattr(step, "with_", None) == step_id:
                return step.id
        return None

    def sequence(self) -> list[tuple[Any, Any | None]]:
        """The steps in run order as (step, partner run alongside or None); partners are
        left out as steps of their own."""
        partners = {s.with_ for s in self.steps if getattr(s, "with_", None)}
        return [(s, self.alongside(s.id)) for s in self.steps if s.id not in partners]

    def to_json(self) -> dict[str, Any]:
        """The program as JSON-ready data (YAML keys, ``with`` not ``with_``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def apply_overrides(self, params: dict[str, dict[str, Any]] | None) -> "Program":
        """A copy with step parameters replaced, ``{step id: {parameter: value}}``, validated
        again. ProgramError names ``params.<step>.<param>`` for an unknown step or
        parameter and for a value the program cannot take. ``impedance`` takes a mapping
        merged into the step's own."""
        if not params:
            return self
        problems: list[Problem] = []
        if not isinstance(params, dict):
            raise ProgramError([Problem("params", "expected a mapping {step id: {parameter: value}}")])
        data = self.model_dump(mode="python", by_alias=True)
        index = {s.id: i for i, s in enumerate(self.steps)}
        touched: dict[tuple[int, str], str] = {}
        for step_id, changes in params.items():
            if step_id not in index:
                problems.append(Problem(f"params.{step_id}", f"no step {step_id!r} in program {self.id!r}"))
                continue
            if not isinstance(changes, dict):
                problems.append(Problem(f"params.{step_id}", "expected a mapping {parameter: value}"))
                continue
            i = index[step_id]
            step = self.steps[i]
            allowed = {(f.alias or name) for name, f in type(step).model_fields.items()} - set(NOT_OVERRIDABLE)
            for param, value in changes.items():
                where = f"params.{step_id}.{param}"
                if param in NOT_OVERRIDABLE:
                    problems.append(Problem(where, "cannot be overridden"))
                elif param not in allowed:
                    problems.append(Problem(where, f"unknown parameter of a {step.kind} step "
                                                   f"(parameters: {', '.join(sorted(allowed)) or 'none'})"))
                else:
                    current = data["steps"][i].get(param)
                    if param == "impedance" and isinstance(value, dict) and isinstance(current, dict):
                        value = {**current, **value}
                    data["steps"][i][param] = value
                    touched[(i, param)] = where
        if problems:
            raise ProgramError(problems)

        def remap(field: str, message: str) -> Problem:
            for (i, param), where in touched.items():
                prefix = f"steps[{i}].{param}"
                if field == prefix or field.startswith(prefix + ".") or field.startswith(prefix + "["):
                    return Problem(where + field[len(prefix):], message)
            if field.startswith("steps[") and "]" in field:
                i = int(field[6:field.index("]")])
                if i < len(self.steps):
                    return Problem(f"params.{self.steps[i].id}{field[field.index(']') + 1:]}", message)
            return Problem(field, message)

        try:
            program = Program.model_validate(data, context={"defer_cross_checks": True})
        except ValidationError as exc:
            raise ProgramError([remap(p.field, p.message) for p in problems_from_validation(exc, tags=STEP_KINDS)]) from None
        cross = program.cross_check()
        if cross:
            raise ProgramError([remap(p.field, p.message) for p in cross])
        return program


def step_field(index: int, name: str | None = None) -> str:
    """``steps[2].amplitude_v``."""
    return field_path(("steps", index, name) if name else ("steps", index))
