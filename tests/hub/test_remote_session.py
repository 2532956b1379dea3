"""A session started and followed from afar, confirmed at the chair (shared/mqtt-api.md).

The hub runs as ``devicehub serve`` over a real Mosquitto and the four simulators; the
clinic is an aiomqtt client. What is asserted is what a clinic and a technician see:
replies, retained states, events, the simulators' own outputs and totals.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.hub.conftest import (
    DEVICES,
    ROOT,
    Clinic,
    Setup,
    acli,
    assert_safe_state_ms,
    auto_trigger,
    outputs_on,
    running_with_output,
    sim_states,
    start_body,
    timed_request,
    wait_all_off,
)

pytestmark = pytest.mark.timeout(120)

PROGRAM_KEYS = {"program", "version", "title", "sha256", "steps", "est_duration_s", "preflight", "soft_limits"}


def seq_check(clinic: Clinic, boot: int) -> list[int]:
    """Every QoS 1 message of ``boot`` the clinic saw: seq from 1 without gap or repeat (after msg_id dedup)."""
    seen: dict[str, dict[str, Any]] = {}
    for m in clinic.messages:
        b = m.body
        if not isinstance(b, dict) or b.get("boot") != boot or b.get("type") in ("reply", "device.telemetry"):
            continue
        if "seq" not in b:  # only the will has no seq
            assert b["type"] == "status" and b["data"]["state"] == "offline", b
            continue
        seen.setdefault(b["msg_id"], b)
    seqs = sorted(b["seq"] for b in seen.values())
    assert seqs == list(range(1, len(seqs) + 1)), f"seq gaps or repeats in boot {boot}: {seqs}"
    return seqs


def index_check(events: list[dict[str, Any]]) -> None:
    """One session's events: data.index 1..N in arrival order, seq rising with it."""
    assert [e["data"]["index"] for e in events] == list(range(1, len(events) + 1))
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_remote_session_end_to_end(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        birth = await clinic.wait_for(lambda m: m.topic.endswith("/status") and m.body["data"]["state"] == "online",
                                      what="the birth")
        assert birth.body["boot"] == hub.boot and birth.body["data"]["boot"] == hub.boot
        assert {"version", "since"} <= set(birth.body["data"])
        await auto_trigger(room, 20)

        # ---- programs and status, as the document gives them
        programs = await clinic.request("programs")
        assert programs["ok"] and "seq" not in programs and "tseq" not in programs
        demo = next(p for p in programs["data"] if p["program"] == "demo")
        assert set(demo) >= PROGRAM_KEYS
        assert demo["sha256"] == hashlib.sha256((ROOT / "configs/programs/demo.yaml").read_bytes()).hexdigest()
        assert demo["steps"] == 5 and demo["preflight"] == ["consent", "scalp_cleansed"]
        assert isinstance(demo["soft_limits"], list) and demo["est_duration_s"] > 0
        program = await clinic.request("program", {"program": "demo"})
        assert program["ok"], program
        assert [s["id"] for s in program["data"]["steps"]] == ["inject", "apply-serum", "ep", "light", "field"]

        status = await clinic.request("status")
        assert status["ok"], status
        data = status["data"]
        assert data["hub"]["boot"] == hub.boot and {"version", "since"} <= set(data["hub"])
        assert data["hub"]["since"] == birth.body["data"]["since"]  # one start time, said the same way
        assert sorted(d["id"] for d in data["devices"]) == sorted(DEVICES)
        for d in data["devices"]:
            assert set(d) >= {"id", "type", "connected", "state", "fault"} and d["connected"] is True
        assert data["session"] is None and data["alarms"] == []

        # ---- start from afar: preflight, then awaiting the chair
        body = start_body()
        start = await clinic.request("start", body)
        assert start["ok"], start
        sid = start["data"]["session"]
        assert start["data"] == {"session": sid, "state": "preflight", "course": None}
        r = await clinic.request("preflight", {"session": sid, "item": "consent", "done": True, "by": "nurse"})
        assert r["data"] == {"session": sid, "state": "preflight", "pending_items": ["scalp_cleansed"]}
        r = await clinic.request("preflight", {"session": sid, "item": "scalp_cleansed", "done": True, "by": "nurse"})
        assert r["data"] == {"session": sid, "state": "awaiting_confirmation", "pending_items": []}
        await clinic.wait_state("awaiting_confirmation", session=sid)

        # nothing energised before the chair confirms
        states = await sim_states(room)
        assert not any(s["output_on"] for s in states.values()), states
        assert states["inj-1"]["shots"] == 0 and states["epg-1"]["pulses"] == 0
        assert not any(e["data"]["event"] in ("started", "step_started") for e in clinic.events(sid))
        status = await clinic.request("status")
        assert status["data"]["session"] == {"session": sid, "state": "awaiting_confirmation"}

        # ---- the technician confirms at the chair (the CLI), and acknowledges the confirm step
        confirm = await acli("confirm", sid, "--config", setup.config, "--by", "tech")
        assert confirm.returncode == 0, confirm.stderr
        assert "state=running" in confirm.stdout
        await clinic.wait_state("running", session=sid)
        await clinic.wait_event(sid, "prompt")
        ack = await acli("console", "--ack-prompt", "--by", "tech", "--config", setup.config)
        assert ack.returncode == 0, ack.stderr
        done = await clinic.wait_event(sid, "completed", timeout=60)
        await clinic.wait_state("completed", session=sid)

        # ---- every event, in order, nothing missing
        events = clinic.events(sid)
        index_check(events)
        names = [e["data"]["event"] for e in events]
        # the final event, then the record's state change to match
        assert names[-2:] == ["completed", "state"] and events[-2]["msg_id"] == done["msg_id"]
        assert events[-1]["data"]["state"] == "completed"
        for name in ("created", "preflight_item", "confirmed", "started", "step_started", "point_done",
                     "train_done", "prompt", "step_done", "completed"):
            assert name in names, name
        assert names.index("confirmed") < names.index("started") < names.index("step_started")
        created = events[names.index("created")]["data"]
        assert created["program"] == "demo" and created["sha256"] == demo["sha256"]
        assert created["patient_ref"] == body["patient_ref"] and created["operator"] == "dr-a"
        assert created["params"] == body["params"] and created["acknowledged"] == []
        assert events[names.index("confirmed")]["data"]["by"] == "tech"
        assert all(e["session"] == sid and e["historical"] is False for e in events)
        seq_check(clinic, hub.boot)

        # ---- the recorded summary, and what the devices say they delivered
        summary = await clinic.request("session", {"session": sid})
        assert summary["ok"], summary
        s = summary["data"]
        assert s["session"] == sid and s["state"] == "completed" and s["events_count"] == len(events)
        assert [st["step"] for st in s["steps"]] == ["inject", "apply-serum", "ep", "light", "field"]
        sims = await sim_states(room)
        assert s["totals"]["inj-1"]["volume_ul"] == pytest.approx(sims["inj-1"]["volume_ul"], abs=0.051)
        assert s["totals"]["inj-1"]["shots"] == sims["inj-1"]["shots"]
        assert s["totals"]["epg-1"]["pulses"] == sims["epg-1"]["pulses"] == 16
        assert done["data"]["totals"] == s["totals"]
        assert not any(x["output_on"] for x in sims.values())
        status = await clinic.request("status")
        assert status["data"]["session"] == {"session": sid, "state": "completed"}

        # ---- an MQTT 3.1.1 client: reply path and correlation in the payload
        v311 = Clinic(setup.port, setup.root, client_id="old-clinic", subscribe="reply/old-clinic/#",
                      protocol=aiomqtt.ProtocolVersion.V311)
        async with v311:
            r = await v311.request("status")
            assert r["ok"] and r["data"]["hub"]["boot"] == hub.boot
            r = await v311.request("session", {"session": sid})
            assert r["ok"] and r["data"]["state"] == "completed"
            r = await v311.request("start", {"program": "nope", "patient_ref": "P", "operator": "dr"})
            assert r["ok"] is False and r["error"]["code"] == "unknown_program"


async def test_abort_mid_run(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 10)

        # ---- a well-formed abort naming the session
        sid = await running_with_output(setup, clinic)
        reply, t0, t1 = await timed_request(clinic, "abort", {"session": sid, "reason": "patient moved"})
        assert reply["ok"] is True, reply
        assert reply["data"]["session"] == sid and reply["data"]["state"] == "aborted"
        assert_safe_state_ms(reply["data"]["safe_state_ms"], t0, t1)
        # by the devices' own clocks: every output that went off went off inside the request
        states = await wait_all_off(room, timeout=3)
        assert any(s["output_changed_at"] is not None and t0 <= s["output_changed_at"] <= t1
                   for s in states.values()), states
        safe = await clinic.wait_event(sid, "safe_state")
        assert safe["data"]["trigger"] == "abort" and isinstance(safe["data"]["ms"], (int, float))
        assert all(safe["data"]["devices"][d] == "off" for d in DEVICES), safe
        aborted = await clinic.wait_event(sid, "aborted")
        assert aborted["data"]["reason"] == "patient moved"
        await clinic.wait_state("aborted", session=sid)
        await wait_all_off(room, timeout=3)
        index_check(clinic.events(sid))

        # ---- an unreadable abort still acts; the reply says what was wrong
        sid2 = await running_with_output(setup, clinic)
        reply, t0, t1 = await timed_request(clinic, "abort", b"{this is not json")
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        assert reply["data"]["session"] == sid2 and reply["data"]["state"] == "aborted"
        assert_safe_state_ms(reply["data"]["safe_state_ms"], t0, t1)
        safe = await clinic.wait_event(sid2, "safe_state")
        assert all(v == "off" for v in safe["data"]["devices"].values())
        await clinic.wait_state("aborted", session=sid2)
        await wait_all_off(room, timeout=3)

        # ---- with no session under way: idle, still a safe state
        reply, t0, t1 = await timed_request(clinic, "abort", {})
        assert reply["ok"] is True and reply["data"]["session"] is None and reply["data"]["state"] == "idle"
        assert_safe_state_ms(reply["data"]["safe_state_ms"], t0, t1)
        seq_check(clinic, hub.boot)
        summary = await clinic.request("session", {"session": sid})
        assert summary["data"]["state"] == "aborted"
        assert summary["data"]["session"] == sid and summary["data"]["reason"] == "patient moved"


async def test_start_then_abort_back_to_back(setup: Setup) -> None:
    """A clinic that starts and at once aborts (an operator's second thought) must leave the room usable.

    The abort overtakes nothing it should not: either it finds the new session and ends
    it (``aborted``), or it lands during the start's checks and the start is refused
    (``invalid_state``, nothing started), or it comes before it and says ``idle``, and the
    session then waits in preflight (nothing energised) until aborted again. Either way a new start is
    accepted afterwards. Forty back-to-back pairs, because the interleaving varies.
    """
    root = setup.root
    async with Clinic(setup.port, root) as clinic:
        await setup.hub.astart()
        for i in range(40):
            start = len(clinic.messages)
            for verb, body in (("start", start_body(request_id=f"s{i}")), ("abort", {"request_id": f"a{i}"})):
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = f"{root}/reply/{clinic.client_id}/{verb}{i}"
                props.CorrelationData = f"{verb}{i}".encode()
                await clinic.publish(f"{root}/cmd/{verb}", json.dumps(body), properties=props)
            started = (await clinic.wait_for(lambda m: m.topic.endswith(f"/start{i}"), start=start)).body
            aborted = (await clinic.wait_for(lambda m: m.topic.endswith(f"/abort{i}"), start=start)).body
            if not started["ok"]:  # the abort came during the start's device check: nothing was started
                assert started["error"]["code"] == "invalid_state", started
                assert aborted["ok"] and aborted["data"]["session"] is None, aborted
                assert not any((await outputs_on(setup.room)).values())
                continue
            sid = started["data"]["session"]
            assert aborted["ok"], aborted
            assert isinstance(aborted["data"]["safe_state_ms"], (int, float)) and aborted["data"]["safe_state_ms"] > 0
            if aborted["data"]["session"] == sid:
                assert aborted["data"]["state"] == "aborted", aborted
            else:
                assert aborted["data"] == {"session": None, "state": "idle",
                                           "safe_state_ms": aborted["data"]["safe_state_ms"]}, aborted
                again = await clinic.request("abort", {"session": sid})
                assert again["ok"] and again["data"]["state"] == "aborted", again
            status = await clinic.request("status")
            assert status["data"]["session"] == {"session": sid, "state": "aborted"}, status
        assert not any((await outputs_on(setup.room)).values())
