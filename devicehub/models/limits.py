"""The clinic's limits library (configs/limits.yaml) and the findings checked against it.

A **soft** limit may be passed only with an explicit, recorded acknowledgement naming
it; a **hard** limit is never passed. Most limits are ceilings ("above"); the grid
spacing and the days between sessions are floors ("below"). The expected unit of every
limit is fixed here, so a clinic that writes ``cm`` where the hub computes in ``mm``
gets an error instead of a limit ten times too loose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from devicehub.models.loading import LimitsError, read_yaml, validate_document

Severity = Literal["error", "hard", "soft"]


def fmt_number(value: Any) -> str:
    """``180.0`` -> ``180``, ``0.8`` -> ``0.8``: numbers as a person writes them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


def fmt_quantity(value: Any, unit: str) -> str:
    return f"{fmt_number(value)} {unit}".rstrip()


@dataclass(frozen=True)
class Finding:
    """One result of checking a program: a capability error, or a hard or soft limit passed.

    ``id`` is what an operator acknowledges for a soft finding: ``<step id>.<parameter>``,
    ``session.<cap>``, ``grid.spacing_mm`` or ``course.interval_days``.
    ``field`` is where in the program the value comes from (``steps[2].amplitude_v``).
    """

    id: str
    severity: Severity
    field: str
    value: Any
    limit: Any
    unit: str
    message: str

    def detail(self) -> dict[str, Any]:
        """The ``details`` entry of an MQTT error reply: ``{id, field, value, limit, unit}``."""
        return {"id": self.id, "field": self.field, "value": self.value, "limit": self.limit, "unit": self.unit}

    def to_dict(self) -> dict[str, Any]:
        return {**self.detail(), "severity": self.severity, "message": self.message}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Limit(_Strict):
    """A ceiling: above ``soft`` needs an acknowledgement, above ``hard`` is refused."""

    direction: ClassVar[str] = "above"

    soft: float = Field(gt=0, description="passing this needs a recorded acknowledgement")
    hard: float = Field(gt=0, description="never passed")
    unit: str
    typical: float | None = Field(None, description="usual clinical value, for information")
    source: str = Field("", description="where the figure comes from (pub. = published, est. = estimate)")

    @model_validator(mode="after")
    def _soft_inside_hard(self) -> "Limit":
        if self.soft > self.hard:
            raise ValueError(f"soft limit {fmt_number(self.soft)} must not be above the hard limit {fmt_number(self.hard)}")
        return self

    def exceeded(self, value: float) -> tuple[Literal["hard", "soft"], float] | None:
        """(severity, the limit passed) when ``value`` is beyond a limit; equal is within."""
        if value > self.hard:
            return "hard", self.hard
        if value > self.soft:
            return "soft", self.soft
        return None


class LowerLimit(_Strict):
    """A floor: below ``soft`` needs an acknowledgement, below ``hard`` is refused."""

    direction: ClassVar[str] = "below"

    soft: float = Field(gt=0)
    hard: float = Field(ge=0)
    unit: str
    typical: float | None = None
    source: str = ""

    @model_validator(mode="after")
    def _soft_inside_hard(self) -> "LowerLimit":
        if self.soft < self.hard:
            raise ValueError(f"soft limit {fmt_number(self.soft)} must not be below the hard limit {fmt_number(self.hard)} (a floor)")
        return self

    def exceeded(self, value: float) -> tuple[Literal["hard", "soft"], float] | None:
        if value < self.hard:
            return "hard", self.hard
        if value < self.soft:
            return "soft", self.soft
        return None


class EnergyLimit(Limit):
    """EP energy per pulse, computed as V^2 / R x width with R = the step's
    ``impedance.min_ohm`` (the lowest load it accepts), or ``assumed_load_ohm`` when the
    step gives none (500 ohm: the reference load of the nerve-stimulator standard)."""

    assumed_load_ohm: float = Field(500.0, gt=0)


