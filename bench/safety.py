"""How fast the whole room reaches a confirmed safe state, and how far apart two steps start.

Part 1, safe state. All four simulated devices are energised (EPG-1 armed and running
a long train, INJ-1 armed, LED-1 and PEMF-1 outputs on with hour-long exposures, every
heartbeat running), then brought down, alternately:

- **abort**: ``devicehub.safety.safe_state_all`` over the four drivers, the trigger being
  ``time.monotonic()`` just before the call (what an operator's abort does);
- **fault**: a fault injected through the simulator's control channel (EPG-1
  ``over_temperature`` and INJ-1 ``occlusion`` in turn). A small supervisor, built like
  the session runner's (``devicehub/runner/session.py`` ``_supervise``: one subscription
  per driver pumped into one queue), calls ``safe_state_all`` with the driver's fault
  ``DeviceEvent.t`` as the trigger.

Measured: trigger -> every device confirmed off by read-back (``SafeStateReport.ms``),
p50/p99/max, per path and per device; for faults also injection -> fault event
(the control channel's round trip plus the device's detection). After every stop the
simulators' own control state is read to check that all outputs really are off. Then
the room is re-energised (control ``clear`` + ``clear_fault()`` after a fault).

Part 2, start skew. LED-1 and PEMF-1 configured, then both started at once
(``asyncio.gather`` of the two ``start()`` calls), 50 times. The simulators expose no
start timestamp, but their control state carries the run's elapsed time, advanced to
the moment it is read: reading both on the simulators' own loop right after the start
gives each output's on-moment as ``t_read - run.elapsed_s`` on the shared monotonic
clock. For that the two simulators run in this process, each on its own thread
(``simulators.harness.SimulatorThread``); the host-side difference between the two
``start()`` completions is reported beside it.

Results: ``bench/results/safety.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Simulators, machine_info, quiet_logging, summary, table, write_results  # noqa: E402
from devicehub.safety import SafeStateReport, safe_state_all  # noqa: E402
from drivers.base import Device, DeviceEvent  # noqa: E402
from drivers.epg import EpgDriver, EpgTrain  # noqa: E402
from drivers.inj import InjDriver, InjParams  # noqa: E402
from drivers.led import LedDriver, LedExposure  # noqa: E402
from drivers.pemf import PemfDriver, PemfExposure  # noqa: E402
from simulators.control import ControlClient  # noqa: E402

TARGET_P99_MS = 50.0
#: iterations that go wrong (device will not energise, no fault event) before the run gives up
MAX_ERRORS = 10
#: the events the runner supervises (devicehub.runner.session.SUPERVISED_EVENTS)
SUPERVISED = ("fault", "connection_lost", "heartbeat_failed")
#: fault path: (device, control fault name), used in turn
FAULTS = (("epg", "over_temperature"), ("inj", "occlusion"))

# long enough never to end by themselves during the benchmark
TRAIN = EpgTrain(amplitude_v=10, width_ms=0.1, period_ms=100, pulses=10_000)  # 1000 s
SHOT = InjParams(volume_ul=10.0, depth_mm=1.0, mode="single")
LIGHT = LedExposure(wavelength_nm=630, irradiance_mw_cm2=10.0, duration_s=3600.0)
FIELD = PemfExposure(waveform="sine", frequency_hz=10.0, peak_field_mt=1.0, duration_s=3600.0)


# --------------------------------------------------------------------------- the supervisor


@dataclass
class Tripped:
    device: str
    event: DeviceEvent
    report: SafeStateReport


@dataclass
class Supervisor:
    """What the runner does on a device's trouble, and nothing else: safe state at once,
    timed from the event's own timestamp. Trips are handed out on ``trips``."""

    devices: dict[str, Device]
    trips: asyncio.Queue[Tripped] = field(default_factory=asyncio.Queue)
    unexpected: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    armed: bool = False

    async def run(self) -> None:
        merged: asyncio.Queue[tuple[str, DeviceEvent]] = asyncio.Queue()
        async with contextlib.AsyncExitStack() as stack:
            queues = [(d, await stack.enter_async_context(dev.subscribe())) for d, dev in self.devices.items()]

            async def pump(dev_id: str, q: asyncio.Queue[DeviceEvent]) -> None:
                while True:
                    merged.put_nowait((dev_id, await q.get()))

            pumps = [asyncio.ensure_future(pump(d, q)) for d, q in queues]
            try:
                while True:
                    dev_id, ev = await merged.get()
                    if ev.kind not in SUPERVISED:
                        continue
                    if not self.armed:  # trouble while nothing is expected: count it, do not hide it
                        self.unexpected.append((dev_id, ev.kind, dict(ev.data)))
                        continue
                    self.armed = False
                    report = await safe_state_all(self.devices, f"{ev.kind}:{dev_id}", t_trigger=ev.t)
                    self.trips.put_nowait(Tripped(dev_id, ev, report))
            finally:
                for p in pumps:
                    p.cancel()


