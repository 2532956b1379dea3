"""A fault soak: real sessions under every fault at once, judged by the devices' own counts.

Simulators, a private Mosquitto and ``devicehub serve`` run as separate processes, with a
small TCP proxy in front of each device port. Clinic software (MQTT: a requester and a
persistent follower of ``<root>/#``) and a technician (the console socket) run sessions
of the shipped programs with short parameters, started from afar and at the chair. At
random moments the soak injects every fault of every device (shared/simulator-control.md),
cuts a device's TCP connection, pauses and resumes, aborts from both sides, restarts the
broker and SIGKILLs and restarts the hub. After every session it checks the invariants
(``bench/soaklib/checks.py``) and counts each violation.

    .venv/bin/python bench/soak.py --minutes 3 --seed 7     # make soak: --minutes 10
    .venv/bin/python bench/soak.py --sessions 40 --seed 7   # the same 40 sessions again

Each session's plan (program, origin, disturbances and their moments) comes from the seed
and the session's number alone, so a failing seed replays the same sessions; the
machine's timing still varies from run to run. Prints a table and writes
``bench/results/soak.json`` (``--out`` elsewhere).

The soak and every process it starts run at niceness ``--niceness`` (-10 by default, when
permitted): the simulators stand for the devices' own controllers and the proxies for the
cables, neither of which a busy computer slows down, and on a room's machine the hub and
its broker come before any other work. A test run beside the soak is then background, as
other work is on a room's machine, instead of making the soak time its own delays.
SIGTERM stops a run as Ctrl-C does: every process it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, machine_info, summary  # noqa: E402
from bench.soaklib import checks  # noqa: E402
from bench.soaklib.clients import Clinic, Follower, Technician, World  # noqa: E402
from bench.soaklib.plan import draw  # noqa: E402
from bench.soaklib.procs import Broker, Hub, Simulators, TcpProxy, proxied, upstream_of, write_hub_config  # noqa: E402
from bench.soaklib.session import Room, prepare_room, run_session  # noqa: E402

#: the rig's processes (the simulators, which stand for the devices' own controllers; the
#: proxies, which stand for the cables; the broker; the hub, as a room's machine runs it)
#: above anything else on the machine, such as a test run beside the soak: on a room's
#: machine other work is background, and a starved simulator would stamp its switch-off
#: late and charge the hub with it (docs/decisions/0013)
RIG_NICENESS = -10

INVARIANTS = ("1_safe_state", "2_delivered", "2_exposure_plan", "3_record", "4_seq", "5_resources")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=0, help="stop after this many sessions (0: no count limit)")
    p.add_argument("--minutes", type=float, default=3.0, help="stop starting sessions after this long")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: drawn and printed)")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the run's directory (logs, record) and print it")
    p.add_argument("--niceness", type=int, default=RIG_NICENESS,
                   help=f"the scheduling niceness of the soak and every process it starts (default {RIG_NICENESS}, "
                        "when permitted; see the module docstring)")
    return p


def _set_niceness(niceness: int) -> int:
    """This process's niceness set to ``niceness`` (its children inherit it); what it is after."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError as exc:  # raising it needs root or CAP_SYS_NICE
        print(f"niceness left at {os.getpriority(os.PRIO_PROCESS, 0)}: {exc}", flush=True)
    return os.getpriority(os.PRIO_PROCESS, 0)



