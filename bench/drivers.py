"""Round trips per second through each driver, beside bare clients speaking the same bytes.

For every device one simulator is started and two connections are opened to it: the
driver, and a raw baseline that sends the same request bytes with nothing around them:

- EPG-1: ``EpgDriver.query("OUTP:STAT?")`` (and ``status()``) against bare asyncio
  streams writing ``b"OUTP:STAT?\\n"`` and reading one line;
- INJ-1: ``InjDriver.status()`` (GET_STATUS, SEQ matching, payload decoding) against
  bare streams writing a GET_STATUS frame built with ``drivers.inj_frames`` and reading
  the 26-byte STATUS frame;
- LED-1 / PEMF-1: ``poll()`` (the driver's cheapest public read: one FC 0x04 of the
  input registers, then event tracking) and ``link.read_input`` (the typed-error link
  alone) against a bare pymodbus ``AsyncModbusTcpClient.read_input_registers``.

Rounds of a fixed duration alternate (raw, driver, raw, driver, ...) after a short
warm-up, so drift of the machine hits every variant alike. Reported per variant: the
median rate of its rounds, the p50/p99 round-trip latency over all its calls, the CPU
time of this process per call, and how many event-loop iterations one call takes
(counted, so nearly free of noise: a bare request/reply needs 2; every extra one is a Task or
a callback hop that costs a few microseconds per request). Per driver variant:

- ``ratio``: the median over rounds of (driver round rate / the raw round just before
  it), the figure the target (>= 0.8) is judged on;
- ``interleaved``: raw and driver calls taken in turn within one round, ratio of their
  mean latencies. Steadier when other programs load the machine, though both paths
  then share the CPU caches, which flatters the driver a little.

``--profile`` runs cProfile over the driver variants afterwards and prints where the
time goes. Simulators run as subprocesses by default (``--sims thread`` puts them on a
thread of this process: they then share its GIL and p99 latencies rise two- to threefold).
Results: ``bench/results/drivers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import cProfile
import io
import pstats
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Round,
    Simulators,
    interleaved_round,
    loop_iterations_per_call,
    machine_info,
    median,
    pinned,
    quiet_logging,
    summary,
    table,
    timed_round,
    write_results,
)

TARGET_RATIO = 0.8
KINDS = ("epg", "inj", "led", "pemf")


@dataclass
class Variant:
    """One way of doing the same read: ``raw`` is the baseline of its device."""

    device: str
    name: str
    call: Callable[[], Awaitable[Any]]
    raw: bool = False
    rounds: list[Round] = field(default_factory=list)
    loop_iterations: float = 0.0
    #: mean latency of the raw variant / this one's, per interleaved round
    interleaved_ratios: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.device} {self.name}"


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _raw_streams(endpoint: str, stack: list[Callable[[], Awaitable[None]]]
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The raw baseline's connection to a serial simulator's TCP port (closed via ``stack``)."""
    from drivers.endpoints import Endpoint

    ep = Endpoint.parse(endpoint)
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    _nodelay(writer)

    async def close_raw() -> None:
        writer.close()

    stack.append(close_raw)
    return reader, writer


# --------------------------------------------------------------------------- per device


async def epg_variants(endpoint: str, stack: list[Callable[[], Awaitable[None]]]) -> list[Variant]:
    from drivers.epg import EpgDriver

    reader, writer = await _raw_streams(endpoint, stack)

    async def raw() -> bytes:
        writer.write(b"OUTP:STAT?\n")
        return await reader.readline()

    first = await raw()
    assert first.strip() == b"IDLE", first

    drv = EpgDriver(endpoint)
    await drv.connect()
    stack.append(drv.close)
    assert await drv.query("OUTP:STAT?") == "IDLE"

    return [
        Variant("epg", "raw streams", raw, raw=True),
        Variant("epg", "query('OUTP:STAT?')", lambda: drv.query("OUTP:STAT?")),
        Variant("epg", "status()", drv.status),
    ]


async def inj_variants(endpoint: str, stack: list[Callable[[], Awaitable[None]]]) -> list[Variant]:
    from drivers.inj import InjDriver
    from drivers.inj_frames import OVERHEAD, Cmd, Status, encode

    reader, writer = await _raw_streams(endpoint, stack)
    frames = [encode(seq, Cmd.GET_STATUS) for seq in range(1, 256)]  # built once, like a real client would
    reply_len = OVERHEAD + Status.size()
    seq = 0

    async def raw() -> bytes:
        nonlocal seq
        writer.write(frames[seq])
        seq = (seq + 1) % 255
        return await reader.readexactly(reply_len)

    first = await raw()
    assert first[0] == 0x7E and first[3] == Cmd.STATUS, first.hex()

    drv = InjDriver(endpoint)
    await drv.connect()
    stack.append(drv.close)
    assert (await drv.status()).state == "idle"

    return [
        Variant("inj", "raw streams", raw, raw=True),
        Variant("inj", "status()", drv.status),
    ]


