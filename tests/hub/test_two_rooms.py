"""Two rooms, two hubs, one broker: a command for one room never reaches the other.

shared/mqtt-api.md: one hub serves one room under ``devicehub/v1/<site>/<room>``; the
hub subscribes to its own ``<root>/cmd/#`` only, with its own fixed client id.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.hub.conftest import (
    Clinic,
    auto_trigger,
    console,
    hub_in,
    new_site,
    outputs_on,
    root_of,
    run_to_awaiting,
    sim_states,
    simulated_room,
    start_body,
    wait_all_off,
)

pytestmark = pytest.mark.timeout(120)


async def test_two_rooms_never_see_each_others_commands(broker, tmp_path: Path) -> None:
    site = new_site()
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(simulated_room(tmp_path / "room-1", broker.port, site=site, room="room-1"))
        two = stack.enter_context(simulated_room(tmp_path / "room-2", broker.port, site=site, room="room-2"))
        async with hub_in(one) as hub1, hub_in(two) as hub2, \
                Clinic(broker.port, f"devicehub/v1/{site}", subscribe="#") as everything, \
                Clinic(broker.port, root_of(site, "room-1")) as c1, Clinic(broker.port, root_of(site, "room-2")) as c2:
            await hub1.astart()
            await hub2.astart()
            await auto_trigger(one, 20)
            await auto_trigger(two, 20)

            # a start to room-2, run until it delivers (its gun armed and firing)
            sid2 = await run_to_awaiting(c2)
            assert (await console(two, "confirm", session=sid2, by="tech"))["ok"]
            await c2.wait_event(sid2, "point_done")
            await auto_trigger(two, 0)  # the technician stops pulling: the gun stays armed, waiting
            deadline = time.monotonic() + 10
            while not (await outputs_on(two))["inj-1"]:
                assert time.monotonic() < deadline, "room-2's injector is not armed"

            # room-1 knows nothing of it
            status1 = await c1.request("status")
            assert status1["data"]["session"] is None
            states1 = await sim_states(one)
            assert not any(s["output_on"] for s in states1.values())
            assert states1["inj-1"]["shots"] == 0
            assert not [m for m in everything.messages if m.topic.startswith(f"{root_of(site, 'room-1')}/session")]

            # a start and an abort to room-1 leave room-2's session running
            sid1 = await run_to_awaiting(c1)
            assert sid1 != sid2
            abort1 = await c1.request("abort", {})
            assert abort1["ok"] and abort1["data"]["session"] == sid1 and abort1["data"]["state"] == "aborted"
            status2 = await c2.request("status")
            assert status2["data"]["session"] == {"session": sid2, "state": "running"}
            assert (await outputs_on(two))["inj-1"], "room-2's injector was disarmed by room-1's abort"

            # and room-2's abort leaves room-1 alone
            again = await c1.request("start", start_body())
            assert again["ok"] and again["data"]["state"] == "preflight"
            sid1b = again["data"]["session"]
            abort2 = await c2.request("abort", {"session": sid2})
            assert abort2["ok"] and abort2["data"]["state"] == "aborted"
            await wait_all_off(two, timeout=3)
            status1 = await c1.request("status")
            assert status1["data"]["session"] == {"session": sid1b, "state": "preflight"}

            # each room's events, replies and session topics under its own root only
            for m in everything.messages:
                body = m.body
                if isinstance(body, dict) and "room" in body:
                    assert m.topic.startswith(root_of(site, body["room"])), (m.topic, body["room"])
            for sid, room_id in ((sid1, "room-1"), (sid2, "room-2"), (sid1b, "room-1")):
                topics = {m.topic for m in everything.messages if sid in m.topic}
                assert topics <= {f"{root_of(site, room_id)}/sessions/{sid}/events"}, topics
            assert (await c1.request("abort", {}))["ok"]
