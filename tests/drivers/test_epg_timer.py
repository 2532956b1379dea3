"""EPG-1 simulator: pulse timing by the device's modelled timer (ICD, physics), the
``timing_drift`` fault, and ``output_changed_at`` on the control channel.

Every figure asserted here is the device's own (``!PULSE`` offsets, its control
``state``); none is a wall-clock duration measured by the test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.epg import EpgDriver, EpgTrain
from simulators.base import ControlError
from simulators.control import ControlClient
from simulators.epg import timer_offsets
from simulators.harness import SimHandle, run_simulator, spawn_simulator
from tests.drivers import waiting

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with run_simulator("epg", seed=7) as handle:
        yield handle


@pytest.fixture
async def ctl(sim: SimHandle) -> AsyncIterator[ControlClient]:
    async with sim.client() as client:
        yield client


@pytest.fixture
async def drv(sim: SimHandle) -> AsyncIterator[EpgDriver]:
    async with EpgDriver(sim.endpoint) as driver:
        yield driver


async def run_train(drv: EpgDriver, train: EpgTrain) -> tuple[list[dict], dict]:
    """Arm, trigger, and collect every ``!PULSE`` and the ``!DONE`` of one train."""
    await drv.configure(train)
    await drv.set_pulse_events(True)
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        pulses = [(await waiting.next_event(q, "pulse", timeout=10.0)).data for _ in range(train.pulses)]
        done = (await waiting.next_event(q, "train_done", timeout=10.0)).data
    return pulses, done


def intervals(pulses: list[dict]) -> list[int]:
    return [b["t_us"] - a["t_us"] for a, b in zip(pulses, pulses[1:])]


@contextlib.contextmanager
def both_cpus_busy() -> Iterator[None]:
    """One bounded busy-loop process per CPU (each ends by itself after 60 s), killed after."""
    burn = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# ============================================================================ the timer model


def test_offsets_follow_the_icd_formula() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    assert timer_offsets(4, 10.0, 0.0, 0.0, 0.0, rng) == [0, 10_000, 20_000, 30_000]
    assert timer_offsets(3, 25.0, 40.0, 0.0, 0.0, rng) == [0, 25_001, 50_002]  # 25 ms x (1 + 40e-6)
    assert timer_offsets(3, 10.0, 0.0, 0.0, 300.0, rng) == [0, 10_300, 20_600]  # D_k = (k-1) x us
    jittered = timer_offsets(2000, 5.0, 0.0, 3.0, 0.0, rng)
    deviations = [t - i * 5000 for i, t in enumerate(jittered)]
    assert jittered[0] >= 0
    assert min(deviations[1:]) == -3 and max(deviations) == 3  # uniform on [-J, +J], both ends reached


async def test_pulse_offsets_are_the_timers_exactly(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("timer_jitter_us", 0)
    await ctl.set("timer_ppm", 100)
    pulses, done = await run_train(drv, EpgTrain(amplitude_v=10, width_ms=1, period_ms=5, pulses=12))
    assert [p["index"] for p in pulses] == list(range(1, 13))
    assert [p["t_us"] for p in pulses] == [round(i * 5000 * (1 + 100e-6)) for i in range(12)]
    assert done["pulses"] == 12
    state = await ctl.state()
    assert state["timer_ppm"] == 100 and state["timer_jitter_us"] == 0
    assert state["last_train"]["timing_error_us"] == 1  # 5000.5 us intervals, rounded each way


async def test_default_timer_is_a_seeded_crystal_with_2_us_jitter(drv: EpgDriver, ctl: ControlClient) -> None:
    state = await ctl.state()
    ppm = state["timer_ppm"]
    assert -20 <= ppm <= 20 and state["timer_jitter_us"] == 2
    pulses, _ = await run_train(drv, EpgTrain(amplitude_v=10, width_ms=1, period_ms=4, pulses=30))
    for p in pulses:
        ideal = round((p["index"] - 1) * 4000 * (1 + ppm * 1e-6))
        assert abs(p["t_us"] - ideal) <= 2, (p, ppm)
    assert pulses[0]["t_us"] >= 0


async def test_default_ppm_is_the_same_for_a_seed_in_every_process() -> None:
    ppms = []
    for _ in range(2):
        with spawn_simulator("epg", "--port", "0", "--seed", "4242") as (_proc, lines):
            async with ControlClient(lines[0]["control"]) as c:
                ppms.append((await c.state())["timer_ppm"])
    assert ppms[0] == ppms[1]


async def test_offsets_hold_while_both_cpus_are_busy(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("timer_ppm", 0)
    before = await ctl.state()
    with both_cpus_busy():
        pulses, done = await run_train(drv, EpgTrain(amplitude_v=10, width_ms=1, period_ms=3, pulses=60))
    deviations = [p["t_us"] - (p["index"] - 1) * 3000 for p in pulses]
    assert max(abs(d) for d in deviations) <= 20, deviations  # the ICD's bound on a loaded host
    assert max(abs(d) for d in deviations) <= 2  # in fact: the timer's own jitter only
    after = await ctl.state()
    assert after["pulses"] - before["pulses"] == done["pulses"] == 60
    assert after["charge_uC"] - before["charge_uC"] == pytest.approx(done["charge_uc"], abs=1e-6)


async def test_a_stopped_train_counts_exactly_the_pulses_it_reported(drv: EpgDriver, ctl: ControlClient) -> None:
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=5, pulses=1000))
    await drv.set_pulse_events(True)
    before = await ctl.state()
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        for _ in range(3):
            await waiting.next_event(q, "pulse")
        await drv.stop()
        rep = await drv.train_report()
        seen = [ev.data["index"] for ev in [q.get_nowait() for _ in range(q.qsize())] if ev.kind == "pulse"]
    after = await ctl.state()
    assert after["output_on"] is False
    assert rep.pulses == after["pulses"] - before["pulses"] == after["last_train"]["pulses"]
    assert 3 + len(seen) == rep.pulses  # every counted pulse was reported, before the stop's reply
    assert seen == list(range(4, rep.pulses + 1))


# ============================================================================ timing_drift


async def test_timing_drift_lengthens_every_interval_of_the_next_trains(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("timer_jitter_us", 0)
    await ctl.set("timer_ppm", 0)
    reply = await ctl.call("inject", fault="timing_drift", us=500, count=2)
    assert reply["us"] == 500 and reply["count"] == 2
    train = EpgTrain(amplitude_v=10, width_ms=1, period_ms=4, pulses=6)
    for _ in range(2):  # two drifting trains: every interval 500 us long, no device fault
        pulses, done = await run_train(drv, train)
        assert intervals(pulses) == [4500] * 5
        assert done["pulses"] == 6
        state = await ctl.state()
        assert (state["state"], state["fault"]) == ("idle", None)
        assert state["last_train"]["timing_error_us"] == 500
    assert "timing_drift" not in (await ctl.state())["injected"]
    pulses, _ = await run_train(drv, train)  # the count is used up: the third is exact
    assert intervals(pulses) == [4000] * 5
    assert (await ctl.state())["last_train"]["timing_error_us"] == 0


async def test_timing_drift_defaults_to_300_us_and_lasts_until_cleared(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("timer_jitter_us", 0)
    await ctl.set("timer_ppm", 0)
    assert (await ctl.inject("timing_drift", count=-1))["us"] == 300
    train = EpgTrain(amplitude_v=10, width_ms=1, period_ms=3, pulses=4)
    for _ in range(2):
        pulses, _ = await run_train(drv, train)
        assert intervals(pulses) == [3300] * 3
    await ctl.clear("timing_drift")
    pulses, _ = await run_train(drv, train)
    assert intervals(pulses) == [3000] * 3


async def test_timing_drift_injected_mid_train_starts_with_the_next_train(drv: EpgDriver, ctl: ControlClient) -> None:
    await ctl.set("timer_jitter_us", 0)
    await ctl.set("timer_ppm", 0)
    await drv.configure(EpgTrain(amplitude_v=10, width_ms=1, period_ms=3, pulses=8))
    await drv.set_pulse_events(True)
    async with drv.subscribe() as q:
        await drv.start()
        await drv.trigger()
        first = [(await waiting.next_event(q, "pulse")).data]
        await ctl.call("inject", fault="timing_drift", us=1000)
        first += [(await waiting.next_event(q, "pulse")).data for _ in range(7)]
        await waiting.next_event(q, "train_done")
    assert intervals(first) == [3000] * 7
    pulses, _ = await run_train(drv, EpgTrain(amplitude_v=10, width_ms=1, period_ms=3, pulses=3))
    assert intervals(pulses) == [4000] * 2


async def test_bad_timer_requests_change_nothing(ctl: ControlClient) -> None:
    before = await ctl.state()
    bad = [
        {"op": "inject", "fault": "timing_drift", "us": -5},
        {"op": "inject", "fault": "timing_drift", "us": 0},
        {"op": "inject", "fault": "timing_drift", "us": "300"},
        {"op": "inject", "fault": "timing_drift", "us": True},
        {"op": "inject", "fault": "stall", "us": 300},
        {"op": "inject", "fault": "timing_drift", "count": 0},
        {"op": "set", "name": "timer_ppm", "value": 1e9},
        {"op": "set", "name": "timer_jitter_us", "value": -1},
        {"op": "set", "name": "timer_jitter_us", "value": "2"},
    ]
    for req in bad:
        reply = await ctl.request(req)
        assert reply["ok"] is False and reply["error"], req
    after = await ctl.state()
    for key in ("injected", "timer_ppm", "timer_jitter_us", "state", "stalled"):
        assert after[key] == before[key], key
    with pytest.raises(ControlError):
        await ctl.call("inject", fault="timing_drift", us=float("nan"))


# ============================================================================ output_changed_at


async def test_output_changed_at_is_stamped_before_the_reply(drv: EpgDriver, ctl: ControlClient) -> None:
    assert (await ctl.state())["output_changed_at"] is None
    sent = time.monotonic()
    await drv.start()
    answered = time.monotonic()
    armed = await ctl.state()
    assert armed["output_on"] is True
    assert sent <= armed["output_changed_at"] <= answered  # same CLOCK_MONOTONIC in every process
    sent = time.monotonic()
    await drv.stop()
    answered = time.monotonic()
    off = await ctl.state()
    assert off["output_on"] is False and sent <= off["output_changed_at"] <= answered
    assert (await ctl.state())["output_changed_at"] == off["output_changed_at"]  # a read changes nothing
