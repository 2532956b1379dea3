"""Adverse events over MQTT, the console socket and the CLI, against ``devicehub serve``
on a real Mosquitto and the four simulators (shared/mqtt-api.md, "Adverse events and the
course"). What is judged is what a clinic sees (replies, events, retained states) and
what the simulators themselves say (outputs)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiomqtt
import pytest

from tests.hub.conftest import (
    DEVICES,
    Clinic,
    Setup,
    acli,
    auto_trigger,
    console,
    hub_in,
    outputs_on,
    running_with_output,
    simulated_room,
    start_body,
    wait_all_off,
)

pytestmark = pytest.mark.timeout(150)


def names(clinic: Clinic, sid: str) -> list[str]:
    return [e["data"]["event"] for e in clinic.events(sid)]


async def test_severe_event_makes_the_room_safe_then_records_in_order(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 10)
        sid = await running_with_output(setup, clinic)

        # a mild event is only recorded: the session goes on delivering
        mild = await clinic.request("adverse_event", {"session": sid, "kind": "redness", "severity": "mild",
                                                      "by": "nurse"})
        assert mild["ok"] and mild["data"]["action"] == "recorded" and mild["data"]["session"] == sid, mild
        ev = await clinic.wait_event(sid, "adverse_event")
        assert ev["data"] == {"event": "adverse_event", "index": mild["data"]["index"], "kind": "redness",
                              "severity": "mild", "score": None, "onset": None, "note": None, "by": "nurse",
                              "action": "recorded"}
        assert "paused" not in names(clinic, sid)

        # a severe one: every output off, then adverse_event, safe_state, paused
        start = len(clinic.messages)
        onset = (datetime.now(timezone.utc) - timedelta(minutes=2)).isoformat()
        severe = await clinic.request("adverse_event", {"session": sid, "kind": "pain", "severity": "severe",
                                                        "score": 8, "onset": onset, "note": "sharp, vertex",
                                                        "by": "nurse"})
        assert severe["ok"] and severe["data"]["action"] == "safe_state", (severe.get("error"), severe.get("data"))
        assert not any((await outputs_on(room)).values())  # off when the reply came
        await clinic.wait_event(sid, "paused", start=start)
        # in this order (the settlement of the point in progress, delivery_settled, may stand between)
        after = [e["data"] for e in clinic.events(sid) if e["data"]["index"] >= severe["data"]["index"]
                 and e["data"]["event"] in ("adverse_event", "safe_state", "paused")]
        assert [e["event"] for e in after[:3]] == ["adverse_event", "safe_state", "paused"], after
        assert after[0]["score"] == 8 and after[0]["onset"] == onset and after[0]["action"] == "safe_state"
        assert after[1]["trigger"] == "adverse_event" and all(after[1]["devices"][d] == "off" for d in DEVICES)
        assert after[2]["reason"] == "adverse_event"
        state = await clinic.wait_state("paused", session=sid, start=start)
        assert state["data"]["state"] == "paused"

        # the same request id again: the first reply, nothing recorded
        body = {"request_id": "adv-1", "session": sid, "kind": "swelling", "severity": "moderate", "by": "nurse"}
        first = await clinic.request("adverse_event", body)
        await clinic.wait_for(lambda m: m.topic.endswith(f"{sid}/events") and m.body["data"].get("kind") == "swelling",
                              what="the swelling event")
        count = len(clinic.events(sid))
        again = await clinic.request("adverse_event", body)
        assert again["data"] == first["data"] and again["ok"] is True
        await clinic.request("status")  # a round trip: any event of the repeat would have come before
        assert len(clinic.events(sid)) == count

        # a confirmation at the chair before any output, even for a resume at the console
        r = await console(room, "resume", session=sid, by="tech")
        assert r["ok"] and r["data"]["state"] == "awaiting_confirmation", r
        assert not any((await outputs_on(room)).values())
        r = await console(room, "abort", session=sid, reason="adverse event")
        assert r["ok"], r
        await clinic.wait_state("aborted", session=sid)

        # after the end: recorded with the next index, after the terminal event; the retained
        # session state is not published again for it
        before = len(clinic.messages)
        late = await clinic.request("adverse_event", {"session": sid, "kind": "itching", "severity": "severe",
                                                      "by": "dr-a", "note": "at follow-up"})
        assert late["ok"] and late["data"]["action"] == "recorded", late
        ev = await clinic.wait_event(sid, "adverse_event", start=before)
        terminal = next(e for e in clinic.events(sid) if e["data"]["event"] == "aborted")
        assert ev["data"]["index"] == late["data"]["index"] > terminal["data"]["index"]
        assert ev["data"]["index"] == max(e["data"]["index"] for e in clinic.events(sid))
        await clinic.request("status")
        assert not [m for m in clinic.messages[before:] if m.topic == f"{setup.root}/session"]

        bad = await clinic.request("adverse_event", {"session": "NOPE", "kind": "pain", "severity": "mild",
                                                     "by": "x"})
        assert bad["ok"] is False and bad["error"]["code"] == "not_found", bad
        bad = await clinic.request("adverse_event", {"session": sid, "kind": "redness", "severity": "mild",
                                                     "score": 3, "by": "x"})
        assert bad["ok"] is False and bad["error"]["code"] == "bad_request" and bad["error"]["field"] == "score"
        future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
        bad = await clinic.request("adverse_event", {"session": sid, "kind": "pain", "severity": "mild",
                                                     "onset": future, "by": "x"})
        assert bad["ok"] is False and bad["error"]["field"] == "onset", bad

        # the record: still verifies; the report lists the events
        r = await acli("sessions", "verify", sid, "--config", setup.config)
        assert r.returncode == 0, r.stdout
        r = await acli("sessions", "show", sid, "--json", "--config", setup.config)
        recorded = [e for e in json.loads(r.stdout)["events"] if e["event"] == "adverse_event"]
        assert [e["data"]["kind"] for e in recorded] == ["redness", "pain", "swelling", "itching"]
        r = await acli("sessions", "report", sid, "--config", setup.config)
        assert r.returncode == 0 and "at follow-up" in r.stdout and "sharp, vertex" in r.stdout


async def test_allergic_reaction_before_the_run_needs_the_chair_whatever_the_config(broker, tmp_path: Path) -> None:
    with simulated_room(tmp_path / "room", broker.port, remote_confirmation=False) as room:
        async with hub_in(room) as hub:
            root = f"devicehub/v1/{room.site}/{room.room}"
            async with Clinic(broker.port, root, protocol=aiomqtt.ProtocolVersion.V311) as clinic:
                await hub.astart()
                reply = await clinic.request("start", start_body())
                assert reply["ok"] and reply["data"]["state"] == "preflight" and reply["data"]["course"] is None
                sid = reply["data"]["session"]
                # late and with a reply path outside the root: it acts all the same, and no reply comes
                past = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
                payload = {"request_id": f"r-{uuid.uuid4().hex}", "session": sid, "kind": "allergic_reaction",
                           "severity": "moderate", "by": "nurse", "expires_at": past,
                           "reply_to": "elsewhere/replies", "correlation_id": "c"}
                await clinic.publish(f"{root}/cmd/adverse_event", json.dumps(payload).encode())
                safe = await clinic.wait_event(sid, "safe_state")
                assert safe["data"]["trigger"] == "adverse_event"
                assert names(clinic, sid)[-2:] == ["adverse_event", "safe_state"]
                assert not [m for m in clinic.messages if m.topic.startswith("elsewhere")]
                # late with a good reply path: acted on, and the reply says it was late
                payload2 = {"session": sid, "kind": "pain", "severity": "severe", "by": "nurse", "expires_at": past}
                r = await clinic.request("adverse_event", payload2)
                assert r["ok"] is False and r["error"]["code"] == "expired" and r["data"]["action"] == "safe_state"
                # a mild one that is late is refused and records nothing
                r = await clinic.request("adverse_event", {"session": sid, "kind": "redness", "severity": "mild",
                                                           "by": "nurse", "expires_at": past})
                assert r["ok"] is False and r["error"]["code"] == "expired" and "data" not in r or r.get("data") is None
                for item in ("consent", "scalp_cleansed"):
                    r = await clinic.request("preflight", {"session": sid, "item": item, "done": True, "by": "n"})
                # this room starts without confirmation, but not after an allergic reaction
                assert r["data"]["state"] == "awaiting_confirmation", r
                assert not any((await outputs_on(room)).values())
                await clinic.request("abort", {"session": sid})


async def test_cli_records_through_the_daemon_or_straight_into_the_store(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        reply = await clinic.request("start", start_body())
        sid = reply["data"]["session"]
        await clinic.request("abort", {"session": sid})
        await clinic.wait_event(sid, "aborted")
        r = await acli("sessions", "adverse", sid, "--kind", "bruising", "--severity", "mild", "--by", "dr-a",
                       "--config", setup.config)
        assert r.returncode == 0, r.stderr
        ev = await clinic.wait_event(sid, "adverse_event")  # published: the daemon recorded it
        assert ev["data"]["kind"] == "bruising" and ev["data"]["by"] == "dr-a"
    await asyncio.to_thread(hub.terminate)
    # the daemon wrote the session's report when it ended, and again with the event recorded after
    report = room.directory / "reports" / f"{sid}.html"
    assert "bruising" in report.read_text(encoding="utf-8")
    r = await acli("sessions", "adverse", sid, "--kind", "pain", "--severity", "moderate", "--score", "4",
                   "--note", "next day", "--by", "dr-a", "--config", setup.config)
    assert r.returncode == 0 and "recorded" in r.stdout, (r.stdout, r.stderr)
    r = await acli("sessions", "show", sid, "--json", "--config", setup.config)
    last = json.loads(r.stdout)["events"][-1]
    assert last["event"] == "adverse_event" and last["data"]["score"] == 4 and last["data"]["note"] == "next day"
    r = await acli("sessions", "verify", sid, "--config", setup.config)
    assert r.returncode == 0
    r = await acli("sessions", "adverse", sid, "--kind", "pain", "--severity", "mild", "--score", "11",
                   "--by", "dr-a", "--config", setup.config)
    assert r.returncode == 2 and "score" in r.stderr
