"""The session record: append-only, tamper-evident, crash-safe, derived summaries."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicehub.records import (
    RecordError,
    RecordIntegrityError,
    RecordStore,
    SessionNotFound,
    new_session_id,
)
from devicehub.records.async_store import AsyncRecordStore
from devicehub.records.report import render_report, write_report

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)


def new_session(store: RecordStore, sid: str = "S1", patient: str = "P-1", **over) -> str:
    kwargs = dict(program_id="crown-basic", program_version="1.2", program_sha256="ab" * 32,
                  program_json={"program": "crown-basic", "title": "Crown", "steps": []},
                  patient_ref=patient, operator="dr-lee", origin="console",
                  params={"inj": {"depth_mm": 2.0}}, acknowledgements=["inj.depth_mm"])
    kwargs.update(over)
    store.create_session(sid, **kwargs)
    return sid


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tamper(path: Path, *statements: str) -> None:
    """Edit the file as an intruder would: another connection, triggers dropped."""
    conn = sqlite3.connect(path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    for sql in statements:
        conn.executescript(sql)
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "record.db"


@pytest.fixture
def store(db: Path):
    s = RecordStore(db)
    yield s
    s.close()


def run_full_session(store: RecordStore, sid: str = "S1", *, end: str = "completed", totals: bool = True) -> None:
    store.append_event(sid, "created", {"program": "crown-basic"}, ts=at(0))
    store.append_event(sid, "state", {"state": "preflight"}, ts=at(1))
    store.append_event(sid, "preflight_item", {"item": "scalp_disinfected", "done": True, "by": "nurse-a"}, ts=at(2))
    store.append_event(sid, "state", {"state": "awaiting_confirmation"}, ts=at(3))
    store.append_event(sid, "confirmed", {"by": "tech-b"}, ts=at(4))
    store.append_event(sid, "state", {"state": "running"}, ts=at(5))
    store.append_event(sid, "started", {}, ts=at(5))
    store.append_event(sid, "step_started", {"step": "inj", "kind": "injection", "device": "inj-1"}, ts=at(6))
    for point in (1, 2):
        d = store.delivery_intent(sid, step_id="inj", zone="crown", point=point, device="inj-1",
                                  planned={"uL": 5.0, "depth_mm": 2.0}, ts=at(6 + point))
        idx = store.append_event(sid, "point_done", {"step": "inj", "zone": "crown", "point": point,
                                                     "device": "inj-1", "delivered": {"uL": 4.5}}, ts=at(7 + point))
        store.delivery_result(d, delivered={"uL": 4.5, "depth_mm": 1.5 + point / 10}, status="done",
                              event_idx=idx, ts=at(7 + point))
    store.append_event(sid, "step_done", {"step": "inj", "kind": "injection", "device": "inj-1",
                                          "totals": {"uL": 9.0}}, ts=at(10))
    store.append_event(sid, "state", {"state": end, "reason": "program_done" if end == "completed" else "operator"},
                       ts=at(11))
    data = {"reason": "program_done" if end == "completed" else "operator"}
    if totals:
        data["totals"] = {"inj-1": {"uL": 9.0}}
    store.append_event(sid, end, data, ts=at(11.5))


def full(store: RecordStore, sid: str = "S1", **kwargs) -> None:
    """A session recorded from creation to its end (13 events, 2 points delivered)."""
    new_session(store, sid)
    run_full_session(store, sid, **kwargs)


# ---------------------------------------------------------------- append-only


@pytest.mark.parametrize("sql", [
    "UPDATE events SET data_json = '{}' WHERE idx = 1",
    "DELETE FROM events WHERE idx = 2",
    "UPDATE deliveries SET status = 'done'",
    "DELETE FROM deliveries",
    "UPDATE sessions SET patient_ref = 'P-2'",
    "DELETE FROM sessions",
    "UPDATE refusals SET code = 'soft_limit'",
    "DELETE FROM refusals",
])
def test_record_rows_cannot_be_changed_or_removed(store: RecordStore, db: Path, sql: str) -> None:
    full(store)
    store.record_refusal(program_id="p", patient_ref="P-1", operator="op", origin="mqtt", code="hard_limit")
    other = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        other.execute(sql)
    other.close()
    assert store.verify("S1").ok


def test_events_must_continue_the_sequence(store: RecordStore, db: Path) -> None:
    new_session(store)
    store.append_event("S1", "created", {})
    other = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="out of sequence"):
        other.execute("INSERT INTO events VALUES ('S1', 5, 'x', 'alarm', '{}', 'a', 'b')")
    other.close()


# ---------------------------------------------------------------- hash chain


def test_chain_verifies_and_reports_its_head(store: RecordStore) -> None:
    full(store)
    result = store.verify("S1")
    assert result.ok and result.first_bad is None and result.first_bad_delivery is None
    assert result.events == 13 and result.deliveries == 4
    assert result.head == store.events("S1")[-1]["hash"]


@pytest.mark.parametrize("sql, first_bad", [
    ("UPDATE events SET data_json = replace(data_json, '4.5', '45') WHERE idx = 9", 9),
    ("UPDATE events SET ts = '2026-03-02T09:00:03.500000Z' WHERE idx = 4", 4),
    ("DELETE FROM events WHERE idx = 3", 3),
    # reordered: events 4 and 5 swap places
    ("UPDATE events SET idx = 1000 WHERE idx = 4; UPDATE events SET idx = 4 WHERE idx = 5; "
     "UPDATE events SET idx = 5 WHERE idx = 1000", 4),
    # the session row is the start of the chain
    ("UPDATE sessions SET patient_ref = 'P-2'", 1),
    # the last event removed: only the head knows it was there
    ("DELETE FROM events WHERE idx = 13", 13),
])
def test_tampered_event_is_found(store: RecordStore, db: Path, sql: str, first_bad: int) -> None:
    full(store)
    tamper(db, sql)
    result = store.verify("S1")
    assert not result.ok
    assert result.first_bad == first_bad
    assert result.head is None and result.message


def test_rewritten_event_with_recomputed_hash_breaks_the_next_link(store: RecordStore, db: Path) -> None:
    from devicehub.records.store import _event_hash  # the intruder knows the algorithm

    full(store)
    ev = store.events("S1")[8]
    data = dict(ev["data"], delivered={"uL": 45})
    new_hash = _event_hash(ev["prev_hash"], "S1", ev["index"], ev["ts"], ev["event"], data)
    tamper(db, f"UPDATE events SET data_json = '{json.dumps(data)}', hash = '{new_hash}' WHERE idx = {ev['index']}")
    result = store.verify("S1")
    assert not result.ok and result.first_bad == ev["index"] + 1


def test_event_forged_onto_the_tail_is_found(store: RecordStore, db: Path) -> None:
    from devicehub.records.store import _event_hash

    full(store)
    last = store.events("S1")[-1]
    data = {"event": "alarm", "index": 14, "id": "forged"}
    ts = "2026-03-02T10:00:00.000000Z"
    forged = _event_hash(last["hash"], "S1", 14, ts, "alarm", data)
    tamper(db, f"INSERT INTO events VALUES ('S1', 14, '{ts}', 'alarm', '{json.dumps(data)}', "
               f"'{last['hash']}', '{forged}')")
    result = store.verify("S1")
    assert not result.ok and result.first_bad == 14


@pytest.mark.parametrize("sql", [
    "UPDATE deliveries SET delivered_json = '{\"uL\":50}' WHERE id = 2",
    "DELETE FROM deliveries WHERE id = 3",
    "DELETE FROM deliveries WHERE id = 4",
])
def test_tampered_delivery_is_found(store: RecordStore, db: Path, sql: str) -> None:
    full(store)
    tamper(db, sql)
    result = store.verify("S1")
    assert not result.ok
    assert result.first_bad is None  # the events themselves are intact
    assert "deliver" in result.message


def test_removed_session_row_is_tampering_not_absence(store: RecordStore, db: Path) -> None:
    full(store)
    tamper(db, "DELETE FROM sessions")
    assert store.session("S1") is None
    assert not store.verify("S1").ok
    with pytest.raises(SessionNotFound):
        store.verify("NEVER")


def test_append_after_a_removed_tail_is_refused(store: RecordStore, db: Path) -> None:
    full(store)
    tamper(db, "DELETE FROM events WHERE idx = 13")
    with pytest.raises(RecordIntegrityError):
        store.append_event("S1", "alarm", {"id": "x"})


def test_other_sessions_unaffected_by_tampering(store: RecordStore, db: Path) -> None:
    full(store, "S1")
    full(store, "S2")
    tamper(db, "UPDATE events SET event = 'paused' WHERE session_id = 'S1' AND idx = 2")
    assert not store.verify("S1").ok
    assert store.verify("S2").ok


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(idx=st.integers(1, 13), pos=st.integers(0, 10_000), char=st.sampled_from("0123456789xyz"))
def test_any_single_character_change_is_found(tmp_path: Path, idx: int, pos: int, char: str) -> None:
    db = tmp_path / f"{new_session_id()}.db"
    with RecordStore(db) as s:
        full(s)
        text = s.events("S1")[idx - 1]
    raw = sqlite3.connect(db).execute("SELECT data_json FROM events WHERE idx = ?", (idx,)).fetchone()[0]
    p = pos % len(raw)
    changed = raw[:p] + char + raw[p + 1:]
    if changed == raw:
        return
    tamper(db, f"UPDATE events SET data_json = '{changed.replace(chr(39), chr(39) * 2)}' WHERE idx = {idx}")
    with RecordStore(db) as s:
        result = s.verify("S1")
    assert not result.ok and result.first_bad == idx, text


# ---------------------------------------------------------------- summary


def test_summary_is_derived_from_events_and_deliveries(store: RecordStore) -> None:
    full(store)
    s = store.session("S1")
    assert s["session"] == "S1" and s["program"] == "crown-basic" and s["version"] == "1.2"
    assert s["sha256"] == "ab" * 32 and s["patient_ref"] == "P-1" and s["operator"] == "dr-lee"
    assert s["origin"] == "console" and s["acknowledged"] == ["inj.depth_mm"]
    assert s["params"] == {"inj": {"depth_mm": 2.0}}
    assert s["created_at"].endswith("Z") and len(s["created_at"]) == 27
    assert s["state"] == "completed" and s["reason"] == "program_done"
    assert s["started_at"] == "2026-03-02T09:00:05.000000Z"
    assert s["ended_at"] == "2026-03-02T09:00:11.000000Z"
    assert [x["state"] for x in s["states"]] == [
        "created", "preflight", "awaiting_confirmation", "running", "completed"]
    assert s["totals"] == {"inj-1": {"uL": 9.0}}
    assert s["events_count"] == 13 and s["in_flight"] == []
    (step,) = s["steps"]
    assert step["step"] == "inj" and step["kind"] == "injection" and step["devices"] == ["inj-1"]
    assert step["points_planned"] == 2 and step["points_done"] == 2 and step["results"] == {"done": 2}
    assert step["delivered"] == {"inj-1": {"uL": 9.0, "depth_mm": 1.7}}  # depth: the deepest, not a sum
    assert step["totals"] == {"uL": 9.0}
    assert step["started_at"] == "2026-03-02T09:00:06.000000Z" and step["done_at"] == "2026-03-02T09:00:10.000000Z"


def test_totals_are_the_delivered_sums(store: RecordStore) -> None:
    """The totals are what the result rows say, whatever the terminal event says or lacks:
    amounts summed, a depth (or a peak, a timing error) is no total."""
    full(store, end="aborted", totals=False)
    s = store.session("S1")
    assert s["state"] == "aborted" and s["reason"] == "operator"
    assert s["totals"] == {"inj-1": {"uL": 9.0}}


def test_pause_resume_timeline_and_reasons(store: RecordStore) -> None:
    new_session(store)
    for i, (state, reason) in enumerate([("running", None), ("paused", "patient_break"),
                                         ("awaiting_confirmation", None), ("running", None)]):
        store.append_event("S1", "state", {"state": state, **({"reason": reason} if reason else {})}, ts=at(i))
    s = store.session("S1")
    assert s["state"] == "running" and s["reason"] is None and s["ended_at"] is None
    assert [(x["state"], x["reason"]) for x in s["states"][1:]] == [
        ("running", None), ("paused", "patient_break"), ("awaiting_confirmation", None), ("running", None)]
    assert s["started_at"] == "2026-03-02T09:00:00.000000Z"


def test_event_data_carries_its_name_and_index(store: RecordStore) -> None:
    new_session(store)
    assert store.append_event("S1", "created", {"program": "crown-basic"}) == 1
    assert store.append_event("S1", "alarm", {"id": "a1", "index": 99}) == 2
    events = store.events("S1")
    assert [e["data"] for e in events] == [{"program": "crown-basic", "event": "created", "index": 1},
                                           {"id": "a1", "event": "alarm", "index": 2}]
    assert [e["index"] for e in store.events("S1", after=1)] == [2]
    assert events[0]["ts"].endswith("Z")


def test_state_changes_after_the_end_are_refused(store: RecordStore) -> None:
    full(store)
    with pytest.raises(RecordError):
        store.append_event("S1", "failed", {"reason": "hub_restart"})
    with pytest.raises(RecordError):
        store.append_event("S1", "state", {"state": "running"})
    store.append_event("S1", "state", {"state": "completed"})  # a repeat is harmless
    store.append_event("S1", "alarm", {"id": "late"})  # and so is a non-state event
    assert store.session("S1")["state"] == "completed"
    assert store.verify("S1").ok


@pytest.mark.parametrize("call", [
    lambda s: s.append_event("S1", "state", {"state": "flying"}),
    lambda s: s.append_event("S1", "state", {}),
    lambda s: s.append_event("S1", "alarm", {"event": "other"}),
    lambda s: s.append_event("S1", "alarm", {}, ts=datetime(2026, 1, 1)),  # naive time
    lambda s: s.append_event("S1", "alarm", {"x": float("nan")}),
    lambda s: s.append_event("S1", "alarm", {"x": object()}),
    lambda s: new_session(s, "S1"),  # duplicate id
    lambda s: new_session(s, "../etc"),
    lambda s: s.delivery_intent("S1", step_id="a", zone="z", point=1.5, device="d", planned={}),
])
def test_bad_writes_are_refused_and_leave_no_trace(store: RecordStore, call) -> None:
    new_session(store)
    with pytest.raises(RecordError):
        call(store)
    assert store.events("S1") == [] and store.deliveries("S1") == []
    assert store.verify("S1").ok


def test_writes_to_an_unknown_session(store: RecordStore) -> None:
    with pytest.raises(SessionNotFound):
        store.append_event("NOPE", "alarm", {})
    with pytest.raises(SessionNotFound):
        store.delivery_intent("NOPE", step_id="a", zone=None, point=None, device="d", planned={})
    assert store.session("NOPE") is None and store.events("NOPE") == []


# ---------------------------------------------------------------- deliveries


def test_intent_then_result(store: RecordStore) -> None:
    new_session(store)
    d1 = store.delivery_intent("S1", step_id="ep", zone="vertex", point="A3", device="epg-1",
                               planned={"pulses": 8}, ts=at(1))
    d2 = store.delivery_intent("S1", step_id="ep", zone="vertex", point="A4", device="epg-1",
                               planned={"pulses": 8}, ts=at(2))
    store.delivery_result(d1, delivered={"pulses": 8, "charge_uC": 12.5}, status="done", ts=at(3))
    with pytest.raises(RecordError):
        store.delivery_result(d1, delivered={"pulses": 8}, status="done")
    with pytest.raises(RecordError):
        store.delivery_result(9999, delivered={}, status="done")
    rows = store.deliveries("S1")
    assert [(r["id"], r["point"], r["status"], r["delivered"]) for r in rows] == [
        (d1, "A3", "done", {"pulses": 8, "charge_uC": 12.5}), (d2, "A4", None, None)]
    assert rows[0]["planned"] == {"pulses": 8} and rows[0]["result_ts"] == "2026-03-02T09:00:03.000000Z"
    assert [d["id"] for d in store.session("S1")["in_flight"]] == [d2]
    assert store.verify("S1").ok


# ---------------------------------------------------------------- listings


def test_unfinished_sessions_and_hub_restart(store: RecordStore) -> None:
    full(store, "DONE")
    new_session(store, "MIDWAY")
    store.append_event("MIDWAY", "state", {"state": "running"})
    new_session(store, "FRESH")
    assert store.unfinished_sessions() == ["MIDWAY", "FRESH"]
    for sid in store.unfinished_sessions():
        store.append_event(sid, "failed", {"reason": "hub_restart"})
    assert store.unfinished_sessions() == []
    s = store.session("MIDWAY")
    assert (s["state"], s["reason"]) == ("failed", "hub_restart") and s["ended_at"]


def test_last_completed_session_of_a_patient(store: RecordStore) -> None:
    assert store.last_session_for_patient("P-1") is None
    new_session(store, "OLD", created_at=at(0))
    run_full_session(store, "OLD")
    new_session(store, "NEW", created_at=at(100))
    store.append_event("NEW", "state", {"state": "running"}, ts=at(101))
    store.append_event("NEW", "completed", {"reason": "program_done"}, ts=at(200))
    new_session(store, "ABORTED", created_at=at(300))
    store.append_event("ABORTED", "aborted", {"reason": "operator"}, ts=at(301))
    new_session(store, "OTHER", patient="P-9", created_at=at(400))
    store.append_event("OTHER", "completed", {}, ts=at(401))
    last = store.last_session_for_patient("P-1")
    assert last["session"] == "NEW" and last["ended_at"] == "2026-03-02T09:03:20.000000Z"


def test_list_sessions_newest_first(store: RecordStore) -> None:
    for i in range(3):
        new_session(store, f"S{i}", created_at=at(i))
    store.append_event("S0", "completed", {}, ts=at(10))
    rows = store.list_sessions()
    assert [r["session"] for r in rows] == ["S2", "S1", "S0"]
    assert rows[2]["state"] == "completed" and rows[2]["ended_at"] == "2026-03-02T09:00:10.000000Z"
    assert rows[0] == {"session": "S2", "program": "crown-basic", "version": "1.2", "patient_ref": "P-1",
                       "operator": "dr-lee", "origin": "console", "state": "created",
                       "created_at": "2026-03-02T09:00:02.000000Z", "ended_at": None}
    assert len(store.list_sessions(limit=2)) == 2


def test_durability_settings(store: RecordStore) -> None:
    # WAL + synchronous=FULL: an acknowledged write survives a power loss
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1,
                               "recursive_triggers": 1}


def test_boot_counter_persists(db: Path) -> None:
    with RecordStore(db) as s:
        assert s.current_boot() == 0
        assert [s.next_boot(), s.next_boot()] == [1, 2]
    with RecordStore(db) as s:
        assert s.next_boot() == 3 and s.current_boot() == 3


def test_readonly_store_reads_but_never_writes(store: RecordStore, db: Path, tmp_path: Path) -> None:
    full(store)
    with RecordStore(db, readonly=True) as ro:
        assert ro.session("S1")["state"] == "completed" and ro.verify("S1").ok
        with pytest.raises(RecordError):
            ro.append_event("S1", "alarm", {})
    with pytest.raises(FileNotFoundError):
        RecordStore(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_refusals_are_recorded(store: RecordStore) -> None:
    store.record_refusal(program_id="crown-basic", patient_ref="P-1", operator="dr-lee", origin="mqtt",
                         code="hard_limit", details=[{"id": "inj.depth_mm", "value": 5, "limit": 4}])
    (r,) = store.refusals()
    assert r["code"] == "hard_limit" and r["details"][0]["id"] == "inj.depth_mm"


def test_session_ids_are_ulids() -> None:
    a, b = new_session_id(), new_session_id()
    assert a != b and len(a) == 26 and set(a) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert new_session_id(now=1.0) < new_session_id(now=2.0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(states=st.lists(st.sampled_from(["preflight", "awaiting_confirmation", "running", "paused",
                                        "completed", "aborted", "failed"]), max_size=8))
def test_state_is_the_last_accepted_state_change(tmp_path: Path, states: list[str]) -> None:
    with RecordStore(tmp_path / f"{new_session_id()}.db") as s:
        new_session(s)
        expected = "created"
        for state in states:
            try:
                s.append_event("S1", "state", {"state": state})
                expected = state
            except RecordError:
                assert expected in ("completed", "aborted", "failed") and state != expected
        assert s.session("S1")["state"] == expected
        assert ("S1" in s.unfinished_sessions()) == (expected not in ("completed", "aborted", "failed"))


# ---------------------------------------------------------------- crash safety

CRASH_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from devicehub.records import RecordStore
s = RecordStore(sys.argv[1])
s.create_session("CRASH", program_id="p", program_version="1", program_sha256="0" * 64,
                 program_json={}, patient_ref="P-1", operator="op", origin="console",
                 params={}, acknowledgements=[])
s.append_event("CRASH", "state", {"state": "running"})
intent = s.delivery_intent("CRASH", step_id="inj", zone="crown", point=1, device="inj-1", planned={"uL": 5})
print("intent", intent, flush=True)
n = 0
while True:
    idx = s.append_event("CRASH", "exposure_progress", {"n": n, "pad": "x" * 500})
    print("ack", idx, flush=True)
    n += 1
"""


