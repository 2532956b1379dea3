"""The hub's data models (pydantic v2): hub config, session programs, clinic limits.

Every model forbids unknown fields, so a misspelt key is an error naming it.
"""

from devicehub.models.config import DeviceConfig, HubConfig, MqttConfig, MqttTls, TelemetryConfig
from devicehub.models.limits import Finding, Limit, Limits, LowerLimit
from devicehub.models.loading import ConfigError, InputError, LimitsError, Problem, ProgramError
from devicehub.models.program import (
    ConfirmStep, Course, ElectroporationStep, Grid, Impedance, InjectionStep, LedStep, PemfStep,
    Point, PreflightItem, Program, Zone,
)

__all__ = [
    "ConfigError", "ConfirmStep", "Course", "DeviceConfig", "ElectroporationStep", "Finding", "Grid",
    "HubConfig", "Impedance", "InjectionStep", "InputError", "LedStep", "Limit", "Limits",
    "LimitsError", "LowerLimit", "MqttConfig", "MqttTls", "PemfStep", "Point", "PreflightItem",
    "Problem", "Program", "ProgramError", "TelemetryConfig", "Zone",
]
