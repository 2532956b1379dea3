"""What a session's rows mean: its state, timeline, totals and per-step results, all
derived from the append-only events and deliveries (docs/records.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from devicehub.records.errors import RecordError

#: every state of shared/mqtt-api.md "Session states"
STATES = ("created", "preflight", "awaiting_confirmation", "running", "paused",
          "completed", "aborted", "failed")
TERMINAL_STATES = ("completed", "aborted", "failed")
#: the event that carries a state change in ``data.state``
STATE_EVENT = "state"
#: events whose name is itself the (terminal) state they set
TERMINAL_EVENTS = TERMINAL_STATES
STATE_CHANGING_EVENTS = (STATE_EVENT, *TERMINAL_EVENTS)
#: the other events a session summary reads (start time, per-step results)
SUMMARY_EVENTS = ("started", "step_started", "step_done", "delivery_settled")
#: delivery statuses the runner is expected to use; ``done`` counts as a point done
DELIVERY_DONE = "done"

#: delivered fields that are not amounts: their total is the largest value seen
MAX_FIELDS = frozenset({"depth_mm", "timing_error_us", "impedance_ohm", "settle_ms"})


def _is_max_field(key: str) -> bool:
    return key in MAX_FIELDS or key.startswith(("max_", "peak_")) or key.endswith(("_max", "_peak"))


def _add_numbers(into: dict[str, Any], values: dict[str, Any] | None) -> None:
    """Accumulate the numeric fields of ``values`` into ``into``: amounts (uL, pulses,
    charge_uC, energy_mJ, ...) are summed, depths and peaks keep their maximum;
    booleans and text are ignored."""
    for key, value in (values or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key not in into:
                into[key] = value
            elif _is_max_field(key):
                into[key] = max(into[key], value)
            else:
                into[key] = into[key] + value


def _state_set_by(event: str, data: dict[str, Any]) -> str | None:
    """The state an event sets, or None; refuses a ``state`` event without a known state."""
    if event == STATE_EVENT:
        state = data.get("state")
        if state not in STATES:
            raise RecordError(f"state event needs data.state in {STATES}, got {state!r}")
        return state
    if event in TERMINAL_EVENTS:
        return event
    return None


def _fold_states(rows: Iterable[tuple[int, str, str, dict[str, Any]]],
                 created_at: str | None = None) -> dict[str, Any]:
    """Derive state, reason, timeline, start/end and final totals from state-changing events.

    A session starts ``created`` (at ``created_at``, the row's time, when given). A
    repeat of the current state (``state: aborted`` then ``aborted``) adds no timeline
    entry but may add the reason and the totals.
    """
    state, reason, totals = "created", None, None
    states: list[dict[str, Any]] = []
    if created_at is not None:
        states.append({"state": "created", "ts": created_at, "reason": None})
    started_at = ended_at = None
    for _idx, ts, event, data in rows:
        new = _state_set_by(event, data)
        if new is None:
            continue
        if new != state or not states:
            state, reason = new, data.get("reason")
            states.append({"state": new, "ts": ts, "reason": reason})
            if new == "running" and started_at is None:
                started_at = ts
            if new in TERMINAL_STATES and ended_at is None:
                ended_at = ts
        elif data.get("reason") is not None:
            reason = data["reason"]
            states[-1]["reason"] = reason
        if new in TERMINAL_STATES and isinstance(data.get("totals"), dict):
            totals = data["totals"]
    return {"state": state, "reason": reason, "states": states, "started_at": started_at,
            "ended_at": ended_at, "totals": totals}


def _steps(events: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-step results, in the order steps first appear (events, then deliveries)."""
    steps: dict[str, dict[str, Any]] = {}

    def entry(step_id: str) -> dict[str, Any]:
        return steps.setdefault(step_id, {
            "step": step_id, "kind": None, "devices": [], "started_at": None, "done_at": None,
            "points_planned": 0, "points_done": 0, "results": {}, "delivered": {}, "totals": None})

    for e in events:
        if e["event"] not in ("step_started", "step_done"):
            continue
        data = e["data"]
        step_id = data.get("step", data.get("step_id"))
        if step_id is None:
            continue
        s = entry(str(step_id))
        s["kind"] = data.get("kind", s["kind"])
        devices = data.get("devices", data.get("device"))
        for dev in devices if isinstance(devices, list) else ([devices] if devices else []):
            if dev not in s["devices"]:
                s["devices"].append(dev)
        if e["event"] == "step_started" and s["started_at"] is None:
            s["started_at"] = e["ts"]
        if e["event"] == "step_done":
            s["done_at"] = e["ts"]
            if isinstance(data.get("totals"), dict):
                s["totals"] = data["totals"]
    for d in deliveries:
        s = entry(d["step_id"])
        if d["device"] not in s["devices"]:
            s["devices"].append(d["device"])
        s["points_planned"] += 1
        if d["result_id"] is not None:
            s["results"][d["status"]] = s["results"].get(d["status"], 0) + 1
            if d["status"] == DELIVERY_DONE:
                s["points_done"] += 1
            _add_numbers(s["delivered"].setdefault(d["device"], {}), d["delivered"])
    return list(steps.values())


def _in_flight(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": d["id"], "step_id": d["step_id"], "zone": d["zone"], "point": d["point"],
            "device": d["device"], "planned": d["planned"], "ts": d["intent_ts"]}
