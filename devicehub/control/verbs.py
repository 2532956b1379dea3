"""The room's verbs: each one's handler, registered in the command table.

A handler takes ``(room, request, caller)`` and returns the reply's ``data``, or raises
:class:`~devicehub.room_api.CommandError`. The table says which front end may use it
and with which members (``devicehub.control.fields``).
"""

from __future__ import annotations

from typing import Any

from devicehub.control import fields as f
from devicehub.control.table import MQTT, Caller, verb
from devicehub.room_api import CommandError


@verb("programs", mqtt=f.NoFields, console=f.NoFields, acts=False)
async def programs(room: Any, m: Any, caller: Caller) -> Any:
    """The program library: id, version, title, sha256, steps, duration, preflight, soft limits."""
    return room.programs()


@verb("program", mqtt=f.ProgramFields, console=f.ProgramFields, acts=False)
async def program(room: Any, m: Any, caller: Caller) -> Any:
    """One whole program as JSON."""
    return room.program(m.program)


@verb("status", mqtt=f.NoFields, console=f.NoFields, acts=False)
async def status(room: Any, m: Any, caller: Caller) -> Any:
    """The hub, every device, the session and the active alarms."""
    return room.status()


@verb("session", mqtt=f.SessionFields, console=f.SessionFields, acts=False)
async def session(room: Any, m: Any, caller: Caller) -> Any:
    """The recorded summary of any session."""
    return room.session_summary(m.session)


@verb("events", mqtt=f.EventsFields, acts=False)
async def events(room: Any, m: Any, caller: Caller) -> Any:
    """A session's recorded events with the boot, seq and ts they were published with."""
    from devicehub.control.events import events as page

    return await page(room, session=m.session, after=m.after, limit=m.limit, published=caller.published)


@verb("check", console=f.CheckFields, acts=False)
async def check(room: Any, m: Any, caller: Caller) -> Any:
    """The dry run of a program for a patient: duration, points, totals, every finding."""
    return room.dry_run(program=m.program, patient_ref=m.patient_ref, params=m.params, acknowledge=m.acknowledge)


@verb("start", mqtt=f.StartFields, console=f.ConsoleStartFields)
async def start(room: Any, m: Any, caller: Caller) -> Any:
    """Start a session; over MQTT it waits for the chair (``remote_confirmation``)."""
    at_chair: dict[str, Any] = {}
    if caller.origin != MQTT:
        # at the chair: who acknowledged what, and the checklist taken as done when asked
        at_chair = {"acknowledged_by": m.acknowledged_by, "preflight_done_by": m.preflight_done_by,
                    "confirmation_required": m.wait_for_start, "t_arrival": caller.t_arrival}
    return await room.start(program=m.program, patient_ref=m.patient_ref, operator=m.operator, params=m.params,
                             acknowledge=m.acknowledge, origin=caller.origin, **at_chair)


@verb("preflight", mqtt=f.PreflightFields, console=f.PreflightFields)
async def preflight(room: Any, m: Any, caller: Caller) -> Any:
    """Tick (or untick) one checklist item, by a named person."""
    return await room.preflight(session=m.session, item=m.item, done=m.done, by=m.by)


@verb("confirm", console=f.ConfirmFields)
async def confirm(room: Any, m: Any, caller: Caller) -> Any:
    """Confirm at the chair a start or resume that waits for it (console only)."""
    return await room.confirm(session=m.session, by=m.by)


@verb("pause", mqtt=f.PauseFields, console=f.PauseFields)
async def pause(room: Any, m: Any, caller: Caller) -> Any:
    """Every output off, the session paused where it is."""
    return await room.pause(session=m.session, reason=m.reason)


@verb("resume", mqtt=f.ResumeFields, console=f.ConsoleResumeFields)
async def resume(room: Any, m: Any, caller: Caller) -> Any:
    """Resume a paused session: over MQTT it waits for the chair; at the console it is the confirmation."""
    return await room.resume(session=m.session, origin=caller.origin, by=getattr(m, "by", None))


@verb("abort", mqtt=f.AbortFields, console=f.AbortFields)
async def abort(room: Any, m: Any, caller: Caller) -> Any:
    """Never refused: every device to its safe state, the active session ended."""
    return await room.abort(session=m.session, reason=m.reason or ("console" if caller.origin != MQTT else None),
                            t_trigger=caller.t_arrival)


@verb("prompt_ack", console=f.PromptAckFields)
async def prompt_ack(room: Any, m: Any, caller: Caller) -> Any:
    """Acknowledge the confirm step waiting at the chair."""
    runner = room.active_session()
    if runner is None or not await runner.acknowledge_prompt(m.by):
        raise CommandError("invalid_state", "no prompt is waiting")
    return {"session": runner.session_id}


@verb("alarm_ack", console=f.AlarmAckFields)
async def alarm_ack(room: Any, m: Any, caller: Caller) -> Any:
    """Acknowledge one latched alarm by id, or all of them."""
    return {"acknowledged": room.alarms.acknowledge(m.id)}


@verb("rebirth", mqtt=f.NoFields)
async def rebirth(room: Any, m: Any, caller: Caller) -> Any:
    """Publish status, every device state, the session state and the alarms again."""
    if caller.rebirth is not None:
        result = caller.rebirth()
        if hasattr(result, "__await__"):
            await result
    else:
        room.republish()
    return {}


@verb("report", console=f.SessionFields, acts=False)
async def report(room: Any, m: Any, caller: Caller) -> Any:
    """Where the session's report is (written when the session ended, or now)."""
    return await room.report(m.session)


@verb("clear_fault", console=f.ClearFaultFields)
async def clear_fault(room: Any, m: Any, caller: Caller) -> Any:
    """Send a device its own clear command for a latched fault (console only)."""
    from devicehub.faults import clear_fault as clear

    return await clear(room, m.device, m.by)


@verb("recover", console=f.RecoverFields)
async def recover(room: Any, m: Any, caller: Caller) -> Any:
    """Clear the device fault that paused the session (console only: the cause is at the chair)."""
    return await room.recover(session=m.session, by=m.by)


# the clinical verbs (adverse_event, course, enrol, course_end) register themselves too
from devicehub.clinical import verbs as _clinical  # noqa: E402,F401

# verbs of the console whose logic lives in a module of their own
from devicehub.control import record_check  # noqa: E402,F401
