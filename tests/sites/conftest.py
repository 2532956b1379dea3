"""Fixtures of the site tests: a private PostgreSQL per test session (a database per
test), a private Mosquitto that lets a collector hold many unacknowledged messages, the
collector as a ``devicehub collect`` process (simulators/devsupport), and waiting on the database.

Every process is stopped at the end, also when a test fails (fixtures' finally blocks;
the collector processes are killed by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
import yaml
from paho.mqtt.subscribeoptions import SubscribeOptions
from psycopg.rows import dict_row

from simulators.devsupport.postgres import PrivatePostgres
from simulators.devsupport.processes import CollectorProcess
from simulators.devsupport.proxy import CutProxy
from simulators.local_broker import LocalBroker

ROOT = Path(__file__).resolve().parents[2]
#: the broker a collector needs: unacknowledged messages are many while a batch commits
SITE_BROKER_CONF = "max_inflight_messages 0\nmax_queued_bytes 0\n"

_dbs = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def database(postgres: PrivatePostgres) -> Iterator[str]:
    """A fresh database of the private server for one test; its URL."""
    name = f"t{next(_dbs)}_{uuid.uuid4().hex[:6]}"
    if not postgres.running():
        postgres.start()
    with psycopg.connect(postgres.url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    if not postgres.running():
        postgres.start()


@pytest.fixture(scope="session")
def site_broker() -> Iterator[LocalBroker]:
    with LocalBroker(extra_conf=SITE_BROKER_CONF) as b:
        yield b


def write_site_config(path: Path, *, database: str, port: int, site: str, group: str | None = None,
                      **extra: Any) -> Path:
    doc = {"database": database, "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
           "group": group or f"g{uuid.uuid4().hex[:8]}", "sites": [site], "rooms": ["+"],
           "gap_fill_after_s": 1.0, "gap_check_every_s": 0.3, "events_timeout_s": 5.0}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.asynccontextmanager
async def collectors(config: Path, directory: Path) -> AsyncIterator[Callable[[str], CollectorProcess]]:
    """``make(client_id)`` gives a collector process (not started); all are stopped at the end."""
    made: list[CollectorProcess] = []

    def make(client_id: str) -> CollectorProcess:
        c = CollectorProcess(config, client_id, directory / f"collector-{client_id}.log")
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await asyncio.to_thread(c.terminate)


@contextlib.asynccontextmanager
async def withholder(port: int, group: str, site: str) -> AsyncIterator[list[dict[str, Any]]]:
    """A member of the collectors' shared subscription (``group``) that takes its share of the
    site's session events and stores nothing (a rogue or broken consumer); yields what it took."""
    withheld: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"hole-{uuid.uuid4().hex[:6]}",
                              protocol=aiomqtt.ProtocolVersion.V5) as hole:
        await hole.subscribe(f"$share/{group}/devicehub/v1/{site}/+/sessions/+/events",
                             options=SubscribeOptions(qos=1))

        async def swallow() -> None:
            async for m in hole.messages:
                withheld.append(json.loads(m.payload))

        task = asyncio.create_task(swallow())
        try:
            yield withheld
        finally:
            task.cancel()


def query(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row, connect_timeout=3) as c:
        return c.execute(sql, params).fetchall()


async def until_db(url: str, cond: Callable[[Callable[..., list[dict[str, Any]]]], bool], *,
                   timeout: float = 60.0, what: str = "the database") -> None:
    """Await a condition on the database (polled; a deadline, not a timing claim)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if await asyncio.to_thread(cond, lambda sql, *p: query(url, sql, *p)):
                return
        except psycopg.OperationalError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s ({last})")
        await asyncio.sleep(0.1)  # poll interval


def wire_events(clinic: Any, sid: str) -> dict[int, dict[str, Any]]:
    """index -> the event envelope a subscriber saw (first copy per msg_id)."""
    out: dict[int, dict[str, Any]] = {}
    for e in clinic.events(sid):
        out.setdefault(e["data"]["index"], e)
    return out


def db_events(url: str, sid: str) -> list[dict[str, Any]]:
    return query(url, "SELECT idx, event, boot, seq, msg_id, source, data, ts FROM session_events"
                      " WHERE session = %s ORDER BY idx", sid)


def assert_same_events(url: str, clinic: Any, sid: str, *, filled_ok: bool = False) -> list[dict[str, Any]]:
    """The database holds exactly the session's events the subscriber saw: each once, same data,
    same boot and seq (and msg_id, unless filled through ``events``)."""
    wire = wire_events(clinic, sid)
    rows = db_events(url, sid)
    assert [r["idx"] for r in rows] == sorted(wire), (sorted(wire), [r["idx"] for r in rows])
    for r in rows:
        env = wire[r["idx"]]
        assert r["data"] == env["data"] and r["boot"] == env["boot"] and r["seq"] == env["seq"], (r, env)
        if r["source"] == "mqtt":
            assert r["msg_id"] == env["msg_id"]
        else:
            assert filled_ok, f"event {r['idx']} was filled through `events`"
    return rows


class LinkProxy(CutProxy):
    """A TCP link to ``port`` that can be cut: :meth:`cut` aborts every connection and
    refuses new ones until :meth:`restore` (a bridge's network link going down and up)."""

    def cut(self, *, block: bool = True) -> None:
        super().cut(block=block)


def bridge_conf(site: str, room: str, port: int) -> str:
    """configs/mosquitto/bridge.conf for a private test: plain TCP to ``port``, no certificates."""
    lines = []
    for line in (ROOT / "configs/mosquitto/bridge.conf").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("bridge_cafile", "bridge_certfile",
                                                                 "bridge_keyfile")):
            continue
        if line.startswith("address "):
            line = f"address 127.0.0.1:{port}"
        elif line.startswith("restart_timeout"):
            line = "restart_timeout 1 1"
        lines.append(line.replace("clinic-a", site).replace("room-1", room))
    return "\n".join(lines) + "\n"
