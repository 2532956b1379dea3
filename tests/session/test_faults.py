"""Every injectable fault that is not recoverable, injected while its device is delivering.

Whatever catches the fault first (the device's own fault event, the program's impedance
check, the runner's supervision of a silent device, the hub's skin temperature limit),
the session must end failed with every output off (the recoverable ones pause it:
tests/session/test_recovery.py): a ``safe_state`` event with its time
and a verdict per device, a stalled device reported ``unconfirmed`` with a high alarm
(its own watchdog then switches it off), and a record whose hash chains verify.
"""

from __future__ import annotations

import time

import pytest

from .conftest import DEVICES, Hub, assert_totals_match

#: per device at fault: EP trains long enough (20 pulses at 20 ms) to inject a fault
#: while one runs; otherwise short trains and 3 s of light and field alongside
PARAMS = {
    "epg-1": {"ep": {"pulses_per_point": 20, "period_ms": 20}, "light": {"duration_s": 1}, "field": {"duration_s": 1}},
    "other": {"ep": {"period_ms": 10}, "light": {"duration_s": 3}, "field": {"duration_s": 3}},
}

FAULTS = [
    ("epg-1", "stall"), ("inj-1", "stall"), ("led-1", "led_open"), ("led-1", "stall"),
    ("pemf-1", "coil_open"), ("pemf-1", "field_drift"), ("pemf-1", "stall"),
]

#: the device's state while it delivers (armed counts for the gun: it fires on a pull)
DELIVERING = {
    "epg-1": lambda s: s["state"] == "running",
    "inj-1": lambda s: s["output_on"] and s["state"] in ("armed", "firing"),
    "led-1": lambda s: s["output_on"],
    "pemf-1": lambda s: s["output_on"],
}


async def _mid_step(hub: Hub, dev: str) -> None:
    """Return once ``dev`` is delivering, in the middle of its step."""
    if dev == "inj-1":
        await hub.next_event("point_done", where=lambda e: e.get("step") == "inject")
    elif dev == "epg-1":
        await hub.next_event("train_done")  # one train done: the next one is mid-step
    await hub.wait_sim(dev, DELIVERING[dev], what=f"{dev} delivering")


@pytest.mark.parametrize("dev,fault", FAULTS, ids=[f"{d}-{f}" for d, f in FAULTS])
async def test_fault_mid_step_fails_session_with_everything_off(hub: Hub, dev: str, fault: str) -> None:
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params=PARAMS.get(dev, PARAMS["other"]))
    sid = runner.session_id
    await _mid_step(hub, dev)
    t_inject = time.monotonic()
    await hub.control(dev).inject(fault, count=-1)

    assert await hub.finish(runner, 15) == "failed"
    stalled = fault == "stall"

    # the safe state: its time and each device's verdict
    safe = await hub.next_event("safe_state")
    # timed from the fault's arrival, which came after the injection and before the event was seen
    assert isinstance(safe["ms"], (int, float)) and 0 < safe["ms"] <= (time.monotonic() - t_inject) * 1000
    expected = {d: "off" for d in DEVICES}
    if stalled:
        expected[dev] = "unconfirmed"
    assert safe["devices"] == expected
    failed = await hub.next_event("failed")
    assert failed["safe_state_ms"] == pytest.approx(safe["ms"], abs=1e-3)
    assert failed.get("reason")

    alarms = hub.room.status()["alarms"]
    assert any(a["priority"] == "high" for a in alarms), alarms
    # the session's alarm event is the alarm itself (mqtt-api: "alarm | the alarm"); the high one
    # that failed it (a skin overheat may first pass the soft skin limit: a medium alarm before it)
    alarm = next(e for e in hub.events if e["event"] == "alarm" and e["priority"] == "high")
    listed = next(a for a in alarms if a["id"] == alarm["id"])
    assert {k: alarm[k] for k in listed} == listed and alarm["session"] == sid and alarm["latched"] is True
    if stalled:
        assert any(a["code"] == "safe_state_unconfirmed" and dev in a["source"] and a["priority"] == "high"
                   for a in alarms), alarms

    # the devices themselves: every output off (a stalled one once its own watchdog ran)
    states = await hub.wait_all_off(timeout=3.0)
    if not stalled and dev != "inj-1":
        # a device that answers was switched off by the hub, not by its watchdog
        assert states[dev]["state"] != "on"

    # the record
    summary = hub.store.read_session(sid)
    assert summary["state"] == "failed" and summary["reason"] == failed["reason"]
    if stalled:
        # the stalled device could not say what it delivered: its delivery stays open until
        # it answers again, then it is settled late from its own counters
        assert [d["device"] for d in summary["in_flight"]] == [dev], summary["in_flight"]
        await hub.control(dev).clear("stall")
        settled = await hub.next_event("delivery_settled", where=lambda e: e["late"])
        assert settled["late"] is True and settled["device"] == dev
        summary = hub.store.read_session(sid)
        # the watchdog fault its silence latched is cleared by the hub, now that they talk again
        await hub.wait_sim(dev, lambda s: s["fault"] in (None, 0) and s["state"] != "fault",
                           what=f"{dev}'s watchdog fault cleared by the hub")
    assert summary["in_flight"] == [], [(e["event"], e["data"]) for e in await hub.store.events(sid)][-14:]
    # the record's totals are what the simulators counted (they count from zero here)
    assert_totals_match(summary["totals"], await hub.sim_states())
    check = await hub.store.verify(sid)
    assert check.ok, check.message
    recorded = [e["event"] for e in await hub.store.events(sid)]
    assert recorded.count("safe_state") == 1
    # the stop's delivery_settled follow its final event (the contract orders the stop's own)
    recorded = [e for e in recorded if e != "delivery_settled"]
    assert recorded[-2:] == ["failed", "state"]


EMITTER_FAULTS = [("led-1", "led_open", "pemf-1"), ("pemf-1", "coil_open", "led-1")]


@pytest.mark.parametrize("dev,fault,other", EMITTER_FAULTS, ids=[f"{d}-{f}" for d, f, _ in EMITTER_FAULTS])
async def test_an_emitter_that_switches_itself_off_takes_the_other_output_with_it(
        hub: Hub, dev: str, fault: str, other: str) -> None:
    # light and field side by side; the faulting emitter switches itself off at once, and
    # the hub must switch the other off within 50 ms of that, by the devices' own clocks
    # (soak invariant 1): it watches an emitter's STATE between heartbeats
    await hub.auto_trigger(20)
    runner = await hub.start("demo", params=PARAMS["other"])
    await hub.wait_sim(dev, DELIVERING[dev], what=f"{dev} delivering")
    await hub.wait_sim(other, DELIVERING[other], what=f"{other} delivering")
    await hub.control(dev).inject(fault, count=-1)
    assert await hub.finish(runner, 15) == "failed"
    states = await hub.wait_all_off(timeout=3.0)
    assert states[dev]["state"] == "fault", states[dev]
    lag = states[other]["output_changed_at"] - states[dev]["output_changed_at"]
    assert 0 <= lag < 0.050, (lag, states[dev], states[other])
