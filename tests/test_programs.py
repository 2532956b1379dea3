"""Program, hub config and limits models: loading, every kind of bad input, helpers."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from devicehub.models import ConfigError, HubConfig, Limits, LimitsError, Point, Program, ProgramError
from devicehub.models.program import STANDARD_PREFLIGHT_IDS
from devicehub.validation import load_program, parse_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "configs" / "programs"
SHIPPED = sorted(PROGRAMS.glob("*.yaml"))


def demo_data() -> dict:
    return yaml.safe_load((PROGRAMS / "demo.yaml").read_text())


def problems_of(data_or_text) -> list[tuple[str, str, int | None]]:
    text = data_or_text if isinstance(data_or_text, str) else yaml.safe_dump(data_or_text, sort_keys=False)
    with pytest.raises(ProgramError) as info:
        parse_program(text, "test.yaml")
    return [(p.field, p.message, p.line) for p in info.value.problems]


def fields_of(data_or_text) -> list[str]:
    return [f for f, _, _ in problems_of(data_or_text)]


# ---------------------------------------------------------------- the shipped library


def test_library_ships_the_five_programs():
    assert {p.stem for p in SHIPPED} == {"aga-initial", "aga-maintenance", "telogen-effluvium",
                                         "alopecia-areata", "demo"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_program_loads_with_its_file_name_as_id(path):
    program = load_program(path)
    assert program.id == path.stem
    assert program.version >= 1
    assert program.steps


@pytest.mark.parametrize("name", ["aga-initial", "aga-maintenance", "telogen-effluvium", "alopecia-areata"])
def test_clinical_programs_have_the_standard_checklist(name):
    program = load_program(PROGRAMS / f"{name}.yaml")
    assert [i.id for i in program.preflight] == list(STANDARD_PREFLIGHT_IDS)
    kinds = {i.id: i.kind for i in program.preflight}
    assert kinds["consent"] == "consent" and kinds["contra.pregnancy"] == "contraindication"
    assert kinds["anaesthetic"] == "preparation" and kinds["photo_taken"] == "documentation"
    assert program.course is not None


def test_demo_uses_all_four_devices_on_a_small_grid():
    program = load_program(PROGRAMS / "demo.yaml")
    kinds = [s.kind for s in program.steps]
    assert {"injection", "electroporation", "led", "pemf", "confirm"} <= set(kinds)
    assert sum(z.point_count for z in program.grid.zones) <= 8
    ep = program.step("ep")
    assert ep.pulses_per_point * ep.period_ms < 1000  # a train takes under a second
    assert program.step("light").with_ == "field"


def test_load_program_accepts_a_path_a_string_path_and_text():
    path = PROGRAMS / "demo.yaml"
    a, b, c = load_program(path), load_program(str(path)), load_program(path.read_text())
    assert a == b == c


# ---------------------------------------------------------------- helpers on Program


def test_points_are_serpentine_with_one_based_ids():
    program = parse_program("""
id: p
version: 1
title: t
indication: other
grid: {spacing_mm: 10, zones: [{id: z, rows: 3, columns: 3}]}
steps: [{id: i, kind: injection, product: x, dose_ul: 20, depth_mm: 1.5, zones: [z]}]
""")
    points = program.points("z")
    assert [(p.row, p.col) for p in points] == [(1, 1), (1, 2), (1, 3), (2, 3), (2, 2), (2, 1), (3, 1), (3, 2), (3, 3)]
    assert points[0] == Point("z", 1, 1) and points[0].id == "z-r1c1"
    assert points[3].id == "z-r2c3"
    assert program.step_points("i") == points
    with pytest.raises(KeyError):
        program.points("nope")


def test_step_lookup_sequence_and_alongside():
    program = load_program(PROGRAMS / "demo.yaml")
    assert program.step("ep").kind == "electroporation"
    with pytest.raises(KeyError):
        program.step("missing")
    assert program.alongside("light").id == "field"
    assert program.runs_alongside("field") == "light"
    assert program.runs_alongside("light") is None
    seq = [(s.id, p.id if p else None) for s, p in program.sequence()]
    assert seq == [("inject", None), ("apply-serum", None), ("ep", None), ("light", "field")]


def test_to_json_round_trips_with_the_yaml_key_with():
    program = load_program(PROGRAMS / "aga-initial.yaml")
    data = program.to_json()
    assert data["steps"][3]["with"] == "field" and "with_" not in data["steps"][3]
    assert Program.model_validate(data) == program


def test_injection_shot_helpers():
    program = load_program(PROGRAMS / "telogen-effluvium.yaml")
    inject = program.step("inject")
    assert inject.shot_volume_ul == 5 and inject.shots_per_point == 4
    single = load_program(PROGRAMS / "demo.yaml").step("inject")
    assert single.shot_volume_ul == single.dose_ul and single.shots_per_point == 1


# ---------------------------------------------------------------- bad programs


def test_missing_file_is_one_problem_naming_it(tmp_path):
    with pytest.raises(ProgramError) as info:
        load_program(tmp_path / "nope.yaml")
    assert info.value.lines() == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_yaml_syntax_error_gives_its_line():
    (field, message, line), = problems_of("id: demo\nsteps:\n  - id: a\n   kind: x\n")
    assert field == "" and message.startswith("YAML syntax error") and line == 4


def test_duplicate_keys_are_refused_with_both_lines():
    (field, message, line), = problems_of("id: a\nversion: 1\nid: b\n")
    assert "duplicate key 'id'" in message and "line 1" in message and line == 3


@pytest.mark.parametrize("text, expected", [
    ("", "empty document"),
    ("- a\n- b\n", "got a list"),
    ("just text\n", "got a string"),
])
def test_top_level_must_be_a_mapping(text, expected):
    (field, message, _), = problems_of(text)
    assert expected in message


def test_every_problem_is_reported_at_once_with_fields_and_lines():
    text = """\