@pytest.mark.timeout(60)
def test_sigkill_mid_write_loses_nothing_acknowledged(db: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(db), str(ROOT)],
                             stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    intent = None
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "writer died before it was killed"
            word, value = line.split()
            if word == "intent":
                intent = int(value)
            else:
                acked.append(int(value))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # acknowledged between our last read and the kill
        acked += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack")]
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and intent is not None and len(acked) >= 60

    with RecordStore(db) as s:
        indices = [e["index"] for e in s.events("CRASH")]
        assert set(acked) <= set(indices)
        assert indices == list(range(1, len(indices) + 1))
        assert s.verify("CRASH").ok
        summary = s.session("CRASH")
        assert [d["id"] for d in summary["in_flight"]] == [intent]
        assert s.unfinished_sessions() == ["CRASH"]
        s.append_event("CRASH", "failed", {"reason": "hub_restart"})
        assert s.session("CRASH")["state"] == "failed" and s.verify("CRASH").ok


# ---------------------------------------------------------------- async wrapper


async def test_async_writes_leave_the_loop_free(db: Path) -> None:
    async with AsyncRecordStore(db) as st_:
        await st_.create_session("S1", program_id="p", program_version="1", program_sha256="0" * 64,
                                 program_json={}, patient_ref="P-1", operator="op", origin="mqtt",
                                 params={}, acknowledgements=[])
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        for i in range(200):
            assert await st_.append_event("S1", "exposure_progress", {"n": i}) == i + 1
        stop.set()
        await task
        # a write done on the loop would not yield to the ticker even once
        assert ticks >= 200
        assert (await st_.verify("S1")).ok