# --------------------------------------------------------------------------- the room


class Room:
    """Four drivers and four control clients on four simulators."""

    def __init__(self, sims: Simulators) -> None:
        s = sims.sims
        self.devices: dict[str, Device] = {
            "epg": EpgDriver(s["epg"].endpoint),
            "inj": InjDriver(s["inj"].endpoint),
            "led": LedDriver(s["led"].endpoint),
            "pemf": PemfDriver(s["pemf"].endpoint),
        }
        self.ctl = {k: ControlClient(s[k].control) for k in self.devices}

    @property
    def epg(self) -> EpgDriver:
        return self.devices["epg"]  # type: ignore[return-value]

    async def open(self) -> None:
        for d in self.devices.values():
            await d.connect()
        for c in self.ctl.values():
            await c.connect()
        await self.epg.set_pulse_events(False)
        await self.epg.configure(TRAIN)
        await self.devices["inj"].configure(SHOT)
        await self.devices["led"].configure(LIGHT)
        await self.devices["pemf"].configure(FIELD)

    async def close(self) -> None:
        for d in self.devices.values():
            with contextlib.suppress(Exception):
                await d.safe_state()
            with contextlib.suppress(Exception):
                await d.close()
        for c in self.ctl.values():
            await c.close()

    async def states(self) -> dict[str, dict[str, Any]]:
        replies = await asyncio.gather(*(c.state() for c in self.ctl.values()))
        return dict(zip(self.ctl, replies))

    async def energise(self) -> None:
        """Everything on, and proven on by the simulators themselves."""
        await asyncio.gather(*(d.start() for d in self.devices.values()))
        await self.epg.trigger()
        st = await self.states()
        off = [k for k, v in st.items() if not v["output_on"]]
        if off or st["epg"]["state"].upper() != "RUNNING":
            raise RuntimeError(f"not energised: {off or st['epg']['state']}")

    async def all_off(self) -> list[str]:
        """Devices the simulators report still on (should be none)."""
        return [k for k, v in (await self.states()).items() if v["output_on"]]

    async def recover(self, device: str) -> None:
        """Remove the injected cause and clear the latched fault, as a technician would."""
        await self.ctl[device].clear()
        await self.devices[device].clear_fault()

    async def recover_all(self) -> None:
        """After something unplanned: every device off, causes removed, faults cleared."""
        await safe_state_all(self.devices, "bench recovery")
        for k, st in (await self.states()).items():
            await self.ctl[k].clear()
            if st["state"].lower() == "fault":
                await self.devices[k].clear_fault()


