"""A stop that meets a delivery at its edges: the record still equals what the devices
counted (issue 11, invariant 2; the one-hour soak's sessions #82, #321, #601).

Trains of a step are alike, so a train's report can equal the one before it: "the report
moved" cannot tell whether a train whose trigger's reply never came ran. The device's
own pulse and end events on the wire can.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devicehub.runner import settlement
from devicehub.runner.settlement import Delivery
from drivers.base import DeviceStatus
from simulators.devsupport.proxy import ReplyDropper

from .conftest import FAST_DEMO, assert_totals_match, open_hub_through


async def test_a_train_whose_trigger_reply_was_lost_is_in_the_record(tmp_path: Path) -> None:
    # the OK of the second OUTP:TRIG is lost on its way: the device runs the train, the hub
    # never hears that it began
    async with open_hub_through(tmp_path / "room", "epg-1",
                                lambda port: ReplyDropper(port, b"OUTP:TRIG", nth=2)) as (hub, wire):
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST_DEMO)
        final = await hub.finish(runner)
        assert wire.dropped.is_set()
        sims = await hub.sim_states()
        assert sims["epg-1"]["pulses"] == 20  # two trains ran on the device
        summary = hub.store.read_session(runner.session_id)
        assert summary["in_flight"] == []
        assert_totals_match(summary["totals"], sims)
        # the terminal event's totals too (what the clinic and the site are sent)
        end = [e for e in await hub.store.events(runner.session_id) if e["event"] == final][-1]
        assert_totals_match(end["data"]["totals"], sims)
        rows = [r for r in await hub.store.deliveries(runner.session_id) if r["device"] == "epg-1"]
        assert [r["delivered"]["pulses"] for r in rows] == [10, 10]


class _Emitter:
    """An LED-1 whose run ended by itself: what its driver reads back (the run registers)."""

    async def status(self) -> DeviceStatus:
        return DeviceStatus(state="done", output_on=False, readings={"elapsed_s": 1.5, "fluence_mj_cm2": 7.0})


class _SlowRecord:
    """A record whose writes wait until the test lets them go (a busy SQLite worker)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()
        self.rows: list[tuple[int, dict[str, Any], str]] = []
        self.events: list[str] = []

    async def result(self, intent_id: int, delivered: dict[str, Any], status: str) -> None:
        self.writing.set()
        await self.gate.wait()
        self.rows.append((intent_id, delivered, status))

    async def event(self, name: str, **data: Any) -> int:
        self.events.append(name)
        return len(self.events)


async def test_a_stop_does_not_cut_a_settlement_half_way() -> None:
    """Session #82: a stop cancelled the step while its exposure's result row was being
    written; the row reached the record, the totals and ``delivery_settled`` never did.
    A settlement once begun ends, and the stop's own settlement waits for it."""
    d = Delivery(device_id="led-1", kind="led", step="light", zone=None, point=None,
                 before={"elapsed_s": 0.0, "fluence_mj_cm2": 0.0}, planned={"rate_mw_cm2": 5.0}, intent_id=7,
                 started=True)
    record, entered = _SlowRecord(), []
    step_end = asyncio.ensure_future(settlement.settle(d, _Emitter(), record, status="done",
                                                       account=lambda _d, amounts: entered.append(amounts)))
    await record.writing.wait()
    step_end.cancel()  # the stop cancels the step here
    stop = asyncio.ensure_future(settlement.settle(d, _Emitter(), record, status="aborted",
                                                   account=lambda _d, amounts: entered.append(amounts)))
    record.gate.set()
    delivered = await stop
    assert delivered == {"exposure_s": 1.5, "fluence_j_cm2": 0.0075}
    assert [(i, s) for i, _r, s in record.rows] == [(7, "done")]  # one result, the step's own
    assert record.events == ["delivery_settled"]
    assert entered == [{"exposure_s": 1.5, "fluence_j_cm2": 0.0075}]  # in the totals, once
    with pytest.raises(asyncio.CancelledError):
        await step_end