class _Section(_Strict):
    #: field name -> the unit the hub computes it in
    UNITS: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="after")
    @classmethod
    def _unit_is_expected(cls, value: Any, info: ValidationInfo) -> Any:
        expected = cls.UNITS.get(info.field_name or "")
        if expected is not None and getattr(value, "unit", expected) != expected:
            raise ValueError(f"unit must be {expected!r} (the unit the hub computes in), got {value.unit!r}")
        return value


class InjectionLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"depth_mm": "mm", "dose_ul": "uL", "rate_hz": "shots/s"}
    depth_mm: Limit = Field(description="needle depth")
    dose_ul: Limit = Field(description="volume per grid point")
    rate_hz: Limit = Field(description="burst and nappage shot rate")


class ElectroporationLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"amplitude_v": "V", "width_ms": "ms", "pulses_per_point": "pulses",
                                       "energy_per_pulse_mj": "mJ", "pulse_timing_error_us": "us"}
    amplitude_v: Limit
    width_ms: Limit
    pulses_per_point: Limit
    energy_per_pulse_mj: EnergyLimit
    pulse_timing_error_us: Limit = Field(
        description="a train's largest pulse interval error by the device's offsets, held on each pulse while it "
                    "runs: soft raises a medium alarm once per train, hard stops the train and fails the point")


class LedLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"irradiance_mw_cm2": "mW/cm2"}
    irradiance_mw_cm2: Limit


class PemfLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"frequency_hz": "Hz", "peak_field_mt": "mT"}
    frequency_hz: Limit
    peak_field_mt: Limit


class GridLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"spacing_mm": "mm"}
    spacing_mm: LowerLimit = Field(description="distance between grid points (a floor)")


class SessionLimits(_Section):
    """Caps on what one session delivers in all, summed over every step and device."""

    UNITS: ClassVar[dict[str, str]] = {
        "injection_volume_ul": "uL", "ep_charge_uc": "uC", "led_fluence_j_cm2": "J/cm2",
        "led_exposure_min": "min", "pemf_time_min": "min",
    }
    injection_volume_ul: Limit
    ep_charge_uc: Limit
    led_fluence_j_cm2: Limit
    led_exposure_min: Limit
    pemf_time_min: Limit


class RuntimeLimits(_Section):
    """Limits watched while a session runs (readings, not program values)."""

    UNITS: ClassVar[dict[str, str]] = {"skin_temp_c": "degC"}
    skin_temp_c: Limit = Field(description="LED-1 skin thermistor: soft raises an alarm, hard stops the exposure")


class CourseLimits(_Section):
    UNITS: ClassVar[dict[str, str]] = {"interval_days": "days"}
    interval_days: LowerLimit = Field(description="days between two sessions of a course (a floor)")


#: step kind -> the Limits section holding its per-step parameter limits
STEP_LIMIT_SECTIONS = {"injection": "injection", "electroporation": "electroporation", "led": "led", "pemf": "pemf"}


class Limits(_Strict):
    """configs/limits.yaml: the clinic's soft and hard limits."""

    model_config = ConfigDict(extra="forbid", strict=True, title="Limits")

    version: int = Field(1, ge=1)
    title: str = ""
    source: str = ""
    injection: InjectionLimits
    electroporation: ElectroporationLimits
    led: LedLimits
    pemf: PemfLimits
    grid: GridLimits
    session: SessionLimits
    runtime: RuntimeLimits
    course: CourseLimits

    def step_limits(self, kind: str) -> dict[str, Limit]:
        """Per-step parameter limits of a step kind (empty for confirm steps)."""
        section = STEP_LIMIT_SECTIONS.get(kind)
        if section is None:
            return {}
        model = getattr(self, section)
        return {name: getattr(model, name) for name in type(model).model_fields}

    @classmethod
    def load(cls, path_or_text: str | bytes | Path) -> "Limits":
        """Read and validate a limits file; LimitsError lists every problem."""
        data, lines, _, source = read_yaml(path_or_text, LimitsError)
        return validate_document(cls, data, lines=lines, error=LimitsError, source=source)