async def test_async_store_uses_one_worker_thread_in_call_order(db: Path) -> None:
    store = await AsyncRecordStore.open(db)
    try:
        ids = {await store.call(lambda s: threading.get_ident()) for _ in range(5)}
        assert len(ids) == 1 and threading.get_ident() not in ids
        await store.create_session("S1", program_id="p", program_version="1", program_sha256="0" * 64,
                                   program_json={}, patient_ref="P-1", operator="op", origin="mqtt",
                                   params={}, acknowledgements=[])
        got = await asyncio.gather(*(store.append_event("S1", "alarm", {"n": n}) for n in range(20)))
        assert got == list(range(1, 21))
        assert [e["data"]["n"] for e in await store.events("S1")] == list(range(20))
        d = await store.delivery_intent("S1", step_id="a", zone="z", point=1, device="inj-1", planned={"uL": 1})
        await store.delivery_result(d, delivered={"uL": 1}, status="done")
        assert (await store.session("S1"))["totals"] == {"inj-1": {"uL": 1}}
        assert await store.next_boot() == 1
        assert await store.unfinished_sessions() == ["S1"]
        assert (await store.list_sessions())[0]["session"] == "S1"
        assert await store.last_session_for_patient("P-1") is None
        text = await store.call(render_report, "S1")
        assert "# Treatment session report S1" in text
        with pytest.raises(SessionNotFound):
            await store.append_event("NOPE", "alarm", {})
    finally:
        await store.close()
    with pytest.raises(RecordError):
        await store.session("S1")


