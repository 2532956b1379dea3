"""The hub against bad requests, a broker outage and its own sudden death.

shared/mqtt-api.md: a malformed request never changes anything and never stops the
hub; the session never depends on the broker (on-disk outbox, replay with
``historical: true``); a crashed hub leaves the devices to their watchdogs, the broker
publishes its will, and the next start marks the session ``failed`` (``hub_restart``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators.local_broker import LocalBroker
from devicehub.local_console import ConsoleClient
from devicehub.records.store import RecordStore
from tests.hub.conftest import (
    Clinic,
    HubProcess,
    Setup,
    ack_prompts,
    acli,
    assert_safe_state_ms,
    auto_trigger,
    console,
    hub_in,
    root_of,
    run_to_awaiting,
    sim_states,
    simulated_room,
    start_body,
    timed_request,
    wait_all_off,
)
from tests.hub.test_remote_session import index_check, seq_check

pytestmark = pytest.mark.timeout(120)


def error_of(reply: dict[str, Any], code: str, field: str | None = None) -> dict[str, Any]:
    assert reply["ok"] is False, reply
    err = reply["error"]
    assert err["code"] == code, reply
    if field is not None:
        assert err.get("field") == field, reply
    assert isinstance(err["message"], str) and err["message"]
    return err


# ====================================================================== bad requests
async def test_bad_requests_against_the_real_hub(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 20)  # an armed gun would fire at once: nothing may arm it
        root = setup.root

        # a reply path outside the root: not acted on, and no reply; requests are handled
        # in order, so the status reply after it proves it was handled
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"elsewhere/{clinic.client_id}"
        props.CorrelationData = b"x"
        await clinic.publish(f"{root}/cmd/start", json.dumps({"request_id": "out-1", **start_body()}),
                             properties=props)
        await clinic.publish(f"{root}/cmd/start", json.dumps({"request_id": "out-2", **start_body(),
                                                              "reply_to": "devicehub/v1/other/room-1/reply/x"}))
        status = await clinic.request("status")
        assert status["ok"] and status["data"]["session"] is None, status
        assert not [m for m in clinic.messages if m.topic.startswith("elsewhere/") or "/other/" in m.topic]

        # retained: refused, never acted on (then the retained message is cleared)
        error_of(await clinic.request("start", start_body(), retain=True), "retained_command")
        await clinic.publish(f"{root}/cmd/start", b"", retain=True)

        # unreadable and malformed payloads
        error_of(await clinic.request("start", b"{not json"), "bad_request")
        error_of(await clinic.request("start", b"\xff\xfe not utf-8"), "bad_request")
        error_of(await clinic.request("start", b"[1, 2, 3]"), "bad_request")
        error_of(await clinic.request("start", b'"start"'), "bad_request")
        error_of(await clinic.request("start", json.dumps({"program": "demo", "patient_ref": "P", "operator": "o"})
                                      .encode()), "bad_request", "request_id")
        error_of(await clinic.request("start", start_body(program=5)), "bad_request", "program")
        error_of(await clinic.request("start", start_body(params={"light": 3})), "bad_request")
        error_of(await clinic.request("start", start_body(acknowledge="inject.dose_ul")), "bad_request",
                 "acknowledge")
        body = start_body()
        del body["patient_ref"]
        error_of(await clinic.request("start", body), "bad_request", "patient_ref")
        error_of(await clinic.request("start", start_body(acknowlege=["x"])), "bad_request")  # misspelt member
        error_of(await clinic.request("preflight", {"session": "S", "item": "consent", "done": "yes", "by": "n"}),
                 "bad_request", "done")
        error_of(await clinic.request("start", start_body(expires_at="tomorrow")), "bad_request", "expires_at")
        big = json.dumps({"request_id": "big", **start_body(), "pad": "x" * (1 << 20)}).encode()
        assert len(big) > 1 << 20
        error_of(await clinic.request("start", big), "bad_request")

        # expired, unknown verb, unknown program, unknown session
        error_of(await clinic.request("start", start_body(expires_at="2020-01-01T00:00:00Z")), "expired")
        error_of(await clinic.request("status", {"expires_at": "2020-01-01T00:00:00+01:00"}), "expired")
        error_of(await clinic.request("explode", {}), "unknown_verb")
        error_of(await clinic.request("start", start_body(program="no-such-program")), "unknown_program", "program")
        err = error_of(await clinic.request("start", start_body(params={"ep": {"amplitude_v": 1000},
                                                                        "inject": {"depth_mm": 3.5}})), "hard_limit")
        assert err["details"] and all({"id", "field", "value", "limit", "unit", "severity"} <= set(d)
                                      for d in err["details"])
        # every finding, the soft ones too, so one refusal shows all there is to change
        assert {(d["id"], d["severity"]) for d in err["details"]} >= {("ep.amplitude_v", "hard"),
                                                                      ("inject.depth_mm", "soft")}, err["details"]
        error_of(await clinic.request("preflight", {"session": "01NOSUCHSESSION", "item": "consent", "done": True,
                                                    "by": "nurse"}), "not_found", "session")
        error_of(await clinic.request("pause", {"session": "01NOSUCHSESSION"}), "not_found", "session")
        error_of(await clinic.request("session", {"session": "01NOSUCHSESSION"}), "not_found", "session")

        # nothing started: no session, no session topic, every simulator off and untouched
        status = await clinic.request("status")
        assert status["ok"] and status["data"]["session"] is None and status["data"]["alarms"] == []
        assert not [m for m in clinic.messages if "/sessions/" in m.topic or m.topic == f"{root}/session"]
        states = await sim_states(room)
        assert not any(s["output_on"] for s in states.values())
        assert states["inj-1"]["shots"] == 0 and states["epg-1"]["pulses"] == 0
        assert hub.alive()

        # ---- request ids: a repeat gets the same reply and is not acted on again
        body = start_body(request_id="dup-start")
        first = await clinic.request("start", body)
        assert first["ok"] and first["data"]["state"] == "preflight", first
        sid = first["data"]["session"]
        again = await clinic.request("start", body)  # acted again, it would be busy
        assert again["ok"] and again["data"] == first["data"] and again["request_id"] == "dup-start"
        # the reply path and expires_at are not part of the request's identity
        again = await clinic.request("start", {**body, "expires_at": "2999-01-01T00:00:00Z"}, v311=True)
        assert again["data"] == first["data"], again
        error_of(await clinic.request("start", {**body, "operator": "someone-else"}), "bad_request", "request_id")

        pf = {"request_id": "dup-pf", "session": sid, "item": "consent", "done": True, "by": "nurse"}
        r1 = await clinic.request("preflight", pf)
        r2 = await clinic.request("preflight", pf)
        assert r1["ok"] and r2["data"] == r1["data"] == {"session": sid, "state": "preflight",
                                                         "pending_items": ["scalp_cleansed"]}
        # (counted in the session's events below: one preflight_item)

        # an errored request id is remembered too: the same reply, errors included
        bad = start_body(request_id="dup-err", program="no-such-program")
        e1 = error_of(await clinic.request("start", bad), "unknown_program")
        e2 = error_of(await clinic.request("start", bad), "unknown_program")
        assert e1 == e2

        # busy: one session per room
        error_of(await clinic.request("start", start_body()), "busy")
        status = await clinic.request("status")
        assert status["data"]["session"] == {"session": sid, "state": "preflight"}

        # abort naming an unknown session still acts: the active session ends
        reply, t0, t1 = await timed_request(clinic, "abort", {"session": "01NOSUCHSESSION"})
        error_of(reply, "not_found", "session")
        assert reply["data"]["session"] == sid and reply["data"]["state"] == "aborted"
        assert_safe_state_ms(reply["data"]["safe_state_ms"], t0, t1)
        await clinic.wait_state("aborted", session=sid)
        await clinic.wait_event(sid, "aborted")
        events = clinic.events(sid)
        assert [e["data"]["event"] for e in events].count("preflight_item") == 1
        assert [e["data"]["event"] for e in events].count("created") == 1
        index_check(events)
        # and one session only was ever created
        assert {m.topic for m in clinic.messages if "/sessions/" in m.topic} == {f"{root}/sessions/{sid}/events"}

        # the hub is alive and well
        status = await clinic.request("status")
        assert status["ok"] and status["data"]["session"] == {"session": sid, "state": "aborted"}
        assert hub.alive()
        await wait_all_off(room, timeout=3)
        states = await sim_states(room)
        assert states["inj-1"]["shots"] == 0 and states["epg-1"]["pulses"] == 0
        seq_check(clinic, hub.boot)


# ====================================================================== the hub killed
async def test_hub_killed_mid_session(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        boot = hub.boot
        await auto_trigger(room, 20)
        params = {"light": {"duration_s": 5}, "field": {"duration_s": 5}, "ep": {"pulses_per_point": 2}}
        sid = await run_to_awaiting(clinic, params=params)
        acks = asyncio.create_task(ack_prompts(clinic, room, sid))
        try:
            assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
            await clinic.wait_for(lambda m: m.topic.endswith(f"{sid}/events")
                                  and m.body["data"]["event"] == "step_started"
                                  and m.body["data"]["step"] in ("light", "field"), timeout=30)
            deadline = time.monotonic() + 5
            while True:  # both exposures under way: outputs on
                states = await sim_states(room)
                if states["led-1"]["output_on"] and states["pemf-1"]["output_on"]:
                    break
                assert time.monotonic() < deadline, {d: s["output_on"] for d, s in states.items()}
            # and the hub has told its followers so (a kill between an event's record write
            # and its outbox write would leave a gap in what they see: not this test's subject)
            for dev in ("led-1", "pemf-1"):
                await clinic.wait_for(lambda m, d=dev: m.topic.endswith(f"{sid}/events")
                                      and m.body["data"]["event"] == "delivery_started"
                                      and m.body["data"]["device"] == d, timeout=10)
        finally:
            acks.cancel()
        seen = len(clinic.messages)
        await asyncio.to_thread(hub.kill)

        # the broker publishes the will: retained offline of this boot, no seq
        will = await clinic.wait_for(lambda m: m.topic == f"{setup.root}/status"
                                     and m.body["data"]["state"] == "offline", timeout=10, start=seen)
        assert will.body["boot"] == boot and "seq" not in will.body and will.body["msg_id"] and will.body["ts"]
        async with Clinic(setup.port, setup.root, subscribe="status") as late:
            retained = await late.wait_for(lambda m: True, timeout=5)
            assert retained.retain and retained.body["data"]["state"] == "offline" and retained.body["boot"] == boot

        # every simulator's watchdog turns its output off by itself
        states = await wait_all_off(room, timeout=5)
        assert states["led-1"]["elapsed_s"] > 0 and states["pemf-1"]["elapsed_s"] > 0

        # the hub comes back on the same config: boot + 1, the session failed (hub_restart)
        restarted = HubProcess(room.config_path, room.directory / "hub.log")
        await restarted.astart()
        try:
            assert restarted.boot == boot + 1
            await clinic.wait_for(lambda m: m.topic == f"{setup.root}/status" and m.body["data"]["state"] == "online"
                                  and m.body["boot"] == boot + 1, timeout=10, start=seen)
            failed = await clinic.wait_state("failed", session=sid, start=seen)
            assert failed["data"]["reason"] == "hub_restart" and failed["boot"] == boot + 1
            # the new boot finds the emitters in watchdog fault (the dead hub's doing): a
            # device_watchdog alarm raised, the fault cleared by the hub, the alarm cleared
            def watchdogs(m: Any) -> set[str]:
                return {a["source"] for a in m.body["data"] if a["code"] == "device_watchdog"}

            tripped = await clinic.wait_for(lambda m: m.topic == f"{setup.root}/alarms" and m.body["boot"] == boot + 1
                                            and watchdogs(m) & {"led-1", "pemf-1"}, timeout=10, start=seen)
            assert all(a["priority"] == "high" for a in tripped.body["data"] if a["code"] == "device_watchdog")
            now = [m for m in clinic.on("alarms") if m.body["boot"] == boot + 1]
            assert not watchdogs(now[-1]), now[-1].body
            async with Clinic(setup.port, setup.root, subscribe="session") as late:
                retained = await late.wait_for(lambda m: True, timeout=5)
                assert retained.retain and retained.body["data"]["state"] == "failed"
                assert retained.body["data"]["session"] == sid and retained.body["data"]["reason"] == "hub_restart"

            shown = await acli("sessions", "show", sid, "--json", "--config", setup.config)
            assert shown.returncode == 0, shown.stderr
            record = json.loads(shown.stdout)
            summary = record["summary"]
            assert summary["state"] == "failed" and summary["reason"] == "hub_restart"
            # what the record says was delivered is what the devices delivered
            sims = await sim_states(room)
            assert summary["totals"]["inj-1"]["volume_ul"] == pytest.approx(sims["inj-1"]["volume_ul"], abs=0.051)
            assert summary["totals"]["inj-1"]["shots"] == sims["inj-1"]["shots"] == 8
            assert summary["totals"]["epg-1"]["pulses"] == sims["epg-1"]["pulses"] == 16
            assert summary["in_flight"] == []
            # the exposures the kill cut short: settled late from the emitters' run registers
            assert summary["totals"]["led-1"]["exposure_s"] == pytest.approx(sims["led-1"]["elapsed_s"], abs=0.15)
            assert summary["totals"]["pemf-1"]["field_pulses"] == sims["pemf-1"]["pulses"]
            # the session's followers see its end too: index 1..N over both boots, N as recorded
            await clinic.wait_event(sid, "failed", start=seen)
            last = await clinic.wait_for(lambda m: m.topic.endswith(f"{sid}/events")
                                         and m.body["data"]["event"] == "state"
                                         and m.body["data"]["state"] == "failed", start=seen)
            events = clinic.events(sid)
            assert [e["data"]["index"] for e in events] == list(range(1, len(record["events"]) + 1))
            assert last.body["boot"] == boot + 1 and events[-2]["data"]["reason"] == "hub_restart"
            assert [e["data"]["event"] for e in events] == [e["event"] for e in record["events"]]
            reply = await clinic.request("session", {"session": sid})
            assert reply["data"]["state"] == "failed"
            status = await clinic.request("status")
            assert status["data"]["hub"]["boot"] == boot + 1
            seq_check(clinic, boot + 1)
        finally:
            await asyncio.to_thread(restarted.terminate)


# ====================================================================== the broker away
@pytest.fixture
def persistent_broker() -> Iterator[LocalBroker]:
    """A private Mosquitto that keeps client sessions across a restart, as a clinic's broker does.

    The state directory lives directly under the temporary directory and is open to all:
    Mosquitto started as root drops to its own user before writing it.
    """
    state = tempfile.mkdtemp(prefix="devicehub-broker-state-")
    os.chmod(state, 0o777)
    broker = LocalBroker(extra_conf=f"persistence true\npersistence_location {state}/\n")
    try:
        with broker:
            yield broker
    finally:
        shutil.rmtree(state, ignore_errors=True)


def recorded_events(room: Any, sid: str) -> int:
    """How many events the record holds for the session now (read-only, as the CLI reads it)."""
    with RecordStore(room.directory / "devicehub.sqlite", readonly=True) as store:
        return store.session(sid)["events_count"]


async def _watch_until(watch: ConsoleClient, pred: Any, timeout: float) -> list[dict[str, Any]]:
    """Read the console's live stream until ``pred(message)``; returns what was read."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    it = watch.messages()
    while True:
        m = await asyncio.wait_for(it.__anext__(), max(0.01, deadline - time.monotonic()))
        got.append(m)
        if pred(m):
            return got


