"""What a program's models share: the step kinds and the device types they drive, the
id patterns, and the strict base model (unknown fields refused, no coercion)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: step kind -> the device type it drives (confirm steps drive none)
STEP_DEVICE_TYPE: dict[str, str] = {"injection": "inj", "electroporation": "epg", "led": "led", "pemf": "pemf"}
STEP_KINDS = ("injection", "electroporation", "led", "pemf", "confirm")
#: step kinds that may be named in another step's ``with``
ALONGSIDE_KINDS = ("led", "pemf")
#: ids a step may not take: they prefix the program-wide limit ids (session.<cap>, ...)
RESERVED_STEP_IDS = ("grid", "session", "course", "params", "program")
#: parameters ``apply_overrides`` refuses to change: they make the step another step
NOT_OVERRIDABLE = ("id", "kind", "with")
#: the preflight item ids the shipped library uses (programs may add their own)
STANDARD_PREFLIGHT_IDS = ("consent", "contra.pregnancy", "contra.infection", "contra.allergy",
                          "contra.blood_thinners", "scalp_cleansed", "anaesthetic", "photo_taken")

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
PREFLIGHT_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

StepId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
ZoneId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
DeviceId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
