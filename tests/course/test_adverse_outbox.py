"""An adverse event is always recorded and queued, also with the outbox full
(shared/mqtt-api.md): the MQTT front end on a broker that is away, a bound of 3."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from devicehub.clinical.adverse import adverse_event
from devicehub.mqtt.outbox import Outbox
from devicehub.records.hub_store import HubStore
from simulators.local_broker import LocalBroker, free_port
from tests.course.helpers import demo_program
from tests.mqtt import StubRoom, make_frontend, running, until


async def test_an_adverse_event_is_recorded_and_queued_with_the_outbox_full(tmp_path) -> None:
    broker = LocalBroker(port=free_port())  # not started: the outbox fills
    stub = StubRoom()
    fe = make_frontend(tmp_path, broker, stub, outbox=Outbox(tmp_path / "o.sqlite", bound=3))
    store = HubStore(tmp_path / "r.sqlite")
    await store.create_session("S-1", program_id="demo", program_version="1", program_sha256="0" * 64,
                               program_json=demo_program(), patient_ref="P-1", operator="dr-a", origin="mqtt",
                               params={}, acknowledgements=[])
    await store.append_event("S-1", "aborted", {"reason": "abort", "totals": {}})
    try:
        async with running(fe, wait_online=False):
            sid = stub.make_running()
            for _ in range(4):
                stub.event(sid, "point_done")
            await until(fe.outbox_full, what="a full outbox")
            queued = len(fe.outbox)
            room = SimpleNamespace(current=None, store=store, bus=stub.bus)
            reply = await adverse_event(room, session="S-1", kind="infection", severity="moderate", by="dr-a")
            assert reply == {"session": "S-1", "index": 2, "action": "recorded"}
            await until(lambda: len(fe.outbox) == queued + 1, what="the event in the outbox")
            last = (await store.events("S-1"))[-1]
            assert last["event"] == "adverse_event" and last["data"]["kind"] == "infection"
            assert (await store.verify("S-1")).ok
            await asyncio.to_thread(broker.start)
            await until(lambda: len(fe.outbox) == 0, 15, "the outbox drained to the broker")
    finally:
        broker.stop()
        await store.close()