async def test_broker_outage_mid_session(persistent_broker: LocalBroker, tmp_path: Path) -> None:
    broker = persistent_broker
    with simulated_room(tmp_path / "room", broker.port) as room:
        root = root_of(room.site)
        async with hub_in(room) as hub, Clinic(broker.port, root, client_id=f"follower-{uuid.uuid4().hex[:6]}",
                                                persistent=True) as clinic:
            await hub.astart()
            await auto_trigger(room, 10)
            sid = await run_to_awaiting(clinic)
            async with ConsoleClient(room.directory / "devicehub.sock") as watch:
                assert (await watch.request("watch"))["ok"]
                assert (await console(room, "confirm", session=sid, by="tech"))["ok"]
                await clinic.wait_event(sid, "point_done")

                # the broker goes away mid-injection; the session goes on (the technician
                # at the chair acknowledges the confirm step meanwhile)
                await asyncio.to_thread(broker.stop)
                before = recorded_events(room, sid)  # every later event can only come from the outbox
                away = await _watch_until(watch, lambda m: m["kind"] == "session.event"
                                          and m["data"]["event"] == "prompt"
                                          or m["kind"] == "session.state" and "prompt" in m["data"], 20)
                assert (await console(room, "prompt_ack", by="tech"))["ok"]
                away += await _watch_until(watch, lambda m: m["kind"] == "session.event"
                                           and m["data"]["event"] == "train_done", 20)
                assert away
                during = range(before + 1, recorded_events(room, sid) + 1)
                assert len(during) >= 3, "events must happen while the broker is away"
                await asyncio.to_thread(broker.start)

            done = await clinic.wait_event(sid, "completed", timeout=60)
            await clinic.wait_for(lambda m: m.topic.endswith(f"{sid}/events") and m.body["data"]["event"] == "state"
                                  and m.body["data"]["state"] == "completed", timeout=10)
            assert clinic.connects >= 2
            summary = (await clinic.request("session", {"session": sid}))["data"]
            assert summary["state"] == "completed"

        # every event once after msg_id de-duplication, the outage's flagged historical
        unique: dict[str, dict[str, Any]] = {}
        order: list[dict[str, Any]] = []
        for m in clinic.messages:
            b = m.body
            if isinstance(b, dict) and "msg_id" in b and b["msg_id"] not in unique:
                unique[b["msg_id"]] = b
                order.append(b)
        events = [b for b in order if b.get("type") == "session.event" and b.get("session") == sid]
        indices = sorted(e["data"]["index"] for e in events)
        assert indices == list(range(1, summary["events_count"] + 1)), indices
        historical = [e for e in events if e["historical"]]
        assert historical, "the events of the outage come from the outbox, flagged historical"
        assert {e["data"]["index"] for e in historical} >= set(during)
        assert done["data"]["totals"] == summary["totals"]
        # seq of the boot as a set: the replay fills the gap the outage left
        boot = hub.boot
        seqs = sorted(b["seq"] for b in order if b.get("boot") == boot and "seq" in b)
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        # the birth of the new connection comes before the replay
        first_hist = next(i for i, b in enumerate(order) if b.get("historical") and b.get("type") == "session.event")
        assert any(b.get("type") == "status" and b["data"]["state"] == "online" for b in order[:first_hist][-50:])


