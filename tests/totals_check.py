"""The record against the simulators' own counters (issue 15's tolerances)."""

from __future__ import annotations

from typing import Any

import pytest


def assert_totals_match(totals: dict[str, dict[str, float]], states: dict[str, dict[str, Any]],
                        before: dict[str, dict[str, Any]] | None = None) -> None:
    """The record's totals equal what the simulators counted (``states`` minus ``before``):
    EP pulses exactly, charge and fluence within 2 % (fluence: or the LED's 1 mJ/cm2
    register step, for small amounts), volume within 0.5 uL, time within 0.15 s."""
    def delta(dev: str, key: str) -> float:
        return float(states[dev].get(key) or 0.0) - float(((before or {}).get(dev) or {}).get(key) or 0.0)

    def rec(dev: str, key: str) -> float:
        return float((totals.get(dev) or {}).get(key, 0.0))

    assert rec("epg-1", "pulses") == delta("epg-1", "pulses"), (totals, states)
    assert rec("epg-1", "charge_uc") == pytest.approx(delta("epg-1", "charge_uC"), rel=0.02, abs=1e-6)
    assert rec("inj-1", "shots") == delta("inj-1", "shots"), (totals, states)
    assert rec("inj-1", "volume_ul") == pytest.approx(delta("inj-1", "volume_ul"), abs=0.5)
    assert rec("led-1", "exposure_s") == pytest.approx(delta("led-1", "elapsed_s"), abs=0.15), (totals, states)
    assert rec("led-1", "fluence_j_cm2") * 1000.0 == pytest.approx(delta("led-1", "fluence_mj_cm2"), rel=0.02,
                                                                     abs=1.0)
    assert rec("pemf-1", "field_time_s") == pytest.approx(delta("pemf-1", "elapsed_s"), abs=0.15), (totals, states)
    assert rec("pemf-1", "field_pulses") == delta("pemf-1", "pulses"), (totals, states)
