"""Opening and closing the room: its devices connected and made safe, what a crashed hub
left open settled and its interrupted sessions marked failed, the retained state
published; and on close the active session aborted and the reports finished."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from devicehub.bus import HubMessage
from devicehub.runner.totals import QUANTITIES
from devicehub.safety import safe_state_all

log = logging.getLogger("devicehub.room")


class RoomLifetime:
    """The opening and closing of :class:`devicehub.room.Room`."""

    # ================================================================== lifetime
    async def open(self) -> None:
        """Connect the devices, every output off, settle what a crash left open, then mark
        the sessions it interrupted and publish the room's state.

        Order (docs/records.md): the safe state first (the ICDs keep what is to be read
        through the off commands: EPG-1's last-train report until the next OUTP:TRIG,
        LED-1/PEMF-1's run registers until the next start, INJ-1's totals always); then
        each device that answers has its open deliveries settled from its counters
        (``delivery_settled``, late) and a watchdog fault the dead hub caused cleared;
        only then is each interrupted session marked ``failed`` / ``hub_restart`` with
        the totals of its delivery rows."""
        from devicehub.late_settlement import LateSettlement

        self.late = LateSettlement(self)
        self.devices.room_clears_watchdogs = True
        await self.devices.start()
        # whatever a previous hub left behind: every output off before anything else
        await safe_state_all(self.devices.devices, "hub_start")
        unfinished = await self.store.unfinished_sessions()
        self.restarted_sessions = set(unfinished)  # what an earlier hub left (late settlement)
        for sid in unfinished:  # before anything is appended to them (a late settlement)
            await self._publish_unpublished(sid)
        for dev_id in self.devices.devices:
            if self.devices.connected(dev_id):
                await self.late.device_back(dev_id)
            else:
                self.devices.unsettled.add(dev_id)  # settled when it connects
        self.devices.on_answer = self.late.device_back
        for sid in unfinished:
            # what had been delivered, as the record's delivery rows say (the document's
            # failed event carries the totals per device)
            summary = await self.store.session(sid) or {}
            # the delivery rows summed, in the runner's quantities (a finished session's
            # totals), not every number the rows hold (depths, impedances, peaks)
            totals = {dev: {q: round(v, 6) for q, v in vals.items() if q in QUANTITIES}
                      for dev, vals in (summary.get("totals") or {}).items()}
            for name, data in (("failed", {"reason": "hub_restart", "totals": totals}),
                               ("state", {"state": "failed", "reason": "hub_restart"})):
                idx = await self.store.append_event(sid, name, data)
                self.bus.publish(HubMessage("session.event", {"event": name, "index": idx, **data}, session=sid))
            log.warning("session %s was interrupted by a hub restart: marked failed", sid)
        # what the retained topics say from this boot on: the last session's final state
        # (until the next one starts) and the alarms, [] when none (a previous boot's may
        # still be retained on the broker)
        self._recorded_last = await self._last_recorded_state()
        if self._recorded_last is not None:
            self.bus.emit("session.state", self._recorded_last, session=self._recorded_last["session"])
        self.bus.emit("alarms", {"alarms": self.alarms.active()})

    async def _publish_unpublished(self, sid: str) -> None:
        """Events of an interrupted session that the record holds but that never reached the
        outbox (the hub was killed between the two writes): published now, in this boot, so
        a follower's indices have no gap. Needs the MQTT front end's ledger."""
        ledger = self.published_events
        if ledger is None:
            return
        recorded = await self.store.events(sid)
        published = await ledger(sid, [e["index"] for e in recorded])
        for e in recorded:
            if e["index"] not in published:
                log.warning("session %s: event %d (%s) was recorded but never published; publishing it now",
                            sid, e["index"], e["event"])
                self.bus.publish(HubMessage("session.event", {"event": e["event"], "index": e["index"], **e["data"]},
                                            session=sid))

    async def _last_recorded_state(self) -> dict[str, Any] | None:
        """The newest recorded session's state, as the retained ``session`` topic carries it."""
        recent = await self.store.list_sessions(limit=1)
        summary = await self.store.session(recent[0]["session"]) if recent else None
        if summary is None:
            return None
        data = {k: summary.get(k) for k in ("session", "state", "program", "version", "patient_ref", "operator",
                                           "started_at", "ended_at", "totals")}
        if summary.get("reason"):
            data["reason"] = summary["reason"]
        return data

    async def close(self) -> None:
        if self.current is not None and not self.current.finished:
            await self.current.abort("hub_shutdown")
        await self.devices.close()
        pending = list(self._report_tasks)
        if pending:  # reports being written are finished, not lost with the process
            await asyncio.wait(pending, timeout=30.0)
