"""Who talks to the hub in the soak: clinic software over MQTT (a persistent follower of
``<root>/#`` and a requester), the technician on the console socket, and the world on
the simulators' control ports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devicehub.local_console import ConsoleClient
from drivers.registry import create_driver
from simulators.control import ControlClient
from simulators.devsupport.clinic import NODELAY, reply_properties


#: what the follower keeps of each message, in this order after its arrival and topic
ENVELOPE = ("type", "boot", "seq", "msg_id", "historical", "session")


def seen(topic: str, body: Any, at: float | None = None) -> tuple[Any, ...]:
    """One message as the follower keeps it: ``(at, topic, *ENVELOPE, event)``, a plain
    tuple of strings and numbers. The garbage collector stops tracking such a tuple, so a
    follower of 100 000 messages adds nothing to a full collection; kept as the message's
    dict, a full collection of the soak's process took 70-150 ms, able to hold a stop's
    send or the proxies that carry the hub's off commands (bench/README, the 01:15 hour)."""
    b = body if isinstance(body, dict) else {}
    data = b.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    return (time.monotonic() if at is None else at, topic,
            *(_atom(b.get(k)) for k in ENVELOPE), _atom(event))


def _atom(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float)) else str(v)


class Follower:
    """Clinic software following every session: a persistent MQTT 5 session (clean start
    false, a session expiry), one fixed client id, reconnecting by itself after an outage.

    paho itself, on its own thread: a message is recorded inside ``on_message``, before
    paho acknowledges it, so none is acknowledged and then lost with a dropped
    connection (an asyncio client's queue of received messages dies with its connection).

    ``connected`` is set when the broker has granted the subscription (SUBACK), not at
    CONNACK: a message published between the two went to nobody, since the first
    session has no subscription yet (the follower test's flake of 4 December, run 10;
    caught by its post-mortem on 5 December: message 1 missing, published before the
    broker had the SUBSCRIBE). ``start`` returns then.
    """

    def __init__(self, port: int, root: str) -> None:
        self.port = port
        self.root = root
        self.client_id = f"soak-follower-{uuid.uuid4().hex[:6]}"
        self.messages: list[tuple[Any, ...]] = []  # seen(): (at, topic, *ENVELOPE, event)
        self.connects = 0
        self.session_present: list[bool] = []
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()  # set on the loop after each message is kept
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = lambda *a, **k: self._loop.call_soon_threadsafe(self.connected.clear)
        c.reconnect_delay_set(0.05, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect_async("127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props)
        c.loop_start()
        self._client = c
        await asyncio.wait_for(self.connected.wait(), 15)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            return
        self.session_present.append(bool(getattr(flags, "session_present", False)))
        client.subscribe(f"{self.root}/#", qos=1)  # again on a kept session: harmless
        self.connects += 1

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons or []):
            return  # refused: not following; start() says so by timing out
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(m.payload)
        except ValueError:
            body = None
        self.messages.append(seen(m.topic, body))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)

    def msg_ids(self) -> set[str]:
        return {m[5] for m in self.messages if m[5] is not None}

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds, looked at again as each message arrives (no polling)."""
        while not done():
            self._arrived.clear()
            if done():
                return
            await self._arrived.wait()

    async def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def seq_report(self) -> dict[str, Any]:
        """Invariant 4: per boot, after msg_id de-duplication, no gap and no repeated seq."""
        by_boot: dict[int, dict[int, str]] = {}
        ids: set[str] = set()
        duplicates = 0
        for _at, _topic, kind, boot, seq, mid, *_rest in self.messages:
            if seq is None or kind in ("reply", "device.telemetry"):
                continue
            if mid in ids:
                continue  # a QoS 1 resend or a retained copy: the same message
            ids.add(mid)
            seqs = by_boot.setdefault(int(boot if boot is not None else -1), {})
            if seq in seqs:
                duplicates += 1  # another message with the same seq in the same boot
            seqs[seq] = mid
        gaps = 0
        gap_list: list[dict[str, int]] = []
        for boot, seqs in by_boot.items():
            ordered = sorted(seqs)
            for a, b2 in zip(ordered, ordered[1:]):
                if b2 != a + 1:
                    gaps += b2 - a - 1
                    gap_list.append({"boot": boot, "after": a, "missing": b2 - a - 1})
        return {"boots": len(by_boot), "messages": len(ids), "gaps": gaps, "duplicates": duplicates,
                "gap_at": gap_list[:20], "connects": self.connects}

    def dump(self, path: Path) -> None:
        """Every message seen (arrival, topic, envelope without data), one JSON line each: for a gap's post-mortem."""
        with path.open("w") as fh:
            for at, topic, *envelope, event in self.messages:
                fh.write(json.dumps({"at": round(at, 6), "topic": topic, **dict(zip(ENVELOPE, envelope)),
                                     "event": event}) + "\n")