async def safe_state_part(args: argparse.Namespace) -> dict[str, Any]:
    with Simulators(["epg", "inj", "led", "pemf"], mode=args.sims) as sims:
        room = Room(sims)
        await room.open()
        sup = Supervisor(room.devices)
        sup_task = asyncio.ensure_future(sup.run())
        await asyncio.sleep(0)  # let the supervisor subscribe before anything happens
        aborts: list[SafeStateReport] = []
        faults: list[tuple[str, float, Tripped]] = []  # (fault name, t_inject, trip)
        still_on: list[str] = []
        errors: list[str] = []
        t_start = time.monotonic()
        try:
            i = 0
            while i < 2 * args.iterations:
                try:
                    await room.energise()
                except Exception as exc:  # noqa: BLE001 - recorded, recovered, and the run goes on
                    errors.append(f"energise before stop {i}: {type(exc).__name__}: {exc}")
                    if len(errors) > MAX_ERRORS:
                        raise
                    sup.armed = False
                    await room.recover_all()
                    continue
                if i % 2 == 0:
                    t0 = time.monotonic()
                    rep = await safe_state_all(room.devices, "abort", t_trigger=t0)
                    aborts.append(rep)
                else:
                    device, fault = FAULTS[(i // 2) % len(FAULTS)]
                    sup.armed = True
                    t_inject = time.monotonic()
                    await room.ctl[device].inject(fault)
                    try:
                        trip = await asyncio.wait_for(sup.trips.get(), 5.0)
                    except asyncio.TimeoutError:
                        errors.append(f"stop {i}: no fault event within 5 s of injecting {device} {fault}")
                        if len(errors) > MAX_ERRORS:
                            raise
                        sup.armed = False
                        await room.recover_all()
                        continue
                    faults.append((f"{device} {fault}", t_inject, trip))
                on = await room.all_off()
                if on:
                    still_on.append(f"stop {i}: {','.join(on)} still on")
                if i % 2 == 1:
                    await room.recover(faults[-1][2].device)
                i += 1
        finally:
            sup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sup_task
            await room.close()
        elapsed = time.monotonic() - t_start

    def block(reports: list[SafeStateReport]) -> dict[str, Any]:
        return {
            "n": len(reports),
            "unconfirmed": sum(not r.confirmed for r in reports),
            "to_all_confirmed_ms": summary([r.ms for r in reports]),
            "per_device_ms": {d: summary([r.device_ms[d] for r in reports]) for d in room.devices},
        }

    fault_reports = [t.report for _, _, t in faults]
    by_fault: dict[str, Any] = {}
    for name in sorted({n for n, _, _ in faults}):
        mine = [(ti, t) for n, ti, t in faults if n == name]
        by_fault[name] = {
            "n": len(mine),
            "to_all_confirmed_ms": summary([t.report.ms for _, t in mine]),
            "inject_to_event_ms": summary([(t.event.t - ti) * 1000 for ti, t in mine]),
            "inject_to_all_confirmed_ms": summary([(t.event.t - ti) * 1000 + t.report.ms for ti, t in mine]),
        }
    both = [r.ms for r in aborts + fault_reports]
    return {
        "abort": block(aborts),
        "fault": {**block(fault_reports), "by_fault": by_fault},
        "all_stops_ms": summary(both),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": summary(both)["p99"] < TARGET_P99_MS,
        "outputs_left_on": still_on,
        "unexpected_events": [f"{d} {k} {data}" for d, k, data in sup.unexpected],
        "errors": errors,
        "seconds": round(elapsed, 1),
    }


# --------------------------------------------------------------------------- start skew


async def _on_moments(led: Simulators, pemf: Simulators) -> tuple[float, float]:
    """Each simulator's output-on moment, read from its control state on its own loop."""

    async def read(sims: Simulators, kind: str) -> float:
        sim = sims.sims[kind].obj

        async def on_loop() -> float:
            t_read = time.monotonic()  # the snapshot advances the run to (just after) now
            st = sim.control({"op": "state"})
            if not st["output_on"]:
                raise RuntimeError(f"{kind} is not on")
            return t_read - st["run"]["elapsed_s"]

        assert sims.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_loop(), sims.loop))

    a, b = await asyncio.gather(read(led, "led"), read(pemf, "pemf"))
    return a, b


async def skew_part(args: argparse.Namespace) -> dict[str, Any]:
    # one thread (own loop) per simulator: two devices that answer independently
    with Simulators(["led"], mode="thread") as led_sims, Simulators(["pemf"], mode="thread") as pemf_sims:
        led = LedDriver(led_sims.sims["led"].endpoint)
        pemf = PemfDriver(pemf_sims.sims["pemf"].endpoint)
        await led.connect()
        await pemf.connect()
        await led.configure(LIGHT)
        await pemf.configure(FIELD)
        device_skew, host_skew, gather_ms, first = [], [], [], {"led": 0, "pemf": 0}

        async def started(d: Device) -> float:
            await d.start()
            return time.monotonic()

        try:
            for _ in range(args.skew_repetitions):
                t0 = time.monotonic()
                done_led, done_pemf = await asyncio.gather(started(led), started(pemf))
                gather_ms.append((max(done_led, done_pemf) - t0) * 1000)
                on_led, on_pemf = await _on_moments(led_sims, pemf_sims)
                device_skew.append(abs(on_pemf - on_led) * 1000)
                host_skew.append(abs(done_pemf - done_led) * 1000)
                first["led" if on_led <= on_pemf else "pemf"] += 1
                results = await asyncio.gather(led.safe_state(), pemf.safe_state())
                if not all(r.confirmed for r in results):
                    raise RuntimeError(f"stop not confirmed: {results}")
        finally:
            await led.close()
            await pemf.close()
    return {
        "n": len(device_skew),
        "device_on_skew_ms": summary(device_skew),
        "host_start_completion_skew_ms": summary(host_skew),
        "gather_of_both_starts_ms": summary(gather_ms),
        "first_on": first,
        "how": "device: |t_on(PEMF) - t_on(LED)|, t_on = (monotonic read on the simulator's loop) - run.elapsed_s "
               "of its control state; host: |difference of the two start() completions|",
    }


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "safety",
        "machine": machine_info(),
        "settings": {"simulators": args.sims, "iterations_per_path": args.iterations,
                     "skew_repetitions": args.skew_repetitions, "faults": [f"{d} {f}" for d, f in FAULTS]},
    }
    results["safe_state"] = await safe_state_part(args)
    print_safe_state(results["safe_state"])
    results["start_skew"] = await skew_part(args)
    print_skew(results["start_skew"])
    if args.abort_rounds > 0:
        from bench.safety_mqtt import measure

        results["abort_over_mqtt"] = await measure(args.abort_rounds)
        print_abort_over_mqtt(results["abort_over_mqtt"])
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]  # others' load during the run
    return results


