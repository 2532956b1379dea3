"""The dry run: capability ranges, soft and hard limits, session caps, devices, plan, library."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from devicehub import capabilities
from devicehub.models import HubConfig, Limits, Program, ProgramError
from devicehub.programs_library import ProgramLibrary, UnknownProgram
from devicehub.validation import CONFIRM_S, EP_POINT_S, INJECTION_POINT_S, SINGLE_SHOT_S, analyse, load_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "configs" / "programs"


@pytest.fixture(scope="module")
def config() -> HubConfig:
    return HubConfig.load(ROOT / "configs" / "hub.yaml")


@pytest.fixture(scope="module")
def limits() -> Limits:
    return Limits.load(ROOT / "configs" / "limits.yaml")


def demo_data() -> dict:
    return yaml.safe_load((PROGRAMS / "demo.yaml").read_text())


def program_with(mutate) -> Program:
    data = demo_data()
    mutate(data)
    return Program.model_validate(data)


def by_id(analysis):
    return {f.id: f for f in analysis.findings}


# ---------------------------------------------------------------- the shipped library


@pytest.mark.parametrize("path", sorted(PROGRAMS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_programs_are_startable_in_the_shipped_room(path, config, limits):
    analysis = analyse(load_program(path), config, limits)
    assert analysis.findings == []  # not even a soft limit: nothing to acknowledge
    assert analysis.startable and analysis.refusal() is None


def test_aga_initial_is_a_realistic_session(config, limits):
    a = analyse(load_program(PROGRAMS / "aga-initial.yaml"), config, limits)
    assert 15 * 60 <= a.est_duration_s <= 60 * 60
    inject = a.program.step("inject")
    assert (inject.dose_ul, inject.depth_mm, a.program.grid.spacing_mm) == (20, 1.5, 10)
    assert set(a.points_per_zone) == {"frontal", "mid", "vertex"}
    ep = a.program.step("ep")
    assert (ep.amplitude_v, ep.width_ms, ep.period_ms, ep.pulses_per_point, ep.polarity) == (20, 1, 100, 10, "bip")
    light, field = a.program.step("light"), a.program.step("field")
    assert (light.wavelength_nm, light.irradiance_mw_cm2, light.fluence_j_cm2) == (660, 5, 4)
    assert (field.waveform, field.frequency_hz, field.peak_field_mt, field.duration_s) == ("trapezoid", 15, 1, 600)
    assert a.session_totals["injection_volume_ul"] <= limits.session.injection_volume_ul.typical


def test_demo_plan_fits_in_ninety_seconds_of_device_time(config, limits):
    a = analyse(load_program(PROGRAMS / "demo.yaml"), config, limits)
    plans = {p.id: p for p in a.steps}
    # device time only: 8 shots at ~4 Hz, 8 trains, 10 s of light and field side by side
    device_time = (plans["inject"].totals["shots"] / 4
                   + 8 * a.program.step("ep").pulses_per_point * a.program.step("ep").period_ms / 1000
                   + max(plans["light"].est_duration_s, plans["field"].est_duration_s))
    assert device_time < 30
    assert a.est_duration_s < 90
    assert {d: set(t) for d, t in a.totals_per_device.items()} == {
        "inj-1": {"volume_ul", "shots"}, "epg-1": {"pulses", "charge_uc", "energy_mj"},
        "led-1": {"fluence_j_cm2", "exposure_s"}, "pemf-1": {"field_time_s", "pulses"},
    }


# ---------------------------------------------------------------- the plan


def test_plan_durations_points_and_totals(config, limits):
    a = analyse(load_program(PROGRAMS / "demo.yaml"), config, limits)
    plans = {p.id: p for p in a.steps}
    assert a.points_per_zone == {"left": 4, "right": 4}
    assert plans["inject"].points_per_zone == {"left": 4, "right": 4} and plans["inject"].points == 8
    assert plans["inject"].est_duration_s == pytest.approx(8 * (INJECTION_POINT_S + SINGLE_SHOT_S))
    assert plans["apply-serum"].est_duration_s == CONFIRM_S
    assert plans["ep"].est_duration_s == pytest.approx(8 * (EP_POINT_S + 10 * 0.050))
    assert plans["light"].est_duration_s == 10 and plans["field"].est_duration_s == 10
    assert plans["field"].runs_alongside == "light" and plans["light"].with_ == "field"
    assert plans["field"].start_s == plans["light"].start_s == pytest.approx(
        plans["inject"].est_duration_s + CONFIRM_S + plans["ep"].est_duration_s)
    assert a.est_duration_s == pytest.approx(plans["light"].start_s + 10)
    assert [p.device for p in a.steps] == ["inj-1", None, "epg-1", "led-1", "pemf-1"]
    assert a.totals_per_device["inj-1"] == {"volume_ul": 160, "shots": 8}
    # 20 V into impedance.min_ohm 500 ohm for 1 ms: 40 uC and 0.8 mJ per pulse, 80 pulses
    assert a.totals_per_device["epg-1"] == pytest.approx({"pulses": 80, "charge_uc": 3200, "energy_mj": 64})
    assert a.totals_per_device["led-1"] == pytest.approx({"fluence_j_cm2": 0.05, "exposure_s": 10})
    assert a.totals_per_device["pemf-1"] == pytest.approx({"field_time_s": 10, "pulses": 150})


def test_alongside_pair_lasts_as_long_as_the_longer(config, limits):
    a = analyse(load_program(PROGRAMS / "aga-initial.yaml"), config, limits)
    plans = {p.id: p for p in a.steps}
    assert plans["light"].est_duration_s == pytest.approx(800)  # 4 J/cm2 at 5 mW/cm2
    assert plans["field"].est_duration_s == 600
    assert a.est_duration_s == pytest.approx(sum(plans[s].est_duration_s for s in ("inject", "apply-serum", "ep", "light")))


def test_fluence_estimate_applies_the_duty_cycle(config, limits):
    p = program_with(lambda d: d["steps"][3].update(pulse_hz=10, duty_pct=50, duration_s=100))
    plan = {s.id: s for s in analyse(p, config, limits).steps}["light"]
    assert plan.totals["fluence_j_cm2"] == pytest.approx(5 * 0.5 * 100 / 1000)


def test_burst_injection_duration_uses_the_rate(config, limits):
    a = analyse(load_program(PROGRAMS / "telogen-effluvium.yaml"), config, limits)
    plan = {s.id: s for s in a.steps}["inject"]
    assert plan.totals == {"volume_ul": 90 * 20, "shots": 90 * 4}
    assert plan.est_duration_s == pytest.approx(90 * (INJECTION_POINT_S + 4 / 2))


# ---------------------------------------------------------------- soft and hard limits


def test_soft_limit_refused_without_ack_and_accepted_with_it(config, limits):
    p = program_with(lambda d: d["steps"][2].update(amplitude_v=60))
    a = analyse(p, config, limits)
    f = by_id(a)["ep.amplitude_v"]
    assert (f.severity, f.field, f.value, f.limit, f.unit) == ("soft", "steps[2].amplitude_v", 60, 54, "V")
    assert f.message == "steps[2].amplitude_v: 60 V is above the soft limit 54 V"
    assert f.detail() == {"id": "ep.amplitude_v", "field": "steps[2].amplitude_v", "value": 60, "limit": 54, "unit": "V"}
    assert not a.startable and [x.id for x in a.unacknowledged_soft] == ["ep.amplitude_v"]
    code, _, details = a.refusal()
    assert code == "soft_limit" and details[0]["id"] == "ep.amplitude_v"
    acked = analyse(p, config, limits, acknowledged=["ep.amplitude_v"])
    assert acked.startable and acked.unacknowledged_soft == [] and acked.refusal() is None
    assert acked.soft_limit_ids == ["ep.amplitude_v"]


def test_an_ack_for_another_limit_does_not_count(config, limits):
    p = program_with(lambda d: d["steps"][2].update(amplitude_v=60))
    a = analyse(p, config, limits, acknowledged=["ep.width_ms", "ep.amplitude_v.x"])
    assert not a.startable
    assert a.unmatched_acknowledgements == ["ep.width_ms", "ep.amplitude_v.x"]


def test_hard_limit_is_never_startable_even_acknowledged(config, limits):
    p = program_with(lambda d: d["steps"][2].update(amplitude_v=120))
    a = analyse(p, config, limits, acknowledged=["ep.amplitude_v", "ep.energy_per_pulse_mj"])
    f = by_id(a)["ep.amplitude_v"]
    assert f.severity == "hard" and f.message == "steps[2].amplitude_v: 120 V is above the hard limit 100 V"
    assert not a.startable and a.refusal()[0] == "hard_limit"


def test_value_equal_to_a_limit_is_within_it(config, limits):
    p = program_with(lambda d: d["steps"][2].update(amplitude_v=54))
    assert "ep.amplitude_v" not in by_id(analyse(p, config, limits))


@pytest.mark.parametrize("mutate, fid, severity", [
    (lambda d: d["steps"][0].update(depth_mm=3.5), "inject.depth_mm", "soft"),
    (lambda d: d["steps"][0].update(depth_mm=4.5), "inject.depth_mm", "hard"),
    (lambda d: d["steps"][0].update(dose_ul=60), "inject.dose_ul", "soft"),
    (lambda d: d["steps"][0].update(mode="burst", rate_hz=6, shot_ul=5), "inject.rate_hz", "soft"),
    (lambda d: d["steps"][2].update(width_ms=3), "ep.width_ms", "soft"),
    (lambda d: d["steps"][2].update(pulses_per_point=250, period_ms=2), "ep.pulses_per_point", "hard"),
    (lambda d: d["steps"][3].update(irradiance_mw_cm2=60), "light.irradiance_mw_cm2", "soft"),
    (lambda d: d["steps"][4].update(frequency_hz=80), "field.frequency_hz", "soft"),
    (lambda d: d["steps"][4].update(peak_field_mt=12), "field.peak_field_mt", "hard"),
    (lambda d: d["grid"].update(spacing_mm=4), "grid.spacing_mm", "soft"),
    (lambda d: d["grid"].update(spacing_mm=1.5), "grid.spacing_mm", "hard"),
    (lambda d: d.update(course={"phase": "initial", "interval_days": {"min": 5, "max": 10}}), "course.interval_days", "soft"),
    (lambda d: d.update(course={"phase": "initial", "interval_days": {"min": 2, "max": 10}}), "course.interval_days", "hard"),
])
def test_per_parameter_limits(config, limits, mutate, fid, severity):
    a = analyse(program_with(mutate), config, limits)
    assert by_id(a)[fid].severity == severity, a.findings


def test_floors_read_below(config, limits):
    a = analyse(program_with(lambda d: d["grid"].update(spacing_mm=4)), config, limits)
    f = by_id(a)["grid.spacing_mm"]
    assert f.message == "grid.spacing_mm: 4 mm is below the soft limit 5 mm" and f.field == "grid.spacing_mm"


def test_energy_per_pulse_uses_min_impedance_then_the_assumed_load(config, limits):
    # 40 V, 2 ms into 200 ohm: 16 mJ (soft); without an impedance window, 500 ohm: 6.4 mJ
    p = program_with(lambda d: d["steps"][2].update(amplitude_v=40, width_ms=2, impedance={"min_ohm": 200, "max_ohm": 5000}))
    f = by_id(analyse(p, config, limits))["ep.energy_per_pulse_mj"]
    assert (f.severity, f.value, f.unit, f.field) == ("soft", 16, "mJ", "steps[2].energy_per_pulse_mj")
    assert "into 200 ohm" in f.message
    p = program_with(lambda d: (d["steps"][2].update(amplitude_v=40, width_ms=2), d["steps"][2].pop("impedance")))
    a = analyse(p, config, limits)
    assert "ep.energy_per_pulse_mj" not in by_id(a)
    plan = {s.id: s for s in a.steps}["ep"]
    assert plan.values["load_ohm"] == 500 and plan.values["energy_per_pulse_mj"] == pytest.approx(6.4)


# ---------------------------------------------------------------- session caps


def test_session_caps_add_up_over_steps(config, limits):
    def two_injections(d):
        d["grid"]["zones"] = [{"id": "left", "rows": 10, "columns": 10}, {"id": "right", "rows": 4, "columns": 4}]
        d["steps"][0].update(dose_ul=30)
        d["steps"].insert(1, {**d["steps"][0], "id": "inject-2"})
    a = analyse(program_with(two_injections), config, limits)
    f = by_id(a)["session.injection_volume_ul"]
    # each step 116 points x 30 uL = 3480 uL, under the soft cap; together 6960 uL
    assert (f.severity, f.value, f.limit, f.field) == ("soft", 6960, 5000, "session.injection_volume_ul")
    assert "steps inject, inject-2" in f.message
    assert analyse(program_with(two_injections), config, limits,
                   acknowledged=["session.injection_volume_ul", "session.ep_charge_uc"]).startable


@pytest.mark.parametrize("mutate, cap, severity", [
    (lambda d: d["grid"]["zones"][0].update(rows=20, columns=30), "session.injection_volume_ul", "hard"),
    (lambda d: d["steps"][2].update(pulses_per_point=70), "session.ep_charge_uc", "soft"),  # 8 x 70 x 40 uC
    (lambda d: d["steps"][2].update(pulses_per_point=160), "session.ep_charge_uc", "hard"),
    (lambda d: d["steps"][3].update(duration_s=1501), "session.led_exposure_min", "soft"),
    (lambda d: d["steps"][3].update(duration_s=1500), "session.led_exposure_min", None),  # 25 min: at the limit
    (lambda d: d["steps"][3].update(irradiance_mw_cm2=40, duration_s=600), "session.led_fluence_j_cm2", "soft"),
    (lambda d: d["steps"][4].update(duration_s=1000), "session.pemf_time_min", "soft"),
    (lambda d: d["steps"][4].update(duration_s=2000), "session.pemf_time_min", "hard"),
])
def test_session_caps(config, limits, mutate, cap, severity):
    a = analyse(program_with(mutate), config, limits)
    if severity is None:
        assert cap not in by_id(a)
    else:
        assert by_id(a)[cap].severity == severity, a.findings


def test_led_fluence_sums_two_exposures(config, limits):
    def two_lights(d):
        d["steps"][3].update(fluence_j_cm2=12, irradiance_mw_cm2=30)
        del d["steps"][3]["duration_s"]
        d["steps"].append({"id": "light-2", "kind": "led", "wavelength_nm": 850, "irradiance_mw_cm2": 30,
                           "fluence_j_cm2": 12})
    a = analyse(program_with(two_lights), config, limits)
    assert a.session_totals["led_fluence_j_cm2"] == pytest.approx(24)
    assert by_id(a)["session.led_fluence_j_cm2"].severity == "soft"
    assert a.totals_per_device["led-1"]["fluence_j_cm2"] == pytest.approx(24)


# ---------------------------------------------------------------- capability ranges


def test_capability_error_and_hard_limit_both_reported(config, limits):
    a = analyse(program_with(lambda d: d["steps"][2].update(amplitude_v=180)), config, limits)
    kinds = sorted(f.severity for f in a.findings if f.id == "ep.amplitude_v")
    assert kinds == ["error", "hard"]
    messages = {f.severity: f.message for f in a.findings if f.id == "ep.amplitude_v"}
    assert messages["error"] == "steps[2].amplitude_v: 180 V is outside the EPG-1 range 1 to 150 V"
    assert messages["hard"] == "steps[2].amplitude_v: 180 V is above the hard limit 100 V"
    assert not analyse(a.program, config, limits, acknowledged=["ep.amplitude_v"]).startable


@pytest.mark.parametrize("mutate, fid, field, words", [
    (lambda d: d["steps"][2].update(width_ms=30, period_ms=100), "ep.width_ms", "steps[2].width_ms", "EPG-1 range"),
    (lambda d: d["steps"][2].update(period_ms=1.5, width_ms=1), "ep.period_ms", "steps[2].period_ms", "twice the pulse width"),
    (lambda d: d["steps"][2].update(amplitude_v=20.3), "ep.amplitude_v", "steps[2].amplitude_v", "multiple of the EPG-1 step 0.5 V"),
    (lambda d: d["steps"][2].update(current_limit_ma=150), "ep.current_limit_ma", "steps[2].current_limit_ma", "1 to 100 mA"),
    (lambda d: d["steps"][0].update(depth_mm=7), "inject.depth_mm", "steps[0].depth_mm", "INJ-1 range 0.5 to 6 mm"),
    (lambda d: d["steps"][0].update(depth_mm=1.55), "inject.depth_mm", "steps[0].depth_mm", "step 0.1 mm"),
    (lambda d: d["steps"][0].update(dose_ul=250), "inject.shot_ul", "steps[0].dose_ul", "INJ-1 range 1 to 200 uL"),
    (lambda d: d["steps"][0].update(mode="nappage", rate_hz=12, shot_ul=2), "inject.rate_hz", "steps[0].rate_hz", "1 to 10 shots/s"),
    (lambda d: d["steps"][0].update(dose_ul=1.0, shot_ul=0.5), "inject.shot_ul", "steps[0].shot_ul", "INJ-1 range"),
    (lambda d: d["steps"][3].update(duration_s=4000), "light.duration_s", "steps[3].duration_s", "LED-1 range"),
    (lambda d: d["steps"][3].update(irradiance_mw_cm2=0.5), "light.irradiance_mw_cm2", "steps[3].irradiance_mw_cm2", "LED-1 range"),
    (lambda d: d["steps"][3].update(pulse_hz=2000), "light.pulse_hz", "steps[3].pulse_hz", "LED-1 range"),
    (lambda d: d["steps"][3].update(pulse_hz=10, duty_pct=5), "light.duty_pct", "steps[3].duty_pct", "10 to 100 %"),
    (lambda d: d["steps"][4].update(frequency_hz=150), "field.frequency_hz", "steps[4].frequency_hz", "PEMF-1 range"),
    (lambda d: d["steps"][4].update(peak_field_mt=0.005), "field.peak_field_mt", "steps[4].peak_field_mt", "PEMF-1 range"),
    (lambda d: d["steps"][4].update(duration_s=10.05), "field.duration_s", "steps[4].duration_s", "step 0.1 s"),
])
def test_capability_ranges_are_errors(config, limits, mutate, fid, field, words):
    a = analyse(program_with(mutate), config, limits)
    errors = [f for f in a.errors if f.id == fid]
    assert errors and errors[0].field == field and words in errors[0].message, a.findings
    assert not a.startable and a.refusal()[0] == "hard_limit"


def test_capabilities_check_directly():
    assert capabilities.check("epg", {"amplitude_v": 20, "width_ms": 1, "period_ms": 100}) == []
    (f,) = capabilities.check("electroporation", {"amplitude_v": 151}, step_id="ep", fields={"amplitude_v": "steps[1].amplitude_v"})
    assert (f.id, f.severity, f.field, f.value, f.limit, f.unit) == ("ep.amplitude_v", "error", "steps[1].amplitude_v", 151, 150, "V")
    (f,) = capabilities.check("led", {"wavelength_nm": 700})
    assert f.id == "wavelength_nm" and "630, 660, 810, 850" in f.message
    assert capabilities.check("pemf", {"frequency_hz": None}) == []
    with pytest.raises(ValueError):
        capabilities.check("laser", {})


# ---------------------------------------------------------------- devices of the room


def room(*devices) -> HubConfig:
    ports = iter(range(47000, 47100))
    return HubConfig.model_validate({"site": "s", "room": "r", "devices": [
        {"id": i, "type": t, "endpoint": f"{'socket' if t in ('epg', 'inj') else 'modbus-tcp'}://127.0.0.1:{next(ports)}"}
        for i, t in devices]})


def test_unknown_device_is_an_error_on_the_step(config, limits):
    a = analyse(program_with(lambda d: d["steps"][2].update(device="epg-9")), config, limits)
    f = by_id(a)["ep.device"]
    assert (f.severity, f.field) == ("error", "steps[2].device") and "no device 'epg-9'" in f.message
    assert not a.startable


def test_device_of_the_wrong_type_is_an_error(config, limits):
    a = analyse(program_with(lambda d: d["steps"][2].update(device="led-1")), config, limits)
    assert "the step needs a EPG-1" in by_id(a)["ep.device"].message


def test_missing_device_type_is_an_error(limits):
    a = analyse(load_program(PROGRAMS / "demo.yaml"), room(("epg-1", "epg"), ("inj-1", "inj"), ("led-1", "led")), limits)
    f = by_id(a)["field.device"]
    assert f.field == "steps[4].device" and "no PEMF-1" in f.message
    assert [e.id for e in a.errors] == ["field.device"]


def test_two_devices_of_a_type_need_a_name(limits):
    cfg = room(("epg-1", "epg"), ("inj-1", "inj"), ("led-a", "led"), ("led-b", "led"), ("pemf-1", "pemf"))
    a = analyse(load_program(PROGRAMS / "demo.yaml"), cfg, limits)
    assert "2 led devices" in by_id(a)["light.device"].message
    named = program_with(lambda d: d["steps"][3].update(device="led-b"))
    a = analyse(named, cfg, limits)
    assert a.startable and {p.id: p.device for p in a.steps}["light"] == "led-b"


def test_steps_run_alongside_need_two_devices(config, limits):
    def led_with_led(d):
        d["steps"][4] = {"id": "field", "kind": "led", "wavelength_nm": 850, "irradiance_mw_cm2": 5, "duration_s": 10}
    a = analyse(program_with(led_with_led), config, limits)
    f = by_id(a)["light.with"]
    assert f.severity == "error" and f.field == "steps[3].with" and "same device 'led-1'" in f.message
    cfg = room(("epg-1", "epg"), ("inj-1", "inj"), ("led-a", "led"), ("led-b", "led"))

    def on_two_leds(d):
        led_with_led(d)
        d["steps"][3]["device"] = "led-a"
        d["steps"][4]["device"] = "led-b"
    assert analyse(program_with(on_two_leds), cfg, limits).startable


def test_without_a_config_devices_are_named_by_type(limits):
    a = analyse(load_program(PROGRAMS / "demo.yaml"), None, limits)
    assert a.startable and [p.device for p in a.steps] == ["inj", None, "epg", "led", "pemf"]


# ---------------------------------------------------------------- overrides in the analysis


def test_params_are_applied_before_checking(config, limits):
    program = load_program(PROGRAMS / "demo.yaml")
    a = analyse(program, config, limits, params={"ep": {"amplitude_v": 60}})
    assert a.program.step("ep").amplitude_v == 60 and a.params == {"ep": {"amplitude_v": 60}}
    assert [f.id for f in a.soft] == ["ep.amplitude_v"]
    assert analyse(program, config, limits, params={"ep": {"amplitude_v": 60}}, acknowledged=["ep.amplitude_v"]).startable
    with pytest.raises(ProgramError) as info:
        analyse(program, config, limits, params={"ep": {"amplitud_v": 60}})
    assert info.value.problems[0].field == "params.ep.amplitud_v"


def test_analysis_to_dict_is_json_ready(config, limits):
    import json

    a = analyse(program_with(lambda d: d["steps"][2].update(amplitude_v=60)), config, limits)
    data = json.loads(json.dumps(a.to_dict()))
    assert data["startable"] is False and data["soft_limits"] == ["ep.amplitude_v"]
    assert data["findings"][0]["severity"] == "soft" and data["steps"][2]["device"] == "epg-1"


# ---------------------------------------------------------------- the library


def test_library_lists_the_shipped_programs_with_their_sha256(config, limits):
    library = ProgramLibrary(config.programs, config=config, limits=limits)
    entries = library.list()
    assert [e.id for e in entries] == ["aga-initial", "aga-maintenance", "alopecia-areata", "demo", "telogen-effluvium"]
    assert library.problems == []
    for e in entries:
        assert e.sha256 == hashlib.sha256(e.path.read_bytes()).hexdigest()
        assert e.soft_limits == [] and e.blocking == [] and e.est_duration_s > 0
    demo = {e.id: e for e in entries}["demo"]
    assert demo.to_api() == {"program": "demo", "version": 1, "title": demo.title, "sha256": demo.sha256,
                             "steps": 5, "est_duration_s": round(demo.est_duration_s, 1),
                             "preflight": ["consent", "scalp_cleansed"], "soft_limits": []}


def test_library_get_returns_the_parsed_bytes_and_their_hash(config):
    program, sha, raw = ProgramLibrary(config.programs).get("demo")
    assert raw == (PROGRAMS / "demo.yaml").read_bytes()
    assert sha == hashlib.sha256(raw).hexdigest() and program == load_program(PROGRAMS / "demo.yaml")
    for bad in ("nope", "../configs/hub", "", "Demo"):
        with pytest.raises(UnknownProgram):
            ProgramLibrary(config.programs).get(bad)


def test_unreadable_library_files_are_reported_not_fatal(tmp_path, config, limits):
    good = (PROGRAMS / "demo.yaml").read_text()
    (tmp_path / "demo.yaml").write_text(good)
    (tmp_path / "broken.yaml").write_text("id: broken\nsteps: [\n")
    (tmp_path / "renamed.yaml").write_text(good)  # its id is 'demo'
    (tmp_path / "soft.yaml").write_text(good.replace("id: demo", "id: soft").replace("amplitude_v: 20", "amplitude_v: 60"))
    (tmp_path / "notes.txt").write_text("not a program")
    library = ProgramLibrary(tmp_path)
    entries = library.list(config=config, limits=limits)
    assert [e.id for e in entries] == ["demo", "soft"]
    assert {e.id: e.soft_limits for e in entries}["soft"] == ["ep.amplitude_v"]
    problems = {p.path.name: p.lines() for p in library.problems}
    assert set(problems) == {"broken.yaml", "renamed.yaml"}
    assert problems["broken.yaml"][0].startswith(f"{tmp_path / 'broken.yaml'}:3: YAML syntax error")
    assert "does not match the file name" in problems["renamed.yaml"][0]
    with pytest.raises(ProgramError):
        library.get("broken")