id: demo
version: one
title: x
indication: baldness
colour: red
grid:
  spacing_mm: 10
  zones:
    - {id: a, rows: 2, columns: 0}
steps:
  - id: inj
    kind: injection
    product: x
    dose_ul: "20 uL"
    depth_mm: 1.5
    zones: [a]
  - id: x
    kind: laser
  - {id: light, kind: led, wavelength_nm: 700, irradiance_mw_cm2: 5, duration_s: 10}
"""
    problems = problems_of(text)
    by_field = {f: (m, line) for f, m, line in problems}
    assert by_field["version"] == ("expected an integer, got a string 'one'", 2)
    assert "got 'baldness'" in by_field["indication"][0]
    assert by_field["colour"] == ("unknown field", 5)
    assert by_field["grid.zones[0].columns"][1] == 9
    assert by_field["steps[0].dose_ul"] == ("expected a number, got a string '20 uL'", 14)
    assert by_field["steps[1]"][0].startswith("unknown step kind 'laser'") and by_field["steps[1]"][1] == 17
    assert "630, 660, 810 or 850" in by_field["steps[2].wavelength_nm"][0]
    assert len(problems) == 7


def test_missing_fields_and_missing_kind():
    data = demo_data()
    del data["steps"][2]["amplitude_v"]
    del data["steps"][0]["kind"]
    fields = dict((f, m) for f, m, _ in problems_of(data))
    assert fields["steps[2].amplitude_v"] == "required field missing"
    assert "missing kind" in fields["steps[0]"]


def test_booleans_and_strings_are_not_numbers():
    data = demo_data()
    data["steps"][2]["pulses_per_point"] = True
    data["steps"][2]["width_ms"] = "1"
    fields = fields_of(data)
    assert set(fields) == {"steps[2].pulses_per_point", "steps[2].width_ms"}


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["steps"][2].update(id="inject"), "steps[2].id", "duplicate step id"),
    (lambda d: d["steps"][2].update(id="session"), "steps[2].id", "reserved"),
    (lambda d: d["steps"][0].update(zones=["left", "middle"]), "steps[0].zones[1]", "no zone 'middle'"),
    (lambda d: d["steps"][0].update(zones=["left", "left"]), "steps[0].zones[1]", "listed twice"),
    (lambda d: d["grid"]["zones"].append({"id": "left", "rows": 1, "columns": 1}), "grid.zones[2].id", "duplicate zone"),
    (lambda d: d["preflight"].append({"id": "consent", "kind": "consent", "text": "x"}), "preflight[2].id", "duplicate item"),
    (lambda d: d["steps"][3].update({"with": "nothing"}), "steps[3].with", "no step 'nothing'"),
    (lambda d: d["steps"][3].update({"with": "light"}), "steps[3].with", "itself"),
    (lambda d: d["steps"][3].update({"with": "ep"}), "steps[3].with", "only led and pemf"),
    (lambda d: d["steps"][2].update({"with": "field"}), "steps[3].with", "already runs alongside"),
    (lambda d: d["steps"][4].update({"with": "light"}), "steps[3].with", "its own partner"),
    (lambda d: d["steps"][3].update(fluence_j_cm2=4), "steps[3]", "exactly one of duration_s and fluence_j_cm2"),
    (lambda d: d["steps"][3].pop("duration_s"), "steps[3]", "exactly one of"),
    (lambda d: d["steps"][3].update(duty_pct=50), "steps[3].duty_pct", "pulse_hz"),
    (lambda d: d["steps"][0].update(mode="burst"), "steps[0].rate_hz", "required in burst mode"),
    (lambda d: d["steps"][0].update(rate_hz=3), "steps[0].rate_hz", "only to burst and nappage"),
    (lambda d: d["steps"][0].update(shot_ul=30), "steps[0].shot_ul", "larger than dose_ul"),
    (lambda d: d["steps"][0].update(shot_ul=3), "steps[0].dose_ul", "whole number of shots"),
    (lambda d: d["steps"][2]["impedance"].update(min_ohm=6000), "steps[2].impedance", "below max_ohm"),
    (lambda d: d.update(course={"phase": "initial", "interval_days": {"min": 20, "max": 10}}),
     "course.interval_days", "min is above max"),
    (lambda d: d.pop("grid"), "steps[0].zones", "no grid"),
])
def test_cross_checks_name_the_field(mutate, field, words):
    data = demo_data()
    mutate(data)
    problems = problems_of(data)
    assert any(f == field and words in m for f, m, _ in problems), problems
    assert all(line is not None for _, _, line in problems)


def test_a_step_named_in_with_may_appear_before_its_partner():
    data = demo_data()
    light, field = data["steps"][3], data["steps"][4]
    data["steps"][3], data["steps"][4] = field, light
    program = Program.model_validate(data)
    assert [(s.id, p.id if p else None) for s, p in program.sequence()][-1] == ("light", "field")


def test_the_python_name_with_underscore_is_not_a_yaml_key():
    text = (PROGRAMS / "demo.yaml").read_text().replace("with: field", "with_: field")
    assert ("steps[3].with_", "unknown field") in [(f, m) for f, m, _ in problems_of(text)]


def test_building_a_program_directly_still_runs_the_cross_checks():
    data = demo_data()
    data["steps"][2]["id"] = "inject"
    with pytest.raises(ValidationError, match="duplicate step id"):
        Program.model_validate(data)


# ---------------------------------------------------------------- overrides


def test_overrides_return_a_new_validated_program():
    program = load_program(PROGRAMS / "demo.yaml")
    changed = program.apply_overrides({"ep": {"amplitude_v": 30, "impedance": {"min_ohm": 300}},
                                       "light": {"duration_s": 20}})
    assert changed.step("ep").amplitude_v == 30
    assert changed.step("ep").impedance.min_ohm == 300 and changed.step("ep").impedance.max_ohm == 5000
    assert changed.step("light").duration_s == 20
    assert program.step("ep").amplitude_v == 20  # the original is untouched
    assert program.apply_overrides({}) is program


@pytest.mark.parametrize("params, field, words", [
    ({"nope": {"amplitude_v": 30}}, "params.nope", "no step 'nope'"),
    ({"ep": {"voltage": 30}}, "params.ep.voltage", "unknown parameter of a electroporation step"),
    ({"ep": {"amplitude_v": "thirty"}}, "params.ep.amplitude_v", "expected a number"),
    ({"ep": {"amplitude_v": -5}}, "params.ep.amplitude_v", "greater than 0"),
    ({"ep": {"polarity": "tri"}}, "params.ep.polarity", "'mono' or 'bip'"),
    ({"ep": {"id": "x"}}, "params.ep.id", "cannot be overridden"),
    ({"light": {"with": None}}, "params.light.with", "cannot be overridden"),
    ({"light": {"fluence_j_cm2": 4}}, "params.light", "exactly one of"),
    ({"ep": {"impedance": {"min_ohm": 9000}}}, "params.ep.impedance", "below max_ohm"),
    ({"inject": {"zones": ["left", "middle"]}}, "params.inject.zones[1]", "no zone 'middle'"),
    ({"ep": 30}, "params.ep", "expected a mapping"),
])
def test_bad_overrides_name_params_step_param(params, field, words):
    program = load_program(PROGRAMS / "demo.yaml")
    with pytest.raises(ProgramError) as info:
        program.apply_overrides(params)
    assert any(p.field == field and words in p.message for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------- hub config


def test_shipped_config_resolves_paths_against_its_directory():
    config = HubConfig.load(ROOT / "configs" / "hub.yaml")
    assert (config.site, config.room) == ("clinic-a", "room-1")
    assert [(d.id, d.type) for d in config.devices] == [("epg-1", "epg"), ("inj-1", "inj"), ("led-1", "led"), ("pemf-1", "pemf")]
    assert config.store == (ROOT / "var" / "devicehub.sqlite").resolve()
    assert config.console_socket == (ROOT / "var" / "devicehub.sock").resolve()
    assert config.limits == ROOT / "configs" / "limits.yaml"
    assert config.programs == ROOT / "configs" / "programs"
    assert config.mqtt.host == "127.0.0.1" and config.mqtt.port == 1883
    assert config.remote_confirmation is True
    assert config.device("led-1").parsed_endpoint.unit == 1 and config.device("pemf-1").parsed_endpoint.unit == 2
    assert config.topic_root == "devicehub/v1/clinic-a/room-1"
    assert config.path == (ROOT / "configs" / "hub.yaml").resolve()


def test_sim_room_matches_the_hub_config_ports():
    from simulators.__main__ import load_room

    config = HubConfig.load(ROOT / "configs" / "hub.yaml")
    room = {d["id"]: d for d in load_room(ROOT / "configs" / "sim-room.yaml")}
    for dev in config.devices:
        ep = dev.parsed_endpoint
        assert room[dev.id]["type"] == dev.type and room[dev.id]["port"] == ep.port
        assert 47101 <= room[dev.id]["control_port"] <= 47108
        if dev.type in ("led", "pemf"):
            assert room[dev.id]["unit"] == ep.unit


def write_config(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "hub.yaml").read_text())
    data.update(changes)
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_environment_overrides_mqtt(tmp_path):
    path = write_config(tmp_path)
    env = {"DEVICEHUB_MQTT_HOST": "broker.local", "DEVICEHUB_MQTT_PORT": "8883",
           "DEVICEHUB_MQTT_USERNAME": "hub", "DEVICEHUB_MQTT_PASSWORD": "s3cret"}
    config = HubConfig.load(path, environ=env)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("broker.local", 8883, "hub")
    assert config.mqtt.resolved_password() == "s3cret"
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError, match="DEVICEHUB_MQTT_PORT: expected a port number"):
        HubConfig.load(path, environ={"DEVICEHUB_MQTT_PORT": "eighty"})


def test_environment_overrides_apply_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVICEHUB_MQTT_HOST", "10.0.0.5")
    assert HubConfig.load(write_config(tmp_path)).mqtt.host == "10.0.0.5"


def test_password_env_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOM1_PW", "from-env")
    config = HubConfig.load(write_config(tmp_path, mqtt={"host": "h", "password_env": "ROOM1_PW",
                                                         "tls": {"ca_file": "ca.crt"}}))
    assert config.mqtt.resolved_password() == "from-env"
    assert config.mqtt.tls.ca_file == (tmp_path / "ca.crt").resolve()
    with pytest.raises(ConfigError, match="not both"):
        HubConfig.load(write_config(tmp_path, mqtt={"password": "a", "password_env": "ROOM1_PW"}))


@pytest.mark.parametrize("changes, field, words", [
    ({"room": "room 1"}, "room", "not allowed here"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"devices": [{"id": "epg-1", "type": "epg", "endpoint": "tcp://x:1"}]}, "devices[0].endpoint", "scheme must be one of"),
    ({"devices": [{"id": "x", "type": "laser", "endpoint": "socket://h:1"}]}, "devices[0].type", "got 'laser'"),
    ({"devices": [{"id": "a", "type": "epg", "endpoint": "socket://h:1"},
                  {"id": "a", "type": "inj", "endpoint": "socket://h:2"}]}, "", "duplicate device ids: a"),
    ({"mqtt": {"port": "1883"}}, "mqtt.port", "expected an integer"),
    ({"remote_confirmation": "no"}, "remote_confirmation", "expected true or false"),
])
def test_bad_config_names_the_field(tmp_path, changes, field, words):
    with pytest.raises(ConfigError) as info:
        HubConfig.load(write_config(tmp_path, **changes))
    assert any(p.field == field and words in p.message for p in info.value.problems), info.value.problems


def test_config_defaults_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("site: s\nroom: r\ndevices: [{id: e, type: epg, endpoint: 'socket://127.0.0.1:1'}]\n")
    config = HubConfig.load(path)
    assert config.limits == tmp_path.resolve() / "limits.yaml" and config.programs == tmp_path.resolve() / "programs"
    assert config.mqtt.port == 1883 and config.mqtt.keepalive == 30 and config.mqtt.outbox_max == 100_000
    assert config.telemetry.running_hz == 2 and config.telemetry.idle_hz == 0.2
    assert config.mqtt_client_id == "devicehub-s-r"
    with pytest.raises(ConfigError, match="no such file"):
        HubConfig.load(tmp_path / "missing.yaml")


def test_resolve_device():
    config = HubConfig.model_validate({"site": "s", "room": "r", "devices": [
        {"id": "led-a", "type": "led", "endpoint": "modbus-tcp://h:1"},
        {"id": "led-b", "type": "led", "endpoint": "modbus-tcp://h:2"},
        {"id": "epg-1", "type": "epg", "endpoint": "socket://h:3"}]})
    assert config.resolve_device("epg").id == "epg-1"
    assert config.resolve_device("led", "led-b").id == "led-b"
    with pytest.raises(LookupError, match="2 led devices"):
        config.resolve_device("led")
    with pytest.raises(LookupError, match="no INJ-1"):
        config.resolve_device("inj")
    with pytest.raises(LookupError, match="no device 'x'"):
        config.resolve_device("led", "x")
    with pytest.raises(LookupError, match="is a EPG-1"):
        config.resolve_device("led", "epg-1")


# ---------------------------------------------------------------- limits


def test_shipped_limits_are_the_documented_defaults():
    limits = Limits.load(ROOT / "configs" / "limits.yaml")
    expect = {
        ("injection", "depth_mm"): (3.0, 4.0, "mm"), ("injection", "dose_ul"): (50, 100, "uL"),
        ("injection", "rate_hz"): (5, 10, "shots/s"), ("electroporation", "amplitude_v"): (54, 100, "V"),
        ("electroporation", "width_ms"): (2, 5, "ms"), ("electroporation", "pulses_per_point"): (50, 200, "pulses"),
        ("electroporation", "energy_per_pulse_mj"): (10, 300, "mJ"),
        ("electroporation", "pulse_timing_error_us"): (100, 250, "us"), ("led", "irradiance_mw_cm2"): (50, 100, "mW/cm2"),
        ("pemf", "frequency_hz"): (70, 100, "Hz"), ("pemf", "peak_field_mt"): (5, 10, "mT"),
        ("grid", "spacing_mm"): (5, 2, "mm"), ("session", "injection_volume_ul"): (5000, 10000, "uL"),
        ("session", "ep_charge_uc"): (20000, 50000, "uC"), ("session", "led_fluence_j_cm2"): (20, 67, "J/cm2"),
        ("session", "led_exposure_min"): (25, 30, "min"), ("session", "pemf_time_min"): (15, 30, "min"),
        ("runtime", "skin_temp_c"): (40, 41, "degC"), ("course", "interval_days"): (6, 3, "days"),
    }
    for (section, name), (soft, hard, unit) in expect.items():
        limit = getattr(getattr(limits, section), name)
        assert (limit.soft, limit.hard, limit.unit) == (soft, hard, unit), (section, name)
    assert limits.electroporation.energy_per_pulse_mj.assumed_load_ohm == 500
    assert limits.grid.spacing_mm.direction == "below" and limits.injection.depth_mm.direction == "above"


def limits_data() -> dict:
    return yaml.safe_load((ROOT / "configs" / "limits.yaml").read_text())


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["injection"]["depth_mm"].update(unit="cm"), "injection.depth_mm", "unit must be 'mm'"),
    (lambda d: d["electroporation"]["amplitude_v"].update(soft=120), "electroporation.amplitude_v", "must not be above"),
    (lambda d: d["grid"]["spacing_mm"].update(soft=1), "grid.spacing_mm", "must not be below"),
    (lambda d: d.pop("session"), "session", "required field missing"),
    (lambda d: d["led"].update(fluence_j_cm2={"soft": 1, "hard": 2, "unit": "J/cm2"}), "led.fluence_j_cm2", "unknown field"),
    (lambda d: d["pemf"]["peak_field_mt"].update(hard="10"), "pemf.peak_field_mt.hard", "expected a number"),
])
def test_bad_limits_name_the_field(mutate, field, words):
    data = limits_data()
    mutate(data)
    with pytest.raises(LimitsError) as info:
        Limits.load(yaml.safe_dump(data))
    assert any(p.field == field and words in p.message for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------- schemas


def test_schemas_are_generated_from_the_models():
    from devicehub.commands.schema import schema_of

    program = schema_of("program")
    assert program["title"] == "Program"
    injection = program["$defs"]["InjectionStep"]["properties"]
    assert "with" in injection and "with_" not in injection
    assert program["$defs"]["InjectionStep"]["additionalProperties"] is False
    assert schema_of("config")["title"] == "HubConfig"
    assert schema_of("limits")["title"] == "Limits"
