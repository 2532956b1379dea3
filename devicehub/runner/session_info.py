"""What a session shows and tells: its published state, the retained ``session`` topic's
snapshot, the program lookups the steps use, and the events and alarms it records (a
part of :class:`devicehub.runner.session.SessionRunner`)."""

from __future__ import annotations

from typing import Any

from devicehub.bus import HubMessage, utcnow
from drivers.base import Device


class SessionInfo:
    """The information and record methods of :class:`devicehub.runner.session.SessionRunner`
    (its attributes are set by the runner's ``__init__``)."""

    # ================================================================== info
    @property
    def state(self) -> str:
        """The published state (shared/mqtt-api.md); ``stopping`` shows the state it stops from."""
        published = self.machine.published
        return published.value if published is not None else "new"

    @property
    def stopping(self) -> bool:
        """A pause, an abort or a failure is under way (outputs going off, the record following)."""
        return self.machine.stopping

    @property
    def finished(self) -> bool:
        return self.machine.final

    def required_preflight(self) -> list[str]:
        return [item.id for item in self.program.preflight if getattr(item, "required", True)]

    def pending_preflight(self) -> list[str]:
        return [i for i in self.required_preflight() if not self.preflight_done.get(i, {}).get("done")]

    def snapshot(self) -> dict[str, Any]:
        """The retained ``session`` topic's data."""
        points_done = sum(1 for sp in self.progress.values() for p in sp.points.values() if p.status in ("done", "skipped"))
        data: dict[str, Any] = {
            "session": self.session_id,
            "state": self.state,
            "program": self.program.id,
            "version": self.program.version,
            "patient_ref": self.patient_ref,
            "operator": self.operator,
            "step": self.current_step,
            "steps_total": len(self.program.steps),
            "steps_done": sum(1 for sp in self.progress.values() if sp.status == "done"),
            "points_done": points_done,
            "points_planned": self.points_planned(),
            "totals": self.totals.as_dict(),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "pending_items": self.pending_preflight() if self.state in ("created", "preflight") else [],
        }
        if self.reason:
            data["reason"] = self.reason
        if self._prompt_step is not None:
            data["prompt"] = {"step": self._prompt_step, "text": self.program_step(self._prompt_step).prompt}
        if self.state == "paused":
            data["recovery"] = self.recovery
        return data

    def points_planned(self) -> int:
        n = 0
        for step in self.program.steps:
            if step.kind in ("injection", "electroporation"):
                n += sum(len(self.program.points(z)) for z in step.zones)
        return n

    def program_step(self, step_id: str) -> Any:
        for s in self.program.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def devices_needed(self) -> list[str]:
        """The devices the rest of the session needs (steps not done yet)."""
        out: list[str] = []
        for step in self.program.steps:
            sp = self.progress.get(step.id)
            if sp is not None and sp.status == "done":
                continue
            dev = self.step_devices.get(step.id)
            if dev is not None and dev not in out:
                out.append(dev)
        return sorted(out)

    def device_for(self, step: Any) -> tuple[str, Device]:
        dev_id = self.step_devices[step.id]
        return dev_id, self.devices[dev_id]

    # ================================================================== records
    async def event(self, name: str, **data: Any) -> int:
        """Append one event to the record (awaited: written before we go on) and publish it."""
        async with self._event_lock:  # one writer, so indices and publication order agree
            ts = utcnow()
            idx = await self.store.append_event(self.session_id, name, data, ts)
            self.bus.publish(HubMessage("session.event", {"event": name, "index": idx, **data},
                                        session=self.session_id, ts=ts))
        return idx

    def publish_state(self) -> None:
        self.bus.emit("session.state", self.snapshot(), session=self.session_id)

    def raise_alarm(self, *, code: str, text: str, source: str, priority: str = "high", key: str | None = None,
                    latched: bool | None = None, **extra: Any) -> dict[str, Any]:
        """Raise an alarm of this session on the room's board; returns it as the session's
        ``alarm`` event carries it (the alarm itself, shared/mqtt-api.md, plus ``extra``)."""
        alarm = self.alarms.raise_alarm(priority=priority, source=source, code=code, text=text, latched=latched,
                                        session=self.session_id, key=key)
        return {**alarm.to_dict(), **extra}

    async def record_alarm(self, alarm: dict[str, Any]) -> None:
        """The ``alarm`` event, once per alarm id (an alarm raised again is the same alarm)."""
        alarm_id = alarm.get("id")
        if alarm_id is not None:
            if alarm_id in self._alarms_recorded:
                return
            self._alarms_recorded.add(alarm_id)
        await self.event("alarm", **alarm)

    async def _set_state(self, state: str, reason: str | None = None) -> None:
        previous = self.state
        self.machine.go(state)
        self.reason = reason  # a reason belongs to the state it came with
        data: dict[str, Any] = {"state": state, "previous": previous}
        if reason:
            data["reason"] = reason
        await self.event("state", **data)
        self.publish_state()
