"""Loading programs and the dry run: may this program run in this room, within these limits?

``load_program`` turns a YAML file into a :class:`Program` or a :class:`ProgramError`
listing every problem. ``analyse`` checks a program against the room's devices (the
hub config), their capability ranges (the ICDs) and the clinic's limits, and plans it:
points, duration and what each device will deliver. The session runner calls the same
``analyse`` before it starts, so ``devicehub programs check`` says exactly what a start
would say.

Duration estimates assume (per point, on top of the device's own timing):
``INJECTION_POINT_S`` to place the gun, ``SINGLE_SHOT_S`` per trigger pull in single
mode (burst and nappage: shots / rate_hz), ``EP_POINT_S`` to place the applicator,
test impedance and arm (then pulses x period), ``CONFIRM_S`` per confirm step; LED
exposures last ``duration_s`` or ``fluence / (irradiance x duty)``; PEMF ``duration_s``.
A step and the LED or PEMF step run alongside it overlap: the pair lasts the longer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from devicehub import capabilities
from devicehub.models.config import HubConfig
from devicehub.models.limits import Finding, Limit, Limits, LowerLimit, fmt_number, fmt_quantity
from devicehub.models.loading import (
    Loc, Problem, ProgramError, line_of, read_yaml, sort_problems, validate_document,
)
from devicehub.models.program import (
    STEP_DEVICE_TYPE, STEP_KINDS, ConfirmStep, ElectroporationStep, InjectionStep, LedStep,
    PemfStep, Program,
)

__all__ = [
    "Analysis", "Finding", "Problem", "ProgramError", "StepPlan", "analyse", "limit_finding",
    "load_program", "parse_program", "INJECTION_POINT_S", "SINGLE_SHOT_S", "EP_POINT_S", "CONFIRM_S",
]

INJECTION_POINT_S = 2.0   # moving the gun to the next point and placing it
SINGLE_SHOT_S = 0.5       # one trigger pull and shot in single mode
EP_POINT_S = 2.0          # placing the applicator, impedance test, arming
CONFIRM_S = 10.0          # a technician reading the prompt and confirming


# ---------------------------------------------------------------- loading


def _parse_field(text: str) -> Loc:
    """``steps[2].zones[0]`` -> ``('steps', 2, 'zones', 0)``."""
    out: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text):
        out.append(int(index) if index else name)
    return tuple(out)


def parse_program(content: str | bytes, source: str | None = None) -> Program:
    """A program from YAML text (``source`` names it in messages); ProgramError with one
    Problem (field, line) per problem."""
    return _load(content.encode("utf-8") if isinstance(content, str) else content, source)


def load_program(path_or_text: str | bytes | Path) -> Program:
    """A program from a file (a Path or a one-line string) or YAML text (bytes or a
    multi-line string). ProgramError lists every problem: a missing file, YAML syntax
    (with its line), wrong types, unknown step kinds or fields, broken references."""
    return _load(path_or_text, None)


def _load(path_or_text: str | bytes | Path, source: str | None) -> Program:
    try:
        data, lines, _, read_from = read_yaml(path_or_text, ProgramError)
    except ProgramError as exc:
        raise ProgramError(exc.problems, source=source or exc.source) from None
    source = source or read_from
    program = validate_document(Program, data, lines=lines, tags=STEP_KINDS, error=ProgramError,
                                source=source, context={"defer_cross_checks": True})
    problems = program.cross_check()
    if problems:
        raise ProgramError(sort_problems(Problem(p.field, p.message, line_of(_parse_field(p.field), lines))
                                         for p in problems), source=source)
    return program


# ---------------------------------------------------------------- the plan


@dataclass
class StepPlan:
    """What one step will do: its device, points, duration and totals."""

    index: int
    id: str
    kind: str
    device: str | None            # resolved device id (None: confirm, or not resolvable)
    device_type: str | None
    with_: str | None             # the step run alongside this one
    runs_alongside: str | None    # the step this one runs alongside (it has no turn of its own)
    points_per_zone: dict[str, int]
    points: int
    est_duration_s: float
    start_s: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    #: parameter values checked against limits, computed ones included
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "id": self.id, "kind": self.kind, "device": self.device,
            "device_type": self.device_type, "with": self.with_, "runs_alongside": self.runs_alongside,
            "points_per_zone": self.points_per_zone, "points": self.points,
            "est_duration_s": round(self.est_duration_s, 1), "start_s": round(self.start_s, 1),
            "totals": {k: round(v, 3) for k, v in self.totals.items()},
            "values": {k: round(v, 6) for k, v in self.values.items()},
        }


@dataclass
class Analysis:
    """The dry run of a program in a room: findings, plan and totals.

    ``startable`` when there is no error or hard finding and every soft finding's id is
    in ``acknowledged``.
    """

    program: Program
    findings: list[Finding]
    steps: list[StepPlan]
    est_duration_s: float
    points_per_zone: dict[str, int]
    totals_per_device: dict[str, dict[str, float]]
    session_totals: dict[str, float]
    acknowledged: tuple[str, ...] = ()
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def hard(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "hard"]

    @property
    def soft(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "soft"]

    @property
    def soft_limit_ids(self) -> list[str]:
        return sorted({f.id for f in self.soft})

    @property
    def unacknowledged_soft(self) -> list[Finding]:
        return [f for f in self.soft if f.id not in self.acknowledged]

    @property
    def unmatched_acknowledgements(self) -> list[str]:
        """Acknowledged ids that name no soft finding of this program (harmless, but worth saying)."""
        ids = {f.id for f in self.soft}
        return [a for a in self.acknowledged if a not in ids]

    @property
    def startable(self) -> bool:
        return not self.errors and not self.hard and not self.unacknowledged_soft

    def refusal(self) -> tuple[Literal["hard_limit", "soft_limit"], str, list[dict[str, Any]]] | None:
        """Why a start is refused, as (MQTT error code, message, details), or None.

        Errors (capabilities, devices) and hard limits are ``hard_limit``: never
        startable. Otherwise unacknowledged soft limits are ``soft_limit``.
        """
        blocking = self.errors + self.hard
        if blocking:
            return ("hard_limit", "; ".join(f.message for f in blocking), [f.detail() for f in blocking])
        pending = self.unacknowledged_soft
        if pending:
            ids = ", ".join(f.id for f in pending)
            return ("soft_limit", f"acknowledge to start: {ids}", [f.detail() for f in pending])
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "program": self.program.id, "version": self.program.version, "title": self.program.title,
            "startable": self.startable, "est_duration_s": round(self.est_duration_s, 1),
            "points_per_zone": self.points_per_zone,
            "steps": [s.to_dict() for s in self.steps],
            "totals_per_device": {d: {k: round(v, 3) for k, v in t.items()} for d, t in self.totals_per_device.items()},
            "session_totals": {k: round(v, 3) for k, v in self.session_totals.items()},
            "findings": [f.to_dict() for f in self.findings],
            "soft_limits": self.soft_limit_ids,
            "acknowledged": list(self.acknowledged),
            "unacknowledged_soft": [f.id for f in self.unacknowledged_soft],
            "params": self.params,
        }


def _r(value: float) -> float:
    """Values in findings: rounded so that 0.1 + 0.2 reads 0.3."""
    return round(float(value), 6)


def limit_finding(fid: str, field_: str, value: float, limit: Limit | LowerLimit, extra: str = "") -> Finding | None:
    """The finding of ``value`` against ``limit`` (None within it), its message in the one form of every limit."""
    hit = limit.exceeded(value)
    if hit is None:
        return None
    severity, threshold = hit
    message = (f"{field_}: {fmt_quantity(_r(value), limit.unit)} is {limit.direction} the {severity} limit "
               f"{fmt_quantity(threshold, limit.unit)}{extra}")
    return Finding(fid, severity, field_, _r(value), threshold, limit.unit, message)


def _load_ohm(step: ElectroporationStep, limits: Limits) -> float:
    if step.impedance is not None and step.impedance.min_ohm > 0:
        return step.impedance.min_ohm
    return limits.electroporation.energy_per_pulse_mj.assumed_load_ohm


def _plan_step(i: int, step: Any, program: Program, limits: Limits) -> StepPlan:
    zones = list(getattr(step, "zones", None) or ())
    per_zone = {z: program.zone(z).point_count for z in zones}
    points = sum(per_zone.values())
    totals: dict[str, float] = {}
    values: dict[str, float] = {}
    if isinstance(step, InjectionStep):
        shots = step.shots_per_point
        shot_s = SINGLE_SHOT_S if step.mode == "single" else 1.0 / float(step.rate_hz or 1)
        duration = points * (INJECTION_POINT_S + shots * shot_s)
        totals = {"volume_ul": points * step.dose_ul, "shots": float(points * shots)}
        values = {"depth_mm": step.depth_mm, "dose_ul": step.dose_ul}
        if step.mode != "single" and step.rate_hz is not None:
            values["rate_hz"] = float(step.rate_hz)
    elif isinstance(step, ElectroporationStep):
        ohm = _load_ohm(step, limits)
        charge_uc = step.amplitude_v / ohm * step.width_ms * 1e3          # A x ms -> uC
        energy_mj = step.amplitude_v ** 2 / ohm * step.width_ms           # W x ms -> mJ
        pulses = points * step.pulses_per_point
        duration = points * (EP_POINT_S + step.pulses_per_point * step.period_ms / 1000.0)
        totals = {"pulses": float(pulses), "charge_uc": pulses * charge_uc, "energy_mj": pulses * energy_mj}
        values = {"amplitude_v": step.amplitude_v, "width_ms": step.width_ms,
                  "pulses_per_point": float(step.pulses_per_point), "energy_per_pulse_mj": energy_mj,
                  "charge_per_pulse_uc": charge_uc, "load_ohm": ohm}
    elif isinstance(step, LedStep):
        irradiance = step.effective_irradiance_mw_cm2
        if step.duration_s is not None:
            duration = step.duration_s
            fluence = irradiance * duration / 1000.0
        else:
            fluence = float(step.fluence_j_cm2 or 0.0)
            duration = fluence * 1000.0 / irradiance
        totals = {"fluence_j_cm2": fluence, "exposure_s": duration}
        values = {"irradiance_mw_cm2": step.irradiance_mw_cm2}
    elif isinstance(step, PemfStep):
        duration = step.duration_s
        totals = {"field_time_s": duration, "pulses": step.frequency_hz * duration}
        values = {"frequency_hz": step.frequency_hz, "peak_field_mt": step.peak_field_mt}
    else:
        duration = CONFIRM_S
    return StepPlan(
        index=i, id=step.id, kind=step.kind, device=None, device_type=STEP_DEVICE_TYPE.get(step.kind),
        with_=getattr(step, "with_", None), runs_alongside=program.runs_alongside(step.id),
        points_per_zone=per_zone, points=points, est_duration_s=duration, totals=totals, values=values,
    )


def _step_capability_params(step: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Device parameters of a step as the capability table names them, and their fields."""
    if isinstance(step, InjectionStep):
        params = {"shot_ul": step.shot_volume_ul, "depth_mm": step.depth_mm, "rate_hz": step.rate_hz}
        return params, {"shot_ul": "shot_ul" if step.shot_ul is not None else "dose_ul"}
    if isinstance(step, ElectroporationStep):
        names = ("amplitude_v", "width_ms", "period_ms", "pulses_per_point", "current_limit_ma")
    elif isinstance(step, LedStep):
        names = ("wavelength_nm", "irradiance_mw_cm2", "duration_s", "fluence_j_cm2", "pulse_hz", "duty_pct")
    elif isinstance(step, PemfStep):
        names = ("frequency_hz", "peak_field_mt", "duration_s")
    else:
        return {}, {}
    return {n: getattr(step, n) for n in names}, {}


