"""The session's open deliveries: opened by the steps, settled on every stop path.

The runner owns one :class:`DeliveryBook`. A step opens a delivery (the device's counters
read, the intent written), marks it started when the device confirms the run, and
settles it at its own end; every stop path (pause, abort, fault, a device lost) settles
whatever is still open, after the room is safe. Settling is always
``devicehub.runner.settlement.settle``; one the device cannot say stays open and is
settled when the device answers again (``settle_pending``, or late after the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from devicehub.runner import settlement
from devicehub.runner.context import StepFailure
from devicehub.runner.progress import PointProgress, StepProgress
from devicehub.runner.settlement import Delivery
from devicehub.runner.totals import CapExceeded
from devicehub.safety import SafeStateReport

log = logging.getLogger(__name__)


class DeliveryBook:
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        #: device id -> the delivery it is making now (intent written, result not yet)
        self.open: dict[str, Delivery] = {}
        #: deliveries a stop could not settle (their device did not answer): settled when it does
        self.unsettled: list[Delivery] = []
        #: ``delivery_settled`` of a stop, announced once its ``paused`` or final event is
        #: recorded (the contract orders a stop's events: the trigger's, safe_state, paused)
        self.deferred: list[dict[str, Any]] = []

    async def announce_deferred(self) -> None:
        pending, self.deferred = self.deferred, []
        for data in pending:
            await self.runner.event("delivery_settled", **data)

    async def open_delivery(self, device_id: str, step: Any, *, point: PointProgress | None,
                            planned: dict[str, Any]) -> Delivery:
        """Read the device's counters, write the delivery's intent with them, and hold it open:
        a stop at any moment from here on (even during the intent's own write) settles it."""
        kind = settlement.KIND_OF_STEP[step.kind]
        device = self.runner.devices[device_id]
        before = await settlement.read_counters(kind, device)
        d = Delivery(device_id=device_id, kind=kind, step=step.id, zone=point.zone if point else None,
                     point=point.point if point else None, before=before, planned=dict(planned), progress=point)
        if kind == "epg":  # the train's own events after this mark say it ran (settlement.py)
            d.trigger_mark = device.trigger_mark()
            before["armed"] = bool(device.energised)  # armed for this train (electroporation.py)
        self.open[device_id] = d
        fut = asyncio.ensure_future(self.runner.store.delivery_intent(
            self.runner.session_id, step_id=step.id, zone=d.zone, point=d.point, device=device_id,
            planned={**planned, "device_before": before}))
        d.intent_write = fut
        d.intent_id = await asyncio.shield(fut)
        if point is not None:
            point.status = "active"
        return d

    async def delivery_started(self, delivery: Delivery) -> None:
        delivery.started = True
        if delivery.t_started is None:
            delivery.t_started = time.monotonic()
        await self.runner.event("delivery_started", delivery=delivery.intent_id, device=delivery.device_id,
                         step=delivery.step, zone=delivery.zone, point=delivery.point)

    async def counted(self, delivery: Delivery) -> dict[str, float]:
        """The device's count under ``delivery`` so far, without settling it."""
        try:
            return await settlement.read_delivered(delivery, self.runner.devices[delivery.device_id])
        except settlement.Unsettled as exc:
            raise StepFailure("delivery_unsettled", f"{delivery.device_id} did not say what it delivered: {exc}",
                              alarm="device_fault") from exc

    async def settle(self, delivery: Delivery, status: str = "done", _stopping: bool = False, _defer: bool = False,
                     **extra: Any) -> dict[str, float]:
        """The one settlement (devicehub/runner/settlement.py): the device's figures in the
        record, what was not yet entered added to progress and totals. On the step's own
        path a device that cannot say is a failure of the step; on a stop path the delivery
        stays in flight."""
        try:
            delivered = await settlement.settle(
                delivery, self.runner.devices[delivery.device_id], _RunnerSink(self.runner), status=status, extra=extra,
                announce=(_stopping or delivery.point is None) and not _defer, account=self._account)
        finally:
            if _defer and delivery.settled and delivery.delivered is not None and not delivery.announced:
                # a stop's settlement (or the step's own, met by the stop): announced after
                # the stop's own events
                delivery.announced = True
                self.deferred.append(delivery.event_data(dict(delivery.delivered), False))
            finished = delivery.settling is None or delivery.settling.done()
            if delivery.settled and finished and self.open.get(delivery.device_id) is delivery:
                self.open.pop(delivery.device_id, None)
        if delivered is None:
            if _stopping:
                return {}
            raise StepFailure("delivery_unsettled", f"{delivery.device_id} did not say what it delivered",
                              alarm="device_fault")
        return delivered

    def _account(self, d: Delivery, amounts: dict[str, float]) -> None:
        if d.progress is None:  # an exposure: the step's amounts, run after run
            sp = self.runner.progress.setdefault(d.step, StepProgress(d.step, self.runner.program_step(d.step).kind))
            for k, v in amounts.items():
                sp.done_amounts[k] = sp.done_amounts.get(k, 0.0) + v
        self.runner.account(d.device_id, d.progress, **amounts)

    async def settle_open(self, status: str, *, t_stopped: float | None = None,
                           report: SafeStateReport | None = None) -> None:
        """Every delivery still open, settled from its device after the room is safe (the
        stop paths: pause, abort, fault, a device lost). One the device cannot say now
        stays in flight and is settled late (devicehub/runner/settlement.py)."""
        for dev_id, d in list(self.open.items()):
            fut = d.intent_write
            if d.intent_id is None and fut is not None:
                try:  # a stop while the intent was being written: its id is needed to settle it
                    d.intent_id = await asyncio.wait_for(asyncio.shield(fut), 2.0)
                except Exception as exc:  # noqa: BLE001 - then the intent is not in the record
                    log.warning("intent of %s not recorded: %s", d.point or d.step, exc)
            if d.t_stopped is None and t_stopped is not None:
                # the stop command left at the trigger; half the device's confirmation round
                d.t_stopped = t_stopped + (report.device_ms.get(dev_id, 0.0) / 2000.0 if report else 0.0)
            try:
                await asyncio.wait_for(self.settle(d, status, _stopping=True, _defer=True), 2.0)
            except Exception as exc:  # noqa: BLE001 - the room is already safe; it stays in flight
                log.warning("settling %s on %s failed: %s", d.point or d.step, dev_id, exc)
            self.open.pop(dev_id, None)
            if not d.settled and d.intent_id is not None:
                self.unsettled.append(d)

    def unsettled_devices(self) -> list[str]:
        """Devices with a delivery of this session still open (a paused session cannot resume)."""
        return sorted({d.device_id for d in self.unsettled if not d.settled})

    async def settle_pending(self, device_id: str) -> None:
        """The device answers again: settle what a stop could not (progress and totals learn
        it, so a resumed point gets only what it still lacks)."""
        for d in [d for d in self.unsettled if d.device_id == device_id]:
            with contextlib.suppress(CapExceeded):
                await self.settle(d, "interrupted", _stopping=True)
            if d.settled:
                self.unsettled.remove(d)


class _RunnerSink:
    """A settlement's writes during the session: the result row, and the event through the
    runner (one writer, so indices and publication order agree)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    async def result(self, intent_id: int, delivered: dict[str, Any], status: str) -> None:
        await self.runner.store.delivery_result(intent_id, delivered=delivered, status=status)

    async def event(self, name: str, **data: Any) -> int:
        if name == "delivery_settled" and self.runner.machine.stopping:
            # a step's own settlement that a stop met: its event follows the stop's
            # (the trigger's, safe_state, then paused or the final state)
            self.runner.book.deferred.append(data)
            return -1
        return await self.runner.event(name, **data)
