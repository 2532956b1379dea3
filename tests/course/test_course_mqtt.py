"""Courses over MQTT against ``devicehub serve`` (shared/mqtt-api.md verbs ``enrol``,
``course``, ``course_end``, the ``start`` reply's and the ``created`` event's ``course``)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from devicehub.records.store import parse_ts
from tests.hub.conftest import Clinic, Setup, acli, ack_prompts, auto_trigger, console, start_body

pytestmark = pytest.mark.timeout(150)


async def test_enrol_start_count_and_end_a_course(setup: Setup) -> None:
    room, hub = setup.room, setup.hub
    patient = f"P-{uuid.uuid4().hex[:8]}"
    async with Clinic(setup.port, setup.root) as clinic:
        await hub.astart()
        await auto_trigger(room, 20)
        r = await clinic.request("course", {"patient_ref": patient})
        assert r["ok"] is False and r["error"]["code"] == "not_found", r
        r = await clinic.request("enrol", {"patient_ref": patient, "course": "no-such-plan", "by": "dr-a"})
        assert r["ok"] is False and r["error"]["code"] == "not_found" and r["error"]["field"] == "course", r
        r = await clinic.request("enrol", {"patient_ref": patient, "course": "demo-course", "by": "dr-a"})
        assert r["ok"], r
        view = r["data"]
        assert view["patient_ref"] == patient and view["course"] == "demo-course" and view["phase"] == "initial"
        assert view["ended"] is None and view["sessions"] == [] and view["next_due"] is None
        assert view["overdue"] is False and view["enrolled"].endswith("Z")
        r = await clinic.request("enrol", {"patient_ref": patient, "course": "demo-course", "by": "dr-a"})
        assert r["ok"] is False and r["error"]["code"] == "invalid_state", r

        # a session of the course: the start reply and the created event say where it stands
        start = await clinic.request("start", start_body(patient_ref=patient))
        assert start["ok"], start
        position = {"course": "demo-course", "phase": "initial", "number": 1}
        assert start["data"]["course"] == position
        sid = start["data"]["session"]
        created = await clinic.wait_event(sid, "created")
        assert created["data"]["course"] == position
        r = await clinic.request("enrol", {"patient_ref": patient, "course": "demo-course", "by": "dr-a"})
        assert r["ok"] is False and r["error"]["code"] == "invalid_state"  # in a course, and a session under way
        for item in ("consent", "scalp_cleansed"):
            await clinic.request("preflight", {"session": sid, "item": item, "done": True, "by": "nurse"})
        prompts = asyncio.create_task(ack_prompts(clinic, room, sid))
        try:
            c = await console(room, "confirm", session=sid, by="tech")
            assert c["ok"], c
            done = await clinic.wait_event(sid, "completed", timeout=120)
        finally:
            prompts.cancel()
        assert done["data"]["event"] == "completed"
        await clinic.wait_state("completed", session=sid)

        r = await clinic.request("course", {"patient_ref": patient})
        assert r["ok"], r
        view = r["data"]
        [entry] = view["sessions"]
        assert entry["session"] == sid and entry["state"] == "completed" and entry["program"] == "demo"
        assert (entry["phase"], entry["number"]) == ("initial", 1)
        ended = parse_ts(entry["ended"])
        assert parse_ts(view["next_due"]["from"]) == ended + timedelta(days=7)
        assert parse_ts(view["next_due"]["to"]) == ended + timedelta(days=14)

        # the session's report, written when it ended, gives the next session window
        where = await console(room, "report", session=sid)
        assert where["ok"] and where["data"]["path"] == str(room.directory / "reports" / f"{sid}.html"), where
        report = (room.directory / "reports" / f"{sid}.html").read_text(encoding="utf-8")
        assert "demo-course: phase initial, session 1" in report
        assert "Course demo-course, phase initial: between " in report

        # the dry run at the chair says where the next session stands
        dry = await console(room, "check", program="demo", patient_ref=patient)
        assert dry["ok"], dry
        assert dry["data"]["course"]["text"].startswith("session 2 of 2 of phase initial (course demo-course), "
                                                        "next due "), dry["data"]["course"]
        assert {f["id"] for f in dry["data"]["findings"]} >= {"course.phase_interval", "course.interval_days"}

        # the next start, at once: too soon for the phase (soft) and for the clinic (hard)
        r = await clinic.request("start", start_body(patient_ref=patient))
        assert r["ok"] is False and r["error"]["code"] == "hard_limit", r
        details = {d["id"]: d for d in r["error"]["details"]}
        assert details["course.phase_interval"]["limit"] == 7 and details["course.phase_interval"]["value"] < 1
        assert details["course.interval_days"]["severity"] == "hard"

        # the CLI reads the same course
        out = await acli("courses", "show", patient, "--config", setup.config)
        assert out.returncode == 0 and "initial #1" in out.stdout and "next due" in out.stdout, out.stdout
        out = await acli("courses", "due", "--days", "30", "--config", setup.config)
        assert out.returncode == 0 and patient in out.stdout, out.stdout

        r = await clinic.request("course_end", {"patient_ref": patient, "by": "dr-a", "reason": "moved away"})
        assert r["ok"] and r["data"]["ended"] is not None and r["data"]["ended_reason"] == "moved away", r
        assert r["data"]["next_due"] is None
        r = await clinic.request("course_end", {"patient_ref": patient, "by": "dr-a", "reason": "again"})
        assert r["ok"] is False and r["error"]["code"] == "not_found", r
        r = await clinic.request("course", {"patient_ref": patient, "colour": "red"})
        assert r["ok"] is False and r["error"]["code"] == "bad_request" and r["error"]["field"] == "colour"


async def test_courses_cli_enrols_through_the_daemon_and_without_it(setup: Setup) -> None:
    hub = setup.hub
    await hub.astart()
    r = await acli("courses", "enrol", "P-CLI-1", "aga-standard", "--by", "dr-a", "--config", setup.config)
    assert r.returncode == 0 and "course aga-standard" in r.stdout, (r.stdout, r.stderr)
    async with Clinic(setup.port, setup.root) as clinic:
        seen = await clinic.request("course", {"patient_ref": "P-CLI-1"})
        assert seen["ok"] and seen["data"]["course"] == "aga-standard"
        # the start of an enrolled patient with a program outside the phase: a soft limit to acknowledge
        r = await clinic.request("start", start_body(patient_ref="P-CLI-1"))
        assert r["ok"] is False and r["error"]["code"] == "soft_limit", r
        [d] = r["error"]["details"]
        assert d["id"] == "course.program" and d["value"] == "demo" and d["limit"] == ["aga-initial"]
        r = await clinic.request("start", start_body(patient_ref="P-CLI-1", acknowledge=["course.program"]))
        assert r["ok"] and r["data"]["course"] == {"course": "aga-standard", "phase": "initial", "number": 1}, r
        await clinic.request("abort", {"session": r["data"]["session"]})
    await asyncio.to_thread(hub.terminate)
    r = await acli("courses", "end", "P-CLI-1", "--by", "dr-a", "--reason", "stopped", "--config", setup.config)
    assert r.returncode == 0 and "ended" in r.stdout, (r.stdout, r.stderr)
    r = await acli("courses", "end", "P-CLI-1", "--by", "dr-a", "--reason", "stopped", "--config", setup.config)
    assert r.returncode == 2 and "not_found" in r.stderr
    r = await acli("courses", "show", "P-NEVER", "--config", setup.config)
    assert r.returncode == 2
