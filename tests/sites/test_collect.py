"""The collector over real parts: two hubs (two simulated rooms), a private Mosquitto, a
private PostgreSQL, ``devicehub collect`` as a process; what a subscriber of the site's
topics saw is what the database holds, each event once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from tests.hub.conftest import (Clinic, ack_prompts, acli, auto_trigger, console, hub_in, new_site, root_of,
                                run_to_awaiting, simulated_room)
from tests.sites.conftest import assert_same_events, collectors, query, until_db, wire_events, write_site_config

pytestmark = pytest.mark.timeout(240)


async def run_session(clinic: Clinic, room, *, until: str = "completed", **start) -> str:
    """A demo session started over MQTT, confirmed and prompted at the chair, run to its end."""
    sid = await run_to_awaiting(clinic, **start)
    acks = asyncio.create_task(ack_prompts(clinic, room, sid))
    try:
        assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
        await clinic.wait_event(sid, until, timeout=120)
        await clinic.wait_state("completed", session=sid)
    finally:
        acks.cancel()
    return sid


def all_stored(url: str, clinic: Clinic, sid: str):
    n = len(wire_events(clinic, sid))

    def cond(q) -> bool:
        rows = q("SELECT events, last_index, state FROM sessions WHERE session = %s", sid)
        return bool(rows) and rows[0]["events"] == n == rows[0]["last_index"] and rows[0]["state"] == "completed"

    return cond


async def test_two_hubs_every_event_once(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site,
                            gap_fill_after_s=600)  # nothing may need filling here
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(simulated_room(tmp_path / "room-1", site_broker.port, site=site, room="room-1",
                                                       own_process=True))
        two = stack.enter_context(simulated_room(tmp_path / "room-2", site_broker.port, site=site, room="room-2",
                                                       own_process=True))
        async with collectors(cfg, tmp_path) as make:
            await make("collector-a").astart()
            async with hub_in(one) as hub1, hub_in(two) as hub2, \
                    Clinic(site_broker.port, root_of(site, "room-1")) as c1, \
                    Clinic(site_broker.port, root_of(site, "room-2")) as c2:
                await hub1.astart()
                await hub2.astart()
                await auto_trigger(one, 20)
                await auto_trigger(two, 20)
                # room-1's patient is in a course (room-1 holds it): the session's place in it is kept
                enrolled = await c1.request("enrol", {"patient_ref": "P-COURSE-1", "course": "demo-course",
                                                      "by": "dr-a"})
                assert enrolled["ok"], enrolled
                sid1, sid2 = await asyncio.gather(run_session(c1, one, patient_ref="P-COURSE-1"),
                                                  run_session(c2, two))

                await until_db(database, all_stored(database, c1, sid1), what="room-1's events")
                await until_db(database, all_stored(database, c2, sid2), what="room-2's events")
                assert_same_events(database, c1, sid1)
                assert_same_events(database, c2, sid2)
                # every QoS 1 message of each room once, with its seq
                for clinic, room_id in ((c1, "room-1"), (c2, "room-2")):
                    seen = {m.body["msg_id"]: m.body for m in clinic.messages
                            if isinstance(m.body, dict) and "seq" in m.body and m.body.get("type") != "reply"}
                    await until_db(database, lambda q: q(
                        "SELECT count(*) AS n FROM messages WHERE site = %s AND room = %s AND msg_id = ANY(%s)",
                        site, room_id, list(seen))[0]["n"] == len(seen), what=f"{room_id}'s messages")
                    dupes = query(database, "SELECT boot, seq, count(*) FROM messages WHERE site = %s AND room = %s"
                                            " GROUP BY boot, seq HAVING count(*) > 1", site, room_id)
                    assert dupes == []

                # the readers
                out = await acli("site", "sessions", "--config", str(cfg), "--json")
                assert out.returncode == 0, out.stderr
                listed = {s["session"]: s for s in json.loads(out.stdout)}
                assert set(listed) == {sid1, sid2}
                for sid, clinic, room_id in ((sid1, c1, "room-1"), (sid2, c2, "room-2")):
                    s = listed[sid]
                    created = next(e["data"] for e in wire_events(clinic, sid).values() if e["data"]["event"] == "created")
                    assert (s["site"], s["room"], s["program"], s["patient_ref"], s["operator"], s["state"]) == \
                        (site, room_id, "demo", created["patient_ref"], "dr-a", "completed")
                    assert s["events"] == len(wire_events(clinic, sid)) and s["complete"] is True
                    assert s["created"] and s["ended"]
                one_room = json.loads((await acli("site", "sessions", "--room", "room-2", "--config", str(cfg),
                                                  "--json")).stdout)
                assert [s["session"] for s in one_room] == [sid2]
                patient = json.loads((await acli("site", "patient", listed[sid1]["patient_ref"], "--config",
                                                 str(cfg), "--json")).stdout)
                assert [s["session"] for s in patient["sessions"]] == [sid1]
                assert patient["sessions"][0]["adverse_events"] == []

                # a follow-up after the end: the hub's adverse event reaches the patient's view
                ae = await c1.request("adverse_event", {"session": sid1, "kind": "redness", "severity": "mild",
                                                        "by": "dr-b", "note": "next visit"})
                assert ae["ok"] and ae["data"]["action"] == "recorded", ae
                await until_db(database, lambda q: q("SELECT count(*) AS n FROM adverse_events WHERE session = %s",
                                                     sid1)[0]["n"] == 1, what="the adverse event stored")
                patient = json.loads((await acli("site", "patient", listed[sid1]["patient_ref"], "--config",
                                                 str(cfg), "--json")).stdout)
                created1 = next(e["data"] for e in wire_events(c1, sid1).values() if e["data"]["event"] == "created")
                assert created1["course"] and patient["sessions"][0]["course"] == created1["course"]
                assert patient["sessions"][0]["course"]["course"] == "demo-course"
                assert [(a["index"], a["kind"], a["severity"], a["by"], a["note"])
                        for a in patient["sessions"][0]["adverse_events"]] == \
                    [(ae["data"]["index"], "redness", "mild", "dr-b", "next visit")]
                assert patient["sessions"][0]["complete"] is True

                rooms = json.loads((await acli("site", "rooms", "--config", str(cfg), "--json")).stdout)
                assert [(r["site"], r["room"], r["status"]) for r in rooms] == \
                    [(site, "room-1", "online"), (site, "room-2", "online")]
                assert all(r["active_session"] is None for r in rooms)
                table = await acli("site", "sessions", "--config", str(cfg))
                assert table.returncode == 0 and sid1[:8] in table.stdout

            # the hubs stopped cleanly: their rooms are offline
            await until_db(database, lambda q: {r["status"] for r in q(
                "SELECT status FROM rooms WHERE site = %s", site)} == {"offline"}, what="rooms offline")
