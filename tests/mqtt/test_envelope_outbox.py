"""Envelope, topics, outbox and idempotency store: the parts that need no network."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from devicehub.ids import UlidGenerator
from devicehub.mqtt.envelope import (ULID_RE, EnvelopeFactory, dumps, mark_historical, new_ulid,
                                     parse_rfc3339, rfc3339)
from devicehub.mqtt.idempotency import IdempotencyStore, fingerprint
from devicehub.mqtt.outbox import Outbox
from devicehub.mqtt.topics import Topics

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_ulids_are_unique_sorted_and_crockford():
    ids = [new_ulid() for _ in range(5000)]
    assert all(ULID_RE.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # monotonic within one process, even within one millisecond
    gen = UlidGenerator()
    a, b = gen.new(now_ms=1000), gen.new(now_ms=1000)
    assert a[:10] == b[:10] and b > a
    assert gen.new(now_ms=0)[:10] == a[:10]  # a clock step back never breaks the order


def test_ulid_text_is_the_crockford_base32_of_its_128_bits():
    gen = UlidGenerator()
    text = gen.new(now_ms=0x0123456789AB)
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = 0
    for ch in text:
        value = value * 32 + crockford.index(ch)
    assert value >> 80 == 0x0123456789AB and text[:10] == "014D2PF2DB"


def test_rfc3339_format_and_parse():
    ts = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert rfc3339(ts) == "2026-11-21T10:00:00.123456Z"
    assert rfc3339(ts.astimezone(timezone(timedelta(hours=2)))) == "2026-11-21T10:00:00.123456Z"
    assert parse_rfc3339("2026-11-21T12:00:00+02:00") == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    assert parse_rfc3339("2026-11-21t10:00:00.123456789z").microsecond == 123456
    for bad in ("2026-11-21T10:00:00", "2026-11-21", "yesterday", "2026-11-21 10:00:00Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
    with pytest.raises(ValueError):
        rfc3339(datetime(2026, 1, 1))
    assert rfc3339(datetime(2026, 1, 1, tzinfo=timezone.utc)) == "2026-01-01T00:00:00.000000Z"  # zero micros kept


@pytest.mark.parametrize("type_, data, counters", [
    ("device.telemetry", {"id": "inj-1", "readings": {"p": 212.0, "n": 8, "ok": True, "x": None}}, {"tseq": 9}),
    ("session.event", {"event": "point_done", "index": 3, "note": "é \"q\" \u2028"}, {"seq": 12, "session": "S1"}),
    ("alarms", [{"id": "a", "severity": "high"}], {"seq": 1}),
    ("status", {"state": "online"}, {}),
])
def test_encode_is_dumps_of_message_byte_for_byte(type_, data, counters):
    f = EnvelopeFactory("clinic-a", "room-\u00e9", boot=7)
    ts = datetime(2026, 11, 21, 10, 0, 0, 5, tzinfo=timezone.utc)
    fast = f.encode(type_, data, ts=ts, **counters)
    env = json.loads(fast)
    assert fast == dumps(f.message(type_, data, ts=ts, msg_id=env["msg_id"], **counters))
    assert ULID_RE.match(env["msg_id"])
    nan = orjson.loads(f.encode(type_, {"bad": float("nan")}, ts=ts, **counters))
    assert nan["data"] == {"bad": None}  # NaN is not JSON: sent as null, as the wire has always had it
    with pytest.raises(TypeError):
        f.encode(type_, {"bad": object()}, ts=ts, **counters)


def test_envelopes_of_one_boot():
    f = EnvelopeFactory("clinic-a", "room-1", boot=7)
    e1 = f.message("session.event", {"event": "created", "index": 1}, seq=f.next_seq(), session="S1")
    e2 = f.message("device.state", {"connected": True}, seq=f.next_seq())
    assert list(e1) == ["v", "type", "site", "room", "boot", "seq", "msg_id", "ts", "historical", "session", "data"]
    assert (e1["v"], e1["type"], e1["site"], e1["room"], e1["boot"]) == (1, "session.event", "clinic-a", "room-1", 7)
    assert (e1["seq"], e2["seq"]) == (1, 2)
    assert "session" not in e2 and e1["historical"] is False
    assert TS_RE.match(e1["ts"]) and ULID_RE.match(e1["msg_id"]) and e1["msg_id"] != e2["msg_id"]
    tele = f.message("device.telemetry", {}, tseq=f.next_tseq())
    assert tele["tseq"] == 1 and "seq" not in tele
    will = f.will()
    assert will["data"] == {"state": "offline"} and will["boot"] == 7 and "seq" not in will
    reply = f.reply(ok=True, request_id="r", correlation_id=None, data={"x": 1})
    assert reply["type"] == "reply" and "seq" not in reply and "tseq" not in reply and reply["data"] == {"x": 1}
    failed = f.reply(ok=False, request_id=None, correlation_id="c", error={"code": "expired", "message": "m"})
    assert "data" not in failed and failed["error"]["code"] == "expired"
    replay = json.loads(mark_historical(json.dumps(e1).encode()))
    assert replay == {**e1, "historical": True}


def test_topics_and_reply_paths():
    t = Topics("clinic-a", "room-1")
    assert t.root == "devicehub/v1/clinic-a/room-1"
    assert t.device_state("epg-1") == "devicehub/v1/clinic-a/room-1/devices/epg-1/state"
    assert t.session_events("01J") == "devicehub/v1/clinic-a/room-1/sessions/01J/events"
    assert t.verb_of("devicehub/v1/clinic-a/room-1/cmd/start") == "start"
    assert t.verb_of("devicehub/v1/clinic-a/room-2/cmd/start") is None
    good = ["devicehub/v1/clinic-a/room-1/reply/app", "devicehub/v1/clinic-a/room-1/reply/app/x/y"]
    bad = ["devicehub/v1/clinic-a/room-1/reply/", "devicehub/v1/clinic-a/room-1/reply//x",
           "devicehub/v1/clinic-a/room-1/reply/+", "devicehub/v1/clinic-a/room-1/reply/a/#",
           "devicehub/v1/clinic-a/room-10/reply/app", "devicehub/v1/clinic-a/room-1/status",
           "devicehub/v1/clinic-a/room-1/replyx/app", "other/devicehub/v1/clinic-a/room-1/reply/app", 5, None]
    assert all(t.is_reply_path(g) for g in good)
    assert not any(t.is_reply_path(b) for b in bad)
    for site, room in (("a/b", "r"), ("a", "r+"), ("", "r"), ("a", "r#")):
        with pytest.raises(ValueError):
            Topics(site, room)
    with pytest.raises(ValueError):
        t.session_events("a/b")
    for _ in range(2):  # the second time from its cache, with the same answers
        assert t.device_telemetry("inj-1") == "devicehub/v1/clinic-a/room-1/devices/inj-1/telemetry"
        for bad_id in ("a/b", "+", "", None):
            with pytest.raises(ValueError):
                t.device_telemetry(bad_id)


async def test_outbox_order_remove_and_restart(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite", bound=100)
    ids = [ob.add(f"t/{i}", f"p{i}".encode(), retain=i % 2 == 0) for i in range(10)]
    assert ids == list(range(1, 11)) and len(ob) == 10
    await ob.wait_committed(ids[-1])
    got = await ob.read(0, 100)
    assert [e.id for e in got] == ids and got[0].retain and not got[1].retain
    assert [e.payload for e in got] == [f"p{i}".encode() for i in range(10)]
    ob.remove([1, 2, 5])
    assert len(ob) == 7
    assert [e.id for e in await ob.read(0, 100)] == [3, 4, 6, 7, 8, 9, 10]
    assert [e.id for e in await ob.read(6, 2)] == [7, 8]
    await ob.aclose()

    again = Outbox(tmp_path / "o.sqlite", bound=100)  # a hub restart
    assert len(again) == 7
    assert [e.id for e in await again.read(0, 100)] == [3, 4, 6, 7, 8, 9, 10]
    assert again.add("t/x", b"x", False) == 11  # ids keep growing: the replay order holds
    again.close()  # sync close writes what is queued
    third = Outbox(tmp_path / "o.sqlite", bound=100)
    assert [e.id for e in await third.read(0, 100)][-1] == 11
    third.close()


async def test_outbox_reads_only_what_is_on_disk(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    entry = ob.add("t", b"x", False)
    assert ob.committed_upto < entry and await ob.read(0) == []  # queued, not yet written
    await ob.wait_committed(entry)
    assert [e.id for e in await ob.read(0)] == [entry]
    await ob.aclose()


async def test_outbox_bound_alarm_and_full(tmp_path):
    levels: list[str | None] = []
    ob = Outbox(tmp_path / "o.sqlite", bound=10, on_alarm=levels.append)
    for i in range(8):
        ob.add("t", b"x", False)
    assert levels == [] and not ob.full() and ob.fill_ratio() == 0.8
    ob.add("t", b"x", False)
    assert levels == ["medium"] and not ob.full()
    ob.add("t", b"x", False)
    assert levels == ["medium", "high"] and ob.full()
    for i in range(5):  # past the bound nothing is dropped
        ob.add("t", b"x", False)
    assert len(ob) == 15 and levels == ["medium", "high"]
    await ob.wait_committed(15)
    ob.remove(range(1, 9))
    assert len(ob) == 7 and not ob.full() and levels == ["medium", "high", None]
    await ob.aclose()
    reopened = Outbox(tmp_path / "o.sqlite", bound=5, on_alarm=levels.append)
    assert reopened.full() and reopened.alarm_level == "high"
    reopened.close()


async def test_idempotency_store(tmp_path):
    store = IdempotencyStore(tmp_path / "r.sqlite")
    body = {"request_id": "r1", "program": "p", "reply_to": "a", "correlation_id": "c", "expires_at": "x"}
    fp = fingerprint("start", body)
    assert fp == fingerprint("start", {"program": "p", "request_id": "r1"})  # ignored members, key order
    assert fp != fingerprint("start", {"request_id": "r1", "program": "q"})
    assert fp != fingerprint("program", {"request_id": "r1", "program": "p"})  # the verb counts
    assert await store.put("r1", fp, {"ok": True, "data": {"session": "S"}})
    assert not await store.put("r1", "other", {"ok": False})  # the first reply wins
    got = await store.get("r1")
    assert got is not None and got.fingerprint == fp and got.reply == {"ok": True, "data": {"session": "S"}}
    assert await store.get("r2") is None
    store.close()
    store = IdempotencyStore(tmp_path / "r.sqlite")  # a restart keeps it
    assert (await store.get("r1")).reply["data"] == {"session": "S"}
    store.close()


async def test_idempotency_keeps_an_hour_and_the_last_n(tmp_path):
    store = IdempotencyStore(tmp_path / "r.sqlite", keep_seconds=3600, keep_last=5)
    for i in range(20):
        await store.put(f"r{i}", "fp", {"ok": True})
    await store.prune()  # all young: nothing goes
    assert await store.count() == 20
    await store.prune(now=datetime.now().timestamp() + 7200)  # two hours later: the last 5 stay
    assert await store.count() == 5
    assert await store.get("r14") is None and await store.get("r15") is not None
    store.close()


def test_committed_schemas_equal_the_generated_ones(root_dir):
    from devicehub.mqtt.schemas import differences, schemas

    assert differences(root_dir / "docs" / "schemas") == [], \
        "run: python -m devicehub.mqtt.schemas docs/schemas"
    names = set(schemas())
    assert {"mqtt-envelope.json", "mqtt-reply.json", "mqtt-request-start.json", "mqtt-reply-data-abort.json",
            "mqtt-data-session-event.json", "mqtt-data-alarms.json"} <= names
