"""One soak session: start it (over MQTT or at the console), throw its planned
disturbances at it, see it end, put the room right for the next one."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soaklib.clients import Clinic, Follower, Technician, World
from bench.soaklib.plan import DEVICE_FAULTS, Action, SessionPlan, kind_of
from bench.soaklib.procs import Broker, Hub, TcpProxy
from bench.soaklib.triggers import last_stop_trigger
from devicehub.records.store import RecordStore

FINAL = ("completed", "aborted", "failed")


@dataclass
class Room:
    """Everything a session acts on."""

    directory: Path
    store_path: Path
    world: World
    proxies: dict[str, TcpProxy]
    broker: Broker
    hub: Hub
    clinic: Clinic
    follower: Follower
    tech: Technician
    #: (time.monotonic(), what) of every disturbance of the whole run, for post-mortems
    marks: list[tuple[float, str]] = field(default_factory=list)

    def read(self, fn: str, *args: Any) -> Any:
        store = RecordStore(self.store_path, readonly=True)
        try:
            return getattr(store, fn)(*args)
        finally:
            store.close()

    async def aread(self, fn: str, *args: Any) -> Any:
        return await asyncio.to_thread(self.read, fn, *args)


@dataclass
class Stop:
    """A stop the soak itself triggered, or a fault's: its trigger moment and the states right after."""

    kind: str  # "pause:mqtt", "abort:console", "fault:epg-1:stall", ...
    t_trigger: float
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    from_device_clock: bool = False  # the trigger is a device's own output_changed_at (its fault)


@dataclass
class Outcome:
    index: int
    program: str
    origin: str
    session: str | None = None
    state: str = "not_started"
    reason: str | None = None
    refused: str | None = None
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    after: dict[str, dict[str, Any]] = field(default_factory=dict)
    stops: list[Stop] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)  # stalled or cut in this session
    hub_killed: bool = False
    #: the record showed the session unfinished once the killed hub was gone
    interrupted_by_kill: bool = False
    notes: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: time.time() - time.monotonic() on this machine: the record's times on the simulators' clock
    wall_minus_mono: float | None = None

    def injections(self) -> list[tuple[str, float]]:
        """(kind, time.monotonic()) of every fault the soak injected and link it cut."""
        return [(s.kind, s.t_trigger) for s in self.stops if s.kind.startswith(("fault:", "cut:")) and not s.states]


def wall_minus_monotonic() -> float:
    """The wall clock less the monotonic clock, from the tightest of a few readings."""
    best = (math.inf, 0.0)
    for _ in range(5):
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        best = min(best, (m1 - m0, w - (m0 + m1) / 2.0))
    return best[1]


async def run_session(room: Room, plan: SessionPlan, *, timeout_s: float = 150.0) -> Outcome:
    out = Outcome(plan.index, plan.program, plan.origin, params=plan.params, steps=plan.steps)
    out.before = await room.world.states()
    sid = await _start(room, plan, out)
    if sid is None:
        return out
    out.session = sid
    acker = asyncio.create_task(_ack_prompts(room, sid))
    try:
        if await _wait_state(room, sid, ("running", *FINAL), 30.0) == "running":
            t_run = time.monotonic()
            for action in plan.actions:
                left = t_run + action.at_s - time.monotonic()
                if left > 0 and await _wait_state(room, sid, FINAL, left) in FINAL:
                    break
                await _act(room, sid, action, out)
        state = await _until_final(room, sid, out, timeout_s)
        if state not in FINAL:
            events = await room.aread("events", sid)
            last = [f"{e['event']}{'(' + str(e['data'].get('reason')) + ')' if e['data'].get('reason') else ''}"
                    for e in events[-4:]]
            out.notes.append(f"stuck in {state} (last events {last}): aborted at the console")
            await room.tech.request("abort", session=sid, reason="soak: stuck")
            await _wait_state(room, sid, FINAL, 30.0)
    finally:
        acker.cancel()
        with contextlib.suppress(BaseException):
            await acker
    summary = await room.aread("session", sid) or {}
    # a delivery whose device could not be read at the stop (a cut link, a stall) stays in
    # flight until the device answers again, then is settled late (docs/records.md): the
    # record is judged once that has happened (or said so, when it does not)
    deadline = time.monotonic() + 20.0
    while summary.get("in_flight") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # poll the record while the hub reconnects
        summary = await room.aread("session", sid) or {}
    if summary.get("in_flight"):
        out.notes.append(f"still in flight 20 s after the end: {[d.get('device') for d in summary['in_flight']]}")
    out.state, out.reason = summary.get("state", "unknown"), summary.get("reason")
    await _settle_outputs(room, out)
    out.after = await room.world.states()
    out.wall_minus_mono = wall_minus_monotonic()
    return out


