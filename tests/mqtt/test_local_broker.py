"""The tests' and the demo's private Mosquitto keeps serving however much it logs.

Regression test of a finding while chasing the follower test's flake: LocalBroker gave
mosquitto's stderr to a pipe nobody read. Once 64 KiB of log had gone into it, mosquitto
blocked in write() and served no one (a broker of a long test, a bridge that cannot
reach its peer, or ``log_type all`` as a post-mortem would want)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from simulators.local_broker import LocalBroker

pytestmark = pytest.mark.timeout(60)


async def test_a_broker_that_logs_everything_still_delivers_every_message() -> None:
    total = 800  # a few hundred bytes of log each: well past a pipe's 64 KiB
    with LocalBroker(extra_conf="log_type all\n") as broker:
        async with aiomqtt.Client(broker.host, broker.port, identifier="lb-sub") as sub, \
                aiomqtt.Client(broker.host, broker.port, identifier="lb-pub") as pub:
            await sub.subscribe("lb/#", qos=1)
            for n in range(total):
                await pub.publish("lb/x", str(n), qos=1)
            got: list[int] = []
            async for m in sub.messages:
                got.append(int(m.payload))
                if len(got) == total:
                    break
        assert got == list(range(total))
        logged = broker.log_path.read_text() if broker.log_path else ""
        assert logged.count("Received PUBLISH from lb-pub") == total  # the log is kept, in full