async def modbus_variants(kind: str, endpoint: str, stack: list[Callable[[], Awaitable[None]]]) -> list[Variant]:
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.endpoints import Endpoint
    from drivers.led import LedDriver
    from drivers.pemf import PemfDriver

    cls = LedDriver if kind == "led" else PemfDriver
    count = cls.input_count
    ep = Endpoint.parse(endpoint)

    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=1.0, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise RuntimeError(f"pymodbus could not connect to {endpoint}")
    transport = getattr(client.ctx, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:  # as the driver's link does: a fair baseline has no Nagle delay either
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close_raw() -> None:
        client.close()

    stack.append(close_raw)
    unit = ep.unit

    async def raw() -> Any:
        return await client.read_input_registers(0, count=count, device_id=unit)

    rr = await raw()
    assert not rr.isError() and len(rr.registers) == count, rr

    drv = cls(endpoint)
    await drv.connect()
    stack.append(drv.close)
    assert len(await drv.poll()) == count

    return [
        Variant(kind, f"raw pymodbus read_input_registers({count})", raw, raw=True),
        Variant(kind, "poll()", drv.poll),
        Variant(kind, f"link.read_input(0, {count})", lambda: drv.link.read_input(0, count)),
    ]


# --------------------------------------------------------------------------- running


async def measure(variants: list[Variant], rounds: int, duration: float, warmup: float, interleaved: int) -> None:
    assert variants[0].raw
    for v in variants:  # warm-up: connections, caches, the first-call paths
        await timed_round(v.call, warmup)
        v.loop_iterations = await loop_iterations_per_call(v.call)
    for _ in range(rounds):
        for v in variants:
            v.rounds.append(await timed_round(v.call, duration))
    for _ in range(interleaved):
        lat = await interleaved_round([v.call for v in variants], duration)
        raw_mean = sum(lat[0]) / len(lat[0])
        for v, mine in zip(variants, lat):
            v.interleaved_ratios.append(raw_mean / (sum(mine) / len(mine)))


def figures(variants: list[Variant]) -> list[dict[str, Any]]:
    raw = next(v for v in variants if v.raw)
    raw_rate = median([r.rate for r in raw.rounds])
    out = []
    for v in variants:
        lat = [x for r in v.rounds for x in r.latencies_us]
        rate = median([r.rate for r in v.rounds])
        cpu = median([r.cpu_us_per_call for r in v.rounds])
        row: dict[str, Any] = {
            "device": v.device,
            "variant": v.name,
            "raw": v.raw,
            "rate_per_s": round(rate, 1),
            "round_rates_per_s": [round(r.rate, 1) for r in v.rounds],
            "latency_us": summary(lat, 1),
            "cpu_us_per_call": round(cpu, 1),
            "loop_iterations_per_call": round(v.loop_iterations, 2),
        }
        if not v.raw:
            # each driver round against the raw round just before it: drift of the machine
            # over seconds cancels out, which the ratio of the two medians would not do
            per_round = [r.rate / b.rate for r, b in zip(v.rounds, raw.rounds) if b.rate]
            row["ratio"] = round(median(per_round), 3) if per_round else None
            row["ratio_of_median_rates"] = round(rate / raw_rate, 3) if raw_rate else None
            row["round_ratios"] = [round(x, 3) for x in per_round]
            row["interleaved_ratio"] = round(median(v.interleaved_ratios), 3) if v.interleaved_ratios else None
            row["interleaved_round_ratios"] = [round(x, 3) for x in v.interleaved_ratios]
            row["meets_target"] = row["ratio"] is not None and row["ratio"] >= TARGET_RATIO
            raw_cpu = median([r.cpu_us_per_call for r in raw.rounds])
            row["cpu_overhead_us_per_call"] = round(cpu - raw_cpu, 1)
        out.append(row)
    return out


async def profile_driver(v: Variant, calls: int) -> str:
    """cProfile over ``calls`` driver round trips; the top entries by own and cumulative time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        await v.call()
    prof.disable()
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    buf.write(f"--- profile of {v.label}: {calls} calls, {wall / calls * 1e6:.0f} us/call under cProfile\n")
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(22)
    st.sort_stats("cumulative").print_stats(30)
    return buf.getvalue()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k in args.only.split(",") if k] if args.only else list(KINDS)
    results: dict[str, Any] = {
        "benchmark": "drivers",
        "what": "sequential request/reply round trips against one simulator, driver vs raw client, "
                "alternating fixed-duration rounds",
        "machine": machine_info(),
        "settings": {"simulators": args.sims, "rounds": args.rounds, "round_s": args.round_s,
                     "interleaved_rounds": args.interleaved,
                     "warmup_s": args.warmup_s, "target_ratio": TARGET_RATIO},
        "how_to_read": {
            "ratio": "median over rounds of driver rate / rate of the raw round just before it; target >= 0.8",
            "ratio_of_median_rates": "median driver rate / median raw rate",
            "interleaved_ratio": "raw mean latency / driver mean latency with the calls taken in turn",
            "cpu_us_per_call": "CPU time of the benchmark's thread per round trip (user + system)",
            "loop_iterations_per_call": "event-loop iterations per round trip, counted (a bare one needs 2)",
        },
        "devices": {},
    }
    profiles: list[str] = []
    with Simulators(kinds, mode=args.sims) as sims, \
            pinned(args.sims == "process" and not args.no_pin, sims.pids, "simulators") as placement:
        results["settings"]["cpus"] = placement
        for kind in kinds:
            stack: list[Callable[[], Awaitable[None]]] = []
            try:
                endpoint = sims.sims[kind].endpoint
                if kind == "epg":
                    variants = await epg_variants(endpoint, stack)
                elif kind == "inj":
                    variants = await inj_variants(endpoint, stack)
                else:
                    variants = await modbus_variants(kind, endpoint, stack)
                await measure(variants, args.rounds, args.round_s, args.warmup_s, args.interleaved)
                rows = figures(variants)
                results["devices"][kind] = rows
                print_device(rows)
                if args.profile:
                    for v in variants:
                        if not v.raw:
                            profiles.append(await profile_driver(v, args.profile_calls))
            finally:
                for close in reversed(stack):
                    try:
                        await close()
                    except Exception:  # noqa: BLE001 - closing is best effort in a benchmark
                        pass
    for p in profiles:
        print(p)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]  # others' load during the run
    return results


def print_device(rows: list[dict[str, Any]]) -> None:
    body = []
    for r in rows:
        lat = r["latency_us"]
        body.append([
            f"{r['device']} {r['variant']}",
            r["rate_per_s"],
            lat["p50"],
            lat["p99"],
            r["cpu_us_per_call"],
            "" if r["raw"] else f"{r['cpu_overhead_us_per_call']:+.0f}",
            r["loop_iterations_per_call"],
            "" if r["raw"] else f"{r['ratio']:.2f}",
            "" if r["raw"] else _spread(r["round_ratios"]),
            "" if r["raw"] or r["interleaved_ratio"] is None else f"{r['interleaved_ratio']:.2f}",
            "" if r["raw"] else ("ok" if r["meets_target"] else "BELOW"),
        ])
    print(table(["variant", "rate/s", "p50 us", "p99 us", "cpu us", "+cpu", "loop it", "ratio", "rounds p10-p90", "interleaved", f">= {TARGET_RATIO}"], body))
    print(flush=True)


def _spread(values: list[float]) -> str:
    from bench.common import percentile

    s = sorted(values)
    return f"{percentile(s, 10):.2f}-{percentile(s, 90):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", choices=("process", "thread"), default="process",
                   help="simulators as subprocesses (default: own GIL, steadier) or on a thread of this process")
    p.add_argument("--rounds", type=int, default=10, help="rounds per variant, alternating")
    p.add_argument("--round-s", type=float, default=0.4, help="seconds per round")
    p.add_argument("--interleaved", type=int, default=4,
                   help="rounds that interleave the variants call by call (for the steadier ratio)")
    p.add_argument("--warmup-s", type=float, default=0.3)
    p.add_argument("--only", default="", help="comma-separated subset of epg,inj,led,pemf")
    p.add_argument("--no-pin", action="store_true",
                   help="leave CPU placement to the scheduler (default: this process on one CPU, the simulators "
                        "on the others)")
    p.add_argument("--profile", action="store_true", help="cProfile the driver variants afterwards")
    p.add_argument("--profile-calls", type=int, default=3000)
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/drivers.json)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    with quiet_logging():
        results = asyncio.run(run(args))
    below = [f"{kind} {r['variant']} ({r['ratio']:.2f})" for kind, rows in results["devices"].items()
             for r in rows if not r["raw"] and not r["meets_target"]]
    print("below target:", ", ".join(below) if below else "none")
    if not args.no_write:
        path = write_results("drivers", results, args.out)
        print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
