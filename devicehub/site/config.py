"""configs/site.yaml: the collector's broker, database, group and which rooms it takes.

The broker section is the hub's (``devicehub.models.config.MqttConfig``: host, port,
credentials, TLS; ``DEVICEHUB_MQTT_*`` override it as for the hub). The database is a
PostgreSQL URL, overridden by ``DEVICEHUB_DATABASE_URL``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr

from devicehub.models.config import ENV_OVERRIDES, MqttConfig, _Strict
from devicehub.models.loading import ConfigError, Problem, read_yaml, validate_document

FILTER_PATTERN = r"^([A-Za-z0-9_-]+|\+)$"
DATABASE_ENV = "DEVICEHUB_DATABASE_URL"


class SiteConfig(_Strict):
    """configs/site.yaml."""

    model_config = ConfigDict(extra="forbid", strict=True, title="SiteConfig")

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    database: str = Field(description="PostgreSQL URL (postgresql://user@host:port/db); env DEVICEHUB_DATABASE_URL")
    group: str = Field("devicehub-collectors", pattern=r"^[A-Za-z0-9_-]+$",
                       description="the shared-subscription group: collectors of one group share the load")
    client_id: str | None = Field(None, description="this replica's fixed MQTT client id; "
                                  "default devicehub-collector-<host>; unique per replica")
    sites: list[str] = Field(default_factory=lambda: ["+"], min_length=1, description="site ids, or + for all")
    rooms: list[str] = Field(default_factory=lambda: ["+"], min_length=1, description="room ids, or + for all")
    session_expiry_s: int = Field(7 * 86400, ge=86400, description="MQTT 5 session expiry: at least a day")
    receive_maximum: int = Field(10000, ge=1, le=65535, description="unacknowledged QoS 1 messages in flight")
    batch_interval_s: float = Field(0.2, gt=0, le=0.2, description="a batch is committed at least this often")
    batch_max: int = Field(5000, ge=1)
    telemetry_every_s: float = Field(10.0, ge=0, description="telemetry kept: one reading per device per this")
    gap_fill_after_s: float = Field(30.0, gt=0, description="a gap still open this long is filled with `events`")
    gap_check_every_s: float = Field(5.0, gt=0)
    events_timeout_s: float = Field(10.0, gt=0, description="wait this long for a hub's `events` reply")

    _path: Path | None = PrivateAttr(None)

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"devicehub-collector-{socket.gethostname()}"

    @classmethod
    def load(cls, path: str | Path, *, environ: dict[str, str] | None = None) -> "SiteConfig":
        path = Path(path)
        data, lines, _, source = read_yaml(path, ConfigError)
        env = os.environ if environ is None else environ
        if isinstance(data, dict):
            data = dict(data)
            if env.get(DATABASE_ENV):
                data["database"] = env[DATABASE_ENV]
            mqtt: Any = data.get("mqtt")
            mqtt = dict(mqtt) if isinstance(mqtt, dict) else ({} if mqtt is None else mqtt)
            if isinstance(mqtt, dict):
                for var, key in ENV_OVERRIDES.items():
                    value = env.get(var)
                    if not value:
                        continue
                    if key == "port":
                        try:
                            mqtt[key] = int(value)
                        except ValueError:
                            raise ConfigError([Problem(var, f"expected a port number, got {value!r}")],
                                              source=source) from None
                    else:
                        if key == "password":
                            mqtt.pop("password_env", None)
                        mqtt[key] = value
                data["mqtt"] = mqtt
        config = validate_document(cls, data, lines=lines, error=ConfigError, source=source,
                                   context={"base_dir": str(path.resolve().parent)})
        config._path = path.resolve()
        return config
