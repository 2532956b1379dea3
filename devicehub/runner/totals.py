"""Delivered totals per device and the runtime caps of a session.

The runtime caps are the session's hard caps: the runner refuses to deliver past them
even when a device misbehaves (reports more than it was told). Every addition goes
through :meth:`Totals.add`, which says whether a cap is now exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: quantity name -> unit, as recorded
QUANTITIES = {
    "volume_ul": "uL",
    "shots": "shots",
    "pulses": "pulses",
    "charge_uc": "uC",
    "energy_mj": "mJ",
    "fluence_j_cm2": "J/cm2",
    "exposure_s": "s",
    "field_time_s": "s",
    "field_pulses": "pulses",
}


class CapExceeded(Exception):
    def __init__(self, quantity: str, value: float, cap: float) -> None:
        super().__init__(f"session cap reached: {quantity} {value:.6g} > {cap:.6g} {QUANTITIES.get(quantity, '')}".strip())
        self.quantity = quantity
        self.value = value
        self.cap = cap


@dataclass
class Totals:
    """Delivered quantities per device id, plus the session-wide hard caps."""

    caps: dict[str, float] = field(default_factory=dict)  # quantity -> session hard cap
    per_device: dict[str, dict[str, float]] = field(default_factory=dict)

    def session_total(self, quantity: str) -> float:
        return sum(d.get(quantity, 0.0) for d in self.per_device.values())

    def remaining(self, quantity: str) -> float:
        cap = self.caps.get(quantity)
        if cap is None:
            return float("inf")
        return max(0.0, cap - self.session_total(quantity))

    def add(self, device_id: str, **amounts: float) -> None:
        """Record delivered amounts; raises CapExceeded after recording when a cap is passed."""
        dev = self.per_device.setdefault(device_id, {})
        for q, v in amounts.items():
            dev[q] = dev.get(q, 0.0) + float(v)
        for q in amounts:
            cap = self.caps.get(q)
            if cap is not None and self.session_total(q) > cap + 1e-9:
                raise CapExceeded(q, self.session_total(q), cap)

    def as_dict(self) -> dict[str, Any]:
        return {dev: {q: round(v, 6) for q, v in vals.items()} for dev, vals in self.per_device.items()}
