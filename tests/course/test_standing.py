"""Course plans and a patient's standing, computed from the record (shared/mqtt-api.md "Courses")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from devicehub.course import records
from devicehub.course.plan import CoursePlans, load_plan
from devicehub.course.standing import position, public, standing, start_findings
from devicehub.records.store import RecordStore, parse_ts
from tests.course.helpers import ROOT, add_session, day

PLANS = CoursePlans(ROOT / "configs" / "courses")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devicehub.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


@pytest.fixture
def store(tmp_path: Path):
    with RecordStore(tmp_path / "r.sqlite") as s:
        yield s


def enrol(store: RecordStore, patient: str, plan_id: str = "demo-course", at=None) -> None:
    entry = PLANS.get(plan_id)
    records.append(store, patient, "enrolled", {"course": plan_id, "by": "dr-a",
                                                "plan": entry.plan.model_dump(mode="json"),
                                                "plan_sha256": entry.sha256}, ts=at or day(0))


def test_shipped_plans_check_and_say_what_the_issue_asks() -> None:
    r = cli("courses", "check", *[str(p) for p in sorted((ROOT / "configs/courses").glob("*.yaml"))],
            "--config", str(ROOT / "configs/hub.yaml"))
    assert r.returncode == 0, r.stderr
    aga = load_plan(ROOT / "configs/courses/aga-standard.yaml")
    initial, maintenance = aga.phases
    assert 8 <= initial.sessions <= 12 and (initial.interval_days.min, initial.interval_days.max) == (7, 14)
    assert (maintenance.interval_days.min, maintenance.interval_days.max) == (28, 42)
    demo = load_plan(ROOT / "configs/courses/demo-course.yaml")
    assert [(p.programs, p.sessions, p.interval_days.min, p.interval_days.max) for p in demo.phases] == [
        (["demo"], 2, 7, 14), (["demo"], 2, 28, 42)]
    assert {p.plan.indication for p in PLANS.list()} >= {"androgenetic_alopecia", "telogen_effluvium",
                                                        "alopecia_areata"}


def test_check_names_every_bad_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\ntitle: Bad\nindication: other\nphases:\n"
                   "  - {id: a, programs: [], sessions: 0, interval_days: {min: 9, max: 3}}\n"
                   "  - {id: a, programs: [demo], sessions: 2, interval_days: {min: 7, max: 14}, colour: red}\n")
    r = cli("courses", "check", str(bad))
    assert r.returncode == 2
    for field in ("phases[0].programs", "phases[0].sessions", "phases[0].interval_days", "phases[1].colour"):
        assert field in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("id: typo\ntitle: Typo\nindication: other\nphases:\n"
                    "  - {id: a, programs: [demo, dmeo], sessions: 2, interval_days: {min: 7, max: 14}}\n")
    r = cli("courses", "check", str(typo), "--config", str(ROOT / "configs/hub.yaml"))
    assert r.returncode == 2 and "phases[0].programs[1]: no program 'dmeo'" in r.stderr, r.stderr
    schema = cli("schema", "course")
    assert schema.returncode == 0 and '"CoursePhase"' in schema.stdout


def test_numbers_phases_and_next_due_follow_completed_sessions(store: RecordStore) -> None:
    enrol(store, "P-1")
    s1 = add_session(store, "P-1", day(1))
    s2 = add_session(store, "P-1", day(9), "aborted", delivered=8.0)  # delivered something, does not count
    s3 = add_session(store, "P-1", day(10))
    view = standing(store, "P-1", now=day(11))
    got = [(s["session"], s["state"], s["phase"], s["number"]) for s in view["sessions"]]
    assert got == [(s1, "completed", "initial", 1), (s2, "aborted", None, None), (s3, "completed", "initial", 2)]
    # the initial phase had its 2 completed sessions: the next one is maintenance, 28-42 days after s3
    assert view["phase"] == "maintenance" and position(view) == {"course": "demo-course", "phase": "maintenance",
                                                                 "number": 3}
    end3 = parse_ts(view["sessions"][2]["ended"])
    assert parse_ts(view["next_due"]["from"]) == end3 + timedelta(days=28)
    assert parse_ts(view["next_due"]["to"]) == end3 + timedelta(days=42)
    assert view["overdue"] is False
    assert standing(store, "P-1", now=end3 + timedelta(days=42, seconds=1))["overdue"] is True
    # a start 5 days on: too soon for maintenance (soft), and a program outside the phase (soft)
    found = {f.id: f for f in start_findings(view, "aga-initial", now=end3 + timedelta(days=5))}
    assert set(found) == {"course.phase_interval", "course.program"}
    assert found["course.phase_interval"].limit == 28 and found["course.phase_interval"].value == 5.0
    assert found["course.program"].value == "aga-initial" and found["course.program"].limit == ["demo"]
    assert start_findings(view, "demo", now=end3 + timedelta(days=30)) == []


def test_days_count_from_the_last_session_that_delivered_anything(store: RecordStore) -> None:
    enrol(store, "P-2")
    add_session(store, "P-2", day(1))
    late = add_session(store, "P-2", day(3), "failed", delivered=5.0)  # failed, but delivered: the clock restarts
    add_session(store, "P-2", day(4), "aborted", delivered=0)  # delivered nothing: ignored
    view = standing(store, "P-2", now=day(5))
    ended = parse_ts(next(s for s in view["sessions"] if s["session"] == late)["ended"])
    assert parse_ts(view["next_due"]["from"]) == ended + timedelta(days=7)


def test_before_any_delivery_nothing_is_due_and_the_course_ends_after_its_last_phase(store: RecordStore) -> None:
    enrol(store, "P-3")
    view = standing(store, "P-3", now=day(1))
    assert view["next_due"] is None and view["overdue"] is False and view["sessions"] == []
    assert position(view) == {"course": "demo-course", "phase": "initial", "number": 1}
    for n in range(4):
        add_session(store, "P-3", day(1 + 40 * n))
    view = standing(store, "P-3", now=day(200))
    assert view["ended"] == view["sessions"][-1]["ended"] and view["ended_reason"] == "completed"
    assert view["next_due"] is None and position(view) is None
    assert [s["number"] for s in view["sessions"]] == [1, 2, 3, 4]
    assert [s["phase"] for s in view["sessions"]] == ["initial", "initial", "maintenance", "maintenance"]


def test_enrolment_records_are_append_only_and_chained(store: RecordStore) -> None:
    enrol(store, "P-4")
    records.append(store, "P-4", "ended", {"course": "demo-course", "by": "dr-b", "reason": "moved"}, ts=day(2))
    view = public(standing(store, "P-4", now=day(3)))
    assert view["ended"] is not None and view["ended_reason"] == "moved"
    assert set(view) == {"patient_ref", "course", "enrolled", "ended", "ended_reason", "phase", "sessions",
                         "next_due", "overdue"}
    assert records.verify(store, "P-4")[0]
    conn = store._conn
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("UPDATE course_records SET data_json = '{}' WHERE patient_ref = 'P-4'")
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM course_records")
    # a row changed behind the triggers' back is found
    conn.execute("DROP TRIGGER course_records_no_update")
    conn.execute("UPDATE course_records SET data_json = '{\"course\":\"x\"}' WHERE id = 1")
    ok, message = records.verify(store, "P-4")
    assert not ok and "record 1" in message


def test_the_clinic_time_zone_is_checked(tmp_path: Path) -> None:
    from devicehub.models.config import HubConfig
    from devicehub.models.loading import ConfigError

    doc = (ROOT / "configs/hub.yaml").read_text().replace("timezone: UTC", "timezone: Mars/Olympus")
    bad = tmp_path / "hub.yaml"
    bad.write_text(doc)
    with pytest.raises(ConfigError) as err:
        HubConfig.load(bad)
    assert any(p.field == "timezone" for p in err.value.problems)
    good = HubConfig.load(ROOT / "configs/hub.yaml")
    assert good.timezone == "UTC" and good.courses == (ROOT / "configs/courses").resolve()
    assert any("alcohol" in a for a in good.aftercare)
