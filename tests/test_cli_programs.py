"""``devicehub programs check|list`` and ``devicehub schema``: output, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devicehub.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "configs" / "programs"
CONFIG = ROOT / "configs" / "hub.yaml"
SHIPPED = sorted(str(p) for p in PROGRAMS.glob("*.yaml"))
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "programs", "check", "--config", str(CONFIG), *argv)


def variant(tmp_path: Path, mutate, name: str = "variant.yaml") -> str:
    data = yaml.safe_load((PROGRAMS / "demo.yaml").read_text())
    mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


# ---------------------------------------------------------------- check


def test_check_shipped_programs_is_startable(capsys):
    code, out, err = check(capsys, *SHIPPED)
    assert code == 0, out + err
    assert out.count("result: startable") == len(SHIPPED)
    assert err == ""
    demo = out[out.index("demo v1"):]
    assert "estimated duration: 1 min" in demo
    assert "points per zone: left 4, right 4" in demo
    assert "inj-1   volume 160 uL, shots 8" in demo
    assert "epg-1   pulses 80, charge 3200 uC, energy 64 mJ" in demo
    assert "alongside light" in demo


def test_soft_limit_is_a_warning_with_its_id_until_acknowledged(tmp_path, capsys):
    path = variant(tmp_path, lambda d: d["steps"][2].update(amplitude_v=60))
    code, out, _ = check(capsys, path)
    assert code == 2
    assert ("warning: soft limit ep.amplitude_v (start with --ack ep.amplitude_v): "
            "steps[2].amplitude_v: 60 V is above the soft limit 54 V") in out
    assert "result: NOT startable: 1 soft limit not acknowledged" in out
    code, out, _ = check(capsys, path, "--ack", "ep.amplitude_v")
    assert code == 0
    assert "soft limit ep.amplitude_v (acknowledged)" in out
    assert "result: startable (1 soft limit acknowledged)" in out


def test_hard_limit_exits_2_even_with_ack(tmp_path, capsys):
    path = variant(tmp_path, lambda d: d["steps"][2].update(amplitude_v=120))
    code, out, _ = check(capsys, path, "--ack", "ep.amplitude_v", "--ack", "ep.energy_per_pulse_mj")
    assert code == 2
    assert "hard limit (never startable): steps[2].amplitude_v: 120 V is above the hard limit 100 V" in out
    assert "NOT startable: 1 hard limit" in out


def test_capability_error_and_unknown_device(tmp_path, capsys):
    path = variant(tmp_path, lambda d: (d["steps"][4].update(frequency_hz=150), d["steps"][0].update(device="inj-9")))
    code, out, _ = check(capsys, path)
    assert code == 2
    assert "error: steps[4].frequency_hz: 150 Hz is outside the PEMF-1 range 0.1 to 100 Hz" in out
    assert "error: steps[0].device: no device 'inj-9' in the hub config" in out


def test_param_overrides(capsys):
    demo = str(PROGRAMS / "demo.yaml")
    code, out, _ = check(capsys, demo, "--param", "ep.amplitude_v=60")
    assert code == 2 and "overrides: ep.amplitude_v=60" in out and "soft limit ep.amplitude_v" in out
    code, out, _ = check(capsys, demo, "--param", "ep.amplitude_v=60", "--ack", "ep.amplitude_v")
    assert code == 0
    code, out, _ = check(capsys, demo, "--param", "ep.polarity=mono", "--param", "light.duration_s=12.5")
    assert code == 0 and "fluence 0.0625 J/cm2, exposure 12.5 s" in out


@pytest.mark.parametrize("param, line", [
    ("ep.amplitud_v=30", "params.ep.amplitud_v: unknown parameter of a electroporation step"),
    ("nope.x=1", "params.nope: no step 'nope' in program 'demo'"),
    ("ep.amplitude_v=high", "params.ep.amplitude_v: expected a number, got a string 'high'"),
    ("ep-amplitude", "--param 'ep-amplitude': expected STEP.PARAM=VALUE"),
])
def test_bad_params_are_one_line_and_exit_2(capsys, param, line):
    code, out, err = check(capsys, str(PROGRAMS / "demo.yaml"), "--param", param)
    assert code == 2
    assert line in err and len(err.strip().splitlines()) == 1


BAD_FILES = {
    "syntax.yaml": ("id: x\nsteps:\n  - id: a\n   kind: led\n", [":4: YAML syntax error"]),
    "types.yaml": ("id: x\nversion: '1'\ntitle: t\nindication: other\nsteps:\n  - {id: c, kind: confirm, prompt: 7}\n",
                   [":2: version: expected an integer, got a string '1'",
                    ":6: steps[0].prompt: expected a string, got an integer 7"]),
    "kind.yaml": ("id: x\nversion: 1\ntitle: t\nindication: other\nsteps:\n  - {id: a, kind: laser}\n  - {id: b}\n",
                  [":6: steps[0]: unknown step kind 'laser'", ":7: steps[1]: missing kind"]),
    "fields.yaml": ("id: x\nversion: 1\ntitle: t\nindication: other\nauthor: me\n"
                    "steps:\n  - {id: c, kind: confirm, prompt: p, timeout: 3}\n",
                    [":5: author: unknown field", ":7: steps[0].timeout: unknown field"]),
    "refs.yaml": ("id: x\nversion: 1\ntitle: t\nindication: other\n"
                  "steps:\n  - {id: c, kind: confirm, prompt: p}\n  - {id: c, kind: confirm, prompt: q}\n",
                  [":7: steps[1].id: duplicate step id 'c' (also steps[0])"]),
    "empty.yaml": ("", [": expected a mapping of fields at the top level, got an empty document"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_one_line_per_problem_and_exit_2(tmp_path, capsys, name):
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    code, out, err = check(capsys, str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected):
        assert line.startswith(str(path) + want), (line, want)
    assert "Traceback" not in err


def test_missing_file_and_a_good_one_together(tmp_path, capsys):
    code, out, err = check(capsys, str(tmp_path / "nope.yaml"), str(PROGRAMS / "demo.yaml"))
    assert code == 2
    assert err.strip() == f"{tmp_path / 'nope.yaml'}: no such file"
    assert "result: startable" in out  # the good file is still checked


def test_bad_or_missing_config_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, "programs", "check", "--config", str(tmp_path / "hub.yaml"), SHIPPED[0])
    assert code == 2 and err.strip() == f"{tmp_path / 'hub.yaml'}: no such file"
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: a\nroom: b c\ndevices: []\n")
    code, _, err = run(capsys, "programs", "check", "--config", str(bad), SHIPPED[0])
    assert code == 2
    assert err.splitlines() == [f"{bad}:2: room: 'b c' is not allowed here (letters, digits, '-' and '_' only; "
                                "pattern ^[A-Za-z0-9_-]+$)",
                                f"{bad}:3: devices: list should have at least 1 item after validation, not 0, got []"]


def test_default_config_is_found_from_the_repo_root(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DEVICEHUB_CONFIG", raising=False)
    code, out, _ = run(capsys, "programs", "check", "configs/programs/demo.yaml")
    assert code == 0 and "result: startable" in out


def test_json_output(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [\n")
    code, out, _ = check(capsys, "--json", str(PROGRAMS / "demo.yaml"), str(bad))
    assert code == 2
    reports = json.loads(out)
    assert reports[0]["startable"] is True and reports[0]["program"] == "demo"
    assert reports[1]["startable"] is False and reports[1]["problems"][0]["line"] == 2


# ---------------------------------------------------------------- list


def test_list_shows_every_program_with_its_sha256(capsys):
    import hashlib

    code, out, err = run(capsys, "programs", "list", "--config", str(CONFIG))
    assert code == 0 and err == ""
    for path in PROGRAMS.glob("*.yaml"):
        line = next(l for l in out.splitlines() if l.strip().startswith(path.stem + " "))
        assert hashlib.sha256(path.read_bytes()).hexdigest() in line


def test_list_reports_broken_files_and_lists_the_rest(tmp_path, capsys):
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "demo.yaml").write_bytes((PROGRAMS / "demo.yaml").read_bytes())
    (tmp_path / "programs" / "broken.yaml").write_text("id: broken\nversion: x\n")
    (tmp_path / "limits.yaml").write_bytes((ROOT / "configs" / "limits.yaml").read_bytes())
    data = yaml.safe_load(CONFIG.read_text())
    data.update(programs="programs", limits="limits.yaml")
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(data))
    code, out, err = run(capsys, "programs", "list", "--config", str(tmp_path / "hub.yaml"))
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["demo"]
    assert f"{tmp_path / 'programs' / 'broken.yaml'}:2: version: expected an integer" in err
    code, out, _ = run(capsys, "programs", "list", "--json", "--config", str(tmp_path / "hub.yaml"))
    data = json.loads(out)
    assert [p["program"] for p in data["programs"]] == ["demo"] and len(data["problems"]) == 1


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("which, title", [("program", "Program"), ("config", "HubConfig"), ("limits", "Limits")])
def test_schema_is_json_with_the_model_title(capsys, which, title):
    code, out, _ = run(capsys, "schema", which)
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == title and schema["type"] == "object" and schema["additionalProperties"] is False


def test_schema_needs_a_known_name(capsys):
    with pytest.raises(SystemExit) as info:
        main(["schema", "patient"])
    assert info.value.code == 2


# ---------------------------------------------------------------- as a process


def test_cli_as_a_process_never_shows_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nversion: 1\ntitle: t\nindication: other\nsteps:\n  - {id: a, kind: laser}\n")
    proc = subprocess.run(
        [PYTHON, "-m", "devicehub.cli", "programs", "check", "--config", str(CONFIG),
         str(bad), str(PROGRAMS / "demo.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}:6: steps[0]: unknown step kind 'laser' (expected one of 'injection', " \
                                  "'electroporation', 'led', 'pemf', 'confirm')"
    assert "result: startable" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    proc = subprocess.run([PYTHON, "-m", "devicehub.cli", "schema", "program"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["title"] == "Program"
