"""The soak's judgement of invariant 1 on data alone: the soak's outcome of a session (its
injections, the simulators' control states) and the session's record in, the verdict out.

A session the hub failed is timed from the trigger of the stop that ended it (the
faulting device's own switch-off, else the hub's alarm), never from an output that went
off before it. The one-hour run (seed 11, sessions #37, #267, #412, #482, #649) flagged
72-996 ms "after the first" where the first output off was another device's normal end
of its step, or the last injected fault was not the one that ended the session.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bench.soaklib.checks import invariant_1
from bench.soaklib.session import Outcome, Stop

SID = "01M9107NKY7E8ZVB4ZANCQAD9F"
WALL = 1_796_000_000.0  # time.time() - time.monotonic() of the run


def ts(mono: float) -> str:
    """A monotonic moment as the hub writes its wall-clock times."""
    return datetime.fromtimestamp(mono + WALL, timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def off(at: float | None, state: str = "idle") -> dict[str, Any]:
    return {"output_on": False, "output_changed_at": at, "state": state}


def alarm(since: float, written: float, *, source: str, code: str, priority: str = "high",
          session: str = SID, **extra: Any) -> dict[str, Any]:
    """The ``alarm`` event: raised at ``since``, written at ``written`` (once the room was safe)."""
    return {"event": "alarm", "ts": ts(written),
            "data": {"id": f"A1-{source}:{code}", "priority": priority, "source": source, "code": code,
                     "text": code, "since": ts(since), "latched": priority == "high", "session": session, **extra}}


def stop(trigger: str, written: float, ms: float) -> dict[str, Any]:
    return {"event": "safe_state", "ts": ts(written),
            "data": {"trigger": trigger, "ms": ms, "devices": {d: "off" for d in ("epg-1", "inj-1", "led-1", "pemf-1")}}}


def failed(reason: str, written: float) -> dict[str, Any]:
    return {"event": "failed", "ts": ts(written), "data": {"reason": reason}}


def outcome(after: dict[str, dict[str, Any]], injected: list[tuple[str, float]], **kw: Any) -> Outcome:
    out = Outcome(0, "aga-initial", "mqtt", session=SID, state="failed", wall_minus_mono=WALL, **kw)
    out.stops = [Stop(kind, t) for kind, t in injected]
    out.after = after
    return out


def test_a_normal_off_before_the_fault_is_not_where_the_stop_is_timed_from() -> None:
    # LED-1 skin over temperature injected while the injection step ran (LED-1 off); INJ-1
    # disarmed normally after its last point, 300 ms before the hub's limit tripped; the
    # electroporator, mid-train, went off 2 ms after the hub's alarm
    out = outcome({"inj-1": off(100.100), "epg-1": off(100.402), "led-1": off(95.0, "fault"), "pemf-1": off(90.0)},
                  [("fault:led-1:skin_overheat", 100.000)])
    events = [alarm(100.300, 100.301, source="led-1", code="skin_temperature", priority="medium"),  # soft limit
              alarm(100.400, 100.404, source="led-1", code="skin_temperature"),
              stop("skin_temperature:led-1", 100.420, 3.5), failed("skin_temperature", 100.430)]
    bad, times = invariant_1(out, events)
    assert bad == []
    assert [round(t, 1) for t in times] == [2.0]


def test_an_output_on_80_ms_after_the_trigger_is_a_violation() -> None:
    # LED-1 switched itself off at its fault; PEMF-1 went off 80 ms later
    out = outcome({"led-1": off(200.000, "fault"), "pemf-1": off(200.080), "inj-1": off(150.0), "epg-1": off(150.0)},
                  [("fault:led-1:led_open", 199.990)])
    events = [alarm(200.015, 200.082, source="led-1", code="device_fault", device="led-1"),
              stop("fault:led-1", 200.090, 67.0), failed("device_fault:led-1", 200.100)]
    bad, times = invariant_1(out, events)
    assert bad == ["fault:led-1: last output off (pemf-1) 80.0 ms after the trigger (by device)"]
    assert [round(t, 1) for t in times] == [80.0]


def test_the_fault_that_ended_the_session_is_the_trigger_not_the_last_injected() -> None:
    # session #412: LED-1's open string injected first (latched when it started), then an
    # occlusion recovered twice; INJ-1 disarmed normally at the end of its step, then the
    # LED fault ended the session: LED-1 off by itself, PEMF-1 27 ms later by the hub
    out = outcome({"inj-1": off(302.500), "led-1": off(303.010, "fault"), "pemf-1": off(303.027), "epg-1": off(250.0)},
                  [("fault:led-1:led_open", 300.000), ("fault:inj-1:occlusion", 301.000)])
    events = [alarm(301.010, 301.020, source="inj-1", code="device_fault", device="inj-1"),
              stop("fault:inj-1", 301.030, 12.0), {"event": "paused", "ts": ts(301.031), "data": {}},
              alarm(303.025, 303.030, source="led-1", code="device_fault", device="led-1"),
              stop("fault:led-1", 303.040, 4.0), failed("device_fault:led-1", 303.050)]
    bad, times = invariant_1(out, events)
    assert bad == []
    assert [round(t, 1) for t in times] == [17.0]


def test_a_latched_alarm_of_an_earlier_session_is_not_the_trigger() -> None:
    # the hub records the earlier session's skin alarm again (its id, its since): the
    # trigger is then the alarm's record less the safe state's time
    out = outcome({"inj-1": off(399.900), "pemf-1": off(400.006), "led-1": off(400.005), "epg-1": off(300.0)},
                  [("fault:led-1:skin_overheat", 399.800)])
    events = [alarm(390.0, 400.010, source="led-1", code="skin_temperature", session="01M9100000000000000000000A"),
              stop("skin_temperature:led-1", 400.050, 8.0), failed("skin_temperature", 400.060)]
    bad, times = invariant_1(out, events)
    assert bad == []
    assert [round(t, 1) for t in times] == [4.0]


def test_a_device_the_hub_could_not_reach_must_be_off_not_within_50_ms() -> None:
    # LED-1 stalled: its own watchdog switches it off (300 ms after the hub gave up on it);
    # PEMF-1 off 3 ms after the hub's alarm. Still on after the session: a violation.
    after = {"led-1": off(500.550), "pemf-1": off(500.253), "inj-1": off(450.0), "epg-1": off(450.0)}
    events = [alarm(500.250, 500.260, source="led-1", code="device_error", device="led-1"),
              stop("device_error:led-1", 501.300, 1002.0), failed("device_error:led-1", 501.310)]
    out = outcome(after, [("fault:led-1:stall", 500.000)], unreachable={"led-1"})
    bad, times = invariant_1(out, events)
    assert bad == []
    assert [round(t, 1) for t in times] == [3.0]
    out.after = {**after, "led-1": {"output_on": True, "output_changed_at": 499.0, "state": "running"}}
    assert invariant_1(out, events)[0] == ["led-1 output still on after the session"]


def test_a_late_abort_says_how_long_the_hub_took_from_its_read() -> None:
    # #597 of the 19:08 hour: the last output off 59 ms after the soak sent the abort, 5.2 ms
    # after the hub read it; the verdict names both, so the time's place is in the report
    out = Outcome(0, "aga-initial", "mqtt", session=SID, state="aborted", wall_minus_mono=WALL)
    out.stops = [Stop("abort:mqtt", 300.000, {"epg-1": off(300.059), "inj-1": off(300.057), "led-1": off(250.0),
                                              "pemf-1": off(250.0)})]
    out.after = out.stops[0].states
    events = [stop("pause", 280.0, 1.5), stop("abort", 300.062, 5.2)]
    bad, times = invariant_1(out, events)
    assert bad == ["abort:mqtt: last output off 59.0 ms after the trigger "
                   "(the hub's own safe_state ms, from its read of the request: 5.2)"]
    assert [round(t, 1) for t in times] == [59.0]