# ---------------------------------------------------------------------------- starting
async def _start(room: Room, plan: SessionPlan, out: Outcome) -> str | None:
    patient = f"SOAK-{plan.index}-{uuid.uuid4().hex[:6]}"
    for attempt in range(6):
        if plan.origin == "mqtt":
            reply = await room.clinic.request("start", {"program": plan.program, "patient_ref": patient,
                                                        "operator": "dr-soak", "params": plan.params})
        else:
            reply = await room.tech.request("start", program=plan.program, patient_ref=patient, operator="tech",
                                            params=plan.params, preflight_done_by="tech (soak)")
        if reply is not None and reply.get("ok"):
            sid = reply["data"]["session"]
            if plan.origin == "mqtt":
                for item in plan.preflight:
                    await room.clinic.request("preflight", {"session": sid, "item": item, "done": True, "by": "nurse"})
                await _confirm(room, sid)
            return sid
        code = (reply or {}).get("error", {}).get("code", "no_reply")
        out.refused = code
        if code not in ("device_unavailable", "no_reply", "busy"):
            return None
        await _make_room_ready(room)
        await asyncio.sleep(1.0 + attempt)
    return None


async def _confirm(room: Room, sid: str) -> None:
    """The technician confirms at the chair once the session waits for it."""
    if await _wait_state(room, sid, ("awaiting_confirmation", "running", *FINAL), 20.0) == "awaiting_confirmation":
        await room.tech.request("confirm", session=sid, by="tech")


async def _ack_prompts(room: Room, sid: str) -> None:
    """The technician acknowledges each prompt as it comes: the last prompt shown, when no
    acknowledgement was recorded after it and this one was not acknowledged yet. A pause
    that cuts a confirm step after the acknowledgement was taken, before it was recorded,
    shows the prompt again after the resume (a new ``prompt`` event): that one is
    acknowledged again (the 22:33 hour's #330 waited on it for ever, counting prompts)."""
    acked: int | None = None  # the index of the last prompt acknowledged
    while True:
        events = await room.aread("events", sid)
        last = max((i for i, e in enumerate(events) if e["event"] == "prompt"), default=None)
        answered = last is not None and any(e["event"] == "prompt_acknowledged" for e in events[last:])
        if last is not None and not answered and acked != last:
            reply = await room.tech.request("prompt_ack", by="tech")
            if reply and reply.get("ok"):
                acked = last
        await asyncio.sleep(0.2)


async def _until_final(room: Room, sid: str, out: Outcome, timeout: float) -> str | None:
    """Wait for the end; a session a recoverable fault paused is recovered at the chair
    (the cause removed, ``recover``, then resumed) as a technician would."""
    deadline = time.monotonic() + timeout
    while True:
        state = await _wait_state(room, sid, (*FINAL, "paused"), max(0.0, deadline - time.monotonic()))
        if state != "paused" or time.monotonic() >= deadline:
            return state
        events = await room.aread("events", sid)
        paused = next((e["data"] for e in reversed(events) if e["event"] == "paused"), {})
        recovery = paused.get("recovery")
        if not recovery:  # paused by someone else (the soak resumes its own pauses): go on waiting
            await asyncio.sleep(0.2)
            continue
        await _recover(room, sid, recovery, out, events)


async def _recover(room: Room, sid: str, recovery: dict[str, Any], out: Outcome,
                   events: list[dict[str, Any]]) -> None:
    dev = recovery.get("device", "")
    states = await room.world.states()
    # the stop's trigger, by the record (the faulting device's own switch-off, else the
    # hub's alarm, else the injection): the pause is judged from there (invariant 1)
    trig = last_stop_trigger(events, session=sid, wall_minus_mono=wall_minus_monotonic(), states=states,
                             injections=out.injections(), steps=out.steps)
    if trig is not None:
        out.stops.append(Stop(f"fault-pause:{dev}", trig.t, states, from_device_clock=trig.by == "device"))
    out.notes.append(f"recovered {dev} fault {recovery.get('code')}")
    room.marks.append((round(time.monotonic(), 6), f"recover {dev} {sid}"))
    with contextlib.suppress(Exception):
        await room.world.call(dev, "clear")  # the technician removes the cause
    for _ in range(20):  # a hot part cools for a moment before the device takes its clear
        reply = await room.tech.request("recover", session=sid, by="tech")
        if reply and reply.get("ok"):
            break
        await asyncio.sleep(0.3)
    else:
        out.notes.append(f"recover of {dev} refused: aborted")
        await _abort(room, sid, "console", out)
        return
    reply = await room.tech.request("resume", session=sid, by="tech")
    if not (reply and reply.get("ok")):
        out.notes.append(f"resume after recovery refused: {(reply or {}).get('error', {}).get('code')}; aborted")
        await _abort(room, sid, "console", out)


