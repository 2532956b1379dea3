"""Completeness is said, never assumed: a session whose missing events the hub cannot
give (it is down) is marked incomplete, and complete again once the hub answers; bad
input on the site's topics is stored nowhere and stops nothing; the schema's migrations."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from devicehub.site.schema import MIGRATIONS, MigrationError, migrate, migrations
from devicehub.mqtt.envelope import new_ulid
from tests.hub.conftest import (Clinic, acli, auto_trigger, console, hub_in, new_site, root_of, run_to_awaiting,
                                simulated_room)
from tests.sites.conftest import collectors, query, until_db, withholder, write_site_config

pytestmark = pytest.mark.timeout(240)


async def test_unanswered_gap_marks_the_session_incomplete(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    group = f"g{uuid.uuid4().hex[:8]}"
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            group=group, events_timeout_s=1.0)
    with simulated_room(tmp_path / "room-1", site_broker.port, site=site, room="room-1",
                        own_process=True) as room:
        async with collectors(cfg, tmp_path) as make, hub_in(room) as hub, \
                Clinic(site_broker.port, root_of(site, "room-1")) as clinic:
            await make("collector-a").astart()
            async with withholder(site_broker.port, group, site) as withheld:
                await hub.astart()
                await auto_trigger(room, 20)
                sid = await run_to_awaiting(clinic)
                assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
                await clinic.wait_event(sid, "point_done")

                def hole_below_stored(q) -> bool:
                    mine = {w["data"]["index"] for w in withheld if w["session"] == sid}
                    top = q("SELECT max(idx) AS m FROM session_events WHERE session = %s", sid)[0]["m"] or 0
                    return any(i < top for i in mine)

                await until_db(database, hole_below_stored, what="an event withheld below a stored one")
                hub.kill()  # the hub cannot answer `events` now
            await until_db(database, lambda q: q("SELECT incomplete FROM sessions WHERE session = %s",
                                                 sid)[0]["incomplete"], what="the session marked incomplete")
            listed = {s["session"]: s for s in json.loads(
                (await acli("site", "sessions", "--config", str(cfg), "--json")).stdout)}
            assert listed[sid]["complete"] is False

            await hub.astart()  # back: the interrupted session is marked failed, and `events` answers
            await until_db(database, lambda q: q(
                "SELECT events = last_index AND NOT incomplete AND state = 'failed' AS ok FROM sessions"
                " WHERE session = %s", sid)[0]["ok"], what="the session complete again")
            have = [r["idx"] for r in query(database, "SELECT idx FROM session_events WHERE session = %s"
                                                      " ORDER BY idx", sid)]
            assert have == list(range(1, len(have) + 1))
            listed = {s["session"]: s for s in json.loads(
                (await acli("site", "sessions", "--config", str(cfg), "--json")).stdout)}
            assert listed[sid]["complete"] is True and listed[sid]["events"] == len(have)


async def test_bad_input_is_stored_nowhere_and_stops_nothing(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site)
    root = root_of(site, "room-9")
    good = {"v": 1, "type": "status", "site": site, "room": "room-9", "boot": 3, "seq": 1,
            "msg_id": "01M90000000000000000000001", "ts": "2026-12-01T10:00:00.000000Z", "historical": False,
            "data": {"state": "online"}}
    async with collectors(cfg, tmp_path) as make:
        collector = await make("collector-a").astart()
        async with aiomqtt.Client("127.0.0.1", site_broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            for payload in (b"not json", b"[1,2]", json.dumps({**good, "room": "room-1"}),  # room differs from topic
                            json.dumps({**good, "ts": "yesterday"}), json.dumps({**good, "seq": "7"}),
                            json.dumps({**good, "type": "session.event", "data": {"event": "x"}}),
                            json.dumps(good)):
                await c.publish(f"{root}/status", payload, qos=1)
        await until_db(database, lambda q: q("SELECT status FROM rooms WHERE site = %s AND room = 'room-9'", site)
                       == [{"status": "online"}], what="the good message stored")
        assert [r["msg_id"] for r in query(database, "SELECT msg_id FROM messages WHERE site = %s", site)] == \
            [good["msg_id"]]
        assert collector.proc.poll() is None


def test_migrations_are_applied_once_and_never_edited(database, tmp_path: Path) -> None:
    with psycopg.connect(database) as conn:
        assert migrate(conn) == len(migrations()) == 2
        assert migrate(conn) == 2  # again: nothing to do
        assert conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall() == \
            [(1, "0001_initial.sql"), (2, "0002_boots_holes_upto.sql")]
        edited = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS, edited)
        (edited / "0001_initial.sql").write_text((edited / "0001_initial.sql").read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="never edited"):
            migrate(conn, edited)
        (edited / "0001_initial.sql").unlink()
        with pytest.raises(MigrationError):
            migrate(conn, edited)  # no file 1: the numbering has a gap

    # a database made by version 1 alone is brought to version 2
    only_first = tmp_path / "v1"
    only_first.mkdir()
    shutil.copy(MIGRATIONS / "0001_initial.sql", only_first)
    with psycopg.connect(database, autocommit=True) as c:
        c.execute("CREATE DATABASE v1_upgrade")
    url = database.rsplit("/", 1)[0] + "/v1_upgrade"
    with psycopg.connect(url) as conn:
        assert migrate(conn, only_first) == 1
        assert migrate(conn) == 2
        assert conn.execute("SELECT holes_upto FROM boots").fetchall() == []


async def test_collector_waits_for_a_database_that_is_not_there_yet(site_broker, database, postgres,
                                                                     tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site)
    async with collectors(cfg, tmp_path) as make:
        await asyncio.to_thread(postgres.stop)
        try:
            starting = asyncio.create_task(make("collector-a").astart())  # ready once the schema is there
            log = tmp_path / "collector-collector-a.log"
            while "database not reachable" not in (log.read_text() if log.exists() else ""):
                await asyncio.sleep(0.05)  # poll the log for the collector's retry
            assert not starting.done()
        finally:
            await asyncio.to_thread(postgres.start)
        collector = await starting
        env = {"v": 1, "type": "status", "site": site, "room": "room-1", "boot": 1, "seq": 1, "msg_id": new_ulid(),
               "ts": "2026-12-01T10:00:00.000000Z", "historical": False, "data": {"state": "online"}}
        async with aiomqtt.Client("127.0.0.1", site_broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(f"{root_of(site, 'room-1')}/status", json.dumps(env), qos=1)
        await until_db(database, lambda q: q("SELECT status FROM rooms WHERE site = %s", site)
                       == [{"status": "online"}], what="stored once the database came")
        assert collector.proc.poll() is None
