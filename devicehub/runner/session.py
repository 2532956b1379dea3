"""One session of one program: its lifecycle, pause, resume, abort and the stop path.

States move only along the table of ``devicehub.runner.states`` (shared/mqtt-api.md's
states plus an internal ``stopping``); an illegal transition raises.

The runner owns one rule above all: any device fault, lost heartbeat, lost
connection, abort, interrupt or unexpected exception brings every device to its safe
state at once (``devicehub.safety.safe_state_all``), and the time it took is recorded
with the ``safe_state`` event. Then every open delivery is settled from the device's
own counters (``devicehub.runner.deliveries``); delivered amounts enter progress,
totals and the runtime caps in one place (:meth:`SessionRunner.account`).

This module drives the lifecycle (open, preflight, confirm, pause, resume, abort) and
the run; the stop path is in ``stopping.py`` and what the session shows and records
(snapshot, events, alarms) in ``session_info.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from devicehub.alarms import AlarmBoard
from devicehub.bus import Bus, rfc3339, utcnow
from devicehub.runner import program_run
from devicehub.runner.deliveries import DeliveryBook
from devicehub.runner.context import RunnerOptions, StepFailure
from devicehub.runner.progress import PointProgress, StepProgress
from devicehub.runner.session_info import SessionInfo
from devicehub.runner.settlement import Delivery
from devicehub.runner.supervision import supervise
from devicehub.runner.states import SessionState, StateMachine
from devicehub.runner.stopping import StopPath
from devicehub.runner.totals import CapExceeded, Totals
from devicehub.safety import SafeStateReport
from drivers.base import Device, DeviceFault, DriverError, Preempted

__all__ = ["SessionRunner", "RunnerOptions", "StepFailure", "InvalidState", "NotFound"]

log = logging.getLogger(__name__)


class SessionRunner(SessionInfo, StopPath):
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

        #: the states and their transitions (devicehub/runner/states.py); ``state`` is the published one
        self.machine = StateMachine()
        self.reason: str | None = None
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.preflight_done: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, StepProgress] = {}
        self.current_step: str | None = None
        self.group_index = 0
        self.last_safe_state: SafeStateReport | None = None

        #: the deliveries opened and not yet settled (devicehub/runner/deliveries.py)
        self.book = DeliveryBook(self)
        self._run_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._prompt: asyncio.Future[str] | None = None
        self._prompt_step: str | None = None
        #: confirm steps acknowledged (recorded), by whom: not asked again after a pause
        self._acknowledged: dict[str, str] = {}
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
        self.machine.go(SessionState.CREATED)
        await self.event("state", state="created", previous=None)
        await self.event("created", program=self.program.id, version=self.program.version, sha256=self.sha256,
                         patient_ref=self.patient_ref, operator=self.operator, origin=self.origin,
                         params=self.params, acknowledged=self.acknowledged,
                         **({"acknowledged_by": self.acknowledged_by} if self.acknowledged_by else {}),
                         course=self.course)
        self.publish_state()
        self._supervisor = asyncio.get_running_loop().create_task(supervise(self), name=f"supervise-{self.session_id}")
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
        self._run_task = asyncio.get_running_loop().create_task(self._run(), name=f"run-{self.session_id}")

    async def pause(self, reason: str | None = None) -> None:
        async with self._transition:
            if self.machine.state is not SessionState.RUNNING:
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
        if self.state != "running" or self.stopping:
            return
        await self._stop("paused", trigger=trigger, reason=reason, t_trigger=t_trigger, before_record=before_record)

    async def wait(self) -> str:
        await self._finished.wait()
        return self.state

    async def acknowledge_prompt(self, by: str) -> bool:
        """The confirm step waiting at the chair, acknowledged and recorded before the reply:
        a pause that comes in the same moment cancels the step before it could write it,
        and a reply of ok must mean the record holds it. False when no prompt waits (or
        the session is stopping)."""
        step = self._prompt_step
        if self._prompt is None or self._prompt.done() or step is None or self.machine.stopping or self.finished:
            return False
        self._acknowledged[step] = by
        self._prompt.set_result(by)
        await self.event("prompt_acknowledged", step=step, by=by)  # queued now, ahead of any stop's events
        return True

    @property
    def prompt_pending(self) -> str | None:
        return self._prompt_step

    # ================================================================== running
    async def _run(self) -> None:
        try:
            groups = program_run.groups(self)
            while self.group_index < len(groups):
                group = groups[self.group_index]
                await program_run.run_group(self, group)
                self.group_index += 1
            self.machine.go(SessionState.STOPPING)
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
            if isinstance(exc, Preempted) and await self.stop_follows():
                return  # a safe state took the device first: the stop that took it decides
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

    async def run_confirm(self, step: Any) -> None:
        """A confirm step: the prompt at the chair, until acknowledged (recorded by the
        acknowledgement itself, :meth:`acknowledge_prompt`); one acknowledged before a
        pause cut the step is not asked again."""
        if step.id in self._acknowledged:
            return
        loop = asyncio.get_running_loop()
        self._prompt = loop.create_future()
        self._prompt_step = step.id
        await self.event("prompt", step=step.id, text=step.prompt)
        self.publish_state()
        try:
            if self.options.auto_acknowledge_prompts:
                await self.acknowledge_prompt(f"{self.operator} (auto)")
            await self._prompt
        finally:
            self._prompt, self._prompt_step = None, None

    # ================================================================== accounting
    async def open_delivery(self, device_id: str, step: Any, *, point: PointProgress | None,
                            planned: dict[str, Any]) -> Delivery:
        return await self.book.open_delivery(device_id, step, point=point, planned=planned)

    async def delivery_started(self, delivery: Delivery) -> None:
        await self.book.delivery_started(delivery)

    async def counted(self, delivery: Delivery) -> dict[str, float]:
        return await self.book.counted(delivery)

    async def settle(self, delivery: Delivery, status: str = "done", **extra: Any) -> dict[str, float]:
        return await self.book.settle(delivery, status, **extra)

    def unsettled_devices(self) -> list[str]:
        """Devices with a delivery of this session still open (a paused session cannot resume)."""
        return self.book.unsettled_devices()

    async def settle_pending(self, device_id: str) -> None:
        await self.book.settle_pending(device_id)

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

    def _recovery_for(self, dev_id: str | None, code: Any, text: str = "") -> dict[str, Any] | None:
        from devicehub.runner.recovery import recovery_for

        device = self.devices.get(dev_id) if dev_id is not None else None
        return recovery_for(device, dev_id, code, text) if device is not None else None


class InvalidState(Exception):
    pass


class NotFound(Exception):
    pass
