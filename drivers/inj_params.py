"""INJ-1's shot set-up (what SET_PARAMS carries), in the ICD's ranges and resolution
(shared/icd/inj-1.md); :mod:`drivers.inj` sends it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _tenths(value: float, what: str) -> float:
    if abs(value * 10 - round(value * 10)) > 1e-6:
        raise ValueError(f"{what} must be a multiple of 0.1")
    return round(value, 1)


class InjParams(BaseModel):
    """One shot set-up: what SET_PARAMS carries, in the ICD's ranges and resolution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    volume_ul: float = Field(ge=1.0, le=200.0, description="shot volume, uL, resolution 0.1")
    depth_mm: float = Field(ge=0.5, le=6.0, description="needle depth, mm, step 0.1")
    mode: Literal["single", "burst", "nappage"] = "single"
    rate_hz: int = Field(3, ge=1, le=10, description="shots/s while the trigger is held (burst, nappage)")

    @field_validator("volume_ul")
    @classmethod
    def _volume_resolution(cls, v: float) -> float:
        return _tenths(v, "volume_ul")

    @field_validator("depth_mm")
    @classmethod
    def _depth_step(cls, v: float) -> float:
        return _tenths(v, "depth_mm")
