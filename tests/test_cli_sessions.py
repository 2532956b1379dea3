"""``devicehub sessions``: outputs and exit codes (0 ok, 1 tampered, 2 not found / no store)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devicehub.cli import main
from devicehub.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)


def record(path: Path) -> Path:
    """A store with one completed session (DONE) and one interrupted mid-delivery (MID)."""
    with RecordStore(path) as s:
        for n, sid in enumerate(("DONE", "MID")):
            s.create_session(sid, program_id="crown-basic", program_version="1.2", program_sha256="ab" * 32,
                             program_json={"title": "Crown"}, patient_ref=f"P-{n + 1}", operator="dr-lee",
                             origin="mqtt", params={}, acknowledgements=[], created_at=T0 + timedelta(minutes=n))
            s.append_event(sid, "state", {"state": "running"}, ts=T0 + timedelta(minutes=n, seconds=1))
            d = s.delivery_intent(sid, step_id="inj", zone="crown", point=1, device="inj-1", planned={"uL": 5})
            if sid == "DONE":
                s.delivery_result(d, delivered={"uL": 5}, status="done")
                s.append_event(sid, "completed", {"reason": "program_done", "totals": {"inj-1": {"uL": 5}}},
                               ts=T0 + timedelta(minutes=n, seconds=30))
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return record(tmp_path / "var" / "record.db")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["sessions", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys, store_path: Path) -> None:
    code, out, _ = run(capsys, "list", "--store", str(store_path))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["session", "program", "patient", "operator", "state", "created", "ended"]
    assert lines[1].split() == ["MID", "crown-basic", "1.2", "P-2", "dr-lee", "running", "2026-03-02T09:01:00.000000Z", "-"]
    assert lines[2].split() == ["DONE", "crown-basic", "1.2", "P-1", "dr-lee", "completed",
                                "2026-03-02T09:00:00.000000Z", "2026-03-02T09:00:30.000000Z"]
    code, out, _ = run(capsys, "list", "--store", str(store_path), "--json", "--limit", "1")
    assert code == 0 and [r["session"] for r in json.loads(out)] == ["MID"]


def test_list_empty_store(capsys, tmp_path: Path) -> None:
    RecordStore(tmp_path / "empty.db").close()
    assert run(capsys, "list", "--store", str(tmp_path / "empty.db")) == (0, "No sessions recorded.\n", "")


def test_show(capsys, store_path: Path) -> None:
    code, out, _ = run(capsys, "show", "MID", "--store", str(store_path))
    assert code == 0
    assert "Session MID" in out and "state:        running" in out and "patient:      P-2" in out
    assert "In flight (no result recorded): 1" in out and "IN FLIGHT" in out
    assert "   1  2026-03-02T09:01:01.000000Z  state" in out
    code, out, _ = run(capsys, "show", "DONE", "--store", str(store_path), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["state"] == "completed" and doc["summary"]["totals"] == {"inj-1": {"uL": 5}}
    assert [e["event"] for e in doc["events"]] == ["state", "completed"]
    assert doc["deliveries"][0]["status"] == "done"


def test_verify_ok_tampered_and_unknown(capsys, store_path: Path) -> None:
    code, out, _ = run(capsys, "verify", "DONE", "--store", str(store_path))
    assert code == 0 and out.startswith("DONE: ok: 2 events and 2 delivery rows verify; head ")
    conn = sqlite3.connect(store_path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET data_json = replace(data_json, 'program_done', 'operator') "
                 "WHERE session_id = 'DONE' AND idx = 2")
    conn.commit()
    conn.close()
    code, out, _ = run(capsys, "verify", "DONE", "--store", str(store_path))
    assert code == 1 and "TAMPERED" in out and "first bad event 2" in out
    code, out, err = run(capsys, "verify", "NOPE", "--store", str(store_path))
    assert code == 2 and out == "" and "no session 'NOPE'" in err


def test_report_to_stdout_and_to_a_directory(capsys, store_path: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "report", "DONE", "--store", str(store_path), "--format", "md")
    assert code == 0 and out.startswith("# Treatment session report DONE") and "| Patient ref | P-1 |" in out
    code, out, _ = run(capsys, "report", "DONE", "--store", str(store_path))  # HTML is the default
    assert code == 0 and out.startswith("<!DOCTYPE html>") and "P-1" in out
    code, out, _ = run(capsys, "report", "DONE", "--store", str(store_path), "--format", "md",
                       "--out", str(tmp_path / "reports"))
    written = tmp_path / "reports" / "DONE.md"
    assert code == 0 and out.strip() == str(written) and written.read_text().startswith("# Treatment session report")


@pytest.mark.parametrize("action", ["show", "report", "verify"])
def test_unknown_session_exits_2(capsys, store_path: Path, action: str) -> None:
    code, out, err = run(capsys, action, "NOPE", "--store", str(store_path))
    assert code == 2 and "no session 'NOPE'" in err and "Traceback" not in err


def test_store_from_config_relative_to_the_config_file(capsys, store_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "configs" / "hub.yaml"
    config.parent.mkdir()
    config.write_text("site: clinic-a\nroom: room-1\nstore: ../var/record.db\n")
    code, out, _ = run(capsys, "list", "--config", str(config))
    assert code == 0 and "DONE" in out
    # --store wins over --config
    other = record(tmp_path / "other.db")
    with RecordStore(other) as s:
        s.create_session("ONLY-HERE", program_id="p", program_version="1", program_sha256="0" * 64,
                         program_json={}, patient_ref="P-9", operator="op", origin="console",
                         params={}, acknowledgements=[])
    code, out, _ = run(capsys, "list", "--config", str(config), "--store", str(other))
    assert code == 0 and "ONLY-HERE" in out


def test_default_config_in_the_working_directory(capsys, store_path: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "hub.yaml").write_text("store: ../var/record.db\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "list")
    assert code == 0 and "DONE" in out


@pytest.mark.parametrize("config_text, message", [
    (None, "not found"),
    ("site: a\n", "no 'store' path"),
    ("store: [unclosed\n", "not valid YAML"),
    ("store: nowhere.db\n", "no record store at"),
])
def test_bad_config_or_missing_store_exits_2(capsys, tmp_path: Path, config_text, message) -> None:
    config = tmp_path / "hub.yaml"
    if config_text is not None:
        config.write_text(config_text)
    code, out, err = run(capsys, "list", "--config", str(config))
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "nowhere.db").exists()  # reading never creates a store


def test_not_a_store_exits_2(capsys, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    code, _, err = run(capsys, "list", "--store", str(junk))
    assert code == 2 and err.startswith("devicehub sessions: ")


def test_console_script_end_to_end(store_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "devicehub.cli", "sessions", "show", "NOPE", "--store",
                           str(store_path)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no session 'NOPE'" in done.stderr
