"""The room: its devices, its program library, its limits, its record, and at most one session.

Every front end (the console's ``devicehub run``, the hub daemon's MQTT interface and
local console socket) goes through this one object, so a start is checked the same way
wherever it comes from, in the order shared/mqtt-api.md gives: unknown_program,
hard_limit, soft_limit, busy, outbox_full, device_unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devicehub import __version__
from devicehub.alarms import AlarmBoard
from devicehub.control.dry_run import finding_detail, params_error
from devicehub.bus import Bus, HubMessage
from devicehub.timefmt import parse_ts, rfc3339, utcnow
from devicehub.devices import DeviceManager
from devicehub.room_api import CommandError
from devicehub.runner.session import InvalidState, NotFound, RunnerOptions, SessionRunner
from devicehub.runner.totals import QUANTITIES
from devicehub.safety import SafeStateReport, safe_state_all
from devicehub.safety_watch import RuntimeLimitWatch

log = logging.getLogger(__name__)

#: runtime cap quantity -> (limits.session field, factor from the limit's unit to the runner's)
#: how long a start waits for a session that is stopping to end before it says ``busy``
STOPPING_WAIT_S = 5.0

SESSION_CAPS = {
    "volume_ul": ("injection_volume_ul", 1.0),
    "charge_uc": ("ep_charge_uc", 1.0),
    "fluence_j_cm2": ("led_fluence_j_cm2", 1.0),
    "exposure_s": ("led_exposure_min", 60.0),
    "field_time_s": ("pemf_time_min", 60.0),
}


class Room:
    def __init__(
        self,
        config: Any,
        *,
        store: Any,
        limits: Any | None = None,
        bus: Bus | None = None,
        options: RunnerOptions | None = None,
        boot: int = 0,
        admission_checks: list[Callable[[], CommandError | None]] | None = None,
    ) -> None:
        from devicehub.models.limits import Limits
        from devicehub.programs_library import ProgramLibrary

        self.config = config
        self.store = store
        self.bus = bus or Bus()
        self.alarms = AlarmBoard(self.bus)
        self.limits = limits or Limits.load(config.limits)
        self.library = ProgramLibrary(config.programs)
        self.options = dataclasses.replace(options or RunnerOptions(),
                                           max_recoveries=getattr(config, "max_recoveries", 3))
        if self.options.pulse_timing is None:  # EP trains are held to the clinic's pulse-timing limit
            self.options = dataclasses.replace(self.options, pulse_timing=self.limits.electroporation.pulse_timing_error_us)
        self.boot = boot
        self.since = rfc3339(utcnow())
        self.admission_checks = list(admission_checks or [])
        self.devices = DeviceManager(config, self.bus, self.alarms)
        self.devices.telemetry_hooks.append(RuntimeLimitWatch(self))
        self.current: SessionRunner | None = None
        self._last: SessionRunner | None = None
        self._start_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._recorded_last: dict[str, Any] | None = None
        #: grows by one the moment an abort arrives: a start under way when it did stops there
        self._abort_epoch = 0
        #: the safe state being reached now (joined by every trigger that arrives meanwhile)
        self._off: asyncio.Future[tuple[SafeStateReport, float]] | None = None
        self._off_for = -1.0  # the trigger time it was started for
        self.reports_dir = Path(config.store).parent / "reports"
        #: which kind of process owns the room: "serve" (the daemon) or "run" (one session, no daemon)
        self.owner: str | None = None
        #: the MQTT front end's ledger of published session events (None without MQTT):
        #: ``await published_events(session, indices) -> {index: (boot, seq, ts)}``
        self.published_events: Callable[[str, list[int]], Awaitable[dict[int, Any]]] | None = None
        #: session id -> where its report was written
        self.reports: dict[str, Path] = {}
        #: reports are written one at a time, in order (the newest record wins)
        self._report_lock = asyncio.Lock()
        self._report_tasks: set[asyncio.Task[Any]] = set()

    # ================================================================== lifetime
    async def open(self) -> None:
        """Connect the devices, every output off, settle what a crash left open, then mark
        the sessions it interrupted and publish the room's state.

        Order (docs/records.md): the safe state first (the ICDs keep what is to be read
        through the off commands: EPG-1's last-train report until the next OUTP:TRIG,
        LED-1/PEMF-1's run registers until the next start, INJ-1's totals always); then
        each device that answers has its open deliveries settled from its counters
        (``delivery_settled``, late) and a watchdog fault the dead hub caused cleared;
        only then is each interrupted session marked ``failed`` / ``hub_restart`` with
        the totals of its delivery rows."""
        from devicehub.late_settlement import LateSettlement

        self.late = LateSettlement(self)
        self.devices.room_clears_watchdogs = True
        await self.devices.start()
        # whatever a previous hub left behind: every output off before anything else
        await safe_state_all(self.devices.devices, "hub_start")
        unfinished = await self.store.unfinished_sessions()
        for sid in unfinished:  # before anything is appended to them (a late settlement)
            await self._publish_unpublished(sid)
        for dev_id in self.devices.devices:
            if self.devices.connected(dev_id):
                await self.late.device_back(dev_id)
            else:
                self.devices.unsettled.add(dev_id)  # settled when it connects
        self.devices.on_answer = self.late.device_back
        for sid in unfinished:
            # what had been delivered, as the record's delivery rows say (the document's
            # failed event carries the totals per device)
            summary = await self.store.session(sid) or {}
            # the delivery rows summed, in the runner's quantities (a finished session's
            # totals), not every number the rows hold (depths, impedances, peaks)
            totals = {dev: {q: round(v, 6) for q, v in vals.items() if q in QUANTITIES}
                      for dev, vals in (summary.get("totals") or {}).items()}
            for name, data in (("failed", {"reason": "hub_restart", "totals": totals}),
                               ("state", {"state": "failed", "reason": "hub_restart"})):
                idx = await self.store.append_event(sid, name, data)
                self.bus.publish(HubMessage("session.event", {"event": name, "index": idx, **data}, session=sid))
            log.warning("session %s was interrupted by a hub restart: marked failed", sid)
        # what the retained topics say from this boot on: the last session's final state
        # (until the next one starts) and the alarms, [] when none (a previous boot's may
        # still be retained on the broker)
        self._recorded_last = await self._last_recorded_state()
        if self._recorded_last is not None:
            self.bus.emit("session.state", self._recorded_last, session=self._recorded_last["session"])
        self.bus.emit("alarms", {"alarms": self.alarms.active()})

    async def _publish_unpublished(self, sid: str) -> None:
        """Events of an interrupted session that the record holds but that never reached the
        outbox (the hub was killed between the two writes): published now, in this boot, so
        a follower's indices have no gap. Needs the MQTT front end's ledger."""
        ledger = self.published_events
        if ledger is None:
            return
        recorded = await self.store.events(sid)
        published = await ledger(sid, [e["index"] for e in recorded])
        for e in recorded:
            if e["index"] not in published:
                log.warning("session %s: event %d (%s) was recorded but never published; publishing it now",
                            sid, e["index"], e["event"])
                self.bus.publish(HubMessage("session.event", {"event": e["event"], "index": e["index"], **e["data"]},
                                            session=sid))

    async def _last_recorded_state(self) -> dict[str, Any] | None:
        """The newest recorded session's state, as the retained ``session`` topic carries it."""
        recent = await self.store.list_sessions(limit=1)
        summary = await self.store.session(recent[0]["session"]) if recent else None
        if summary is None:
            return None
        data = {k: summary.get(k) for k in ("session", "state", "program", "version", "patient_ref", "operator",
                                           "started_at", "ended_at", "totals")}
        if summary.get("reason"):
            data["reason"] = summary["reason"]
        return data

    async def close(self) -> None:
        if self.current is not None and not self.current.finished:
            await self.current.abort("hub_shutdown")
        await self.devices.close()
        pending = list(self._report_tasks)
        if pending:  # reports being written are finished, not lost with the process
            await asyncio.wait(pending, timeout=30.0)

    # ================================================================== queries
    def programs(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.library.list(config=self.config, limits=self.limits):
            if getattr(entry, "error", None):
                continue
            out.append({"program": entry.id, "version": entry.version, "title": entry.title, "sha256": entry.sha256,
                        "steps": entry.steps, "est_duration_s": round(entry.est_duration_s, 1),
                        "preflight": list(entry.preflight), "soft_limits": list(entry.soft_limits)})
        return out

    def program(self, program_id: str) -> dict[str, Any]:
        program, _sha, _raw = self._get_program(program_id)
        return program.to_json()

    def _get_program(self, program_id: str) -> tuple[Any, str, bytes]:
        if not isinstance(program_id, str) or not program_id:
            raise CommandError("bad_request", "program must be a non-empty string", field="program")
        try:
            return self.library.get(program_id)
        except KeyError:
            raise CommandError("unknown_program", f"no program {program_id!r} in the library",
                               field="program") from None
        except Exception as exc:  # an unreadable program file is not startable
            raise CommandError("unknown_program", f"program {program_id!r} cannot be read: {exc}",
                               field="program") from None

    def status(self) -> dict[str, Any]:
        sess = self.current or self._last
        return {
            "hub": {"version": __version__, "boot": self.boot, "since": self.since,
                    **({"owner": self.owner} if self.owner else {})},
            "devices": [{k: d[k] for k in ("id", "type", "connected", "state", "fault")} for d in self.devices.describe()],
            "session": {"session": sess.session_id, "state": sess.state} if sess is not None else None,
            "alarms": self.alarms.active(),
        }

    def session_summary(self, session_id: str) -> dict[str, Any]:
        if not isinstance(session_id, str) or not session_id:
            raise CommandError("bad_request", "session must be a non-empty string", field="session")
        summary = self.store.read_session(session_id)
        if summary is None:
            raise CommandError("not_found", f"no session {session_id!r}", field="session")
        return summary

    @property
    def starting(self) -> bool:
        """A start is being checked or its session created right now."""
        return self._start_lock.locked()

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

    def active_session(self) -> SessionRunner | None:
        return self.current if self.current is not None and not self.current.finished else None

    def republish(self) -> None:
        """Every retained state again (the ``rebirth`` verb)."""
        self.devices.republish()
        sess = self.current or self._last
        if sess is not None:
            sess.publish_state()
        elif self._recorded_last is not None:  # a session of an earlier boot
            self.bus.emit("session.state", self._recorded_last, session=self._recorded_last["session"])
        self.bus.emit("alarms", {"alarms": self.alarms.active()})

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
        from devicehub.models.limits import Finding

        course = start_checks(self, prog.id, patient_ref) if patient_ref else []  # an enrolled patient's phase
        last = self.store.read_last_session_for_patient(patient_ref) if patient_ref else None
        if not last or not last.get("ended_at"):
            return course
        try:
            ended = parse_ts(str(last["ended_at"]))
        except ValueError:
            return course
        days = (datetime.now(timezone.utc) - ended).total_seconds() / 86400.0
        limit = self.limits.course.interval_days
        hit = limit.exceeded(days)
        if hit is None:
            return course
        severity, value = hit
        text = (f"course.interval_days: {days:.1f} days since the last session is below the "
                f"{severity} limit {value:g} days")
        return [Finding(id="course.interval_days", severity=severity, field="course.interval_days",
                        value=round(days, 2), limit=value, unit="days", message=text)] + course

    def runtime_caps(self, acknowledged: list[str]) -> dict[str, float]:
        """The hard session caps, or the soft one where its limit was not acknowledged."""
        caps = {}
        for quantity, (name, factor) in SESSION_CAPS.items():
            limit = getattr(self.limits.session, name)
            acked = f"session.{name}" in acknowledged
            value = limit.hard if acked or limit.soft is None else limit.soft
            caps[quantity] = float(value) * factor
        return caps

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

    async def _watch(self, runner: SessionRunner) -> None:
        self.devices.set_running(True)
        try:
            await runner.wait()
        finally:
            self.devices.set_running(False)
            # a delivery its device could not say at the stop is settled at its next answer
            summary = self.store.read_session(runner.session_id) or {}
            for d in summary.get("in_flight") or []:
                self.devices.unsettled.add(d["device"])
        await self._write_report(runner.session_id)

    async def report(self, session_id: str) -> dict[str, Any]:
        """Where the session's report is; written now when it was not yet (the console's ``report``)."""

        self.session_summary(session_id)  # not_found for an unknown session
        runner = self.current
        if runner is not None and runner.session_id == session_id and runner.finished and self._watch_task is not None:
            await asyncio.shield(self._watch_task)  # a session's own report is written when it ends
        path = self.reports.get(session_id)
        if path is None:
            path = await self._write_report(session_id)
        if path is None:
            raise CommandError("invalid_state", f"the report of session {session_id} could not be written")
        return {"session": session_id, "path": str(path)}

    async def _write_report(self, session_id: str) -> Path | None:
        """The session's HTML report (devicehub/report), written when it ends and again when an
        adverse event is recorded after the end; off the event loop, one at a time."""
        from devicehub.report.files import write_in_thread

        async with self._report_lock:
            path = await write_in_thread(self.config, session_id)  # logs and returns None on failure
            if path is not None:
                self.reports[session_id] = path
            return path

    def report_later(self, session_id: str) -> asyncio.Task[Any]:
        """:meth:`_write_report` beside the caller (an adverse event after the end)."""
        task = asyncio.get_running_loop().create_task(self._write_report(session_id))
        self._report_tasks.add(task)
        task.add_done_callback(self._report_tasks.discard)
        return task

    # ================================================================== RoomAPI verbs
    async def start(self, *, program: str, patient_ref: str, operator: str,
                    params: dict[str, dict[str, Any]] | None = None,
                    acknowledge: list[str] | None = None, origin: str = "mqtt", **at_chair: Any) -> dict[str, Any]:
        """The ``start`` verb; ``at_chair`` carries the console's members (start_session's keywords)."""
        runner = await self.start_session(program=program, patient_ref=patient_ref, operator=operator,
                                          params=params, acknowledge=acknowledge, origin=origin, **at_chair)
        return {"session": runner.session_id, "state": runner.state, "course": runner.course}

    def _session(self, session_id: str | None) -> SessionRunner:
        if not isinstance(session_id, str) or not session_id:
            raise CommandError("bad_request", "session must be a non-empty string", field="session")
        runner = self.current
        if runner is None or runner.session_id != session_id:
            if self.store.read_session(session_id) is not None:
                raise CommandError("invalid_state", f"session {session_id} is not the room's active session",
                                   field="session")
            raise CommandError("not_found", f"no session {session_id!r}", field="session")
        return runner

    async def preflight(self, *, session: str, item: str, done: bool, by: str) -> dict[str, Any]:
        runner = self._session(session)
        with _as_command_errors(not_found_field="item"):
            await runner.preflight(item, done, by)
        return {"session": runner.session_id, "state": runner.state, "pending_items": runner.pending_preflight()}

    async def confirm(self, *, session: str, by: str) -> dict[str, Any]:
        from devicehub.faults import check_devices_for_rest

        runner = self._session(session)
        if runner.state == "awaiting_confirmation" and runner.started_at is not None:
            await check_devices_for_rest(self, runner)  # a resume's confirmation: the room again
        with _as_command_errors():
            await runner.confirm(by)
        return {"session": runner.session_id, "state": runner.state}

    async def recover(self, *, session: str, by: str) -> dict[str, Any]:
        """Clear the device fault a session is paused by (console only); the session stays paused."""
        from devicehub.runner.recovery import RecoveryRefused

        runner = self._session(session)
        try:
            with _as_command_errors():
                recovery = await runner.recover(by)
        except RecoveryRefused as exc:
            recovery = runner.recovery or {}
            raise CommandError("invalid_state", str(exc), field="session",
                               details=[{k: recovery.get(k) for k in ("device", "code", "text", "hint")}]) from None
        return {"session": runner.session_id, "state": runner.state, "recovered": recovery}

    async def pause(self, *, session: str, reason: str | None = None) -> dict[str, Any]:
        runner = self._session(session)
        with _as_command_errors():
            await runner.pause(reason)
        # a delivery its device could not say at the pause is settled at the device's next answer
        self.devices.unsettled.update(runner.unsettled_devices())
        return {"session": runner.session_id, "state": runner.state}

    async def resume(self, *, session: str, origin: str = "mqtt", by: str | None = None) -> dict[str, Any]:
        from devicehub.faults import check_devices_for_rest

        runner = self._session(session)
        if runner.state != "paused":
            raise CommandError("invalid_state", f"session is {runner.state}; only a paused session can resume")
        if runner.recovery is not None:  # invalid_state comes before device_unavailable (mqtt-api)
            with _as_command_errors():
                await runner.resume(remote=origin == "mqtt", by=by)  # refused: recover first
        await check_devices_for_rest(self, runner)  # the session stays paused when one is missing
        with _as_command_errors():
            await runner.resume(remote=origin == "mqtt", by=by)
        return {"session": runner.session_id, "state": runner.state}

    def safe_state_now(self, trigger: str, t_trigger: float | None = None) -> Awaitable[SafeStateReport]:
        """Every device's off command on its way at once, before the caller awaits anything else.

        Call it first on a stop path and await it. A safe state already under way is joined
        (its off commands went out before this trigger arrived); the report's ``ms`` is timed
        from this caller's ``t_trigger`` (a ``time.monotonic()`` stamp of the trigger's arrival).
        """
        t0 = time.monotonic() if t_trigger is None else t_trigger
        off = self._off
        if off is None or (off.done() and self._off_for != t0):
            self._off_for = t0
            async def reach() -> tuple[SafeStateReport, float]:
                report = await safe_state_all(self.devices.devices, trigger, t_trigger=t0)
                return report, time.monotonic()

            off = self._off = asyncio.ensure_future(reach())

        async def joined() -> SafeStateReport:
            report, done_at = await asyncio.shield(off)
            return dataclasses.replace(report, trigger=trigger, ms=max(0.0, (done_at - t0) * 1000.0))

        return joined()

    async def abort(self, *, session: str | None = None, reason: str | None = None,
                    t_trigger: float | None = None) -> dict[str, Any]:
        """Never refused: every device to its safe state first, then the active session ended."""
        t0 = time.monotonic() if t_trigger is None else t_trigger
        self._abort_epoch += 1  # before any await: a start under way stops where it is
        runner = self.active_session()
        if runner is not None:
            runner.abort_requested = True
        report = await self.safe_state_now("abort", t0)
        runner = runner or self.active_session()
        if runner is not None:
            final = await runner.abort(reason or "abort", t_trigger=t0, first=report)
            ms = final.ms if final is not None else report.ms
            return {"session": runner.session_id, "state": runner.state, "safe_state_ms": round(ms, 3)}
        if not report.confirmed:
            self.alarms.raise_alarm(priority="high", source="room", code="safe_state_unconfirmed",
                                    text="safe state not confirmed by " + ", ".join(
                                        d for d, s in report.devices.items() if s != "off"))
        return {"session": None, "state": "idle", "safe_state_ms": round(report.ms, 3)}


@contextlib.contextmanager
def _as_command_errors(not_found_field: str | None = None) -> Iterator[None]:
    """The runner's refusals, as the error codes the front ends answer with."""
    try:
        yield
    except NotFound as exc:
        raise CommandError("not_found", str(exc), field=not_found_field) from None
    except InvalidState as exc:
        raise CommandError("invalid_state", str(exc)) from None


_DEVICE_TYPE = {"injection": "inj", "electroporation": "epg", "led": "led", "pemf": "pemf"}