async def test_async_open_fails_where_the_path_is_bad(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await AsyncRecordStore.open(tmp_path / "none.db", readonly=True)


# ---------------------------------------------------------------- report


def test_report_tells_the_session(store: RecordStore, tmp_path: Path) -> None:
    full(store)
    store.append_event("S1", "safe_state", {"trigger": "end", "ms": 37, "devices": {"inj-1": "off"}})
    store.append_event("S1", "alarm", {"alarm": {"id": "a1", "priority": "high", "source": "inj-1",
                                                 "code": "occlusion", "text": "line | blocked"}})
    text = render_report(store, "S1")
    head = store.verify("S1").head
    for expected in ("Patient ref | P-1", "Operator | dr-lee", "crown-basic version 1.2: Crown",
                     "- inj.depth_mm", "| inj | depth_mm | 2 |", "scalp_disinfected | yes | nurse-a",
                     "confirmed by tech-b at 2026-03-02T09:00:04.000000Z", "| running |",
                     "Final state | completed (program_done)", "### Zone crown",
                     "| inj | 1 | inj-1 | depth_mm=2, uL=5 | depth_mm=1.6, uL=4.5 | done |",
                     "| inj-1 | uL | 9 |", "| end | 37 | inj-1=off |", "line \\| blocked",
                     f"chain head `{head}`"):
        assert expected in text, expected
    assert "unknown outcome" not in text
    path = write_report(store, "S1", tmp_path / "reports")
    assert path == tmp_path / "reports" / "S1.md" and path.read_text() == text
    with pytest.raises(SessionNotFound):
        render_report(store, "NOPE")


def test_report_flags_tampering_and_in_flight(store: RecordStore, db: Path) -> None:
    new_session(store)
    store.append_event("S1", "state", {"state": "running"})
    store.delivery_intent("S1", step_id="inj", zone="crown", point=7, device="inj-1", planned={"uL": 5})
    tamper(db, "UPDATE events SET ts = '2020-01-01T00:00:00.000000Z' WHERE idx = 1")
    text = render_report(store, "S1")
    assert "NOT VERIFIED" in text and "first bad event: 1" in text
    assert "## Deliveries with unknown outcome" in text and "IN FLIGHT" in text
