"""Requests over a real Mosquitto: routing, reply paths, the check order, abort's exception."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import aiomqtt

from devicehub.mqtt.envelope import ULID_RE, rfc3339, utcnow
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox
from devicehub.mqtt.payloads import REPLY_DATA_MODELS, Reply
from devicehub.room_api import CommandError

from . import Requester, StubRoom, client, make_frontend, observing, running, unique

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def check_reply(rep: dict, fe, request_id: str | None, ok: bool) -> None:
    Reply.model_validate(rep)
    assert rep["v"] == 1 and rep["type"] == "reply"
    assert (rep["site"], rep["room"], rep["boot"]) == (fe.topics.site, fe.topics.room, fe.envelopes.boot)
    assert "seq" not in rep and "tseq" not in rep and rep["historical"] is False
    assert ULID_RE.match(rep["msg_id"]) and TS_RE.match(rep["ts"])
    assert rep["request_id"] == request_id and rep["ok"] is ok, rep


async def marker(req: Requester) -> None:
    """Non-abort requests are handled in order: a reply to this one means the earlier ones were handled."""
    rep = await req.request("status", {"request_id": unique("marker")})
    assert rep["ok"]


async def test_every_verb_is_routed_to_the_room(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/#") as obs, running(fe):
        req = Requester(obs, root, "clinic-app")

        rep = await req.request("programs", {"request_id": "p1"})
        check_reply(rep, fe, "p1", True)
        assert rep["data"] == StubRoom.PROGRAMS
        rep = await req.request("program", {"request_id": "p2", "program": "scalp-a"})
        check_reply(rep, fe, "p2", True)
        assert rep["data"]["program"] == "scalp-a"
        rep = await req.request("program", {"request_id": "p3", "program": "nope"})
        check_reply(rep, fe, "p3", False)
        assert rep["error"] == {"code": "unknown_program", "message": "no program 'nope'", "field": "program"}
        rep = await req.request("status", {"request_id": "s1"})
        check_reply(rep, fe, "s1", True)
        assert rep["data"]["session"] is None

        rep = await req.request("start", {"request_id": "st1", "program": "scalp-a", "patient_ref": "P-1",
                                          "operator": "dr. a", "params": {"s1": {"voltage_v": 40}},
                                          "acknowledge": ["s1.voltage_v"]})
        check_reply(rep, fe, "st1", True)
        session = rep["data"]["session"]
        assert rep["data"] == {"session": session, "state": "awaiting_confirmation", "course": None}
        assert room.calls[-1] == ("start", {"program": "scalp-a", "patient_ref": "P-1", "operator": "dr. a",
                                            "params": {"s1": {"voltage_v": 40}}, "acknowledge": ["s1.voltage_v"],
                                            "origin": "mqtt"})
        rep = await req.request("start", {"request_id": "st2", "program": "scalp-a", "patient_ref": "P-2",
                                          "operator": "dr. a"})
        assert rep["error"]["code"] == "busy"

        rep = await req.request("preflight", {"request_id": "pf", "session": session, "item": "consent",
                                              "done": True, "by": "nurse b"})
        check_reply(rep, fe, "pf", True)
        assert rep["data"]["pending_items"] == []
        assert room.calls[-1] == ("preflight", {"session": session, "item": "consent", "done": True,
                                                "by": "nurse b"})
        rep = await req.request("session", {"request_id": "se", "session": session})
        assert rep["data"]["session"] == session
        rep = await req.request("session", {"request_id": "se2", "session": "nope"})
        assert rep["error"]["code"] == "not_found"

        room.sessions[session] = "running"
        rep = await req.request("pause", {"request_id": "pa", "session": session, "reason": "patient"})
        check_reply(rep, fe, "pa", True)
        assert rep["data"] == {"session": session, "state": "paused"}
        rep = await req.request("pause", {"request_id": "pa2", "session": session})
        assert rep["error"]["code"] == "invalid_state"
        rep = await req.request("resume", {"request_id": "re", "session": session})
        assert rep["data"] == {"session": session, "state": "awaiting_confirmation"}
        assert room.calls[-1] == ("resume", {"session": session, "origin": "mqtt"})

        # confirm is done at the chair, never over MQTT
        rep = await req.request("confirm", {"request_id": "cf", "session": session})
        assert rep["error"]["code"] == "unknown_verb"
        assert "confirm" not in room.verbs_called()

        rep = await req.request("abort", {"request_id": "ab", "session": session, "reason": "done"})
        check_reply(rep, fe, "ab", True)
        assert rep["data"] == {"session": session, "state": "aborted", "safe_state_ms": 3.0}
        assert "error" not in rep
        rep = await req.request("abort", {"request_id": "ab2"})
        assert rep["data"] == {"session": None, "state": "idle", "safe_state_ms": 3.0}

        verbs = {"p1": "programs", "p2": "program", "s1": "status", "st1": "start", "pf": "preflight",
                 "se": "session", "pa": "pause", "re": "resume", "ab": "abort", "ab2": "abort"}
        replies = {s.json["request_id"]: s.json for s in obs.of(lambda s: s.topic == req.reply_topic)}
        for request_id, verb in verbs.items():  # the published schemas describe what was sent
            REPLY_DATA_MODELS[verb].model_validate(replies[request_id]["data"])

        room.device_state("epg-1", "idle")
        room.bus.emit("alarms", {"alarms": []})
        await obs.wait_for(lambda s: s.topic == f"{root}/alarms")
        start = len(obs.seen)
        rep = await req.request("rebirth", {"request_id": "rb"})
        check_reply(rep, fe, "rb", True)
        assert rep["data"] == {}
        again = await obs.wait_count(lambda s: s.topic in (f"{root}/status", f"{root}/devices/epg-1/state",
                                                           f"{root}/session", f"{root}/alarms")
                                     and s.json["seq"] > 0 and obs.seen.index(s) >= start, 4)
        assert {s.topic for s in again} == {f"{root}/status", f"{root}/devices/epg-1/state", f"{root}/session",
                                            f"{root}/alarms"}
        assert next(s for s in again if s.topic == f"{root}/status").json["data"]["state"] == "online"
        assert next(s for s in again if s.topic == f"{root}/session").json["data"]["state"] == "aborted"


async def test_reply_via_mqtt311_payload_fields(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    reply_to = f"{root}/reply/legacy-app/42"
    async with observing(broker, f"{root}/reply/#", protocol=aiomqtt.ProtocolVersion.V311) as obs, running(fe):
        await obs.client.publish(f"{root}/cmd/status", json.dumps(
            {"request_id": "old-1", "reply_to": reply_to, "correlation_id": "c-42"}), qos=1)
        seen = await obs.wait_for(lambda s: s.topic == reply_to)
        check_reply(seen.json, fe, "old-1", True)
        assert seen.json["correlation_id"] == "c-42" and seen.qos == 1 and not seen.retain


async def test_mqtt5_properties_win_over_payload(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/reply/#") as obs, running(fe):
        req = Requester(obs, root, "app5")
        await req.send("status", {"request_id": "both", "reply_to": f"{root}/reply/payload-path",
                                  "correlation_id": "from-payload"}, correlation=b"from-props")
        seen = await obs.wait_for(lambda s: s.json.get("request_id") == "both")
        assert seen.topic == req.reply_topic
        assert seen.json["correlation_id"] == "from-props"
        assert seen.properties.CorrelationData == b"from-props"
        assert not seen.retain and seen.qos == 1
        # binary correlation data: echoed in the property, null in the payload
        await req.send("status", {"request_id": "bin"}, correlation=b"\xff\x00\xfe")
        seen = await obs.wait_for(lambda s: s.json.get("request_id") == "bin")
        assert seen.properties.CorrelationData == b"\xff\x00\xfe" and seen.json["correlation_id"] is None
        assert not obs.of(lambda s: s.topic.endswith("payload-path"))


async def test_reply_path_outside_root_is_refused_and_not_acted_on(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    other_root = f"devicehub/v1/clinic-a/{unique('room')}"
    start = {"program": "scalp-a", "patient_ref": "P", "operator": "o"}
    async with observing(broker, "devicehub/v1/clinic-a/#") as obs, running(fe):
        req = Requester(obs, root, "app")
        bad_paths = [f"{other_root}/reply/app", f"{root}/status", f"{root}/reply/", f"{root}/reply/+",
                     f"{root}/cmd/start", "elsewhere/reply"]
        for i, path in enumerate(bad_paths):
            await req.send("start", {"request_id": f"b{i}", **start}, reply_to=path)
        await req.send("start", {"request_id": "b-payload", "reply_to": f"{other_root}/reply/x", **start},
                       use_props=False)
        await req.send("start", {"request_id": "b-type", "reply_to": 7, **start}, use_props=False)
        await marker(req)
        assert "start" not in room.verbs_called()
        assert not obs.of(lambda s: s.topic.startswith(other_root) or s.topic.startswith("elsewhere"))
        assert not obs.of(lambda s: s.topic.startswith(f"{root}/reply/") and s.json.get("request_id", "")
                          .startswith("b"))
        assert not obs.of(lambda s: s.topic == f"{root}/status" and s.json.get("type") == "reply")


async def test_no_reply_path_is_acted_on(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/#") as obs, running(fe):
        await obs.client.publish(f"{root}/cmd/start", json.dumps(
            {"request_id": "quiet", "program": "scalp-a", "patient_ref": "P", "operator": "o"}), qos=1)
        created = await obs.wait_for(lambda s: "/sessions/" in s.topic)
        assert created.json["data"]["event"] == "created"
        assert room.verbs_called() == ["start"]
        session = created.json["session"]
        await obs.client.publish(f"{root}/cmd/abort", json.dumps({"request_id": "e-stop"}), qos=1)
        await obs.wait_for(lambda s: s.topic == f"{root}/session" and s.json["data"]["state"] == "aborted")
        assert room.calls[-1] == ("abort", {"session": None, "reason": None})
        assert room.sessions[session] == "aborted"
        assert not obs.of(lambda s: "/reply/" in s.topic)


async def test_repeated_request_id_same_reply_not_acted_again_also_after_restart(broker, tmp_path):
    room = StubRoom()
    room_id = unique("room")
    start = {"request_id": "once", "program": "scalp-a", "patient_ref": "P", "operator": "o"}
    fe = make_frontend(tmp_path, broker, room, room_id=room_id)
    root = fe.topics.root
    async with observing(broker, f"{root}/reply/#") as obs:
        req = Requester(obs, root, "app")
        async with running(fe):
            first = await req.request("start", start)
            assert first["ok"]
            again = await req.request("start", {**start, "reply_to": "ignored", "expires_at": None})
            assert again["data"] == first["data"] and again["correlation_id"] != first["correlation_id"]
            bad = await req.request("status", {"request_id": "bad-once", "surprise": 1})
            bad_again = await req.request("status", {"request_id": "bad-once", "surprise": 1})
            assert bad["error"] == bad_again["error"] and bad["error"]["code"] == "bad_request"  # errors too
        assert room.verbs_called() == ["start"]

        # a new hub process: a new frontend on the same stores (boot 2)
        fe2 = make_frontend(tmp_path, broker, room, room_id=room_id, boot=2,
                            outbox=Outbox(tmp_path / "outbox.sqlite"),
                            store=IdempotencyStore(tmp_path / "requests.sqlite"))
        async with running(fe2):
            after = await req.request("start", start)
            assert after["ok"] and after["data"] == first["data"] and after["boot"] == 2
            other = await req.request("start", {**start, "patient_ref": "someone else"})
            assert other["error"]["code"] == "bad_request" and other["error"]["field"] == "request_id"
            other_verb = await req.request("programs", {"request_id": "once"})
            assert other_verb["error"]["code"] == "bad_request"
        assert room.verbs_called() == ["start"]


async def test_expires_at(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    start = {"program": "scalp-a", "patient_ref": "P", "operator": "o"}
    async with observing(broker, f"{root}/reply/#") as obs, running(fe):
        req = Requester(obs, root, "app")
        past = rfc3339(utcnow() - timedelta(seconds=1))
        rep = await req.request("start", {"request_id": "late", "expires_at": past, **start})
        assert rep["error"] == {"code": "expired", "message": f"the request expired at {past}",
                                "field": "expires_at"}
        assert room.calls == []
        soon = (utcnow() + timedelta(minutes=1)).isoformat()  # +00:00 offset is RFC 3339 too
        rep = await req.request("start", {"request_id": "in-time", "expires_at": soon, **start})
        assert rep["ok"] and room.verbs_called() == ["start"]
        rep = await req.request("status", {"request_id": "naive", "expires_at": "2030-01-01T00:00:00"})
        assert rep["error"]["code"] == "bad_request" and rep["error"]["field"] == "expires_at"


async def test_retained_commands_are_refused_and_stored_ones_never_delivered(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    start = {"program": "scalp-a", "patient_ref": "P", "operator": "o"}
    async with observing(broker, f"{root}/reply/#") as obs:
        req = Requester(obs, root, "app")
        # stored before the hub subscribes: Retain Handling 2 keeps it from the hub
        await req.send("start", {"request_id": "stored", **start}, retain=True)
        try:
            async with running(fe):
                await marker(req)
                assert room.calls == []
                rep = await req.request("start", {"request_id": "live-retained", **start}, retain=True)
                assert rep["error"]["code"] == "retained_command" and rep["ok"] is False
                rep = await req.request("abort", {"request_id": "retained-abort"}, retain=True)
                assert rep["error"]["code"] == "retained_command" and "data" not in rep
                assert room.calls == []
                # not remembered: the same id, not retained, is a new request
                rep = await req.request("start", {"request_id": "live-retained", **start})
                assert rep["ok"] and room.verbs_called() == ["start"]
        finally:
            for verb in ("start", "abort"):  # clear the retained commands from the shared broker
                await obs.client.publish(f"{root}/cmd/{verb}", b"", qos=1, retain=True)


async def test_every_bad_input_is_refused_with_its_code_and_nothing_changes(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    ok_start = {"program": "scalp-a", "patient_ref": "P", "operator": "o"}
    cases: list[tuple[str, object, str, str | None]] = [
        ("start", b"not json", "bad_request", "(payload)"),
        ("start", b"", "bad_request", "(payload)"),
        ("start", b"\xff\xfe{}", "bad_request", "(payload)"),
        ("start", b"[1, 2]", "bad_request", "(payload)"),
        ("start", b'"start"', "bad_request", "(payload)"),
        ("start", b'{"request_id": "dup", "request_id": "dup2"}', "bad_request", "(payload)"),
        ("start", b'{"request_id": "nan", "program": NaN}', "bad_request", "(payload)"),
        ("start", {**ok_start}, "bad_request", "request_id"),
        ("start", {"request_id": "", **ok_start}, "bad_request", "request_id"),
        ("start", {"request_id": 12, **ok_start}, "bad_request", "request_id"),
        ("start", {"request_id": "t1", **ok_start, "program": 5}, "bad_request", "program"),
        ("start", {"request_id": "t2", "program": "scalp-a", "operator": "o"}, "bad_request", "patient_ref"),
        ("start", {"request_id": "t3", **ok_start, "acknowlege": ["s1.v"]}, "bad_request", "acknowlege"),
        ("start", {"request_id": "t4", **ok_start, "params": {"s1": 40}}, "bad_request", "params.s1"),
        ("start", {"request_id": "t5", **ok_start, "acknowledge": "s1.v"}, "bad_request", "acknowledge"),
        ("preflight", {"request_id": "t6", "session": "S", "item": "i", "done": "yes", "by": "b"},
         "bad_request", "done"),
        ("pause", {"request_id": "t7", "session": None}, "bad_request", "session"),
        ("start", {"request_id": "big", **ok_start, "pad": "x" * (1 << 20)}, "bad_request", "(payload)"),
        ("launch", {"request_id": "t8"}, "unknown_verb", None),
        ("start/now", {"request_id": "t8b", **ok_start}, "unknown_verb", None),  # a deeper topic
        ("start", {"request_id": "t8c", **ok_start, "patient_ref": "   "}, "bad_request", "patient_ref"),
        ("status", {"request_id": "t9", "expires_at": 5}, "bad_request", "expires_at"),
        ("pause", {"request_id": "t10", "session": "nope"}, "not_found", "session"),
        ("start", {"request_id": "t11", **ok_start, "program": "nope"}, "unknown_program", "program"),
    ]
    async with observing(broker, f"{root}/reply/#") as obs, running(fe):
        req = Requester(obs, root, "fuzz")
        for verb, payload, code, field in cases:
            rep = await req.request(verb, payload)
            assert rep["ok"] is False and rep["error"]["code"] == code, (verb, payload, rep)
            assert rep["error"].get("field") == field, (verb, payload, rep)
            assert "data" not in rep
        several = await req.request("start", {"request_id": "t12"})
        assert {d["field"] for d in several["error"]["details"]} == {"program", "patient_ref", "operator"}
        # nothing acted (the room saw only the refusals that are its own checks)
        assert room.verbs_called() == ["pause", "start"] and room.active is None and room.sessions == {}
        assert (await req.request("status", {"request_id": "alive"}))["ok"]


async def test_abort_acts_whatever_else_is_wrong(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/#") as obs, running(fe):
        req = Requester(obs, root, "app")

        async def aborted_with(payload, code, **kw) -> dict:
            session = room.make_running()
            rep = await req.request("abort", payload, **kw)
            assert room.sessions[session] == "aborted" and room.active is None, rep
            assert rep["ok"] is False and rep["error"]["code"] == code, rep
            assert rep["data"] == {"session": session, "state": "aborted", "safe_state_ms": 3.0}
            return rep

        await aborted_with(b"{not json", "bad_request")
        await aborted_with(b'{"request_id": "huge", "pad": "' + b"x" * (70 * 1024) + b'"}', "bad_request")
        await aborted_with({"request_id": 7, "session": "x"}, "bad_request")
        rep = await aborted_with({"request_id": "stale", "session": "01OLDSESSION"}, "not_found")
        assert rep["error"]["field"] == "session"
        old = room.make_running()
        await req.request("abort", {"request_id": "first", "session": old})
        rep = await aborted_with({"request_id": "ended", "session": old}, "invalid_state")
        room.status = lambda: {**StubRoom.status(room), "session": {"session": old, "state": "aborted"}}
        rep = await aborted_with({"request_id": "shown-but-ended", "session": old}, "invalid_state")
        assert room.calls[-1] == ("abort", {"session": None, "reason": None})
        del room.status
        past = rfc3339(utcnow() - timedelta(minutes=5))
        await aborted_with({"request_id": "late-abort", "expires_at": past}, "expired")
        # a repeated request id acts again (and says nothing is wrong when the payload is the same)
        session = room.make_running()
        rep = await req.request("abort", {"request_id": "late-abort", "expires_at": past})
        assert room.sessions[session] == "aborted" and rep["error"]["code"] == "expired"
        session = room.make_running()
        rep = await req.request("abort", {"request_id": "first", "session": "other"})
        assert room.sessions[session] == "aborted" and rep["error"]["code"] == "bad_request"
        assert rep["error"]["field"] == "request_id"
        # reply path outside the root: acts, no reply can be sent
        session = room.make_running()
        await req.send("abort", {"request_id": "nowhere"}, reply_to="devicehub/v1/x/y/reply/z")
        await obs.wait_for(lambda s: s.topic == f"{root}/session" and s.json["session"] == session
                           and s.json["data"]["state"] == "aborted")
        assert not obs.of(lambda s: "/reply/" in s.topic and s.json.get("request_id") == "nowhere")
        # no session at all: still answered
        rep = await req.request("abort", {"request_id": "idle", "session": "gone"})
        assert rep["data"]["state"] == "idle" and rep["error"]["code"] == "not_found"


async def test_abort_never_waits_behind_a_slow_request(broker, tmp_path):
    room = StubRoom()
    gate = asyncio.Event()
    original = room.start

    async def slow_start(**kw):
        await gate.wait()
        return await original(**kw)

    room.start = slow_start  # type: ignore[method-assign]
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/reply/#") as obs, running(fe):
        req = Requester(obs, root, "app")
        session = room.make_running()
        await req.send("start", {"request_id": "slow", "program": "scalp-a", "patient_ref": "P", "operator": "o"})
        rep = await req.request("abort", {"request_id": "now", "session": session})
        assert rep["ok"] and rep["data"]["state"] == "aborted"
        gate.set()
        await obs.wait_for(lambda s: s.json.get("request_id") == "slow")


async def test_a_room_fault_is_answered_and_the_hub_goes_on(broker, tmp_path):
    room = StubRoom()
    room.fail["programs"] = RuntimeError("disk")  # type: ignore[assignment]
    room.fail["pause"] = CommandError("device_unavailable", "LED-1 is not connected")
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/reply/#") as obs, running(fe):
        req = Requester(obs, root, "app")
        rep = await req.request("programs", {"request_id": "x"})
        assert rep["ok"] is False and rep["error"]["code"] == "invalid_state"
        rep = await req.request("pause", {"request_id": "y", "session": "S"})
        assert rep["error"] == {"code": "device_unavailable", "message": "LED-1 is not connected"}
        assert (await req.request("status", {"request_id": "z"}))["ok"]


async def test_a_v311_client_gets_no_properties_but_a_reply(broker, tmp_path):
    """Replies carry the correlation in the payload, so 3.1.1 clients need nothing else."""
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with client(broker, protocol=aiomqtt.ProtocolVersion.V311) as c, running(fe):
        await c.subscribe(f"{root}/reply/old/#", qos=1)
        await c.publish(f"{root}/cmd/programs", json.dumps(
            {"request_id": "v311", "reply_to": f"{root}/reply/old", "correlation_id": "k"}), qos=1)
        async with asyncio.timeout(5):
            async for m in c.messages:
                body = json.loads(m.payload)
                assert body["correlation_id"] == "k" and body["ok"] and body["data"] == StubRoom.PROGRAMS
                break


async def test_the_example_clinic_client_runs_a_session_end_to_end(broker, tmp_path, root_dir, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("clinic_client", root_dir / "examples" / "clinic_client.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # type: ignore[union-attr]

    class CompletingRoom(StubRoom):
        async def start(self, **kw):
            reply = await super().start(**kw)
            session = reply["session"]

            async def run_it() -> None:
                for event in ("confirmed", "started", "step_started", "step_done"):
                    self.event(session, event)
                    await asyncio.sleep(0)
                self.event(session, "completed", reason=None)
                self.set_state(session, "completed")
                self.active = None

            asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(run_it()))
            return reply

    room = CompletingRoom()
    fe = make_frontend(tmp_path, broker, room)
    async with running(fe):
        code = await example.run(example.parse([
            "--host", broker.host, "--port", str(broker.port), "--site", "clinic-a", "--room", fe.topics.room,
            "--client-id", unique("clinic"), "--patient-ref", "P-7", "--operator", "dr. a"]))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "scalp-a" in out and "awaiting_confirmation" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("20")] == \
        ["created", "confirmed", "started", "step_started", "step_done", "completed"]
    assert '"state": "completed"' in out
    assert room.calls[0][0] == "programs" and room.calls[1][1]["program"] == "scalp-a"