def _row(label: str, s: dict[str, Any]) -> list[Any]:
    return [label, s["n"], s["p50"], s["p99"], s["max"]]


def print_safe_state(r: dict[str, Any]) -> None:
    rows = [
        _row("abort -> all confirmed", r["abort"]["to_all_confirmed_ms"]),
        _row("fault event -> all confirmed", r["fault"]["to_all_confirmed_ms"]),
        _row("every stop", r["all_stops_ms"]),
    ]
    for name, b in r["fault"]["by_fault"].items():
        rows.append(_row(f"  {name}: event -> confirmed", b["to_all_confirmed_ms"]))
        rows.append(_row(f"  {name}: inject -> event", b["inject_to_event_ms"]))
    for d, s in r["abort"]["per_device_ms"].items():
        rows.append(_row(f"  abort: {d} safe_state()", s))
    print(table(["safe state (ms)", "n", "p50", "p99", "max"], rows))
    verdict = "ok" if r["meets_target"] else "ABOVE TARGET"
    print(f"p99 of every stop {r['all_stops_ms']['p99']:.2f} ms (target < {r['target_p99_ms']:.0f} ms): {verdict}; "
          f"unconfirmed: {r['abort']['unconfirmed'] + r['fault']['unconfirmed']}; outputs left on: "
          f"{len(r['outputs_left_on'])}; unexpected events: {len(r['unexpected_events'])}; "
          f"errors: {len(r['errors'])}")
    for line in r["errors"] + r["outputs_left_on"] + r["unexpected_events"]:
        print("  " + line)
    print(flush=True)


def print_abort_over_mqtt(r: dict[str, Any]) -> None:
    rows = []
    for label, part in r.items():
        rows.append(_row(f"{label}: abort publish -> outputs off", part["abort_publish_to_outputs_off_ms"]))
        rows.append(_row(f"{label}: raw publish -> receipt", part["raw_publish_to_receipt_ms"]))
    print(table(["abort over MQTT (ms)", "n", "p50", "p99", "max"], rows))
    for label, part in r.items():
        print(f"{label}: p99 {part['abort_publish_to_outputs_off_ms']['p99']:.2f} ms "
              f"(target < {part['target_p99_ms']:.0f} ms): {'ok' if part['met'] else 'ABOVE TARGET'}; "
              f"p50 {part['ratio_p50']}x the bare broker's trip")
    print(flush=True)


def print_skew(r: dict[str, Any]) -> None:
    print(table(["start skew LED/PEMF (ms)", "n", "p50", "p99", "max"], [
        _row("outputs on, simulators' clock", r["device_on_skew_ms"]),
        _row("start() completions, host", r["host_start_completion_skew_ms"]),
        _row("gather of both start()", r["gather_of_both_starts_ms"]),
    ]))
    print(f"first on: {r['first_on']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", choices=("process", "thread"), default="process",
                   help="part 1: simulators as subprocesses (default) or on a thread of this process")
    p.add_argument("--iterations", type=int, default=200, help="aborts, and as many faults")
    p.add_argument("--skew-repetitions", type=int, default=50)
    p.add_argument("--abort-rounds", type=int, default=100,
                   help="part 3: aborts over MQTT end to end, unloaded and with both CPUs loaded (0: skip)")
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/safety.json)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    with quiet_logging():
        results = asyncio.run(run(args))
    if not args.no_write:
        path = write_results("safety", results, args.out)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
