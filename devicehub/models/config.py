"""The hub config (configs/hub.yaml): which room this hub serves, its devices and where
its files and broker are.

Relative paths resolve against the directory of the config file, so a config works
wherever the hub is started from. ``DEVICEHUB_MQTT_HOST``, ``_PORT``, ``_USERNAME`` and
``_PASSWORD`` in the environment override the file (deployments keep secrets out of it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from drivers.endpoints import Endpoint, EndpointError
from devicehub.models.loading import ConfigError, Problem, read_yaml, validate_document

ROOM_PATTERN = r"^[A-Za-z0-9_-]+$"
DeviceType = Literal["epg", "inj", "led", "pemf"]
#: device type -> the model name of its ICD
DEVICE_MODELS = {"epg": "EPG-1", "inj": "INJ-1", "led": "LED-1", "pemf": "PEMF-1"}
ENV_OVERRIDES = {
    "DEVICEHUB_MQTT_HOST": "host", "DEVICEHUB_MQTT_PORT": "port",
    "DEVICEHUB_MQTT_USERNAME": "username", "DEVICEHUB_MQTT_PASSWORD": "password",
}

#: a path in the file; strings are accepted and resolved against the config's directory
ConfigPath = Annotated[Path, Field(strict=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _resolve_paths(cls, value: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base_dir")
        if isinstance(value, Path) and base is not None and not value.is_absolute():
            return (Path(base) / value).resolve()
        return value

#: shared/clinical-process.md, "After the session": the clinic's default aftercare advice
DEFAULT_AFTERCARE = (
    "Mild redness or sensitivity for 24-48 hours is expected; an ice pack may help.",
    "You may bathe and wash your hair from the next day, with a gentle shampoo.",
    "For 24 hours: no make-up, no swimming, and do not touch the treated area.",
    "For 48 hours: no alcohol, no smoking and no intense exercise.",
    "Protect the scalp from the sun (sunscreen or a hat).",
    "A balanced diet, supplements as advised, stress control and regular check-ups help the result.",
    "Call the clinic at once for a rash, strong swelling, fever, pus or pain that grows.",
)


class DeviceConfig(_Strict):
    id: str = Field(pattern=ROOM_PATTERN, max_length=64)
    type: DeviceType
    endpoint: str = Field(description="socket://HOST:PORT, serial:///dev/X, modbus-tcp://HOST:PORT?unit=N, modbus-rtu:///dev/X?...")
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_parses(cls, value: str) -> str:
        try:
            Endpoint.parse(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def parsed_endpoint(self) -> Endpoint:
        return Endpoint.parse(self.endpoint)

    @property
    def model(self) -> str:
        """The ICD model name: EPG-1, INJ-1, LED-1, PEMF-1."""
        return DEVICE_MODELS[self.type]


class MqttTls(_Strict):
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_env: str | None = Field(None, description="name of the environment variable holding the password")
    tls: MqttTls | None = None
    keepalive: int = Field(30, ge=1)
    outbox_max: int = Field(100_000, ge=1, description="messages the on-disk outbox holds before new starts are refused")
    client_id: str | None = Field(None, description="default: devicehub-<site>-<room>")

    @model_validator(mode="after")
    def _one_password_source(self) -> "MqttConfig":
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        return self

    def resolved_password(self) -> str | None:
        """The password, from the file or from the environment variable it names."""
        if self.password is not None:
            return self.password
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


class TelemetryConfig(_Strict):
    running_hz: float = Field(2.0, gt=0, le=50)
    idle_hz: float = Field(0.2, gt=0, le=50)


class HubConfig(_Strict):
    """configs/hub.yaml."""

    model_config = ConfigDict(extra="forbid", strict=True, title="HubConfig")

    site: str = Field(pattern=ROOM_PATTERN, max_length=64)
    room: str = Field(pattern=ROOM_PATTERN, max_length=64)
    devices: list[DeviceConfig] = Field(min_length=1)
    store: ConfigPath = Field(Path("devicehub.sqlite"), validate_default=True, description="SQLite file of sessions, events and the outbox")
    limits: ConfigPath = Field(Path("limits.yaml"), validate_default=True, description="the clinic limits library")
    programs: ConfigPath = Field(Path("programs"), validate_default=True, description="directory of session programs")
    console_socket: ConfigPath = Field(Path("devicehub.sock"), validate_default=True, description="Unix socket of the local console")
    courses: ConfigPath = Field(Path("courses"), validate_default=True,
                                description="directory of course plans (devicehub/course); missing: no plans")
    timezone: str = Field("UTC", description="the clinic's IANA time zone: dates are shown in it, stored in UTC")
    aftercare: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(DEFAULT_AFTERCARE),
        description="aftercare advice printed in every report whose program has none of its own")
    remote_confirmation: bool = Field(True, description="a start or resume over MQTT waits for a confirmation at the console")
    max_recoveries: int = Field(3, ge=0, le=100, description="pauses by a recoverable device fault per session; the next one fails it (too_many_faults)")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    _path: Path | None = PrivateAttr(None)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _unique_device_ids(self) -> "HubConfig":
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate device ids: {', '.join(dupes)}")
        return self

    @property
    def path(self) -> Path | None:
        """The file this config was loaded from (None when built in code)."""
        return self._path

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"devicehub-{self.site}-{self.room}"

    @property
    def topic_root(self) -> str:
        return f"devicehub/v1/{self.site}/{self.room}"

    def device(self, device_id: str) -> DeviceConfig:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    def devices_of_type(self, device_type: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.type == device_type]

    def resolve_device(self, device_type: str, device_id: str | None = None) -> DeviceConfig:
        """The device a step uses: the one named, which must have the step's type, or the
        config's only device of that type. LookupError says why not."""
        if device_id is not None:
            try:
                dev = self.device(device_id)
            except KeyError:
                known = ", ".join(d.id for d in self.devices)
                raise LookupError(f"no device {device_id!r} in the hub config (devices: {known})") from None
            if dev.type != device_type:
                raise LookupError(f"device {device_id!r} is a {DEVICE_MODELS[dev.type]} ({dev.type}), "
                                  f"the step needs a {DEVICE_MODELS.get(device_type, device_type)} ({device_type})")
            return dev
        matching = self.devices_of_type(device_type)
        if not matching:
            raise LookupError(f"the hub config has no {DEVICE_MODELS.get(device_type, device_type)} ({device_type}) device")
        if len(matching) > 1:
            raise LookupError(f"the hub config has {len(matching)} {device_type} devices "
                              f"({', '.join(d.id for d in matching)}); name one in 'device'")
        return matching[0]

    @classmethod
    def load(cls, path: str | Path, *, environ: dict[str, str] | None = None) -> "HubConfig":
        """Read, apply DEVICEHUB_MQTT_* overrides, validate and resolve relative paths.

        ConfigError lists every problem (a missing file, YAML syntax, each bad field).
        """
        path = Path(path)
        data, lines, _, source = read_yaml(path, ConfigError)
        env = os.environ if environ is None else environ
        if isinstance(data, dict):
            problems: list[Problem] = []
            overrides: dict[str, Any] = {}
            for var, key in ENV_OVERRIDES.items():
                value = env.get(var)
                if value is None or value == "":
                    continue
                if key == "port":
                    try:
                        overrides[key] = int(value)
                    except ValueError:
                        problems.append(Problem(var, f"expected a port number, got {value!r}"))
                        continue
                else:
                    overrides[key] = value
            if problems:
                raise ConfigError(problems, source=source)
            if overrides:
                mqtt = data.get("mqtt")
                mqtt = dict(mqtt) if isinstance(mqtt, dict) else ({} if mqtt is None else mqtt)
                if isinstance(mqtt, dict):
                    if "password" in overrides:
                        mqtt.pop("password_env", None)
                    mqtt.update(overrides)
                data = {**data, "mqtt": mqtt}
        config = validate_document(cls, data, lines=lines, error=ConfigError, source=source,
                                   context={"base_dir": str(path.resolve().parent)})
        config._path = path.resolve()
        return config
