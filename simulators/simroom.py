"""A simulated treatment room for the demo, the tests and the benchmarks.

Starts the four simulators (in-process, on their own thread and event loop, so their
clocks and watchdogs run undisturbed) and writes a hub config pointing at them, with
the repository's program and limits libraries.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulators.harness import SimHandle, SimulatorThread

ROOT = Path(__file__).resolve().parent.parent
ROOM = (("epg-1", "epg"), ("inj-1", "inj"), ("led-1", "led"), ("pemf-1", "pemf"))


@dataclass
class SimulatedRoom:
    directory: Path
    site: str = "clinic-a"
    room: str = "room-1"
    mqtt_port: int | None = None
    remote_confirmation: bool = True
    programs: Path = ROOT / "configs" / "programs"
    limits: Path = ROOT / "configs" / "limits.yaml"
    courses: Path = ROOT / "configs" / "courses"
    extra: dict[str, Any] = field(default_factory=dict)
    sims: dict[str, SimHandle] = field(default_factory=dict)
    _thread: SimulatorThread | None = None

    def start(self) -> "SimulatedRoom":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = SimulatorThread()
        for dev_id, kind in ROOM:
            self.sims[dev_id] = self._thread.start(kind, seed=zlib.crc32(dev_id.encode()) & 0xFFFF)  # the same in every process
        self.write_config()
        return self

    @property
    def config_path(self) -> Path:
        return self.directory / "hub.yaml"

    def write_config(self) -> Path:
        doc: dict[str, Any] = {
            "site": self.site,
            "room": self.room,
            "devices": [{"id": d, "type": k, "endpoint": self.sims[d].endpoint} for d, k in ROOM],
            "store": str(self.directory / "devicehub.sqlite"),
            "console_socket": str(self.directory / "devicehub.sock"),
            "limits": str(self.limits),
            "programs": str(self.programs),
            "courses": str(self.courses),
            "remote_confirmation": self.remote_confirmation,
            "mqtt": {"host": "127.0.0.1", "port": self.mqtt_port or 1883},
        }
        doc.update(self.extra)
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.config_path

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> "SimulatedRoom":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