class Clinic:
    """Clinic software sending requests (MQTT 5 response topic); ``request`` returns the
    reply, or None when none came (the broker or the hub away): the caller decides again."""

    _n = itertools.count(1)

    def __init__(self, port: int, root: str) -> None:
        self.port = port
        self.root = root
        self.client_id = f"soak-clinic-{uuid.uuid4().hex[:6]}"
        self._client: aiomqtt.Client | None = None
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 15)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id,
                                          protocol=aiomqtt.ProtocolVersion.V5, socket_options=[NODELAY],
                                          timeout=5, max_queued_incoming_messages=0) as c:
                    await c.subscribe(f"{self.root}/reply/{self.client_id}/#", qos=1)
                    self._client = c
                    self.connected.set()
                    async for m in c.messages:
                        fut = self._replies.pop(m.topic.value, None)
                        if fut is not None and not fut.done():
                            with contextlib.suppress(ValueError):
                                fut.set_result(json.loads(m.payload))
            except aiomqtt.MqttError:
                self._client = None
                self.connected.clear()
                await asyncio.sleep(0.1)

    async def request(self, verb: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        n = next(self._n)
        topic = f"{self.root}/reply/{self.client_id}/{n}"
        props = reply_properties(topic, f"c{n}".encode())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[topic] = fut
        payload = {"request_id": f"soak-{uuid.uuid4().hex}", **body}
        try:
            assert self._client is not None
            await self._client.publish(f"{self.root}/cmd/{verb}", json.dumps(payload), qos=1,
                                       properties=props, timeout=timeout)
            return await asyncio.wait_for(fut, timeout)
        except (aiomqtt.MqttError, asyncio.TimeoutError, AssertionError):
            return None
        finally:
            self._replies.pop(topic, None)


class Technician:
    """The technician at the chair: one console connection per request (the hub may restart)."""

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path

    async def request(self, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(timeout):
                async with ConsoleClient(self.path) as c:
                    return await c.request(op, **fields)
        except (OSError, ConnectionError, TimeoutError, ValueError):
            return None


class World:
    """The simulators' control ports: the patient, the technician's hand, failing parts;
    and the service technician who clears a device's latched fault on the device itself."""

    def __init__(self, controls: dict[str, str], endpoints: dict[str, str]) -> None:
        self.controls = controls
        self.endpoints = endpoints  # the devices' own ports (not through the proxies)

    async def clear_latched(self, dev: str) -> bool:
        """The device's own clear command, on a connection of the soak's own. True when it took."""
        drv = create_driver(dev.split("-")[0], self.endpoints[dev], device_id=f"{dev}-service")
        try:
            async with asyncio.timeout(5):
                await drv.connect()
                await drv.clear_fault()
            return True
        except Exception:  # noqa: BLE001 - the cause may still be there; the caller tries again
            return False
        finally:
            with contextlib.suppress(Exception):
                await drv.close()

    async def call(self, dev: str, op: str, **fields: Any) -> dict[str, Any]:
        async with ControlClient(self.controls[dev]) as c:
            return await c.request({"op": op, **fields})

    async def states(self) -> dict[str, dict[str, Any]]:
        async def one(dev: str) -> tuple[str, dict[str, Any]]:
            return dev, await self.call(dev, "state")

        return dict(await asyncio.gather(*(one(d) for d in self.controls)))
