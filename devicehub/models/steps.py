"""The step models of a program: injection, electroporation, LED, PEMF and confirm, and
the ``Step`` union that picks one by its ``kind``."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from devicehub.models.program_fields import DeviceId, StepId, ZoneId, _Strict


class _Step(_Strict):
    id: StepId


class _DeviceStep(_Step):
    device: DeviceId | None = Field(
        None, description="device id from the hub config; default: the config's only device of this type")


class InjectionStep(_DeviceStep):
    """Microinjection: ``dose_ul`` at every point of ``zones``, ``shot_ul`` per trigger shot."""

    kind: Literal["injection"]
    product: str = Field(min_length=1, description="what is injected, as the clinic names it")
    dose_ul: float = Field(gt=0, description="volume per grid point, uL")
    depth_mm: float = Field(gt=0, description="needle depth, mm")
    mode: Literal["single", "burst", "nappage"] = "single"
    rate_hz: int | None = Field(None, gt=0, description="shots/s; burst and nappage only (required there)")
    shot_ul: float | None = Field(None, gt=0, description="volume per shot, uL; default dose_ul (single mode)")
    zones: list[ZoneId] = Field(min_length=1)
    with_: StepId | None = Field(None, alias="with", description="an LED or PEMF step run alongside this one")

    @property
    def shot_volume_ul(self) -> float:
        """Volume of one shot: ``shot_ul``, or the whole dose in one shot."""
        return self.shot_ul if self.shot_ul is not None else self.dose_ul

    @property
    def shots_per_point(self) -> int:
        return max(1, round(self.dose_ul / self.shot_volume_ul))


class Impedance(_Strict):
    """Applicator-to-skin impedance window measured before each train."""

    min_ohm: float = Field(ge=0)
    max_ohm: float = Field(gt=0)
    on_out_of_range: Literal["skip", "stop"] = Field(
        "stop", description="skip: leave the point out and go on; stop: pause the session")


class ElectroporationStep(_DeviceStep):
    """One pulse train per point of ``zones`` through a local applicator."""

    kind: Literal["electroporation"]
    amplitude_v: float = Field(gt=0)
    width_ms: float = Field(gt=0)
    period_ms: float = Field(gt=0, description="pulse start to pulse start")
    pulses_per_point: int = Field(ge=1)
    polarity: Literal["mono", "bip"]
    current_limit_ma: float = Field(gt=0)
    impedance: Impedance | None = None
    zones: list[ZoneId] = Field(min_length=1)
    with_: StepId | None = Field(None, alias="with")


class LedStep(_DeviceStep):
    """A photobiomodulation exposure ended by the emitter after ``duration_s`` or ``fluence_j_cm2``."""

    kind: Literal["led"]
    wavelength_nm: Literal[630, 660, 810, 850]
    irradiance_mw_cm2: float = Field(gt=0)
    duration_s: float | None = Field(None, gt=0, description="exactly one of duration_s and fluence_j_cm2")
    fluence_j_cm2: float | None = Field(None, gt=0)
    pulse_hz: int = Field(0, ge=0, description="0: continuous")
    duty_pct: int = Field(100, ge=1, le=100, description="below 100 only when pulsed")
    with_: StepId | None = Field(None, alias="with")

    @property
    def effective_irradiance_mw_cm2(self) -> float:
        """Mean irradiance with the duty cycle applied."""
        return self.irradiance_mw_cm2 * self.duty_pct / 100.0


class PemfStep(_DeviceStep):
    kind: Literal["pemf"]
    waveform: Literal["sine", "square", "trapezoid"]
    frequency_hz: float = Field(gt=0)
    peak_field_mt: float = Field(gt=0)
    duration_s: float = Field(gt=0)
    with_: StepId | None = Field(None, alias="with")


class ConfirmStep(_Step):
    """The session waits here until the technician confirms at the console."""

    kind: Literal["confirm"]
    prompt: str = Field(min_length=1)


Step = Annotated[
    Union[InjectionStep, ElectroporationStep, LedStep, PemfStep, ConfirmStep],
    Field(discriminator="kind"),
]
DeviceStep = Union[InjectionStep, ElectroporationStep, LedStep, PemfStep]
