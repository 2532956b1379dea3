"""The front end against a real Mosquitto: birth and will, topics, seq, outages, the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators.local_broker import LocalBroker, free_port
from devicehub.mqtt.envelope import ULID_RE
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox
from devicehub.mqtt.payloads import PUBLISHED_DATA_MODELS, Envelope

from . import (NODELAY, Proxy, Requester, Seen, StubRoom, make_frontend, observing, running, unique, until)


def hub_qos1(s: Seen) -> bool:
    """A QoS 1 message published by the hub (not a command, not a reply, not telemetry)."""
    return "/cmd/" not in s.topic and "/reply/" not in s.topic and not s.topic.endswith("/telemetry")


async def test_birth_then_will_when_the_connection_is_cut(broker, tmp_path):
    room = StubRoom()
    async with Proxy(broker) as proxy:
        fe = make_frontend(tmp_path, proxy, room, boot=42)
        root = fe.topics.root
        online = lambda s: s.json["data"]["state"] == "online"  # noqa: E731
        offline = lambda s: s.json["data"]["state"] == "offline"  # noqa: E731
        async with observing(broker, f"{root}/status", retain_as_published=True) as obs, running(fe):
            birth = await obs.wait_for(online)
            assert birth.retain and birth.qos == 1
            assert birth.json["data"] == {"state": "online", "version": fe.version, "boot": 42,
                                          "since": birth.json["data"]["since"]}
            assert birth.json["seq"] == 1 and birth.json["boot"] == 42 and birth.json["historical"] is False
            async with observing(broker, f"{root}/status") as late:  # what a newcomer finds
                assert (await late.wait_for(lambda s: True)).json["msg_id"] == birth.json["msg_id"]

            proxy.cut()  # no DISCONNECT: the broker publishes the will
            will = await obs.wait_for(offline)
            assert will.retain and will.qos == 1
            assert will.json["data"] == {"state": "offline"} and will.json["boot"] == 42
            assert "seq" not in will.json and ULID_RE.match(will.json["msg_id"])
            assert will.json["ts"] <= birth.json["ts"]  # made when that connection was opened

            # the hub comes back by itself: a new birth, then a new will for the new connection
            start = obs.seen.index(will)
            birth2 = await obs.wait_for(online, start=start)
            assert birth2.json["seq"] > birth.json["seq"]
            proxy.cut()
            will2 = await obs.wait_for(offline, start=obs.seen.index(birth2))
            assert will2.json["msg_id"] != will.json["msg_id"] and will2.json["ts"] > will.json["ts"]
            assert birth2.json["ts"] >= will2.json["ts"]
            await obs.wait_for(online, start=obs.seen.index(will2))
        # clean shutdown: a retained offline with a seq, and no will
        async with observing(broker, f"{root}/status") as late:
            last = await late.wait_for(lambda s: True)
            assert last.retain and last.json["data"] == {"state": "offline"} and last.json["seq"] > 1


async def test_bus_kinds_map_to_their_topics(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    room.bus.emit("device.telemetry", {"v": 1.0}, device="epg-1")  # broker not yet there: dropped
    async with observing(broker, f"{root}/#", retain_as_published=True) as obs, running(fe):
        assert fe.telemetry_dropped == 1
        session = room.make_running()
        room.device_state("epg-1", "armed")
        room.bus.emit("device.telemetry", {"voltage_v": 40.0, "current_ma": float("nan")}, device="epg-1")
        room.event(session, "started")
        room.bus.emit("alarms", {"alarms": [{"id": "A1", "priority": "low", "source": "hub", "code": "x",
                                             "text": "t", "since": "2026-11-21T10:00:00.000000Z",
                                             "latched": False, "session": session}]})  # as the board emits it
        alarms = await obs.wait_for(lambda s: s.topic == f"{root}/alarms")
        state = obs.of(lambda s: s.topic == f"{root}/devices/epg-1/state")[0]
        tele = await obs.wait_for(lambda s: s.topic == f"{root}/devices/epg-1/telemetry")
        sess = obs.of(lambda s: s.topic == f"{root}/session")[0]
        event = obs.of(lambda s: s.topic == f"{root}/sessions/{session}/events")[0]
        for seen, retained, qos in ((state, True, 1), (sess, True, 1), (event, False, 1), (alarms, True, 1),
                                    (tele, False, 0)):
            assert (seen.retain, seen.qos) == (retained, qos), seen.topic
            env = Envelope.model_validate(seen.json)
            PUBLISHED_DATA_MODELS[env.type].model_validate(env.data)
        assert tele.json["tseq"] == 2 and "seq" not in tele.json  # tseq 1 was the dropped reading
        assert tele.json["data"] == {"voltage_v": 40.0, "current_ma": None}  # NaN is not JSON
        assert state.json["type"] == "device.state" and "session" not in state.json
        assert sess.json["session"] == session and sess.json["data"]["state"] == "running"
        assert event.json["session"] == session and event.json["data"] == {"event": "started", "index": 1}
        assert alarms.json["data"][0]["id"] == "A1" and alarms.json["session"] == session
        async with observing(broker, f"{root}/#") as late:  # the retained picture
            await late.wait_count(lambda s: True, 4)
            assert {s.topic for s in late.seen} == {f"{root}/status", f"{root}/devices/epg-1/state",
                                                   f"{root}/session", f"{root}/alarms"}


async def test_seq_has_no_gap_and_keeps_order_with_pipelining(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    async with observing(broker, f"{root}/#") as obs, running(fe):
        session = room.make_running()
        for i in range(400):
            room.event(session, "point_done", point=i)
            if i % 50 == 0:
                room.device_state("inj-1", f"state-{i}")
                room.bus.emit("device.telemetry", {"i": i}, device="inj-1")
        room.bus.emit("alarms", {"alarms": []})
        await obs.wait_for(lambda s: s.topic == f"{root}/alarms", timeout=10)
        seqs = [s.json["seq"] for s in obs.seen if hub_qos1(s)]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 1 + 1 + 400 + 8 + 1
        indexes = [s.json["data"]["index"] for s in obs.seen if s.topic.endswith("/events")]
        assert indexes == list(range(1, 401))
    assert len(fe.outbox) == 0


class PersistentConsumer:
    """A clinic consumer with a persistent session (MQTT 5 clean start false + session expiry)."""

    def __init__(self, broker: LocalBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.identifier = unique("follower")
        self.seen: list[Seen] = []
        self.sessions_present: list[bool] = []
        self.subscribed = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        first = True
        while True:
            try:
                # clean start false from the very first connection: Mosquitto 2.0.11 does not restore
                # over a broker restart a v5 session that was opened with clean start true
                async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.identifier,
                                          protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                          properties=props, socket_options=NODELAY) as c:
                    if first:  # later connections rely on the broker's session (not subscribing again)
                        await c.subscribe(self.topic, qos=1)
                        first = False
                    self.subscribed.set()
                    async for m in c.messages:
                        self.seen.append(Seen(m.topic.value, m.payload, m.retain, m.qos, m.properties))
                        self.changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.02)  # reconnect backoff while the broker is away

    async def wait(self, pred: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


async def test_broker_outage_a_persistent_consumer_gets_every_event(tmp_path):
    # mosquitto drops root privileges before writing its database: a directory it can reach
    store_dir = tempfile.TemporaryDirectory(prefix="devicehub-mosq-")
    store = store_dir.name
    os.chmod(store, 0o777)
    broker = LocalBroker(extra_conf=f"persistence true\npersistence_location {store}/\nautosave_interval 3600\n")
    broker.start()
    try:
        room = StubRoom()
        fe = make_frontend(tmp_path, broker, room)
        root = fe.topics.root
        consumer = PersistentConsumer(broker, f"{root}/#")
        follower = asyncio.create_task(consumer.run())
        await asyncio.wait_for(consumer.subscribed.wait(), 5)
        async with running(fe):
            session = room.make_running()
            emitted = 0
            down_from = down_to = 0

            async def emit(n: int) -> None:
                nonlocal emitted
                for _ in range(n):
                    emitted += 1
                    room.event(session, "point_done", n=emitted)
                    await asyncio.sleep(0)  # the room goes on at its own pace

            await emit(40)
            await asyncio.to_thread(broker.stop)  # mid-stream: some are in flight
            down_from = emitted + 1
            await emit(60)
            room.device_state("epg-1", "running")
            room.device_state("epg-1", "idle")  # the last state while away must end retained
            down_to = emitted
            await until(lambda: not fe.connected, 5, "the hub noticing the outage")
            await asyncio.to_thread(broker.start)
            await fe.wait_online(10)
            await emit(40)
            events = lambda: {s.json["msg_id"]: s for s in consumer.seen  # noqa: E731
                              if s.topic.endswith("/events")}
            await consumer.wait(lambda: {s.json["data"]["index"] for s in events().values()}
                                >= set(range(1, 141)), 20)
            await until(lambda: len(fe.outbox) == 0, 10, "outbox drained")

            unique_events = list(events().values())
            assert sorted(s.json["data"]["index"] for s in unique_events) == list(range(1, 141))  # no duplicate
            historical = {s.json["data"]["index"] for s in unique_events if s.json["historical"]}
            assert set(range(down_from, down_to + 1)) <= historical
            assert not {s.json["data"]["index"] for s in unique_events if s.json["data"]["index"] > down_to} \
                & historical
            wills = [s.json for s in consumer.seen if hub_qos1(s) and "seq" not in s.json]
            assert all(w["data"] == {"state": "offline"} for w in wills)  # the broker's shutdown sent the will
            by_msg = {s.json["msg_id"]: s.json for s in consumer.seen if hub_qos1(s) and "seq" in s.json}
            seqs = sorted(m["seq"] for m in by_msg.values())
            assert seqs == list(range(1, seqs[-1] + 1))  # the replay filled the gap
            assert seqs[-1] == fe.envelopes.last_seq
            async with observing(broker, f"{root}/devices/+/state") as late:
                retained = await late.wait_for(lambda s: True)
                assert retained.json["data"]["state"] == "idle" and not retained.json["historical"]
        follower.cancel()
        with contextlib.suppress(BaseException):
            await follower
    finally:
        broker.stop()
        store_dir.cleanup()


async def test_outbox_bound_full_alarm_then_drain(tmp_path):
    broker = LocalBroker(port=free_port())  # not started yet: the hub begins without a broker
    levels: list[str | None] = []
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room, outbox=Outbox(tmp_path / "o.sqlite", bound=10),
                       on_outbox_alarm=levels.append)
    try:
        async with running(fe, wait_online=False):
            session = room.make_running()
            for _ in range(7):
                room.event(session, "point_done")
            await until(lambda: len(fe.outbox) == 8)
            assert levels == [] and not fe.outbox_full()
            room.event(session, "point_done")
            await until(lambda: levels == ["medium"], what="medium alarm")
            assert not fe.outbox_full()
            room.event(session, "point_done")
            await until(lambda: levels == ["medium", "high"], what="high alarm")
            assert fe.outbox_full()
            for _ in range(10):  # every event of the running session is still kept
                room.event(session, "point_done")
            await until(lambda: len(fe.outbox) == 20)
            await asyncio.to_thread(broker.start)
            await fe.wait_online(10)
            await until(lambda: len(fe.outbox) == 0, 10, "drained")
            assert not fe.outbox_full() and levels[:2] == ["medium", "high"] and levels[-1] is None
    finally:
        broker.stop()


async def test_outbox_survives_a_hub_restart_and_replays_after_the_birth(broker, tmp_path):
    room_id = unique("room")
    away = LocalBroker(port=free_port())  # never started
    room1 = StubRoom()
    fe1 = make_frontend(tmp_path, away, room1, room_id=room_id, boot=1)
    async with running(fe1, wait_online=False):
        session = room1.make_running()
        room1.event(session, "point_done")
        room1.event(session, "point_done")
        await until(lambda: len(fe1.outbox) == 3)
    root = fe1.topics.root
    room2 = StubRoom()
    fe2 = make_frontend(tmp_path, broker, room2, room_id=room_id, boot=2,
                        outbox=Outbox(tmp_path / "outbox.sqlite"), store=IdempotencyStore(tmp_path / "r.sqlite"))
    assert len(fe2.outbox) == 4  # three messages and the offline status of boot 1
    async with observing(broker, f"{root}/#", retain_as_published=True) as obs, running(fe2):
        await obs.wait_count(hub_qos1, 5)
        await until(lambda: len(fe2.outbox) == 0)
        got = [s.json for s in obs.seen]
        assert got[0]["boot"] == 2 and got[0]["seq"] == 1 and got[0]["data"]["state"] == "online"
        assert [(m["boot"], m["seq"], m["historical"]) for m in got[1:]] == [(1, i, True) for i in range(1, 5)]
        assert [m["type"] for m in got[1:]] == ["session.state", "session.event", "session.event", "status"]
        assert not any(s.retain for s in obs.seen[1:])  # replayed without retain
    async with observing(broker, f"{root}/status") as late:
        assert (await late.wait_for(lambda s: True)).json["boot"] == 2


async def test_a_broker_that_stops_acknowledging_gets_a_new_connection_and_the_replay(broker, tmp_path):
    # the link stays up (no keepalive failure for a long while) but no PUBACK comes back:
    # the one watchdog of publishes in flight renews the connection and the outbox replays
    room = StubRoom()
    async with Proxy(broker) as proxy:
        fe = make_frontend(tmp_path, proxy, room, publish_timeout_s=0.5, keepalive=60)
        root = fe.topics.root
        event = lambda s: s.json.get("type") == "session.event"  # noqa: E731
        async with observing(broker, f"{root}/sessions/#") as obs, running(fe):
            session = room.make_running()
            await until(lambda: len(fe.outbox) == 0, what="the session state acknowledged")
            proxy.swallow_downstream = True
            room.event(session, "point_done")
            live = await obs.wait_for(event)  # the broker has it; the hub never hears so
            assert live.json["historical"] is False and len(fe.outbox) == 1
            await until(lambda: not fe.connected, timeout=3.0, what="the connection given up")
            proxy.swallow_downstream = False
            proxy.cut()  # a reconnection begun while answers were dropped starts over
            replay = await obs.wait_for(event, start=obs.seen.index(live) + 1)
            assert replay.json["historical"] is True
            assert (replay.json["seq"], replay.json["msg_id"]) == (live.json["seq"], live.json["msg_id"])
            await until(lambda: len(fe.outbox) == 0, what="the replay acknowledged")
            assert fe.connections >= 2


async def test_two_rooms_on_one_broker_never_see_each_others_commands(broker, tmp_path):
    rooms = [StubRoom(), StubRoom()]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fes = [make_frontend(tmp_path / "a", broker, rooms[0]), make_frontend(tmp_path / "b", broker, rooms[1])]
    start = {"program": "scalp-a", "patient_ref": "P", "operator": "o"}
    async with observing(broker, "devicehub/v1/clinic-a/#") as obs, running(fes[0]), running(fes[1]):
        reqs = [Requester(obs, fe.topics.root, "app") for fe in fes]
        rep = await reqs[0].request("start", {"request_id": "same-id", **start})
        assert rep["room"] == fes[0].topics.room
        assert rooms[0].verbs_called() == ["start"] and rooms[1].calls == []
        rep = await reqs[1].request("start", {"request_id": "same-id", **start})  # ids are per hub
        assert rep["ok"] and rep["room"] == fes[1].topics.room
        await reqs[0].send("abort", {"request_id": "cross"}, reply_to=f"{fes[1].topics.root}/reply/app")
        await obs.wait_for(lambda s: s.topic == f"{fes[0].topics.root}/session"
                           and s.json["data"]["state"] == "aborted")
        assert rooms[1].verbs_called() == ["start"] and rooms[1].active is not None
        assert rooms[0].verbs_called() == ["start", "abort"]
        assert not obs.of(lambda s: s.topic.startswith(f"{fes[1].topics.root}/reply/")
                          and s.json["request_id"] == "cross")


async def test_cancelling_the_frontend_still_leaves_a_retained_offline(broker, tmp_path):
    room = StubRoom()
    fe = make_frontend(tmp_path, broker, room)
    root = fe.topics.root
    task = asyncio.create_task(fe.run())
    await fe.wait_online(10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with observing(broker, f"{root}/status") as late:
        last = await late.wait_for(lambda s: True)
        assert last.json["data"] == {"state": "offline"} and last.json["seq"] == 2
    assert len(fe.outbox) == 0
    await fe.outbox.aclose()
    fe.idempotency.close()


async def test_an_outbox_restored_past_its_bound_raises_its_alarm_at_once(tmp_path):
    first = Outbox(tmp_path / "outbox.sqlite", bound=5)
    for i in range(6):
        first.add("t", b"x", False)
    await first.aclose()
    levels: list[str | None] = []
    restored = Outbox(tmp_path / "outbox.sqlite", bound=5)
    fe = make_frontend(tmp_path, LocalBroker(port=free_port()), StubRoom(), outbox=restored,
                       on_outbox_alarm=levels.append)
    assert fe.outbox_full and levels == ["high"]  # not only when the level next changes
    restored.close()
    fe.idempotency.close()
