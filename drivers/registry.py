"""Which driver class speaks to which device type (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from drivers.base import Device

DRIVERS = {
    "epg": "drivers.epg:EpgDriver",
    "inj": "drivers.inj:InjDriver",
    "led": "drivers.led:LedDriver",
    "pemf": "drivers.pemf:PemfDriver",
}


def driver_class(kind: str) -> type[Device]:
    try:
        target = DRIVERS[kind]
    except KeyError:
        raise ValueError(f"unknown device type {kind!r}; expected one of {', '.join(DRIVERS)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def create_driver(kind: str, endpoint: str, *, device_id: str | None = None, **options: Any) -> Device:
    return driver_class(kind)(endpoint, device_id=device_id, **options)
