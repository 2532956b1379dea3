"""Regression test of a soak finding: the soak's follower lost messages at a broker restart
(17 missing seq), which the soak counted against the hub. Two causes, both in the soak:
mosquitto could not write its persistence database in a private directory (the
follower's persistent session did not survive), and an asyncio client drops the
messages it received but had not handed over when its connection dies. The follower
now records each message inside paho's callback, before paho acknowledges it."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest

from bench.soaklib.clients import Follower
from bench.soaklib.procs import Broker

pytestmark = [pytest.mark.soak, pytest.mark.timeout(120)]


async def test_the_follower_sees_every_message_across_broker_restarts() -> None:
    broker = Broker(Path(tempfile.mkdtemp(prefix="soak-follower-test-")))
    broker.start()
    follower = Follower(broker.port, "t/room")
    total = 600
    try:
        await follower.start()
        published = 0

        def publish() -> None:  # each message on a connection of its own, again until PUBACKed
            nonlocal published
            while published < total:
                n = published + 1
                body = {"type": "session.event", "boot": 1, "seq": n, "msg_id": f"m{n}"}
                try:
                    mqtt_publish.single("t/room/e", json.dumps(body), qos=1, hostname="127.0.0.1",
                                        port=broker.port, client_id=f"soak-test-pub-{n}")
                    published = n
                except (OSError, mqtt.WebsocketConnectionError, ValueError):
                    time.sleep(0.05)  # the broker is away: the same message again once back

        task = asyncio.create_task(asyncio.to_thread(publish))
        for at in (120, 280, 440):
            while published < at:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(broker.restart, 0.3)
        await asyncio.wait_for(task, 60)
        while len({m.body["msg_id"] for m in follower.messages}) < total:
            await asyncio.sleep(0.05)  # bounded by the test's timeout
        report = follower.seq_report()
        assert (report["gaps"], report["duplicates"], report["messages"]) == (0, 0, total), report
        assert follower.session_present[1:] == [True] * 3  # the session outlived each restart
    finally:
        await follower.stop()
        broker.stop()
