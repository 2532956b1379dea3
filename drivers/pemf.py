"""PEMF-1 pulsed electromagnetic field emitter driver (shared/icd/pemf-1.md), Modbus TCP or RTU.

The emitter times the run itself and stops at DURATION; the driver reports
``exposure_done`` with the device's elapsed time and pulse count.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.modbus_emitter import ModbusEmitter, on_grid
from drivers.modbus_link import from_u32, to_u32

WAVEFORMS = {"sine": 0, "square": 1, "trapezoid": 2}


class PemfExposure(BaseModel):
    """One PEMF run: waveform, repetition frequency, peak field and duration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    waveform: Literal["sine", "square", "trapezoid"]
    frequency_hz: float = Field(ge=0.1, le=100.0, description="resolution 0.1")
    peak_field_mt: float = Field(ge=0.01, le=20.0, description="resolution 0.01")
    duration_s: float = Field(ge=0.1, le=3600.0, description="resolution 0.1")
    watchdog_ms: int = Field(2000, ge=200, le=10000)

    @field_validator("frequency_hz")
    @classmethod
    def _frequency_grid(cls, v: float) -> float:
        return on_grid(v, 0.1, "frequency_hz")

    @field_validator("peak_field_mt")
    @classmethod
    def _field_grid(cls, v: float) -> float:
        return on_grid(v, 0.01, "peak_field_mt")

    @field_validator("duration_s")
    @classmethod
    def _duration_grid(cls, v: float) -> float:
        return on_grid(v, 0.1, "duration_s")


#: the fault codes of the ICD and their text (the simulator reports the same)
FAULT_TEXTS: dict[int, str] = {
    1: "coil over temperature",
    2: "coil open or short",
    3: "field deviating from the set peak",
    5: "watchdog",
}

#: the faults a technician removes at the chair, and what to check (shared/mqtt-api.md)
RECOVERY_HINTS: dict[int, str] = {
    1: "Coil too warm: let the coil cool for a minute away from the scalp, then recover",
}


class PemfDriver(ModbusEmitter):
    kind: ClassVar[str] = "pemf"
    params_type: ClassVar[type[BaseModel]] = PemfExposure
    model_code: ClassVar[int] = 0x5031  # "P1"
    model_name: ClassVar[str] = "PEMF-1"
    setpoint_count: ClassVar[int] = 6
    watchdog_register: ClassVar[int] = 5
    heartbeat_register: ClassVar[int] = 6
    input_count: ClassVar[int] = 9
    fault_texts: ClassVar[dict[int, str]] = FAULT_TEXTS
    recovery_hints: ClassVar[dict[int, str]] = RECOVERY_HINTS

    def setpoint_registers(self, params: BaseModel) -> list[int]:
        assert isinstance(params, PemfExposure)
        return [
            WAVEFORMS[params.waveform],
            round(params.frequency_hz * 10),
            round(params.peak_field_mt * 100),
            *to_u32(round(params.duration_s * 10)),
            params.watchdog_ms,
        ]

    def readings_from(self, regs: list[int]) -> dict[str, Any]:
        return {
            "field_mt": regs[2] / 100.0,
            "elapsed_s": from_u32(regs[3:5]) / 10.0,
            "coil_temp_c": regs[5] / 10.0,
            "coil_current_a": regs[6] / 100.0,
            "pulses": from_u32(regs[7:9]),
        }

    def done_data(self, readings: dict[str, Any]) -> dict[str, Any]:
        return {"elapsed_s": readings["elapsed_s"], "pulses": readings["pulses"]}
