"""One session of one program: the state machine, supervision and the safe state.

States (shared/mqtt-api.md): created -> preflight -> awaiting_confirmation -> running ->
completed | aborted | failed, running -> paused -> running (resumed at the console) or
paused -> awaiting_confirmation -> running (resumed from afar).

The runner owns one rule above all: any device fault, lost heartbeat, lost
connection, abort, interrupt or unexpected exception brings every device to its safe
state at once (``devicehub.safety.safe_state_all``), and the time it took is recorded
with the ``safe_state`` event. Delivered amounts are accounted from what the devices
report, in one place (:meth:`SessionRunner._account`), and checked against the
runtime caps there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from devicehub.alarms import WATCHDOG_CODES, AlarmBoard
from devicehub.bus import Bus, HubMessage, rfc3339, utcnow
from devicehub.runner.progress import PointProgress, StepProgress
from devicehub.runner.totals import CapExceeded, Totals
from devicehub.safety import SafeStateReport, safe_state_all
from drivers.base import Device, DeviceEvent, DeviceFault, DriverError

log = logging.getLogger(__name__)

FINAL_STATES = ("completed", "aborted", "failed")
SUPERVISED_EVENTS = ("fault", "connection_lost", "heartbeat_failed")


class StepFailure(Exception):
    """A step cannot go on; the session fails with ``reason``."""

    def __init__(self, reason: str, text: str = "", *, alarm: str | None = None, device: str | None = None,
                 code: Any = None, t_trigger: float | None = None) -> None:
        super().__init__(text or reason)
        self.reason = reason
        self.text = text or reason
        self.alarm = alarm  # an alarm code to raise (high), if any
        self.device, self.code = device, code  # the device fault behind it, if one (recoverable?)
        self.t_trigger = t_trigger  # when its cause arrived (time.monotonic()), if known


async def next_event(q: asyncio.Queue[DeviceEvent], deadline: float, failure: StepFailure) -> DeviceEvent:
    """The device's next event, or ``failure`` raised once the loop's clock passes ``deadline``.

    asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel, and a
    step that outlives its cancellation is what the stop path must never see.
    """
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise failure
    try:
        async with asyncio.timeout(left):
            return await q.get()
    except TimeoutError:
        raise failure from None


@dataclass
class RunnerOptions:
    #: a point's injected dose is reached at dose x (1 - tolerance); the gun's cap allows dose x (1 + tolerance)
    dose_tolerance: float = 0.05
    #: a single shot may report at most this much more than it was set to before the runner stops
    shot_overreport: float = 0.10
    #: EP: extra time beyond the train's own length before a missing DONE is a failure
    train_margin_s: float = 2.0
    #: LED/PEMF: extra time beyond the exposure before a missing done is a failure
    exposure_margin_s: float = 5.0
    #: exposure_progress events at most this often
    progress_interval_s: float = 1.0
    #: EP: the pulse-timing limit (limits.electroporation.pulse_timing_error_us; the room sets it)
    pulse_timing: Any = None
    #: confirm steps are acknowledged automatically (demo, tests, --yes)
    auto_acknowledge_prompts: bool = False
    #: a device that has not confirmed its safe state by then is reported unconfirmed
    safe_state_timeout_s: float = 1.0
    #: pauses by a recoverable fault per session; the next recoverable fault fails it
    max_recoveries: int = 3


@dataclass
class ActivePoint:
    """The point a device is delivering to right now, and how to settle it after a stop."""

    step: Any
    progress: PointProgress
    device_id: str
    settle: Callable[[str], Awaitable[None]] | None = None
    #: the delivery intent's write, while it is under way (its id is not known yet)
    intent: asyncio.Future[int] | None = None


class SessionRunner:
    def __init__(
        self,
        *,
        session_id: str,
        program: Any,
        program_sha256: str,
        devices: dict[str, Device],
        step_devices: dict[str, str],
        store: Any,
        bus: Bus,
        alarms: AlarmBoard,
        patient_ref: str,
        operator: str,
        origin: str = "console",
        acknowledged: list[str] | None = None,
        params: dict[str, Any] | None = None,
        confirmation_required: bool = False,
        caps: dict[str, float] | None = None,
        options: RunnerOptions | None = None,
        program_json: dict[str, Any] | None = None,
        acknowledged_by: dict[str, str] | None = None,
        course: dict[str, Any] | None = None,
    ) -> None:
        self.session_id = session_id
        self.program = program
        self.sha256 = program_sha256
        self.devices = devices
        self.step_devices = step_devices
        self.store = store
        self.bus = bus
        self.alarms = alarms
        self.patient_ref = patient_ref
        self.operator = operator
        self.origin = origin
        self.acknowledged = list(acknowledged or [])
        #: who acknowledged each soft limit at the chair (id -> name), when the console said
        self.acknowledged_by = dict(acknowledged_by or {})
        #: set the moment an abort arrives: nothing starts running after it
        self.abort_requested = False
        #: what the technician must fix while paused by a recoverable fault (None otherwise)
        self.recovery: dict[str, Any] | None = None
        self.fault_pauses = 0
        self.params = params or {}
        self.confirmation_required = confirmation_required
        self.options = options or RunnerOptions()
        self.program_json = program_json
        self.totals = Totals(caps=dict(caps or {}))

        self.state = "new"
        self.reason: str | None = None
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.preflight_done: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, StepProgress] = {}
        self.current_step: str | None = None
        self.group_index = 0
        self.last_safe_state: SafeStateReport | None = None

        self._active: dict[str, ActivePoint] = {}  # device id -> point being delivered
        self._run_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._finished = asyncio.Event()
        self._prompt: asyncio.Future[str] | None = None
        self._prompt_step: str | None = None
        self._event_lock = asyncio.Lock()
        self._last_progress_event: dict[str, float] = {}
        self._escalate: tuple[str | None, str] | None = None
        self._alarms_recorded: set[str] = set()  # ids of the alarms the record has an event for
        #: set once open() is done: a stop must not overtake the session's own creation
        self._opened = asyncio.Event()
        #: preflight, confirm, pause and resume one at a time (abort and faults never wait on it)
        self._transition = asyncio.Lock()
        #: set while no stop is under way
        self._stop_idle = asyncio.Event()
        self._stop_idle.set()
        #: {course, phase, number} for an enrolled patient (the created event's ``course``)
        self.course = course
        #: set by a severe adverse event: the next output needs a confirmation at the chair
        self.chair_confirmation = False
        self.start_marks: dict[str, float] = {}
        self.alongside_barrier: asyncio.Barrier | None = None

    # ================================================================== info
    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def required_preflight(self) -> list[str]:
        return [item.id for item in self.program.preflight if getattr(item, "required", True)]

    def pending_preflight(self) -> list[str]:
        return [i for i in self.required_preflight() if not self.preflight_done.get(i, {}).get("done")]

    def snapshot(self) -> dict[str, Any]:
        """The retained ``session`` topic's data."""
        points_done = sum(1 for sp in self.progress.values() for p in sp.points.values() if p.status in ("done", "skipped"))
        data: dict[str, Any] = {
            "session": self.session_id,
            "state": self.state,
            "program": self.program.id,
            "version": self.program.version,
            "patient_ref": self.patient_ref,
            "operator": self.operator,
            "step": self.current_step,
            "steps_total": len(self.program.steps),
            "steps_done": sum(1 for sp in self.progress.values() if sp.status == "done"),
            "points_done": points_done,
            "points_planned": self.points_planned(),
            "totals": self.totals.as_dict(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pending_items": self.pending_preflight() if self.state in ("created", "preflight") else [],
        }
        if self.reason:
            data["reason"] = self.reason
        if self._prompt_step is not None:
            data["prompt"] = {"step": self._prompt_step, "text": self.program_step(self._prompt_step).prompt}
        if self.state == "paused":
            data["recovery"] = self.recovery
        return data

    def points_planned(self) -> int:
        n = 0
        for step in self.program.steps:
            if step.kind in ("injection", "electroporation"):
                n += sum(len(self.program.points(z)) for z in step.zones)
        return n

    def program_step(self, step_id: str) -> Any:
        for s in self.program.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def device_for(self, step: Any) -> tuple[str, Device]:
        dev_id = self.step_devices[step.id]
        return dev_id, self.devices[dev_id]

    # ================================================================== records
    async def event(self, name: str, **data: Any) -> int:
        """Append one event to the record (awaited: written before we go on) and publish it."""
        async with self._event_lock:  # one writer, so indices and publication order agree
            ts = utcnow()
            idx = await self.store.append_event(self.session_id, name, data, ts)
            self.bus.publish(HubMessage("session.event", {"event": name, "index": idx, **data},
                                        session=self.session_id, ts=ts))
        return idx

    def publish_state(self) -> None:
        self.bus.emit("session.state", self.snapshot(), session=self.session_id)

    def raise_alarm(self, *, code: str, text: str, source: str, priority: str = "high", key: str | None = None,
                    latched: bool | None = None, **extra: Any) -> dict[str, Any]:
        """Raise an alarm of this session on the room's board; returns it as the session's
        ``alarm`` event carries it (the alarm itself, shared/mqtt-api.md, plus ``extra``)."""
        alarm = self.alarms.raise_alarm(priority=priority, source=source, code=code, text=text, latched=latched,
                                        session=self.session_id, key=key)
        return {**alarm.to_dict(), **extra}

    async def record_alarm(self, alarm: dict[str, Any]) -> None:
        """The ``alarm`` event, once per alarm id (an alarm raised again is the same alarm)."""
        alarm_id = alarm.get("id")
        if alarm_id is not None:
            if alarm_id in self._alarms_recorded:
                return
            self._alarms_recorded.add(alarm_id)
        await self.event("alarm", **alarm)

    async def _set_state(self, state: str, reason: str | None = None) -> None:
        previous, self.state = self.state, state
        self.reason = reason  # a reason belongs to the state it came with
        data: dict[str, Any] = {"state": state, "previous": previous}
        if reason:
            data["reason"] = reason
        await self.event("state", **data)
        self.publish_state()

    # ================================================================== lifecycle
    async def open(self) -> None:
        """Create the record and enter preflight / awaiting_confirmation, or start running."""
        try:
            await self._open()
        finally:
            self._opened.set()

    async def _open(self) -> None:
        await self.store.create_session(
            self.session_id, program_id=self.program.id, program_version=self.program.version,
            program_sha256=self.sha256, program_json=self.program_json or {}, patient_ref=self.patient_ref,
            operator=self.operator, origin=self.origin, params=self.params, acknowledgements=self.acknowledged,
        )
        self.state = "created"
        await self.event("state", state="created", previous=None)
        await self.event("created", program=self.program.id, version=self.program.version, sha256=self.sha256,
                         patient_ref=self.patient_ref, operator=self.operator, origin=self.origin,
                         params=self.params, acknowledged=self.acknowledged,
                         **({"acknowledged_by": self.acknowledged_by} if self.acknowledged_by else {}),
                         course=self.course)
        self.publish_state()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"supervise-{self.session_id}")
        await self._advance_from_preflight()

    async def _advance_from_preflight(self) -> None:
        if self.pending_preflight():
            if self.state != "preflight":
                await self._set_state("preflight")
            return
        if self.confirmation_required:
            await self._set_state("awaiting_confirmation")
        else:
            await self._start_running()

    async def preflight(self, item: str, done: bool, by: str) -> None:
        async with self._transition:
            await self._preflight(item, done, by)

    async def _preflight(self, item: str, done: bool, by: str) -> None:
        if self.state not in ("created", "preflight"):
            raise InvalidState(f"session is {self.state}; preflight items are taken before it starts")
        ids = [i.id for i in self.program.preflight]
        if item not in ids:
            raise NotFound(f"no preflight item {item!r}; expected one of {', '.join(ids)}")
        self.preflight_done[item] = {"done": bool(done), "by": by}
        await self.event("preflight_item", item=item, done=bool(done), by=by)
        self.publish_state()
        await self._advance_from_preflight()

    async def confirm(self, by: str) -> None:
        async with self._transition:  # two confirmations at once start one run, not two
            if self.state != "awaiting_confirmation":
                raise InvalidState(f"session is {self.state}, not awaiting_confirmation")
            await self.event("confirmed", by=by)
            self.chair_confirmation = False
            await self._start_running()

    async def _start_running(self) -> None:
        if self.abort_requested:
            return  # an abort is on its way in: nothing is energised after it arrived
        resumed = self.started_at is not None
        self.last_safe_state = None  # a resumed session's final event reports its own stop, if any
        self.started_at = self.started_at or rfc3339(utcnow())
        await self._set_state("running")
        await self.event("resumed" if resumed else "started")
        self._stopping = False
        self._run_task = asyncio.get_running_loop().create_task(self._run(), name=f"run-{self.session_id}")

    async def pause(self, reason: str | None = None) -> None:
        async with self._transition:
            if self.state != "running" or self._stopping:
                raise InvalidState(f"session is {self.state}; only a running session can pause")
            await self._stop("paused", trigger="pause", reason=reason)

    async def resume(self, *, remote: bool = False, by: str | None = None) -> None:
        async with self._transition:
            if self.state != "paused":
                raise InvalidState(f"session is {self.state}; only a paused session can resume")
            if self.recovery is not None:
                raise InvalidState(f"session is paused by a fault on {self.recovery['device']} "
                                   f"({self.recovery['text']}): recover it at the chair first. {self.recovery['hint']}")
            if (remote and self.confirmation_required) or self.chair_confirmation:
                await self._set_state("awaiting_confirmation", reason="resume")
                return
            if by:
                await self.event("confirmed", by=by)
            self.chair_confirmation = False
            await self._start_running()

    async def recover(self, by: str) -> dict[str, Any]:
        """The faulted device's own clear command (console only); ``recovered`` when it clears."""
        from devicehub.runner.recovery import clear

        async with self._transition:
            recovery = self.recovery
            if self.state != "paused" or recovery is None:
                raise InvalidState(f"session is {self.state}; no device fault to recover from")
            await clear(self.devices[recovery["device"]], recovery)  # RecoveryRefused: stays paused
            self.recovery = None
            await self.event("recovered", device=recovery["device"], code=recovery["code"], by=by)
            self.publish_state()
            return recovery

    async def _pause_for_fault(self, recovery: dict[str, Any], *, trigger: str, t_trigger: float | None,
                               alarm: dict[str, Any] | None) -> None:
        """A recoverable fault: paused with what to fix, or failed past ``max_recoveries``."""
        if self.fault_pauses >= self.options.max_recoveries:
            await self._stop("failed", trigger=trigger, reason="too_many_faults", t_trigger=t_trigger, alarm=alarm)
            return
        self.fault_pauses += 1
        await self._stop("paused", trigger=trigger, reason="fault", t_trigger=t_trigger, alarm=alarm,
                         recovery=recovery)

    async def abort(self, reason: str | None = None, *, t_trigger: float | None = None,
                    first: SafeStateReport | None = None) -> SafeStateReport | None:
        """End the session aborted; ``first`` is the safe state the room already reached for this
        abort (the off commands went out before anything else), reused as the stop's own."""
        self.abort_requested = True
        # an abort that arrives while the session is being created waits for that (a few
        # record writes, nothing energised yet), so the record never ends before it began
        await self._opened.wait()
        if self.finished:
            return None
        await self._stop("aborted", trigger="abort", reason=reason or "abort", t_trigger=t_trigger, first=first)
        return self.last_safe_state

    async def fail(self, reason: str, *, trigger: str | None = None, t_trigger: float | None = None,
                   alarm: dict[str, Any] | None = None) -> None:
        await self._opened.wait()
        await self._stop("failed", trigger=trigger or reason, reason=reason, t_trigger=t_trigger, alarm=alarm)

    async def stop_for(self, *, trigger: str, reason: str, t_trigger: float | None = None,
                       before_record: Callable[[], Awaitable[None]] | None = None) -> None:
        """Pause a running session for ``trigger`` (an adverse event): safe state first, then
        ``before_record`` (the trigger's own event), then safe_state and paused."""
        await self._opened.wait()
        if self.state != "running" or self._stopping:
            return
        await self._stop("paused", trigger=trigger, reason=reason, t_trigger=t_trigger, before_record=before_record)

    async def wait(self) -> str:
        await self._finished.wait()
        return self.state

    def acknowledge_prompt(self, by: str) -> bool:
        if self._prompt is not None and not self._prompt.done():
            self._prompt.set_result(by)
            return True
        return False

    @property
    def prompt_pending(self) -> str | None:
        return self._prompt_step

    # ================================================================== stopping
    async def _stop(self, kind: str, *, trigger: str, reason: str | None, t_trigger: float | None = None,
                    alarm: dict[str, Any] | None = None, first: SafeStateReport | None = None,
                    recovery: dict[str, Any] | None = None,
                    before_record: Callable[[], Awaitable[None]] | None = None) -> None:
        """Pause, abort or fail: outputs off first, then the record (the alarm that caused it first)."""
        t0 = t_trigger if t_trigger is not None else time.monotonic()
        if self.finished or (self._stopping and kind == "paused"):
            return
        if self._stopping:
            # already stopping (e.g. a fault during an abort): that path finishes first, and a
            # failure outranks an abort or a pause in its final state; an abort that arrived
            # during a pause then ends the paused session itself (an abort is never lost)
            if kind == "failed":
                self._escalate = (reason, trigger)
                if alarm is not None:
                    await self.record_alarm(alarm)
            await self._stop_idle.wait()
            if kind == "aborted" and not self.finished:
                await self._stop(kind, trigger=trigger, reason=reason, t_trigger=t0)
            return
        self._stopping = True
        self._stop_idle.clear()
        self._escalate = None
        try:
            await self._stop_now(kind, trigger=trigger, reason=reason, t0=t0, alarm=alarm, first=first,
                                 recovery=recovery, before_record=before_record)
        finally:
            self._stop_idle.set()

    async def _stop_now(self, kind: str, *, trigger: str, reason: str | None, t0: float,
                        alarm: dict[str, Any] | None, first: SafeStateReport | None = None,
                        recovery: dict[str, Any] | None = None,
                        before_record: Callable[[], Awaitable[None]] | None = None) -> None:
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        report = first if first is not None else await safe_state_all(
            self.devices, trigger, t_trigger=t0, timeout=self.options.safe_state_timeout_s)
        self.last_safe_state = report
        if before_record is not None:  # the trigger's own event, first in the record
            await before_record()
        if alarm is not None:  # recorded once the room is safe, never before
            await self.record_alarm(alarm)
        if task is not None and task is not asyncio.current_task() and not task.done():
            # the step outlived the safe state: it may have commanded a device since, so it
            # is cancelled until it ends (one cancel can be swallowed by a wait_for whose
            # inner future completes at the same moment, Python 3.11) and the room is made
            # safe again behind it
            await self._end_task(task)
            again = await safe_state_all(self.devices, trigger, timeout=self.options.safe_state_timeout_s)
            if not again.confirmed:
                report = SafeStateReport(trigger=report.trigger, ms=report.ms,
                                         devices={d: ("off" if report.devices.get(d) == "off" and s == "off"
                                                      else "unconfirmed") for d, s in again.devices.items()},
                                         details={**report.details, **again.details}, device_ms=report.device_ms)
                self.last_safe_state = report
        await self._settle_active("interrupted" if kind == "paused" else kind)
        await self.event("safe_state", **report.event_data())
        if not report.confirmed:
            bad = [d for d, s in report.devices.items() if s != "off"]
            await self.record_alarm(self.raise_alarm(source=",".join(bad), code="safe_state_unconfirmed",
                                                     text=f"safe state not confirmed by {', '.join(bad)}"))
            if kind != "failed":
                kind, reason = "failed", "safe_state_unconfirmed"
        if self._escalate is not None and kind != "failed":
            kind, reason = "failed", self._escalate[0]
        if kind == "paused":
            self.recovery = recovery
            await self.event("paused", **({"reason": reason} if reason else {}),
                             **({"recovery": recovery} if recovery is not None else {}))
            await self._set_state("paused", reason=None)
            self._stopping = False
            return
        await self._finish(kind, reason)

    @staticmethod
    async def _end_task(task: asyncio.Task[Any], timeout: float = 2.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
        if not task.done():
            log.error("the step task did not end after its cancellation: %r", task)

    async def _finish(self, final: str, reason: str | None) -> None:
        self.ended_at = rfc3339(utcnow())
        self.current_step = None
        data: dict[str, Any] = {"totals": self.totals.as_dict(),
                                "steps": [sp.summary() for sp in self.progress.values()]}
        if reason:
            data["reason"] = reason
        if self.last_safe_state is not None:
            data["safe_state_ms"] = round(self.last_safe_state.ms, 3)
        await self.event(final, **data)
        await self._set_state(final, reason=reason)
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
        self._finished.set()

    async def _settle_active(self, status: str) -> None:
        for dev_id, ap in list(self._active.items()):
            if ap.intent is not None and ap.progress.delivery_id is None:
                try:  # a stop while the intent was being written: its id is needed to settle it
                    ap.progress.delivery_id = await asyncio.wait_for(asyncio.shield(ap.intent), 2.0)
                except Exception as exc:  # noqa: BLE001 - then the intent is not in the record
                    log.warning("intent of %s not recorded: %s", ap.progress.point, exc)
            if ap.settle is not None:
                try:
                    await asyncio.wait_for(ap.settle(status), 2.0)
                except Exception as exc:  # noqa: BLE001 - the record notes it; the room is already safe
                    log.warning("settling %s on %s failed: %s", ap.progress.point, dev_id, exc)
            self._active.pop(dev_id, None)

    # ================================================================== running
    def groups(self) -> list[list[Any]]:
        """Steps in order; a step named by another's ``with`` runs alongside it, not alone."""
        partners = {getattr(s, "with_", None) for s in self.program.steps} - {None}
        out: list[list[Any]] = []
        for s in self.program.steps:
            if s.id in partners:
                continue
            group = [s]
            w = getattr(s, "with_", None)
            if w:
                group.append(self.program_step(w))
            out.append(group)
        return out

    async def _run(self) -> None:
        try:
            groups = self.groups()
            while self.group_index < len(groups):
                group = groups[self.group_index]
                await self._run_group(group)
                self.group_index += 1
            self._stopping = True
            await self._finish("completed", None)
        except asyncio.CancelledError:
            raise
        except StepFailure as exc:
            # every failure of a step is a high alarm of the session (a cap, a device that
            # over-reports, an impedance out of range, a device fault)
            alarm = self.raise_alarm(source=exc.device or self.current_step or "runner",
                                     code=exc.alarm or exc.reason, text=exc.text)
            recovery = self._recovery_for(exc.device, exc.code) if exc.device is not None else None
            if recovery is not None:
                await self._pause_for_fault(recovery, trigger=f"fault:{exc.device}", t_trigger=exc.t_trigger,
                                            alarm=alarm)
                return
            await self._stop("failed", trigger=exc.reason, reason=exc.reason, alarm=alarm, t_trigger=exc.t_trigger)
        except CapExceeded as exc:
            alarm = self.raise_alarm(source="runner", code="dose_cap_reached", text=str(exc))
            await self._stop("failed", trigger="dose_cap_reached", reason="dose_cap_reached", alarm=alarm)
        except DriverError as exc:
            # a device that failed a request mid-step (a timeout, a refusal, a lost link)
            text = str(exc)
            dev = next((d for d, dv in self.devices.items() if dv.device_id in text or str(dv.endpoint) in text),
                       self.step_devices.get(self.current_step or "", "device"))
            recovery = self._recovery_for(dev, exc.code, exc.text) if isinstance(exc, DeviceFault) else None
            if recovery is not None:  # e.g. the LED applicator too far when its exposure starts
                alarm = self.raise_alarm(source=dev, code="device_fault", text=f"{dev}: {recovery['text']}",
                                         key=f"{dev}:device_fault", device=dev, device_code=recovery["code"])
                await self._pause_for_fault(recovery, trigger=f"fault:{dev}", t_trigger=None, alarm=alarm)
                return
            alarm = self.raise_alarm(source=dev, code="device_error", text=text, key=f"{dev}:device_error",
                                     device=dev)
            await self._stop("failed", trigger=f"device_error:{dev}", reason=f"device_error:{dev}", alarm=alarm)
        except Exception as exc:  # noqa: BLE001 - an unexpected error still ends in the safe state
            log.exception("session %s: unexpected error", self.session_id)
            await self._stop("failed", trigger="internal_error", reason=f"internal_error: {type(exc).__name__}: {exc}")

    async def _run_group(self, group: list[Any]) -> None:
        from devicehub.runner import electroporation, exposure, injection

        runners = {"injection": injection.run, "electroporation": electroporation.run,
                   "led": exposure.run, "pemf": exposure.run,
                   "confirm": lambda runner, step: runner._run_confirm(step)}
        for step in group:
            sp = self.progress.setdefault(step.id, StepProgress(step.id, step.kind))
            if sp.status != "done":
                sp.status = "active"
        todo = [s for s in group if self.progress[s.id].status != "done"]
        if not todo:
            return
        self.current_step = group[0].id
        for s in todo:
            if not self.progress[s.id].points and not self.progress[s.id].done_amounts:
                await self.event("step_started", step=s.id, kind=s.kind, devices=self._step_device_list(s))
        self.publish_state()
        if len(todo) == 1:
            await runners[todo[0].kind](self, todo[0])
        else:
            await self._run_alongside(todo, runners)
        for s in todo:
            self.progress[s.id].status = "done"
            await self.event("step_done", step=s.id, kind=s.kind, devices=self._step_device_list(s),
                             totals=self._step_totals(s))
        self.publish_state()

    async def _run_alongside(self, steps: list[Any], runners: dict[str, Any]) -> None:
        """Run steps side by side; the first to fail cancels the others."""
        self.start_marks = {}
        n_exposures = sum(1 for s in steps if s.kind in ("led", "pemf"))
        self.alongside_barrier = asyncio.Barrier(n_exposures) if n_exposures > 1 else None
        tasks = [asyncio.ensure_future(runners[s.kind](self, s)) for s in steps]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.alongside_barrier = None
        if len(self.start_marks) >= 2:
            marks = sorted(self.start_marks.values())
            await self.event("alongside_started", steps=[s.id for s in steps],
                             skew_ms=round((marks[-1] - marks[0]) * 1000.0, 3))

    def _step_device_list(self, step: Any) -> list[str]:
        return [self.step_devices[step.id]] if step.id in self.step_devices else []

    def _step_totals(self, step: Any) -> dict[str, float]:
        sp = self.progress[step.id]
        out: dict[str, float] = dict(sp.done_amounts)
        for p in sp.points.values():
            for k, v in p.delivered.items():
                if not k.endswith("_sum"):  # bookkeeping (e.g. depth sums for averages), not a delivery
                    out[k] = out.get(k, 0.0) + v
        return {k: round(v, 6) for k, v in out.items()}

    async def _run_confirm(self, step: Any) -> None:
        loop = asyncio.get_running_loop()
        self._prompt = loop.create_future()
        self._prompt_step = step.id
        await self.event("prompt", step=step.id, text=step.prompt)
        self.publish_state()
        if self.options.auto_acknowledge_prompts:
            self._prompt.set_result(f"{self.operator} (auto)")
        try:
            by = await self._prompt
        finally:
            self._prompt, self._prompt_step = None, None
        await self.event("prompt_acknowledged", step=step.id, by=by)

    # ================================================================== accounting
    async def begin_point(self, device_id: str, step: Any, pp: PointProgress,
                          settle: Callable[[str], Awaitable[None]], *, planned: dict[str, Any]) -> None:
        """Record the point's delivery intent and make it active, so that a stop at any moment
        from here on (even during the intent's own write) settles it: no intent is ever left
        without its result."""
        ap = ActivePoint(step, pp, device_id, settle=settle)
        self.set_active(device_id, ap)
        if pp.delivery_id is None:
            ap.intent = asyncio.ensure_future(self.store.delivery_intent(
                self.session_id, step_id=step.id, zone=pp.zone, point=pp.point, device=device_id,
                planned=planned))
            pp.delivery_id = await asyncio.shield(ap.intent)
        pp.status = "active"

    def set_active(self, device_id: str, ap: ActivePoint | None) -> None:
        if ap is None:
            self._active.pop(device_id, None)
        else:
            self._active[device_id] = ap

    def active(self, device_id: str) -> ActivePoint | None:
        return self._active.get(device_id)

    def account(self, device_id: str, point: PointProgress | None, **amounts: float) -> None:
        """The one place delivered amounts enter the session: progress, totals, caps."""
        if point is not None:
            point.add(**amounts)
        self.totals.add(device_id, **amounts)  # raises CapExceeded after recording

    async def progress_event(self, step_id: str, device_id: str, **data: Any) -> None:
        now = time.monotonic()
        if now - self._last_progress_event.get(step_id, 0.0) < self.options.progress_interval_s:
            return
        self._last_progress_event[step_id] = now
        await self.event("exposure_progress", step=step_id, device=device_id, **data)

    # ================================================================== supervision
    async def _supervise(self) -> None:
        """Watch every device's events for the whole session; trip the safe state on trouble."""
        queues: list[tuple[str, asyncio.Queue[DeviceEvent]]] = []
        async with contextlib.AsyncExitStack() as stack:
            for dev_id, dev in self.devices.items():
                q = await stack.enter_async_context(dev.subscribe())
                queues.append((dev_id, q))
            merged: asyncio.Queue[tuple[str, DeviceEvent]] = asyncio.Queue()

            async def pump(dev_id: str, q: asyncio.Queue[DeviceEvent]) -> None:
                while True:
                    merged.put_nowait((dev_id, await q.get()))

            pumps = [asyncio.ensure_future(pump(d, q)) for d, q in queues]
            try:
                while not self.finished:
                    dev_id, ev = await merged.get()
                    if ev.kind in SUPERVISED_EVENTS:
                        await self._on_device_trouble(dev_id, ev)
            finally:
                for p in pumps:
                    p.cancel()

    async def _on_device_trouble(self, dev_id: str, ev: DeviceEvent) -> None:
        if self.finished:
            return
        code = ev.data.get("code", ev.kind)
        text = ev.data.get("text") or ev.data.get("error") or ev.kind
        if ev.kind == "fault":
            alarm_code = "watchdog" if str(code) in WATCHDOG_CODES else "device_fault"
        else:
            alarm_code = ev.kind
        if self.state in ("running", "paused", "awaiting_confirmation", "preflight", "created"):
            alarm = self.raise_alarm(source=dev_id, code=alarm_code, text=f"{dev_id}: {text} ({code})",
                                     key=f"{dev_id}:{alarm_code}", device=dev_id, device_code=code)
            recovery = self._recovery_for(dev_id, code, text) if ev.kind == "fault" else None
            if recovery is not None:
                if self.state == "running" and not self._stopping:
                    await self._pause_for_fault(recovery, trigger=f"fault:{dev_id}", t_trigger=ev.t, alarm=alarm)
                    return
                if self._stopping or self.state == "paused":
                    # the room is (being) made safe already: the fault is recorded, and a
                    # paused session shows what to fix before it may resume
                    await self.record_alarm(alarm)
                    if self.state == "paused" and not self._stopping and self.recovery is None:
                        self.recovery = recovery
                        self.publish_state()
                    return
            await self.fail(f"{alarm_code}:{dev_id}", trigger=f"{ev.kind}:{dev_id}", t_trigger=ev.t, alarm=alarm)

    def _recovery_for(self, dev_id: str | None, code: Any, text: str = "") -> dict[str, Any] | None:
        from devicehub.runner.recovery import recovery_for

        device = self.devices.get(dev_id) if dev_id is not None else None
        return recovery_for(device, dev_id, code, text) if device is not None else None


class InvalidState(Exception):
    pass


class NotFound(Exception):
    pass
