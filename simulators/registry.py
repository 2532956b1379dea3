"""Which simulator class serves which device type (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

SIMULATORS = {
    "epg": "simulators.epg:EpgSimulator",
    "inj": "simulators.inj:InjSimulator",
    "led": "simulators.led:LedSimulator",
    "pemf": "simulators.pemf:PemfSimulator",
}

#: default Modbus unit ids (ICDs: LED-1 unit 1, PEMF-1 unit 2)
DEFAULT_UNIT = {"led": 1, "pemf": 2}


def simulator_class(kind: str) -> Any:
    try:
        target = SIMULATORS[kind]
    except KeyError:
        raise ValueError(f"unknown device type {kind!r}; expected one of {', '.join(SIMULATORS)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def create_simulator(kind: str, **options: Any) -> Any:
    cls = simulator_class(kind)
    if kind in DEFAULT_UNIT:
        options.setdefault("unit", DEFAULT_UNIT[kind])
    else:
        options.pop("unit", None)
    return cls(**options)
