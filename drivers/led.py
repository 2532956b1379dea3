"""LED-1 photobiomodulation emitter driver (shared/icd/led-1.md), Modbus TCP or RTU.

The emitter times the exposure itself: the host configures channel, irradiance and
either a duration or a target fluence, starts, and keeps the watchdog fed; the driver
reports ``exposure_done`` with the device's own elapsed time and delivered fluence.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import DeviceRefused
from drivers.modbus_emitter import ModbusEmitter, on_grid
from drivers.modbus_link import from_u32, to_u32

#: the ICD's channel table; the device's own (input registers 102-105) wins when read
DEFAULT_CHANNELS_NM = (630, 660, 810, 850)
INPUT_CHANNEL_NM = 102


class LedExposure(BaseModel):
    """One LED exposure. Exactly one of duration_s and fluence_mj_cm2 is non-zero: the
    emitter ends the exposure by time or by delivered fluence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wavelength_nm: Literal[630, 660, 810, 850]
    irradiance_mw_cm2: float = Field(ge=1.0, le=100.0, description="resolution 0.1")
    duration_s: float = Field(0.0, ge=0.0, le=3600.0, description="resolution 0.1; 0 = end by fluence")
    fluence_mj_cm2: int = Field(0, ge=0, le=100000, description="0 = end by duration")
    pulse_hz: int = Field(0, ge=0, le=1000, description="0 = continuous")
    duty_pct: int = Field(100, ge=10, le=100)
    watchdog_ms: int = Field(2000, ge=200, le=10000)

    @field_validator("irradiance_mw_cm2")
    @classmethod
    def _irradiance_grid(cls, v: float) -> float:
        return on_grid(v, 0.1, "irradiance_mw_cm2")

    @field_validator("duration_s")
    @classmethod
    def _duration_grid(cls, v: float) -> float:
        return on_grid(v, 0.1, "duration_s")

    @model_validator(mode="after")
    def _one_end(self) -> "LedExposure":
        if (self.duration_s != 0) == (self.fluence_mj_cm2 != 0):
            raise ValueError("exactly one of duration_s and fluence_mj_cm2 must be non-zero")
        return self


#: the fault codes of the ICD and their text (the simulator reports the same)
FAULT_TEXTS: dict[int, str] = {
    1: "head over temperature",
    2: "skin over temperature",
    3: "LED string open or irradiance deviating",
    4: "applicator too far at start",
    5: "watchdog",
}

#: the faults a technician removes at the chair, and what to check (shared/mqtt-api.md)
RECOVERY_HINTS: dict[int, str] = {
    1: "LED head too hot: let it cool for a minute and check its vents, then recover",
    2: "Skin too warm: let the scalp cool and check the applicator's distance, then recover",
    4: "Applicator too far from the scalp: bring it within range of the scalp, then recover",
}


class LedDriver(ModbusEmitter):
    kind: ClassVar[str] = "led"
    params_type: ClassVar[type[BaseModel]] = LedExposure
    model_code: ClassVar[int] = 0x4C31  # "L1"
    model_name: ClassVar[str] = "LED-1"
    setpoint_count: ClassVar[int] = 9
    watchdog_register: ClassVar[int] = 8
    heartbeat_register: ClassVar[int] = 9
    input_count: ClassVar[int] = 10
    fault_texts: ClassVar[dict[int, str]] = FAULT_TEXTS
    recovery_hints: ClassVar[dict[int, str]] = RECOVERY_HINTS

    def __init__(self, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self._channels: list[int] = list(DEFAULT_CHANNELS_NM)

    async def connect(self) -> None:
        await super().connect()
        self._channels = await self.channels()

    async def channels(self) -> list[int]:
        """The wavelength of each channel in nm, as the device reports it (registers 102-105)."""
        return await self.link.read_input(INPUT_CHANNEL_NM, 4)

    def setpoint_registers(self, params: BaseModel) -> list[int]:
        assert isinstance(params, LedExposure)
        if params.wavelength_nm not in self._channels:
            raise DeviceRefused("no_channel", f"no channel with {params.wavelength_nm} nm; the device has {self._channels}")
        return [
            self._channels.index(params.wavelength_nm),
            round(params.irradiance_mw_cm2 * 10),
            *to_u32(round(params.duration_s * 10)),
            *to_u32(params.fluence_mj_cm2),
            params.pulse_hz,
            params.duty_pct,
            params.watchdog_ms,
        ]

    def readings_from(self, regs: list[int]) -> dict[str, Any]:
        return {
            "irradiance_mw_cm2": regs[2] / 10.0,
            "elapsed_s": from_u32(regs[3:5]) / 10.0,
            "fluence_mj_cm2": from_u32(regs[5:7]),
            "head_temp_c": regs[7] / 10.0,
            "skin_temp_c": regs[8] / 10.0,
            "distance_mm": regs[9],
        }

    def done_data(self, readings: dict[str, Any]) -> dict[str, Any]:
        return {"elapsed_s": readings["elapsed_s"], "fluence_mj_cm2": readings["fluence_mj_cm2"]}