def analyse(program: Program, config: HubConfig | None, limits: Limits, *,
            params: dict[str, dict[str, Any]] | None = None,
            acknowledged: Iterable[str] = ()) -> Analysis:
    """Check and plan ``program`` (with ``params`` overrides applied) for the room of
    ``config`` within ``limits``.

    Overrides that do not fit the program raise ProgramError (fields
    ``params.<step>.<param>``). Everything else is a Finding: ``error`` (a capability
    range, a device missing from the config), ``hard`` or ``soft`` (clinic limits).
    ``config`` None skips device resolution (devices are then named by type).
    """
    params = params or {}
    program = program.apply_overrides(params) if params else program
    findings: list[Finding] = []
    plans = [_plan_step(i, s, program, limits) for i, s in enumerate(program.steps)]

    # devices of the room
    for plan, step in zip(plans, program.steps):
        if plan.device_type is None:
            continue
        if config is None:
            plan.device = step.device or plan.device_type
            continue
        try:
            plan.device = config.resolve_device(plan.device_type, step.device).id
        except LookupError as exc:
            where = f"steps[{plan.index}].device"
            findings.append(Finding(f"{step.id}.device", "error", where, step.device, None, "",
                                    f"{where}: {exc}"))
    by_id = {p.id: p for p in plans}
    for plan in plans:
        if plan.with_ and plan.with_ in by_id:
            partner = by_id[plan.with_]
            if plan.device is not None and plan.device == partner.device:
                where = f"steps[{plan.index}].with"
                findings.append(Finding(f"{plan.id}.with", "error", where, plan.with_, None, "",
                                        f"{where}: {plan.with_!r} uses the same device {plan.device!r}; "
                                        "steps run alongside need two devices"))

    # capability ranges, then the clinic's per-step limits
    for plan, step in zip(plans, program.steps):
        if isinstance(step, ConfirmStep):
            continue
        cparams, cfields = _step_capability_params(step)
        fields = {p: f"steps[{plan.index}].{cfields.get(p, p)}" for p in cparams}
        fields.setdefault("wavelength_nm", f"steps[{plan.index}].wavelength_nm")
        findings.extend(capabilities.check(step.kind, cparams, step_id=step.id, fields=fields))
        for name, limit in limits.step_limits(step.kind).items():
            if name not in plan.values:
                continue
            extra = ""
            where = f"steps[{plan.index}].{name}"
            if name == "energy_per_pulse_mj":
                extra = (f" ({fmt_quantity(step.amplitude_v, 'V')}, {fmt_quantity(step.width_ms, 'ms')} "
                         f"into {fmt_number(plan.values['load_ohm'])} ohm)")
            hit = limit_finding(f"{step.id}.{name}", where, plan.values[name], limit, extra)
            if hit:
                findings.append(hit)

    # the grid and the course
    if program.grid is not None:
        hit = limit_finding("grid.spacing_mm", "grid.spacing_mm", program.grid.spacing_mm, limits.grid.spacing_mm)
        if hit:
            findings.append(hit)
    if program.course is not None and program.course.interval_days is not None:
        hit = limit_finding("course.interval_days", "course.interval_days.min",
                            program.course.interval_days.min, limits.course.interval_days)
        if hit:
            findings.append(hit)

    # schedule: partners start with the step that names them
    clock = 0.0
    for plan in plans:
        if plan.runs_alongside:
            continue
        plan.start_s = clock
        span = plan.est_duration_s
        if plan.with_ and plan.with_ in by_id:
            partner = by_id[plan.with_]
            partner.start_s = clock
            span = max(span, partner.est_duration_s)
        clock += span

    # totals per device and per session, and the session caps
    per_device: dict[str, dict[str, float]] = {}
    for plan in plans:
        if plan.device is None or not plan.totals:
            continue
        acc = per_device.setdefault(plan.device, {})
        for key, value in plan.totals.items():
            acc[key] = acc.get(key, 0.0) + value

    def total(kind: str, key: str) -> tuple[float, list[str]]:
        steps = [p for p in plans if p.kind == kind]
        return sum((p.totals.get(key, 0.0) for p in steps), 0.0), [p.id for p in steps]

    session_values = {
        "injection_volume_ul": total("injection", "volume_ul"),
        "ep_charge_uc": total("electroporation", "charge_uc"),
        "led_fluence_j_cm2": total("led", "fluence_j_cm2"),
        "led_exposure_min": (total("led", "exposure_s")[0] / 60.0, total("led", "exposure_s")[1]),
        "pemf_time_min": (total("pemf", "field_time_s")[0] / 60.0, total("pemf", "field_time_s")[1]),
    }
    session_totals = {k: v for k, (v, _) in session_values.items()}
    for cap, (value, step_ids) in session_values.items():
        if not step_ids:
            continue
        extra = f" (steps {', '.join(step_ids)})" if len(step_ids) > 1 else f" (step {step_ids[0]})"
        hit = limit_finding(f"session.{cap}", f"session.{cap}", value, getattr(limits.session, cap), extra)
        if hit:
            findings.append(hit)

    zones = {z.id: z.point_count for z in program.grid.zones} if program.grid else {}
    return Analysis(
        program=program, findings=findings, steps=plans, est_duration_s=clock,
        points_per_zone=zones, totals_per_device=per_device, session_totals=session_totals,
        acknowledged=tuple(dict.fromkeys(acknowledged)), params=params,
    )
