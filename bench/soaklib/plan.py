"""What the soak throws at the room: the shipped programs made short, and every fault.

Every session's plan (program, who starts it, which disturbances at which moment) is
drawn from the run's seed and the session's number alone, never from what happened
before, so a seed replays the same sessions with the same disturbances.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("demo", "aga-initial", "aga-maintenance", "alopecia-areata", "telogen-effluvium")

#: every fault of every device (shared/simulator-control.md)
DEVICE_FAULTS: dict[str, tuple[str, ...]] = {
    "epg-1": ("overcurrent", "open_circuit", "over_temperature", "stall", "garbage", "drop_reply", "timing_drift"),
    "inj-1": ("occlusion", "empty", "cartridge_missing", "corrupt", "drop_reply", "stall"),
    "led-1": ("head_overheat", "skin_overheat", "led_open", "applicator_removed", "stall", "drop_reply"),
    "pemf-1": ("coil_open", "overheat", "field_drift", "stall", "drop_reply"),
}
#: one-off faults (counted); the rest are conditions that last until cleared
ONE_OFF = {"garbage", "drop_reply", "corrupt", "timing_drift"}

#: every disturbance, one kind each: ("fault", dev, name), ("cut", dev), ("pause", origin),
#: ("abort", origin), ("broker",), ("hub_kill",)
CATALOGUE: list[tuple[str, ...]] = (
    [("fault", d, f) for d, faults in DEVICE_FAULTS.items() for f in faults]
    + [("cut", d) for d in DEVICE_FAULTS]
    + [("pause", "mqtt"), ("pause", "console"), ("abort", "mqtt"), ("abort", "console"), ("broker",), ("hub_kill",)]
)


def kind_of(action: tuple[str, ...]) -> str:
    return ":".join(action)


@dataclass
class Action:
    at_s: float  # seconds after the session started running
    what: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SessionPlan:
    index: int
    program: str
    origin: str  # "mqtt" or "console"
    params: dict[str, dict[str, Any]]
    preflight: list[str]
    actions: list[Action]
    steps: list[dict[str, Any]] = field(default_factory=list)  # the program's steps as written


def _program(pid: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / "programs" / f"{pid}.yaml").read_text())


def short_params(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Overrides that keep each step to a second or two: the smallest zone, few pulses."""
    zones = {z["id"]: z["rows"] * z["columns"] for z in (doc.get("grid") or {}).get("zones", [])}
    out: dict[str, dict[str, Any]] = {}
    for step in doc.get("steps", []):
        kind, sid = step.get("kind"), step["id"]
        p: dict[str, Any] = {}
        if kind in ("injection", "electroporation") and step.get("zones"):
            p["zones"] = [min(step["zones"], key=lambda z: zones.get(z, 0))]
        if kind == "electroporation":
            p.update(pulses_per_point=3, period_ms=10)
        if kind == "led":
            if "fluence_j_cm2" in step:
                # about 1.5 s at the step's irradiance, on the device's 0.001 J/cm2 step
                p["fluence_j_cm2"] = max(0.001, round(float(step.get("irradiance_mw_cm2", 5)) * 1.5 / 1000.0, 3))
            else:
                p["duration_s"] = 1.5
        if kind == "pemf":
            p["duration_s"] = 1.5
        if p:
            out[sid] = p
    return out


def draw(seed: int, index: int) -> SessionPlan:
    """Session ``index``'s plan, from the seed and the index alone."""
    rng = random.Random(seed * 1_000_003 + index)
    program = PROGRAMS[rng.randrange(len(PROGRAMS))]
    doc = _program(program)
    origin = rng.choice(("mqtt", "console"))
    actions: list[Action] = []
    # every kind comes round in turn (the run's seed chooses where the turn starts), so a
    # short run still sees many; some sessions get a second disturbance, some run clean
    turn = CATALOGUE[(index + seed) % len(CATALOGUE)]
    if rng.random() < 0.9:
        actions.append(_action(rng, turn))
    if rng.random() < 0.35:
        actions.append(_action(rng, CATALOGUE[rng.randrange(len(CATALOGUE))]))
    if rng.random() < 0.25:
        actions.append(_action(rng, ("pause", rng.choice(("mqtt", "console")))))
    actions.sort(key=lambda a: a.at_s)
    return SessionPlan(index, program, origin, short_params(doc), [i["id"] for i in doc.get("preflight", [])],
                       actions, steps=list(doc.get("steps", [])))


def _action(rng: random.Random, what: tuple[str, ...]) -> Action:
    args: dict[str, Any] = {}
    if what[0] == "fault":
        name = what[2]
        if name == "timing_drift":
            args = {"us": rng.choice((150, 400)), "count": 1}  # soft, or hard
        elif name in ONE_OFF:
            args = {"count": rng.randint(1, 3)}
        else:
            args = {"count": -1}
        if name == "stall":
            args["clear_after_s"] = round(rng.uniform(0.3, 1.5), 3)
    elif what[0] == "pause":
        args = {"paused_s": round(rng.uniform(0.2, 1.0), 3), "resume": rng.choice(("mqtt", "console"))}
    elif what[0] == "broker":
        args = {"down_s": round(rng.uniform(0.3, 2.5), 3)}
    return Action(round(rng.uniform(0.2, 5.0), 3), what, args)
