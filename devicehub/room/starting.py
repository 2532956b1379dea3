"""Starting a session: every check of a start in the documented order (the program, its
limits, the course, the runtime caps, busy, admission, the devices), then the runner."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any

from devicehub.control.dry_run import finding_detail, params_error
from devicehub.room_api import CommandError
from devicehub.runner.session import SessionRunner
from devicehub.timefmt import parse_ts

#: how long a start waits for a session that is stopping to end before it says ``busy``
STOPPING_WAIT_S = 5.0

#: runtime cap quantity -> (limits.session field, factor from the limit's unit to the runner's)
SESSION_CAPS = {
    "volume_ul": ("injection_volume_ul", 1.0),
    "charge_uc": ("ep_charge_uc", 1.0),
    "fluence_j_cm2": ("led_fluence_j_cm2", 1.0),
    "exposure_s": ("led_exposure_min", 60.0),
    "field_time_s": ("pemf_time_min", 60.0),
}


class RoomStarting:
    """The start checks and the start of a session of :class:`devicehub.room.Room`."""

    # ================================================================== starting
    def check_start(self, *, program: str, patient_ref: str, params: dict[str, Any] | None,
                    acknowledge: list[str] | None) -> tuple[Any, str, bytes, Any]:
        """Every check of a start, in the documented order; returns (program, sha256, raw, analysis)."""
        from devicehub.models.loading import InputError
        from devicehub.validation import analyse

        prog, sha, raw = self._get_program(program)
        if params:
            try:
                prog = prog.apply_overrides(params)
            except InputError as exc:
                raise params_error(exc) from None
        analysis = analyse(prog, self.config, self.limits, params=None, acknowledged=tuple(acknowledge or ()))
        findings = list(analysis.findings) + self._course_findings(prog, patient_ref)
        errors = [f for f in findings if f.severity in ("error", "hard")]
        acked = set(acknowledge or ())
        soft = [f for f in findings if f.severity == "soft" and f.id not in acked]
        if errors:  # every finding, so one refusal shows all there is to change (each with its severity)
            raise CommandError("hard_limit", "; ".join(f.message for f in errors), field=errors[0].field,
                               details=[finding_detail(f) for f in errors + soft])
        if soft:
            raise CommandError("soft_limit", "acknowledge each soft limit to start: " + "; ".join(f.message for f in soft),
                               field=soft[0].field, details=[finding_detail(f) for f in soft])
        return prog, sha, raw, analysis

    def dry_run(self, *, program: str, patient_ref: str | None = None, params: dict[str, Any] | None = None,
                acknowledge: list[str] | None = None) -> dict[str, Any]:
        """The ``check`` verb: the dry run of a program for a patient, every finding included."""
        from devicehub.control.dry_run import dry_run

        return dry_run(self, program=program, patient_ref=patient_ref, params=params, acknowledge=acknowledge)

    def _course_findings(self, prog: Any, patient_ref: str) -> list[Any]:
        """The course limit: days since this patient's last completed session."""
        from devicehub.clinical.course_verbs import start_checks
        from devicehub.validation import limit_finding

        course = start_checks(self, prog.id, patient_ref) if patient_ref else []  # an enrolled patient's phase
        last = self.store.read_last_session_for_patient(patient_ref) if patient_ref else None
        if not last or not last.get("ended_at"):
            return course
        try:
            ended = parse_ts(str(last["ended_at"]))
        except ValueError:
            return course
        seconds = max(0.0, (datetime.now(timezone.utc) - ended).total_seconds())
        # in the limit's unit to two decimals (a repeat visit reads "0 days", not "0.000412
        # days"), and the time since said in the units a technician counts in
        hit = limit_finding("course.interval_days", "course.interval_days", round(seconds / 86400.0, 2),
                            self.limits.course.interval_days,
                            f" ({_elapsed(seconds)} since the patient's last session ended)")
        return ([hit] if hit else []) + course

    def runtime_caps(self, acknowledged: list[str]) -> dict[str, float]:
        """The hard session caps, or the soft one where its limit was not acknowledged."""
        caps = {}
        for quantity, (name, factor) in SESSION_CAPS.items():
            limit = getattr(self.limits.session, name)
            acked = f"session.{name}" in acknowledged
            value = limit.hard if acked or limit.soft is None else limit.soft
            caps[quantity] = float(value) * factor
        return caps

    async def _let_a_stopping_session_end(self) -> None:
        """A session whose stop is under way (outputs off, its final event recorded and
        published, its state not yet) ends within moments: a start that arrives then, e.g.
        from clinic software that saw the final event, waits for it rather than hearing
        ``busy``; a stop that takes longer than STOPPING_WAIT_S is still ``busy``."""
        cur = self.current
        if cur is None or cur.finished or not cur.stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOPPING_WAIT_S):
                await cur.wait()

    async def start_session(self, *, program: str, patient_ref: str, operator: str,
                            params: dict[str, Any] | None = None, acknowledge: list[str] | None = None,
                            origin: str = "mqtt", preflight_done_by: str | None = None,
                            confirmation_required: bool | None = None,
                            acknowledged_by: dict[str, str] | None = None,
                            t_arrival: float | None = None) -> SessionRunner:
        for name, value in (("patient_ref", patient_ref), ("operator", operator)):
            if not isinstance(value, str) or not value.strip():
                raise CommandError("bad_request", f"{name} must be a non-empty string", field=name)
        if acknowledged_by:
            unknown = sorted(set(acknowledged_by) - set(acknowledge or ()))
            if unknown:
                raise CommandError("bad_request", f"acknowledged_by names soft limits not acknowledged: "
                                   f"{', '.join(unknown)}", field="acknowledged_by")
        epoch = self._abort_epoch  # an abort from here on ends this start
        async with self._start_lock:
            if self._abort_epoch != epoch:
                raise CommandError("invalid_state", "an abort arrived while this start waited: nothing was started")
            try:
                prog, sha, _raw, _analysis = self.check_start(program=program, patient_ref=patient_ref,
                                                              params=params, acknowledge=acknowledge)
            except CommandError as exc:
                if exc.code in ("hard_limit", "soft_limit"):
                    await self.store.record_refusal(program_id=str(program), patient_ref=patient_ref,
                                                    operator=operator, origin=origin, code=exc.code,
                                                    details=exc.details)
                raise
            await self._let_a_stopping_session_end()
            if self._abort_epoch != epoch:
                raise CommandError("invalid_state", "an abort arrived while this start waited: nothing was started")
            if self.active_session() is not None:
                raise CommandError("busy", f"session {self.current.session_id} is {self.current.state} in this room")
            for check in self.admission_checks:
                err = check()
                if err is not None:
                    raise err
            step_devices: dict[str, str] = {}
            for step in prog.steps:
                if step.kind == "confirm":
                    continue
                step_devices[step.id] = self.config.resolve_device(_DEVICE_TYPE[step.kind],
                                                                   getattr(step, "device", None)).id
            needed = sorted(set(step_devices.values()))
            # every connected device the program needs must answer now, not only at its last
            # poll (idle polls are seconds apart); a device that answers again is back
            silent = await self.devices.not_answering([d for d in needed if self.devices.connected(d)])
            missing = sorted(set(silent) | set(self.devices.unavailable(needed)))
            if self._abort_epoch != epoch:
                raise CommandError("invalid_state", "an abort arrived during this start: nothing was started")
            if missing:
                raise CommandError("device_unavailable", f"not available: {', '.join(missing)}",
                                   details=[{"device": d, **self.devices.state_of(d)} for d in missing])
            from devicehub.clinical.course_verbs import start_position
            from devicehub.records.store import new_session_id

            acked = list(acknowledge or [])
            runner = SessionRunner(
                session_id=new_session_id(), program=prog, program_sha256=sha,
                devices={d: self.devices.devices[d] for d in self.devices.devices},
                step_devices=step_devices, store=self.store, bus=self.bus, alarms=self.alarms,
                patient_ref=patient_ref, operator=operator, origin=origin, acknowledged=acked,
                params=params or {}, program_json=prog.to_json(),
                confirmation_required=(self.config.remote_confirmation and origin == "mqtt")
                if confirmation_required is None else confirmation_required,
                caps=self.runtime_caps(acked), options=self.options, acknowledged_by=acknowledged_by,
                course=start_position(self, patient_ref),
            )
            self.current = runner
            self._last = runner
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(runner))
            await runner.open()
            if preflight_done_by is not None:
                # taken as done by the operator's flag: recorded one event per item, as such
                for item in prog.preflight:
                    if runner.state in ("created", "preflight") and not runner.abort_requested:
                        await runner.preflight(item.id, True, preflight_done_by)
            return runner


_DEVICE_TYPE = {"injection": "inj", "electroporation": "epg", "led": "led", "pemf": "pemf"}


def _elapsed(seconds: float) -> str:
    """A time since, as a technician says it: "12 min", "5.5 h", "2.4 days"."""
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