async def _wait_state(room: Room, sid: str, states: tuple[str, ...], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    state = None
    while True:
        summary = await room.aread("session", sid)
        state = summary.get("state") if summary else None
        if state in states or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- disturbances
async def _act(room: Room, sid: str, action: Action, out: Outcome) -> None:
    what, args = action.what, action.args
    out.faults.append(kind_of(what))
    room.marks.append((round(time.monotonic(), 6), f"{kind_of(what)} {sid}"))
    if what[0] == "fault":
        dev, name = what[1], what[2]
        t = time.monotonic()
        fields = {"fault": name, "count": args.get("count", 1)}
        if "us" in args:
            fields["us"] = args["us"]
        await room.world.call(dev, "inject", **fields)
        out.stops.append(Stop(kind_of(what), t))
        if name == "stall":
            out.unreachable.add(dev)
            await asyncio.sleep(args.get("clear_after_s", 1.0))
            await room.world.call(dev, "clear", fault="stall")
    elif what[0] == "cut":
        out.unreachable.add(what[1])
        out.stops.append(Stop(kind_of(what), time.monotonic()))
        room.proxies[what[1]].cut()
    elif what[0] == "pause":
        await _pause_resume(room, sid, what[1], args, out)
    elif what[0] == "abort":
        await _abort(room, sid, what[1], out)
    elif what[0] == "broker":
        await asyncio.to_thread(room.broker.restart, args.get("down_s", 1.0))
        room.marks.append((round(time.monotonic(), 6), "broker started again"))
    elif what[0] == "hub_kill":
        out.hub_killed = True
        out.unreachable.update(DEVICE_FAULTS)  # nobody commands the devices: their watchdogs do
        out.stops.append(Stop("hub_kill", time.monotonic()))
        room.hub.kill()
        summary = await room.aread("session", sid) or {}  # as the dead hub left it
        out.interrupted_by_kill = out.interrupted_by_kill or summary.get("state") not in FINAL
        await asyncio.sleep(0.3)
        await asyncio.to_thread(room.hub.start)
        room.marks.append((round(time.monotonic(), 6), f"hub started, boot {room.hub.boot}"))


async def _pause_resume(room: Room, sid: str, origin: str, args: dict[str, Any], out: Outcome) -> None:
    t = time.monotonic()
    if origin == "mqtt":
        reply = await room.clinic.request("pause", {"session": sid, "reason": "soak"})
    else:
        reply = await room.tech.request("pause", session=sid, reason="soak")
    if not (reply and reply.get("ok")):
        return  # not running (ended, or paused already): nothing to resume either
    out.stops.append(Stop(f"pause:{origin}", t, await room.world.states()))
    await asyncio.sleep(args.get("paused_s", 0.5))
    if args.get("resume") == "mqtt":
        reply = await room.clinic.request("resume", {"session": sid})
        if reply and reply.get("ok"):
            await _confirm(room, sid)
            return
    else:
        reply = await room.tech.request("resume", session=sid, by="tech")
        if reply and reply.get("ok"):
            return
    out.notes.append(f"resume refused: {(reply or {}).get('error', {}).get('code', 'no reply')}; aborted")
    await _abort(room, sid, "console", out)


async def _abort(room: Room, sid: str, origin: str, out: Outcome) -> None:
    t = time.monotonic()
    reply = None
    if origin == "mqtt":
        reply = await room.clinic.request("abort", {"session": sid, "reason": "soak"}, timeout=5.0)
    if reply is None:  # no answer over MQTT (the broker away): the technician aborts at the chair
        if origin == "mqtt":
            out.notes.append("abort over MQTT unanswered: aborted at the console")
            t = time.monotonic()
        reply = await room.tech.request("abort", session=sid, reason="soak")
    out.stops.append(Stop(f"abort:{origin}", t, await room.world.states()))


# ---------------------------------------------------------------------------- afterwards
async def _settle_outputs(room: Room, out: Outcome, timeout: float = 5.0) -> None:
    """Wait (bounded) for every output to be off: a watchdog may be the last line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = await room.world.states()
        if not any(s.get("output_on") for s in states.values()):
            return
        await asyncio.sleep(0.05)


async def _make_room_ready(room: Room) -> None:
    """Between sessions: every injected cause removed, every latched device fault cleared on
    the device itself (the service technician), the simulated technician pulling again."""
    for dev in room.world.controls:
        with contextlib.suppress(Exception):
            await room.world.call(dev, "clear")
    with contextlib.suppress(Exception):
        await room.world.call("inj-1", "set", name="reservoir_ul", value=10000)
    states = await room.world.states()
    for dev, st in states.items():
        if st.get("state") == "fault" or st.get("fault"):
            await room.world.clear_latched(dev)
    with contextlib.suppress(Exception):
        await room.world.call("inj-1", "auto_trigger", rate_hz=20)


prepare_room = _make_room_ready
