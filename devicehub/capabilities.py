"""What each device type can do at all: the capability ranges of the four ICDs, as data.

This is the hub's own copy of shared/icd/*.md ("Capability ranges" and the register
ranges). A program asking for something outside them is an error, found before a
session starts rather than as a refused write halfway through one. Clinic limits are
stricter and live in configs/limits.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from devicehub.models.config import DEVICE_MODELS
from devicehub.models.limits import Finding, fmt_number, fmt_quantity
from devicehub.models.program import STEP_DEVICE_TYPE


@dataclass(frozen=True)
class Capability:
    """A device parameter's range; ``resolution`` is the smallest step the wire carries."""

    min: float
    max: float
    unit: str
    resolution: float | None = None
    integer: bool = False
    note: str = ""


#: device type -> program parameter name -> range
CAPABILITIES: dict[str, dict[str, Capability]] = {
    "epg": {
        "amplitude_v": Capability(1, 150, "V", 0.5),
        "width_ms": Capability(0.05, 20, "ms"),
        "period_ms": Capability(1, 2000, "ms", note="and at least 2 x width"),
        "pulses_per_point": Capability(1, 10000, "pulses", integer=True),
        "current_limit_ma": Capability(1, 100, "mA"),
    },
    "inj": {
        # SET_PARAMS carries volume_x10 and depth_x10 (0.1 uL, 0.1 mm)
        "shot_ul": Capability(1.0, 200.0, "uL", 0.1),
        "depth_mm": Capability(0.5, 6.0, "mm", 0.1),
        "rate_hz": Capability(1, 10, "shots/s", integer=True),
    },
    "led": {
        # IRRADIANCE in 0.1 mW/cm2, DURATION in 0.1 s (u32, max 36000), FLUENCE_TARGET in mJ/cm2
        "irradiance_mw_cm2": Capability(1, 100, "mW/cm2", 0.1),
        "duration_s": Capability(0.1, 3600, "s", 0.1),
        "fluence_j_cm2": Capability(0.001, 100, "J/cm2", 0.001),
        "pulse_hz": Capability(0, 1000, "Hz", integer=True),
        "duty_pct": Capability(10, 100, "%", integer=True),
    },
    "pemf": {
        # FREQ in 0.1 Hz, PEAK_FIELD in 0.01 mT, DURATION in 0.1 s
        "frequency_hz": Capability(0.1, 100, "Hz", 0.1),
        "peak_field_mt": Capability(0.01, 20, "mT", 0.01),
        "duration_s": Capability(0.1, 3600, "s", 0.1),
    },
}

#: LED-1 channel table (CHANNEL_NM, channels 0..3)
LED_CHANNELS_NM = (630, 660, 810, 850)
#: INJ-1 syringe: the most one session can hold without a refill
INJ_RESERVOIR_UL = 10_000.0


def device_type_of(kind: str) -> str:
    """A step kind (``electroporation``) or a device type (``epg``) -> the device type."""
    if kind in CAPABILITIES:
        return kind
    try:
        return STEP_DEVICE_TYPE[kind]
    except KeyError:
        raise ValueError(f"no device capabilities for {kind!r}") from None


def _on_resolution(value: float, resolution: float) -> bool:
    steps = value / resolution
    return math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-6)


def check(kind: str, params: Mapping[str, Any], *, step_id: str | None = None,
          fields: Mapping[str, str] | None = None) -> list[Finding]:
    """Capability errors of a step's device parameters (``None`` values are skipped).

    ``kind`` is a step kind or a device type. Finding ids are ``<step_id>.<param>``
    (just ``<param>`` without a step id); ``fields`` maps a parameter to the program
    field it came from (default: the parameter's name).
    """
    dtype = device_type_of(kind)
    model = DEVICE_MODELS[dtype]
    ranges = CAPABILITIES[dtype]
    fields = fields or {}
    out: list[Finding] = []

    def finding(param: str, value: Any, limit: Any, unit: str, text: str) -> None:
        field = fields.get(param, param)
        fid = f"{step_id}.{param}" if step_id else param
        out.append(Finding(fid, "error", field, value, limit, unit, f"{field}: {text}"))

    for param, value in params.items():
        cap = ranges.get(param)
        if cap is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            finding(param, value, None, cap.unit, f"expected a number, got {value!r}")
            continue
        if value < cap.min or value > cap.max:
            limit = cap.max if value > cap.max else cap.min
            finding(param, value, limit, cap.unit,
                    f"{fmt_quantity(value, cap.unit)} is outside the {model} range "
                    f"{fmt_number(cap.min)} to {fmt_quantity(cap.max, cap.unit)}")
        elif cap.integer and not float(value).is_integer():
            finding(param, value, None, cap.unit, f"{fmt_number(value)} must be a whole number for the {model}")
        elif cap.resolution and not _on_resolution(float(value), cap.resolution):
            finding(param, value, cap.resolution, cap.unit,
                    f"{fmt_quantity(value, cap.unit)} is not a multiple of the {model} step "
                    f"{fmt_quantity(cap.resolution, cap.unit)}")
    if dtype == "epg":
        width, period = params.get("width_ms"), params.get("period_ms")
        if isinstance(width, (int, float)) and isinstance(period, (int, float)) and period < 2 * width:
            finding("period_ms", period, 2 * width, "ms",
                    f"{fmt_quantity(period, 'ms')} is below twice the pulse width "
                    f"({fmt_quantity(2 * width, 'ms')}), the {model} minimum")
    if dtype == "led":
        nm = params.get("wavelength_nm")
        if nm is not None and nm not in LED_CHANNELS_NM:
            finding("wavelength_nm", nm, None, "nm",
                    f"{fmt_number(nm)} nm is not an {model} channel ({', '.join(map(str, LED_CHANNELS_NM))} nm)")
    return out
