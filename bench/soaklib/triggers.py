"""When a stop the hub itself started was triggered, on the simulators' clock: invariant 1
times such a stop (a device fault, a lost link, a limit) from that moment.

The hub keeps no monotonic time in its record, but it records, for each stop, a
``safe_state`` event (``trigger``: what started it, ``ms``: from the trigger to every device
confirmed off) and, just before it, the ``alarm`` of the trouble that started it, raised
(``since``, the hub's wall clock) right before the hub commanded the stop and written once
the room was safe. The soak knows the offset between the wall clock and
``time.monotonic()`` (one machine, one kernel), when it injected each fault, and each
simulator's ``output_changed_at``. From these, the trigger is, in this order:

- ``device``: the faulting device's own switch-off, when the stop was a fault the device
  reported (``fault:<dev>``: a device that faults switches its output off) and its output
  went off after the fault was injected and before the hub raised its alarm;
- ``alarm``: the hub's alarm ``since``, when the alarm is this session's and this stop's
  (a latched, unacknowledged alarm of an earlier session or stop is raised again with its
  old ``since``: that one is not);
- ``alarm record``: otherwise, that alarm's event time less the safe state's ``ms`` (the
  event is written right after the safe state is confirmed: at most a few ms late);
- ``injection``: the soak's injection of the fault that ended it (the device's last
  injected fault or cut before the hub's trigger), when the record names no alarm.

Pure data in, a :class:`Trigger` out (tests/soak/test_safe_state_check.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from devicehub.timefmt import parse_rfc3339

#: the stops the soak sent itself: timed from its own send, not from the record
SOAK_TRIGGERS = frozenset({"pause", "abort"})
#: the device a step drives, for an alarm whose source is a step (``pulse_timing``)
STEP_DEVICE = {"electroporation": "epg-1", "injection": "inj-1", "led": "led-1", "pemf": "pemf-1"}
#: the alarm codes of a device-reported fault (devicehub/runner/supervision.py)
FAULT_CODES = ("device_fault", "watchdog")


@dataclass(frozen=True)
class Trigger:
    t: float  # time.monotonic()
    what: str  # the record's trigger: "fault:led-1", "connection_lost:inj-1", "pulse_timing", ...
    device: str | None  # the device whose trouble it was, when known
    by: str  # "device", "alarm", "alarm record" or "injection" (see the module's docstring)


def wall_to_mono(ts: str | None, wall_minus_mono: float | None) -> float | None:
    """An RFC 3339 time of the hub (wall clock) on the simulators' clock, or None."""
    if not ts or wall_minus_mono is None:
        return None
    try:
        return parse_rfc3339(ts).timestamp() - wall_minus_mono
    except ValueError:
        return None


def last_stop_trigger(events: list[dict[str, Any]], *, session: str | None, wall_minus_mono: float | None,
                      states: dict[str, dict[str, Any]], injections: Iterable[tuple[str, float]],
                      steps: Iterable[dict[str, Any]] = ()) -> Trigger | None:
    """The trigger of the last stop in ``events`` (the session's record, in order), or None
    when there is none or the soak sent it (a pause, an abort).

    ``states``: the simulators' control states after the stop; ``injections``: the soak's
    (kind, time.monotonic()) of every fault injected and link cut in the session
    ("fault:led-1:led_open", "cut:inj-1"); ``steps``: the program's steps (a step id to its device).
    """
    stops = [i for i, e in enumerate(events) if e.get("event") == "safe_state"]
    if not stops:
        return None
    last = events[stops[-1]]
    safe = last.get("data") or {}
    what = str(safe.get("trigger") or "")
    if not what or what in SOAK_TRIGGERS:
        return None
    window = events[stops[-2] + 1 if len(stops) > 1 else 0:stops[-1]]  # since the stop before
    not_before = wall_to_mono(events[stops[-2]].get("ts"), wall_minus_mono) if len(stops) > 1 else None

    kind, _, dev = what.partition(":")
    alarm_event = _alarm_of(window, kind, dev)
    alarm = (alarm_event or {}).get("data") or {}
    if not dev:
        dev = _device_of(alarm, states, steps) or ""

    t_hub: float | None = None
    by = ""
    if alarm_event is not None:
        since = wall_to_mono(alarm.get("since"), wall_minus_mono)
        fresh = (since is not None and alarm.get("session") == session
                 and (not_before is None or since >= not_before))
        if fresh:
            t_hub, by = since, "alarm"
        else:
            written = wall_to_mono(alarm_event.get("ts"), wall_minus_mono)
            ms = safe.get("ms")
            if written is not None and isinstance(ms, (int, float)):
                t_hub, by = written - float(ms) / 1000.0, "alarm record"

    t_inj = _injected(injections, dev, t_hub)
    if kind == "fault" and dev and t_inj is not None:
        st = states.get(dev) or {}
        t_dev = st.get("output_changed_at")
        if (t_dev is not None and not st.get("output_on") and t_inj <= t_dev
                and t_dev <= (t_hub if t_hub is not None else math.inf)):
            return Trigger(float(t_dev), what, dev, "device")
    if t_hub is not None:
        return Trigger(t_hub, what, dev or None, by)
    if t_inj is not None:
        return Trigger(t_inj, what, dev or None, "injection")
    return None


def _alarm_of(window: list[dict[str, Any]], kind: str, dev: str) -> dict[str, Any] | None:
    """The ``alarm`` event of the stop's trouble: a high alarm whose code is the trigger's
    (a device fault: ``device_fault`` or ``watchdog``) and, for a device's trouble, whose
    source is that device. The last one of the window (there is one per stop)."""
    codes = FAULT_CODES if kind == "fault" else (kind,)
    found = None
    for e in window:
        a = e.get("data") or {}
        if e.get("event") != "alarm" or a.get("priority", "high") != "high" or a.get("code") not in codes:
            continue
        if dev and dev not in (a.get("device"), a.get("source")):
            continue
        found = e
    return found


def _device_of(alarm: dict[str, Any], states: dict[str, dict[str, Any]],
               steps: Iterable[dict[str, Any]]) -> str | None:
    for name in (alarm.get("device"), alarm.get("source")):
        if name in states:
            return str(name)
    kinds = {s.get("id"): s.get("kind") for s in steps}
    return STEP_DEVICE.get(str(kinds.get(alarm.get("source"))))


def _injected(injections: Iterable[tuple[str, float]], dev: str, until: float | None) -> float | None:
    """When the soak last injected a fault into ``dev`` or cut its link (before ``until``)."""
    if not dev:
        return None
    times = [t for kind, t in injections
             if kind.split(":")[:2] in (["fault", dev], ["cut", dev]) and (until is None or t <= until)]
    return max(times) if times else None
