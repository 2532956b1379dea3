"""What ``devicehub site`` reads, from messages built with the hub's own envelope code:
a patient's sessions in two rooms with course positions and adverse events (an adverse
event after the end included), alarms raised and cleared, a room's birth and its will."""

from __future__ import annotations

import json
from pathlib import Path

import aiomqtt
import pytest

from devicehub.mqtt.envelope import EnvelopeFactory, new_ulid
from tests.hub.conftest import acli, new_site
from tests.sites.conftest import collectors, until_db, write_site_config

pytestmark = pytest.mark.timeout(120)


class FakeHub:
    """Publishes what a hub publishes, with its envelope factory (seq per boot)."""

    def __init__(self, client: aiomqtt.Client, site: str, room: str, boot: int = 1) -> None:
        self.c = client
        self.env = EnvelopeFactory(site, room, boot)
        self.root = f"devicehub/v1/{site}/{room}"
        self.index: dict[str, int] = {}

    async def send(self, suffix: str, type_: str, data, *, session: str | None = None, seq: bool = True,
                   retain: bool = False) -> None:
        payload = self.env.encode(type_, data, seq=self.env.next_seq() if seq else None, session=session)
        await self.c.publish(f"{self.root}/{suffix}", payload, qos=1, retain=retain)

    async def event(self, sid: str, name: str, **data) -> None:
        self.index[sid] = self.index.get(sid, 0) + 1
        await self.send(f"sessions/{sid}/events", "session.event", {"event": name, "index": self.index[sid], **data},
                        session=sid)

    async def state(self, sid: str, state: str) -> None:
        await self.send("session", "session.state", {"session": sid, "state": state}, session=sid, retain=True)


async def test_patient_alarms_and_rooms(site_broker, database, tmp_path: Path) -> None:
    site = new_site()
    cfg = write_site_config(tmp_path / "site.yaml", database=database, port=site_broker.port, site=site)
    alarm = {"id": "a1", "priority": "high", "source": "inj-1", "code": "occlusion", "text": "INJ-1 occlusion",
             "since": "2026-12-01T10:00:00.000000Z", "latched": True}
    s1, s2 = new_ulid(), new_ulid()
    async with collectors(cfg, tmp_path) as make:
        await make("collector-a").astart()
        async with aiomqtt.Client("127.0.0.1", site_broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            one, two = FakeHub(c, site, "room-1"), FakeHub(c, site, "room-2")
            await one.send("status", "status", {"state": "online", "boot": 1}, retain=True)
            await two.send("status", "status", {"state": "online", "boot": 1}, retain=True)
            for hub, sid, number in ((one, s1, 1), (two, s2, 2)):
                await hub.event(sid, "created", program="aga-initial", version="1", sha256="0" * 64,
                                patient_ref="P-0042", operator="dr-a", origin="mqtt", params={}, acknowledged=[],
                                course={"course": "aga", "phase": "initial", "number": number})
                await hub.state(sid, "running")
                await hub.event(sid, "point_done", step="inject", zone="crown", point=1, device="inj-1",
                                delivered={"uL": 50.0})
            await one.event(s1, "alarm", **{**alarm, "session": s1})
            await one.send("alarms", "alarms", [{**alarm, "session": s1}], session=s1, retain=True)
            await one.event(s1, "completed", reason=None, totals={"inj-1": {"uL": 50.0}})
            await one.state(s1, "completed")
            await one.send("alarms", "alarms", [], retain=True)
            # a follow-up at the next visit: an adverse event after the end
            await one.event(s1, "adverse_event", kind="redness", severity="mild", score=None, onset=None,
                            note="at the next visit", by="dr-b", action="recorded")
            await two.event(s2, "adverse_event", kind="pain", severity="moderate", score=4, onset=None, note=None,
                            by="nurse", action="recorded")
            # room-2's hub dies: its will (no seq, the boot it belongs to)
            await c.publish(f"{two.root}/status", json.dumps(two.env.will()), qos=1, retain=True)

        await until_db(database, lambda q: q("SELECT count(*) AS n FROM session_events")[0]["n"] == 8
                       and q("SELECT status FROM rooms WHERE room = 'room-2'")[0]["status"] == "offline",
                       what="every message stored")

    patient = json.loads((await acli("site", "patient", "P-0042", "--config", str(cfg), "--json")).stdout)
    assert [(s["session"], s["room"], s["course"]["number"]) for s in patient["sessions"]] == \
        [(s1, "room-1", 1), (s2, "room-2", 2)]
    assert [(a["kind"], a["severity"], a["by"]) for a in patient["sessions"][0]["adverse_events"]] == \
        [("redness", "mild", "dr-b")]
    assert patient["sessions"][1]["adverse_events"][0]["score"] == 4
    assert patient["sessions"][0]["state"] == "completed" and patient["sessions"][0]["complete"] is True

    alarms = json.loads((await acli("site", "alarms", "--config", str(cfg), "--json")).stdout)
    assert [(a["id"], a["session"], a["cleared"] is not None) for a in alarms] == [("a1", s1, True)]
    active = json.loads((await acli("site", "alarms", "--active", "--config", str(cfg), "--json")).stdout)
    assert active == []

    rooms = {r["room"]: r for r in json.loads((await acli("site", "rooms", "--config", str(cfg), "--json")).stdout)}
    assert rooms["room-1"]["status"] == "online" and rooms["room-1"]["active_session"] is None
    assert rooms["room-2"]["status"] == "offline" and rooms["room-2"]["active_session"] == s2
    assert rooms["room-1"]["active_alarms"] == []
    table = await acli("site", "patient", "P-0042", "--config", str(cfg))
    assert table.returncode == 0 and "P-0042" in table.stdout
