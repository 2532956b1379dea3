"""What an EPG-1 pulse train is, within the device's capability ranges, and what the
device reports it delivered (shared/icd/epg-1.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class EpgTrain(BaseModel):
    """One pulse train as the device's capability ranges allow it (clinical limits live elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amplitude_v: float = Field(ge=1, le=150, description="pulse amplitude, volts, in 0.5 V steps")
    width_ms: float = Field(ge=0.05, le=20, description="pulse width, milliseconds")
    period_ms: float = Field(ge=1, le=2000, description="start-to-start period, milliseconds")
    pulses: int = Field(ge=1, le=10_000)
    polarity: Literal["mono", "bip"] = "mono"
    current_limit_ma: float = Field(default=20, ge=1, le=100)

    @field_validator("amplitude_v")
    @classmethod
    def _half_volt_steps(cls, v: float) -> float:
        if abs(v * 2 - round(v * 2)) > 1e-9:
            raise ValueError("amplitude must be a multiple of 0.5 V")
        return v

    @model_validator(mode="after")
    def _period_holds_two_widths(self) -> "EpgTrain":
        if self.period_ms < 2 * self.width_ms:
            raise ValueError("period must be at least 2 x width")
        return self


@dataclass
class TrainReport:
    pulses: int
    charge_uc: float
    energy_mj: float
    peak_ma: float
