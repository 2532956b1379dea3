"""Nothing lost, nothing twice: a collector killed, two collectors with one killed,
PostgreSQL stopped mid-session, a message withheld from the collectors.

Each test runs one real hub (simulators) on a private Mosquitto and ``devicehub
collect`` processes on a private PostgreSQL; the database is judged against what a
subscriber of the room's topics saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest

from tests.hub.conftest import (Clinic, ack_prompts, auto_trigger, console, hub_in, new_site, root_of,
                                run_to_awaiting, simulated_room)
from tests.sites.conftest import (assert_same_events, collectors, query, until_db, wire_events, withholder,
                                  write_site_config)

pytestmark = pytest.mark.timeout(240)


@contextlib.asynccontextmanager
async def one_room(tmp_path: Path, port: int, site: str):
    with simulated_room(tmp_path / "room-1", port, site=site, room="room-1",
                        own_process=True) as room:
        async with hub_in(room) as hub, Clinic(port, root_of(site, "room-1")) as clinic:
            await hub.astart()
            await auto_trigger(room, 20)
            yield room, clinic


async def started(clinic: Clinic, room) -> tuple[str, asyncio.Task]:
    """A session confirmed at the chair and delivering; the prompt acknowledger runs beside it."""
    sid = await run_to_awaiting(clinic)
    acks = asyncio.create_task(ack_prompts(clinic, room, sid))
    assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
    await clinic.wait_event(sid, "point_done")
    return sid, acks


async def finished(clinic: Clinic, sid: str, acks: asyncio.Task) -> None:
    try:
        await clinic.wait_event(sid, "completed", timeout=120)
        await clinic.wait_state("completed", session=sid)
    finally:
        acks.cancel()


def stored(url: str, clinic: Clinic, sid: str):
    n = len(wire_events(clinic, sid))
    return lambda q: (q("SELECT count(*) AS n FROM session_events WHERE session = %s", sid)[0]["n"] == n)


async def test_collector_killed_and_restarted(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            gap_fill_after_s=600)  # what was in flight comes back from the broker, not `events`
    async with collectors(cfg, tmp_path) as make, one_room(tmp_path, site_broker.port, site) as (room, clinic):
        first = await make("collector-a").astart()
        sid, acks = await started(clinic, room)
        await until_db(database, lambda q: q("SELECT count(*) AS n FROM session_events WHERE session = %s",
                                             sid)[0]["n"] > 0, what="the first events stored")
        first.kill()
        await finished(clinic, sid, acks)  # the whole session runs on without a collector
        await make("collector-a").astart()  # the same client id: its session, kept by the broker
        await until_db(database, stored(database, clinic, sid), what="every event after the restart")
        rows = assert_same_events(database, clinic, sid)
        assert all(r["source"] == "mqtt" for r in rows)


async def test_two_collectors_one_killed(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site)
    async with collectors(cfg, tmp_path) as make, one_room(tmp_path, site_broker.port, site) as (room, clinic):
        a = await make("collector-a").astart()
        b = await make("collector-b").astart()
        sid, acks = await started(clinic, room)
        a.kill()  # whatever the broker had in flight to it waits for a session that never returns
        await finished(clinic, sid, acks)
        await until_db(database, stored(database, clinic, sid), what="every event through collector-b")
        assert_same_events(database, clinic, sid, filled_ok=True)
        s = query(database, "SELECT events, last_index, incomplete, state FROM sessions WHERE session = %s", sid)[0]
        assert s["events"] == s["last_index"] and s["state"] == "completed"
        await until_db(database, lambda q: not q("SELECT incomplete FROM sessions WHERE session = %s",
                                                 sid)[0]["incomplete"], what="the session marked complete")
        assert b.proc.poll() is None


async def test_postgres_stopped_mid_session(site_broker, database, postgres, tmp_path: Path) -> None:
    """The collector retries until the database is back and catches up; and it acknowledged
    nothing meanwhile: killed while the database is away, its successor gets every message
    from the broker (no `events` fill here)."""
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            gap_fill_after_s=600)
    async with collectors(cfg, tmp_path) as make, one_room(tmp_path, site_broker.port, site) as (room, clinic):
        collector = await make("collector-a").astart()
        # 1. down and up again under the same collector
        sid, acks = await started(clinic, room)
        await asyncio.to_thread(postgres.stop)
        n_down = len(wire_events(clinic, sid))
        await clinic.wait_for(lambda m: m.topic.endswith("/events") and m.body["data"]["index"] > n_down + 5,
                              what="events while the database is away")
        await asyncio.to_thread(postgres.start)
        await finished(clinic, sid, acks)
        await until_db(database, stored(database, clinic, sid), what="caught up after the restart")
        assert_same_events(database, clinic, sid)

        # 2. down for a whole session, the collector killed before it comes back
        sid2, acks2 = await started(clinic, room)
        await asyncio.to_thread(postgres.stop)
        await finished(clinic, sid2, acks2)
        collector.kill()
        await asyncio.to_thread(postgres.start)
        await make("collector-a").astart()
        await until_db(database, stored(database, clinic, sid2), what="every event of the second session")
        rows = assert_same_events(database, clinic, sid2)
        assert all(r["source"] == "mqtt" for r in rows)


async def test_withheld_messages_filled_through_events(site_broker, database, tmp_path: Path) -> None:
    """A member of the group that takes its share and stores nothing (a rogue or broken
    consumer): the collector sees seq gaps and fills the session's events from the hub."""
    site = new_site()
    group = f"g{uuid.uuid4().hex[:8]}"
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            group=group)
    async with collectors(cfg, tmp_path) as make, one_room(tmp_path, site_broker.port, site) as (room, clinic):
        await make("collector-a").astart()
        async with withholder(site_broker.port, group, site) as withheld:
            sid, acks = await started(clinic, room)
            await finished(clinic, sid, acks)
        assert any(w["session"] == sid for w in withheld), "the rogue member took nothing: no gap was made"
        await until_db(database, stored(database, clinic, sid), what="the withheld events filled")
        rows = assert_same_events(database, clinic, sid, filled_ok=True)
        filled = {r["idx"] for r in rows if r["source"] == "events"}
        assert {w["data"]["index"] for w in withheld if w["session"] == sid} <= filled
        await until_db(database, lambda q: not q("SELECT count(*) AS n FROM gaps WHERE site = %s AND closed_at IS NULL",
                                                 site)[0]["n"], what="every gap closed")
        await until_db(database, lambda q: q("SELECT incomplete FROM sessions WHERE session = %s",
                                             sid)[0]["incomplete"] is False, what="the session not incomplete")