async def soak(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    seed = args.seed
    # SIGTERM as Ctrl-C: the run is cancelled and its ``finally`` stops every process it started
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    sims = Simulators(directory, seed).start()
    proxies = {d: await TcpProxy(*upstream_of(ep)).start() for d, ep in sims.endpoints.items()}
    broker = Broker(directory)
    broker.start()
    site = f"soak{seed}"
    cfg = write_hub_config(directory, {d: proxied(sims.endpoints[d], p.port) for d, p in proxies.items()},
                           broker.port, site)
    root = f"devicehub/v1/{site}/room-1"
    follower, clinic = Follower(broker.port, root), Clinic(broker.port, root)
    hub = Hub(cfg, directory / "hub.log")
    violations: dict[str, list[str]] = {k: [] for k in INVARIANTS}
    outcomes: list[dict[str, Any]] = []
    safe_ms: list[float] = []
    samples: list[dict[str, Any]] = []
    faults: Counter[str] = Counter()
    try:
        await follower.start()
        await clinic.start()
        await asyncio.to_thread(hub.start)
        room = Room(directory, directory / "devicehub.sqlite", World(sims.controls, sims.endpoints), proxies,
                    broker, hub, clinic, follower, Technician(directory / "devicehub.sock"))
        await prepare_room(room)
        # what start-up loaded (the hub's modules, pydantic, the drivers) out of the
        # collector's reach, as `devicehub serve` does: a full collection of it took 62 ms
        # in the 01:15 hour (rig_gc), able to hold a stop's send or the proxies
        gc.collect()
        gc.freeze()
        t_end = time.monotonic() + args.minutes * 60.0
        i = 0
        while (not args.sessions or i < args.sessions) and time.monotonic() < t_end:
            plan = draw(seed, i)
            out = await run_session(room, plan)
            faults.update(out.faults)
            v1, times = checks.invariant_1(out, room.read("events", out.session) if out.session else [])
            safe_ms += times
            v2 = checks.invariant_2(out, room)
            v2x = checks.invariant_2_exposures(out)
            v3 = checks.invariant_3(out, room)
            for key, found in (("1_safe_state", v1), ("2_delivered", v2), ("2_exposure_plan", v2x), ("3_record", v3)):
                violations[key] += [f"#{i} {out.session}: {v}" for v in found]
            samples.append(hub.resources())
            outcomes.append({"index": i, "program": out.program, "origin": out.origin, "session": out.session,
                             "state": out.state, "reason": out.reason, "refused": out.refused, "faults": out.faults,
                             "notes": out.notes, "violations": {"1": v1, "2": v2, "3": v3}})
            end = out.reason if out.session else f"refused: {out.refused}"
            print(f"#{i:<4} {out.program:<18} {out.origin:<7} {out.state:<10} {str(end or ''):<28} "
                  f"{','.join(out.faults) or '-':<40} v1={len(v1)} v2={len(v2)} v3={len(v3)}", flush=True)
            for v in v1 + v2 + v2x + v3:
                print(f"        {v}", flush=True)
            for note in out.notes:
                print(f"        note: {note}", flush=True)
            await prepare_room(room)
            gc.freeze()  # what this session left alive (its outcome, the samples) with it
            i += 1
        await asyncio.sleep(3.0)  # the outbox drains: replays reach the follower
        seq = follower.seq_report()
        follower.dump(directory / "follower.jsonl")
        if seq["gaps"] or seq["duplicates"]:
            violations["4_seq"].append(f"{seq['gaps']} missing seq, {seq['duplicates']} duplicates: {seq['gap_at']}")
        # the end, at rest: the fewest descriptors of a few looks (one may catch a reconnect)
        quiet = []
        for _ in range(5):
            quiet.append(hub.resources())
            await asyncio.sleep(0.3)
        if quiet and quiet[0]:
            samples.append(min(quiet, key=lambda q: q.get("fds", 0)))
        v5, res = checks.resources(samples)
        violations["5_resources"] += v5
    finally:
        await clinic.stop()
        await follower.stop()
        await asyncio.to_thread(hub.terminate)
        broker.stop()
        for p in proxies.values():
            await p.stop()
        sims.stop()
    states = Counter(o["state"] if o["session"] else f"refused:{o['refused']}" for o in outcomes)
    return {
        "seed": seed, "minutes": args.minutes, "sessions": len(outcomes),
        "end_states": dict(states), "faults": dict(sorted(faults.items())),
        "safe_state_ms": summary(safe_ms), "violations": {k: len(v) for k, v in violations.items()},
        "violation_details": {k: v[:50] for k, v in violations.items()},
        "seq": seq, "resources": res, "hub_kills": hub.kills, "broker_restarts": broker.restarts,
        "cuts": {d: p.cuts for d, p in proxies.items()}, "marks": room.marks, "outcomes": outcomes,
    }


class RigPauses:
    """The soak's own process, watched: how long each full garbage collection held it. The
    soak stamps the stops it sends and carries the hub's device traffic through its proxies,
    so a pause of its own would be counted against the hub (the 00:47 hour's #326)."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.ms.append((time.perf_counter() - self._t0) * 1000.0)

    def __enter__(self) -> "RigPauses":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def report(self) -> dict[str, Any]:
        return {"full_collections": len(self.ms), "max_ms": round(max(self.ms, default=0.0), 1)}


def print_table(r: dict[str, Any]) -> None:
    print(f"\nsoak seed {r['seed']}: {r['sessions']} sessions in {r['minutes']:g} min")
    print("\nsessions by end state")
    for k, v in sorted(r["end_states"].items()):
        print(f"  {k:<36} {v:>5}")
    print("\nfaults by kind")
    for k, v in r["faults"].items():
        print(f"  {k:<36} {v:>5}")
    s = r["safe_state_ms"]
    if s.get("n"):
        print(f"\nsafe state ms (by the simulators' output_changed_at): n {s['n']}  p50 {s['p50']}  "
              f"p99 {s['p99']}  max {s['max']}")
    print("\nviolations per invariant (must all be 0)")
    for k, v in r["violations"].items():
        print(f"  {k:<36} {v:>5}")
        for line in r["violation_details"][k][:5]:
            print(f"      {line}")
    print(f"\nhub kills {r['hub_kills']}, broker restarts {r['broker_restarts']}, cuts {r['cuts']}, "
          f"seq {r['seq']['messages']} messages over {r['seq']['boots']} boots; resources {r['resources']}")
    g = r.get("rig_gc") or {}
    print(f"the soak's own full garbage collections: {g.get('full_collections')}, longest {g.get('max_ms')} ms")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    print(f"soak seed {args.seed} (replay: bench/soak.py --seed {args.seed} "
          f"{'--sessions ' + str(args.sessions) if args.sessions else '--minutes ' + format(args.minutes, 'g')})",
          flush=True)
    niceness = _set_niceness(args.niceness)
    directory = Path(tempfile.mkdtemp(prefix="devicehub-soak-"))
    try:
        with RigPauses() as pauses:
            result = asyncio.run(soak(args, directory))
        result["rig_gc"] = pauses.report()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak stopped before its end: no table, nothing written", flush=True)
        return 130
    finally:
        if args.keep:
            print(f"run directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    result = {"machine": machine_info(), "niceness": niceness, **result}
    print_table(result)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