async def test_events_recorded_but_never_published_go_out_at_the_next_start(setup: Setup) -> None:
    """A hub killed between recording an event and queueing it for MQTT: the next start
    publishes what the record holds and the outbox never had, before marking the session
    failed, so a follower's indices run 1..N without a gap."""
    from devicehub.records.store import RecordStore, new_session_id

    sid = new_session_id()
    with RecordStore(setup.room.directory / "devicehub.sqlite") as records:  # as a previous hub left it
        records.create_session(sid, program_id="demo", program_version="1", program_sha256="0" * 64,
                               program_json={}, patient_ref="P-gap", operator="tech", origin="console",
                               params={}, acknowledgements=[])
        for name, data in (("state", {"state": "created", "previous": None}),
                           ("created", {"program": "demo", "patient_ref": "P-gap", "operator": "tech"}),
                           ("state", {"state": "running", "previous": "created"}), ("started", {})):
            records.append_event(sid, name, data)
    async with Clinic(setup.port, setup.root) as clinic:
        await setup.hub.astart()
        await clinic.wait_event(sid, "failed")
        await clinic.wait_for(lambda m: m.topic.endswith(f"{sid}/events") and m.body["data"]["event"] == "state"
                              and m.body["data"]["state"] == "failed")
        events = clinic.events(sid)
        assert [e["data"]["index"] for e in events] == [1, 2, 3, 4, 5, 6], [e["data"] for e in events]
        assert [e["data"]["event"] for e in events][:4] == ["state", "created", "state", "started"]
        assert events[4]["data"]["reason"] == "hub_restart"
        # and the events verb now has their boot and seq
        page = await clinic.request("events", {"session": sid})
        assert page["ok"] and all(e["seq"] is not None for e in page["data"]["events"]), page
