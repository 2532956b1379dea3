"""The site's collector at scale: N synthetic rooms into one broker, one and two collectors.

Each synthetic room publishes what a hub publishes during a session, built with the
hub's own envelope code (devicehub.mqtt.envelope.EnvelopeFactory), at a session's rates:
2 session events/s (+ the session state after each), a device state every 2 s, and
4 devices' telemetry at 2 Hz (QoS 0; the collector keeps one reading per device per 10 s).
A private Mosquitto and a private PostgreSQL (the tests' own, simulators/devsupport/postgres.py).

Figures, per collector count, in the same run:
- sustained: every room at session rates for ``--seconds``; messages/s ingested, lag from
  the envelope ``ts`` to the batch's transaction (``messages.received_at``) p50/p99,
  collector CPU per 1000 messages (utime + stime of the collector processes);
- backlog drain (throughput ceiling): ``--backlog`` QoS 1 messages queued while the
  consumers are away, then drained: the collectors (into PostgreSQL) against a bare
  aiomqtt subscriber counting the same backlog (ratio);
- and a plain psycopg COPY of the same rows into a bare table (rows/s), the database's
  ceiling without MQTT.

Run: ``.venv/bin/python bench/site.py [--rooms 200] [--seconds 20] [--backlog 20000]``.
Two real hubs (``devicehub serve`` on simulated rooms) run demo sessions back to back
beside the synthetic rooms during the sustained phase; their messages are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from common import ROOT, machine_info, summary, write_results  # noqa: E402  (puts ROOT on sys.path)

import aiomqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from simulators.local_broker import LocalBroker  # noqa: E402
from devicehub.mqtt.envelope import EnvelopeFactory, new_ulid  # noqa: E402
from simulators.devsupport.postgres import PrivatePostgres  # noqa: E402
from simulators.devsupport.processes import CollectorProcess, ServeProcess  # noqa: E402

BROKER_CONF = "max_inflight_messages 0\nmax_queued_bytes 0\nmax_queued_messages 1000000\n"
DEVICES = ("epg-1", "inj-1", "led-1", "pemf-1")


# ------------------------------------------------------------------ the synthetic rooms (a child process)
class Room:
    def __init__(self, site: str, room: str, boot: int = 1) -> None:
        self.env = EnvelopeFactory(site, room, boot=boot)
        self.root = f"devicehub/v1/{site}/{room}"
        self.session = new_ulid()
        self.index = 0

    def event(self) -> list[tuple[str, bytes, int]]:
        self.index += 1
        data = {"event": "point_done", "index": self.index, "step": "inject", "zone": "crown",
                "point": self.index, "device": "inj-1", "delivered": {"uL": 50.0, "depth_mm": 1.0}}
        ev = self.env.encode("session.event", data, seq=self.env.next_seq(), session=self.session)
        st = self.env.encode("session.state", {"session": self.session, "state": "running", "index": self.index},
                             seq=self.env.next_seq(), session=self.session)
        return [(f"{self.root}/sessions/{self.session}/events", ev, 1), (f"{self.root}/session", st, 1)]

    def device_state(self, n: int) -> tuple[str, bytes, int]:
        dev = DEVICES[n % 4]
        return (f"{self.root}/devices/{dev}/state",
                self.env.encode("device.state", {"id": dev, "connected": True, "state": "idle", "fault": None},
                                seq=self.env.next_seq()), 1)

    def telemetry(self) -> list[tuple[str, bytes, int]]:
        return [(f"{self.root}/devices/{d}/telemetry",
                 self.env.encode("device.telemetry", {"id": d, "temperature_c": 31.5}, tseq=self.env.next_tseq(),
                                 session=self.session), 0) for d in DEVICES]


def publish(port: int, site: str, rooms: int, seconds: float, backlog: int) -> None:
    """The child: publishes and prints {"qos1": n, "qos0": n} when every PUBACK is in."""
    clients = []
    for i in range(4):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}-{uuid.uuid4().hex[:6]}",
                        protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    # each run is a new boot of every room: its seq numbers start again at 1
    all_rooms = [Room(site, f"room-{i:03d}", boot=2 if backlog else 1) for i in range(rooms)]
    infos, qos1, qos0 = [], 0, 0

    def send(i: int, items: list[tuple[str, bytes, int]]) -> None:
        nonlocal qos1, qos0
        for topic, payload, qos in items:
            info = clients[i % 4].publish(topic, payload, qos=qos)
            if qos:
                infos.append(info)
                qos1 += 1
            else:
                qos0 += 1

    if backlog:
        i = 0
        while qos1 < backlog:
            send(i, all_rooms[i % rooms].event())
            i += 1
    else:
        tick, t0, n = 0.1, time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            for i, r in enumerate(all_rooms):
                if n % 5 == i % 5:       # 2 events/s (+ their session states)
                    send(i, r.event())
                if n % 5 == (i + 2) % 5:  # telemetry 2 Hz
                    send(i, r.telemetry())
                if n % 20 == i % 20:      # a device state every 2 s
                    send(i, [r.device_state(n)])
            n += 1
            time.sleep(max(0.0, t0 + n * tick - time.monotonic()))
    for info in infos:
        info.wait_for_publish(60)
    for c in clients:
        c.disconnect()
        c.loop_stop()
    print(json.dumps({"qos1": qos1, "qos0": qos0}), flush=True)


# ------------------------------------------------------------------ two real hubs beside them
class RealHubs:
    """Two simulated rooms with ``devicehub serve`` each, running demo sessions back to back
    (started over MQTT, confirmed and prompted at the chair, as tests/hub does, with the same
    simulators/devsupport helpers) on a thread
    of their own while the synthetic rooms publish."""

    def __init__(self, port: int, site: str, tmp: Path) -> None:
        from simulators.simroom import SimulatedRoom

        self.port, self.site = port, site
        self.rooms = [SimulatedRoom(tmp / f"hub-{i}", site=site, room=f"hub-{i}", mqtt_port=port).start()
                      for i in (1, 2)]
        self.hubs = [ServeProcess(r.config_path, r.directory / "hub.log").start() for r in self.rooms]
        self.sessions = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "RealHubs":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(180)
        for h in self.hubs:
            h.terminate()
        for r in self.rooms:
            r.stop()

    async def _run(self) -> None:
        await asyncio.gather(*(self._room(r) for r in self.rooms))

    async def _room(self, room: Any) -> None:
        from simulators.devsupport.clinic import Clinic, ack_prompts, auto_trigger, console, root_of, run_to_awaiting

        await auto_trigger(room, 20)
        async with Clinic(self.port, root_of(self.site, room.room)) as clinic:
            while not self._stop.is_set():
                acks = None
                try:
                    sid = await run_to_awaiting(clinic)
                    acks = asyncio.create_task(ack_prompts(clinic, room, sid))
                    await console(room, "confirm", session=sid, by="bench")
                    await clinic.wait_state("completed", session=sid, timeout=60)
                    self.sessions += 1
                except Exception as exc:  # a session that did not end: abort it and go on
                    self.failures += 1
                    print(f"real hub {room.room}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                    with contextlib.suppress(Exception):
                        await clinic.request("abort", {})
                finally:
                    if acks is not None:
                        acks.cancel()


# ------------------------------------------------------------------ the parent
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bare:
    """A bare aiomqtt subscriber (persistent session) counting QoS 1 messages, on its own thread."""

    def __init__(self, port: int, site: str) -> None:
        self.port, self.site = port, site
        self.client_id = f"bench-bare-{uuid.uuid4().hex[:6]}"
        self.count = 0
        self.subscribed = False
        self.cpu = 0.0
        self.first = self.last = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c0 = time.thread_time()
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id, clean_start=False,
                                  properties=props, protocol=aiomqtt.ProtocolVersion.V5,
                                  max_queued_incoming_messages=0) as client:
            if not self.subscribed:  # the session keeps it; a resubscribe would wait behind the backlog
                await client.subscribe(f"devicehub/v1/{self.site}/+/#", qos=1, timeout=60)
                self.subscribed = True
            self._ready.set()
            reader = asyncio.ensure_future(self._read(client))
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            reader.cancel()
        self.cpu += time.thread_time() - c0

    async def _read(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            if m.qos:
                self.count += 1
                self.last = time.monotonic()
                if self.count == 1:
                    self.first = self.last


def bare_drain(port: int, site: str, client_id: str, expect: int, subscribe: bool) -> None:
    """The child: a bare aiomqtt subscriber on a persistent session; counts ``expect`` QoS 1
    messages and prints {"n", "seconds", "cpu_s"} from its first message to its last."""

    async def run() -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_start=False, properties=props,
                                  protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0) as client:
            if subscribe:
                await client.subscribe(f"devicehub/v1/{site}/+/#", qos=1, timeout=60)
                print("subscribed", flush=True)
                return
            n, first, cpu0 = 0, 0.0, time.process_time()
            async for m in client.messages:
                if m.qos:
                    n += 1
                    if n == 1:
                        first, cpu0 = time.perf_counter(), time.process_time()
                    if n >= expect:
                        break
            print(json.dumps({"n": n, "seconds": time.perf_counter() - first,
                              "cpu_s": time.process_time() - cpu0}), flush=True)

    asyncio.run(run())


def run_bare(port: int, site: str, client_id: str, expect: int = 0, subscribe: bool = False) -> str:
    out = subprocess.run([sys.executable, __file__, "--bare", "--port", str(port), "--site", site, "--client-id",
                          client_id, "--backlog", str(expect)] + (["--subscribe"] if subscribe else []),
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
    return out.stdout.strip().splitlines()[-1]


def run_publisher(port: int, site: str, rooms: int, seconds: float, backlog: int = 0) -> dict[str, int]:
    out = subprocess.run([sys.executable, __file__, "--publish", "--port", str(port), "--site", site,
                          "--rooms", str(rooms), "--seconds", str(seconds), "--backlog", str(backlog)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


STARTED: list[CollectorProcess] = []


def start_collector(cfg: Path, client_id: str, log: Path) -> CollectorProcess:
    collector = CollectorProcess(cfg, client_id, log)
    STARTED.append(collector)
    collector.start()
    return collector


def stop(procs: list[CollectorProcess]) -> None:
    for p in procs:  # all told first, then each awaited: they stop side by side
        if p.proc is not None:
            p.proc.terminate()
    for p in procs:
        p.terminate(30)


def count_messages(url: str) -> int:
    """The synthetic rooms' messages stored (the real hubs' are counted apart)."""
    with psycopg.connect(url) as c:
        return c.execute("SELECT count(*) FROM messages WHERE room LIKE 'room-%%'").fetchone()[0]


def wait_count(url: str, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while (have := count_messages(url)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {have} of {n} messages stored")
        time.sleep(0.05)
    return time.monotonic()


def one_setup(pg: PrivatePostgres, broker: LocalBroker, n_collectors: int, args: argparse.Namespace,
              tmp: Path) -> dict[str, Any]:
    site = "b" + uuid.uuid4().hex[:8]
    db = f"bench_{site}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    url = pg.url.rsplit("/", 1)[0] + "/" + db
    cfg = tmp / f"site-{site}.yaml"
    cfg.write_text(yaml.safe_dump({"database": url, "mqtt": {"host": "127.0.0.1", "port": broker.port},
                                   "group": f"g{site}", "sites": [site], "gap_fill_after_s": 600}))
    ids = [f"bench-collector-{site}-{i}" for i in range(n_collectors)]
    procs = [start_collector(cfg, cid, tmp / f"{cid}.log") for cid in ids]
    bare = Bare(broker.port, site)
    bare.start()
    # ---- sustained, at session rates, with two real hubs running sessions beside them
    with RealHubs(broker.port, site, tmp / f"hubs-{site}") as hubs:
        cpu0 = sum(cpu_seconds(p.proc.pid) for p in procs)
        t0 = time.monotonic()
        sent = run_publisher(broker.port, site, args.rooms, args.seconds)
        wait_count(url, sent["qos1"])
        cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu0
        hub_sessions, hub_failures = hubs.sessions, hubs.failures
    with psycopg.connect(url) as c:
        lags = [r[0] for r in c.execute("SELECT extract(epoch FROM received_at - ts)::float8 FROM messages"
                                        " WHERE room LIKE 'room-%%'")]
        hub_lags = [r[0] for r in c.execute("SELECT extract(epoch FROM received_at - ts)::float8 FROM messages"
                                            " WHERE room LIKE 'hub-%%' AND NOT historical")]
        telemetry = c.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        hub_events = c.execute("SELECT count(*) FROM session_events WHERE room LIKE 'hub-%%'").fetchone()[0]
    sustained = {"qos1_sent": sent["qos1"], "telemetry_sent": sent["qos0"], "telemetry_kept": telemetry,
                 "msgs_per_s": round(sent["qos1"] / args.seconds, 1),
                 "lag_s": summary(lags), "collector_cpu_s_per_1000": round(1000 * cpu / sent["qos1"], 4),
                 "bare_received": bare.count, "elapsed_s": round(time.monotonic() - t0, 2),
                 "real_hubs": {"sessions_completed": hub_sessions, "sessions_not_ended": hub_failures, "events_stored": hub_events,
                               "messages": len(hub_lags), "lag_s": summary(hub_lags)}}
    # ---- backlog drain: consumers away while it is published
    bare.stop()
    stop(procs)
    before = count_messages(url)
    drain_id = f"bench-drain-{site}"
    run_bare(broker.port, site, drain_id, subscribe=True)  # its session, then away
    backlog = run_publisher(broker.port, site, args.rooms, 0, backlog=args.backlog)["qos1"]
    drained = json.loads(run_bare(broker.port, site, drain_id, expect=backlog))  # a process of its own
    bare_rate = drained["n"] / max(drained["seconds"], 1e-3)  # first to last message, as for the collectors
    procs = [start_collector(cfg, cid, tmp / f"{cid}.log") for cid in ids]
    # from the collectors' ready line (subscribed; the process start, imports and migrations
    # not counted) to the last row stored: the first message's delivery counts against them
    cpu0 = sum(cpu_seconds(p.proc.pid) for p in procs)
    wait_count(url, before + backlog)
    cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu0
    with psycopg.connect(url) as c:
        # from the first batch's transaction (a collector takes queued messages before it says
        # it is subscribed, so its ready line is too late) to now, all stored
        span = c.execute("SELECT extract(epoch FROM clock_timestamp() - min(received_at))::float8 FROM messages"
                         " WHERE boot = 2 AND room LIKE 'room-%%'").fetchone()[0]
    stop(procs)
    rate = backlog / span
    return {"collectors": n_collectors, "rooms": args.rooms, "sustained": sustained,
            "backlog": {"messages": backlog, "collector_msgs_per_s": round(rate, 1),
                        "bare_subscriber_msgs_per_s": round(bare_rate, 1),
                        "bare_subscriber_cpu_s_per_1000": round(1000 * drained["cpu_s"] / max(drained["n"], 1), 4),
                        "ratio_to_bare": round(rate / bare_rate, 3),
                        "collector_cpu_s_per_1000": round(1000 * cpu / backlog, 4)}}


def copy_baseline(pg: PrivatePostgres, n: int) -> dict[str, Any]:
    room = Room("copy", "room-000")
    rows = []
    for _ in range(n // 2):
        for topic, payload, _q in room.event():
            env = json.loads(payload)
            rows.append((env["msg_id"], env["site"], env["room"], env["boot"], env["seq"], env["type"], topic,
                         env["ts"], False, env.get("session"), json.dumps(env["data"])))
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS copy_bench")
        c.execute("CREATE TABLE copy_bench (msg_id text PRIMARY KEY, site text, room text, boot int, seq bigint,"
                  " type text, topic text, ts timestamptz, historical bool, session text, data jsonb)")
        t = time.perf_counter()
        with c.transaction(), c.cursor().copy("COPY copy_bench FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        dt = time.perf_counter() - t
    return {"rows": len(rows), "rows_per_s": round(len(rows) / dt, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=20000)
    ap.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--site", help=argparse.SUPPRESS)
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--subscribe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare_drain(args.port, args.site, args.client_id, args.backlog, args.subscribe)
        return 0
    if args.publish:
        publish(args.port, args.site, args.rooms, args.seconds, args.backlog)
        return 0
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="devicehub-bench-site-"))
    pg = PrivatePostgres()
    broker = LocalBroker(extra_conf=BROKER_CONF)
    try:
        pg.init()
        broker.start()
        runs = [one_setup(pg, broker, n, args, tmp) for n in (1, 2)]
        doc = {"machine": machine_info(), "rooms": args.rooms, "seconds": args.seconds, "runs": runs,
               "copy_baseline": copy_baseline(pg, args.backlog)}
    finally:
        for collector in STARTED:  # whatever failed above, no collector outlives the run
            collector.kill()
        broker.stop()
        pg.destroy()
    path = write_results("site", doc)
    print(json.dumps(doc, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
