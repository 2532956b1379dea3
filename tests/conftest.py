"""Shared fixtures: a private Mosquitto per test session, simulators per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulators.local_broker import LocalBroker  # noqa: E402
from simulators.harness import run_simulator  # noqa: E402


@pytest.fixture(scope="session")
def broker():
    """A real Mosquitto on a free loopback port, stopped at the end of the test session."""
    with LocalBroker() as b:
        yield b


@pytest.fixture
def sim_factory():
    """``async with sim_factory("epg") as h: h.endpoint, h.control`` (in-process, own thread)."""
    return run_simulator


@pytest.fixture
def root_dir() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _no_ambient_broker_env(monkeypatch):
    # tests never depend on a broker someone left running
    for var in ("DEVICEHUB_MQTT_HOST", "DEVICEHUB_MQTT_PORT"):
        monkeypatch.delenv(var, raising=False)
    yield


os.environ.setdefault("PYTHONUNBUFFERED", "1")
