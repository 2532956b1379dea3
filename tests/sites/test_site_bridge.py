"""A room broker bridged to the site broker (configs/mosquitto/bridge.conf): the link cut
mid-session and restored; every event reaches the database, from the bridge's queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from simulators.local_broker import LocalBroker
from tests.hub.conftest import Clinic, ack_prompts, auto_trigger, console, hub_in, new_site, root_of, \
    run_to_awaiting, simulated_room
from tests.sites.conftest import (SITE_BROKER_CONF, LinkProxy, assert_same_events, bridge_conf, collectors, query,
                                  until_db, wire_events, write_site_config)

pytestmark = pytest.mark.timeout(240)


async def test_bridge_link_cut_and_restored(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            gap_fill_after_s=600)  # no `events` fill: the bridge's queue must carry it all
    async with LinkProxy(site_broker.port) as link, collectors(cfg, tmp_path) as make:
        room_broker = LocalBroker(extra_conf=SITE_BROKER_CONF + bridge_conf(site, "room-1", link.port))
        await asyncio.to_thread(room_broker.start)
        try:
            await make("collector-a").astart()
            with simulated_room(tmp_path / "room-1", room_broker.port, site=site, room="room-1",
                                own_process=True) as room:
                async with hub_in(room) as hub, Clinic(room_broker.port, root_of(site, "room-1")) as clinic, \
                        Clinic(site_broker.port, root_of(site, "room-1")) as far:
                    await hub.astart()
                    await auto_trigger(room, 20)
                    # the site sees the room through the bridge; requests cross it too
                    await far.wait_for(lambda m: m.topic.endswith("/status") and m.body["data"]["state"] == "online",
                                       what="the birth at the site broker")
                    status = await far.request("status", v311=True)  # properties do not cross a 3.1.1 bridge
                    assert status["ok"] and status["data"]["hub"]["boot"] == hub.boot

                    sid = await run_to_awaiting(clinic)
                    acks = asyncio.create_task(ack_prompts(clinic, room, sid))
                    try:
                        assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
                        await clinic.wait_event(sid, "point_done")
                        link.cut()
                        await clinic.wait_event(sid, "completed", timeout=120)
                        await clinic.wait_state("completed", session=sid)
                    finally:
                        acks.cancel()
                    n = len(wire_events(clinic, sid))
                    stored = query(database, "SELECT count(*) AS n FROM session_events WHERE session = %s", sid)[0]["n"]
                    assert stored < n, "the link was cut, yet the end of the session reached the database"
                    link.restore()
                    await until_db(database, lambda q: q("SELECT count(*) AS n FROM session_events"
                                                         " WHERE session = %s", sid)[0]["n"] == n,
                                   what="every event after the link came back")
                    rows = assert_same_events(database, clinic, sid)
                    assert all(r["source"] == "mqtt" for r in rows)
        finally:
            await asyncio.to_thread(room_broker.stop)
