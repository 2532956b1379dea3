"""The ``events`` verb (shared/mqtt-api.md): a session's recorded events, each the ``data``
of its ``session.event`` message plus that message's ``ts``, ``boot`` and ``seq``.

Judged against what a clinic following ``<root>/#`` saw on the wire, on a real hub over
a real Mosquitto, across a hub restart (the ledger is on disk, not in memory).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.hub.conftest import Clinic, Setup, ack_prompts, auto_trigger, console, run_to_awaiting

pytestmark = pytest.mark.timeout(150)


def as_published(clinic: Clinic, sid: str) -> list[dict]:
    """Each event message the clinic saw: its data plus ts, boot and seq of the envelope."""
    seen: dict[str, dict] = {}
    for e in clinic.events(sid):
        seen.setdefault(e["msg_id"], {**e["data"], "ts": e["ts"], "boot": e["boot"], "seq": e["seq"]})
    return sorted(seen.values(), key=lambda d: d["index"])


async def page_all(clinic: Clinic, sid: str, limit: int) -> list[dict]:
    out: list[dict] = []
    after = 0
    while True:
        r = await clinic.request("events", {"session": sid, "after": after, "limit": limit})
        assert r["ok"], r
        assert r["data"]["session"] == sid
        out += r["data"]["events"]
        if not r["data"]["more"]:
            return out
        assert len(r["data"]["events"]) == limit
        after = r["data"]["events"][-1]["index"]


async def test_events_match_the_wire_and_survive_a_restart(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 20)
        sid = await run_to_awaiting(clinic)
        acks = asyncio.create_task(ack_prompts(clinic, room, sid))
        try:
            assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
            await clinic.wait_event(sid, "completed", timeout=90)
            await clinic.wait_state("completed", session=sid)
        finally:
            acks.cancel()
        wire = as_published(clinic, sid)
        assert [e["index"] for e in wire] == list(range(1, len(wire) + 1))

        # one page, and pages of 7: the same events, the same envelope figures
        whole = await clinic.request("events", {"session": sid})
        assert whole["ok"] and whole["data"]["more"] is False
        assert whole["data"]["events"] == wire
        assert await page_all(clinic, sid, 7) == wire
        # after the last index: nothing; part way: the rest
        last = wire[-1]["index"]
        tail = await clinic.request("events", {"session": sid, "after": last})
        assert tail["data"] == {"session": sid, "events": [], "more": False}
        mid = await clinic.request("events", {"session": sid, "after": 3, "limit": 2})
        assert mid["data"]["events"] == wire[3:5] and mid["data"]["more"] is True

        # refusals: limit outside 1-1000, a negative after, an unknown session
        for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": "5"}):
            r = await clinic.request("events", {"session": sid, **bad})
            assert not r["ok"] and r["error"]["code"] == "bad_request", r
            assert r["error"]["field"] == next(iter(bad)), r
        r = await clinic.request("events", {"session": "01NOSUCHSESSION0000000000"})
        assert not r["ok"] and r["error"]["code"] == "not_found" and r["error"]["field"] == "session"

        # a new boot of the hub still answers with the boot and seq the events went out with
        first_boot = hub.boot
        assert await asyncio.to_thread(hub.terminate) == 0
        await hub.astart()
        assert hub.boot == first_boot + 1
        again = await clinic.request("events", {"session": sid})
        assert again["data"]["events"] == wire
        assert {e["boot"] for e in again["data"]["events"]} == {first_boot}
