"""The hub's MQTT front end: publishes the room's bus and serves clinic requests.

shared/mqtt-api.md in one object. Per connection (MQTT 5, fixed client id, clean start):

1. connect with the will: retained ``offline`` status of this boot, a msg_id made for
   this connection, the connection's ts, no seq;
2. subscribe ``<root>/cmd/#`` (QoS 1, Retain Handling 2, Retain As Published);
3. publish the birth (retained ``online`` status with version, boot, since) and wait
   for its PUBACK;
4. replay the outbox in order: the original seq, ts and msg_id with ``historical:
   true`` and **retain false**, so that a replayed state never becomes the broker's
   retained value;
5. republish the current retained states (every device state, the session state, the
   alarms) as new live messages, so the retained value ends as the current one even
   when the last change was made while the broker was away;
6. go on live: bus messages in the order they came, several QoS 1 publishes in flight
   (below aiomqtt's pending threshold of 10), each leaving the outbox on its PUBACK.

Every QoS 1 message (replies excepted) takes its ``seq`` when it enters the outbox, so
the seq order is the outbox order is the wire order. Telemetry is QoS 0, never queued:
while the broker is away it is dropped, and when publishing falls behind only the
newest reading of each device is kept (``tseq`` gaps show what was thinned).

Broker outages: reconnect with backoff 0.1 s doubling to 5 s, for ever. A clean
:meth:`stop` publishes the retained ``offline`` status (through the outbox) before a
normal DISCONNECT.

This module holds the connection and the requests; the publishing side (the bus, the
outbox, telemetry) is in ``publishing.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from devicehub import __version__
from devicehub.bus import HubMessage
from devicehub.mqtt.envelope import EnvelopeFactory, dumps, rfc3339, utcnow
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox
from devicehub.mqtt.publishing import TELEMETRY_KEY, FrontendPublishing  # noqa: F401 - re-exported
from devicehub.mqtt.requests import MAX_REQUEST_BYTES, IncomingRequest, Outcome, RequestPipeline
from devicehub.mqtt.topics import Topics
from devicehub.room_api import RoomAPI

log = logging.getLogger(__name__)

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Stopped(Exception):
    """Raised inside a connection once the clean shutdown is done."""


class MqttFrontend(FrontendPublishing):
    """One room's MQTT interface. ``await run()`` serves until :meth:`stop` (or cancel)."""

    def __init__(self, room: RoomAPI, *, site: str, room_id: str, boot: int, host: str, port: int = 1883,
                 username: str | None = None, password: str | None = None, tls: ssl.SSLContext | None = None,
                 client_id: str | None = None, keepalive: int = 30, outbox: Outbox,
                 idempotency: IdempotencyStore, telemetry_min_interval_s: float = 0.0,
                 on_outbox_alarm: Callable[[str | None], None] | None = None,
                 version: str = __version__, since: datetime | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES, max_inflight: int = 6,
                 reconnect_min_s: float = 0.1, reconnect_max_s: float = 5.0,
                 publish_timeout_s: float = 15.0) -> None:
        self.room = room
        self.topics = Topics(site, room_id)
        self.envelopes = EnvelopeFactory(site, room_id, boot)
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls = tls
        self.client_id = client_id or f"devicehub-{site}-{room_id}"
        self.keepalive = keepalive
        self.outbox = outbox
        if on_outbox_alarm is not None:
            outbox.on_alarm = on_outbox_alarm
            if outbox.alarm_level is not None:  # restored already past 80 % or full
                on_outbox_alarm(outbox.alarm_level)
        self.idempotency = idempotency
        self.telemetry_min_interval_s = telemetry_min_interval_s
        self.version = version
        self.since = since or utcnow()
        self.max_inflight = max_inflight
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.publish_timeout_s = publish_timeout_s
        self.pipeline = RequestPipeline(room, self.topics, self.envelopes, idempotency, rebirth=self.rebirth,
                                        published=outbox.published_events, max_request_bytes=max_request_bytes)
        # listen from now on: nothing the room emits is missed. A listener, not a queue:
        # mapping a message only builds its envelope and queues it for the outbox writer
        # (no I/O), and a task hand-off per message was most of the frontend's cost
        self._remove_listener = room.bus.add_listener(self._on_bus)
        #: last payload data per retained topic: (type, data, session), for rebirth and reconnects
        self._retained: dict[str, tuple[str, Any, str | None]] = {}
        self._client: aiomqtt.Client | None = None
        self._online = asyncio.Event()
        self._stop_evt = asyncio.Event()
        self._stopped = asyncio.Event()
        self._requests: asyncio.Queue[IncomingRequest] = asyncio.Queue()
        self._background: set[asyncio.Task[Any]] = set()
        self._telemetry: dict[str, tuple[int, HubMessage]] = {}
        self._telemetry_evt = asyncio.Event()
        self._acked: list[int] = []  # PUBACKed outbox ids not yet removed (removed once per loop turn)
        #: publishes in flight on the current connection, oldest first: key -> monotonic start
        self._inflight: dict[int | str, float] = {}
        self._handled: list[Callable[[Outcome], None]] = []
        #: counters for diagnostics
        self.telemetry_dropped = 0
        self.replies_dropped = 0
        self.connections = 0
        self._running = False
        self._said_offline = False

    # ---- what the room and the console use ------------------------------------------
    def outbox_full(self) -> bool:
        """True when the outbox reached its bound: the room refuses ``start`` with ``outbox_full``."""
        return self.outbox.full()

    @property
    def connected(self) -> bool:
        """Connected, subscribed and born (birth acknowledged)."""
        return self._online.is_set()

    async def wait_online(self, timeout: float | None = None) -> None:
        """Wait for the birth of a connection to be acknowledged."""
        await asyncio.wait_for(self._online.wait(), timeout)

    def on_request_handled(self, callback: Callable[[Outcome], None]) -> None:
        """Call ``callback(outcome)`` after each request (for logs, the console, tests)."""
        self._handled.append(callback)

    def birth_data(self) -> dict[str, Any]:
        return {"state": "online", "version": self.version, "boot": self.envelopes.boot,
                "since": rfc3339(self.since)}

    def rebirth(self) -> dict[str, Any]:
        """Republish status, every device state, the session state and the alarms (new seq)."""
        status = self._retained.get(self.topics.status)
        self._enqueue(self.topics.status, "status", status[1] if status else self.birth_data(), retain=True)
        self.room.republish()  # the room's own current states, whatever this side has seen
        return {}

    # ---- life cycle -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until :meth:`stop`; survives broker outages (reconnects with backoff)."""
        self._running = True
        tasks = [asyncio.create_task(self._request_worker(), name="mqtt-requests")]
        backoff = self.reconnect_min_s
        try:
            while not self._stop_evt.is_set():
                born_before = self.connections
                try:
                    await self._serve_connection()
                except _Stopped:
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker away, refused, protocol trouble: try again
                    log.warning("MQTT connection to %s:%s: %s", self.host, self.port, exc)
                if self._stop_evt.is_set():
                    break
                if self.connections != born_before:
                    backoff = self.reconnect_min_s
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop_evt.wait(), backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
            if not self._said_offline:  # stopped while away: the offline status waits in the outbox
                self._enqueue(self.topics.status, "status", {"state": "offline"}, retain=True)
        finally:
            self._online.clear()
            for task in tasks + list(self._background):
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            self._remove_listener()
            self._running = False
            self._stopped.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Clean shutdown: flush the outbox (up to ``timeout``), publish retained ``offline``, disconnect."""
        self._stop_timeout = timeout
        self._stop_evt.set()
        if self._running:
            await self._stopped.wait()

    # ---- one connection ---------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        will = self.envelopes.will()
        return aiomqtt.Client(
            self.host, self.port, username=self.username, password=self.password, identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, keepalive=self.keepalive,
            will=aiomqtt.Will(self.topics.status, dumps(will), qos=1, retain=True),
            tls_context=self.tls, socket_options=[NODELAY], timeout=10,
            max_inflight_messages=max(20, self.max_inflight + 10))

    async def _serve_connection(self) -> None:
        client = self._make_client()  # a new client per connection: paho keeps no stale in-flight state
        async with client:
            self._client = client
            self.connections += 1
            try:
                await client.subscribe(self.topics.cmd_filter, options=SubscribeOptions(
                    qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read_commands(client))
                    tg.create_task(self._publish_outbox(client, tg))
                    tg.create_task(self._publish_telemetry(client))
                    tg.create_task(self._watch_stop(client))
                    tg.create_task(self._watch_publishes())
            except asyncio.CancelledError:
                # shutdown by cancellation: still say offline (a normal DISCONNECT drops the will)
                if self.connected:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(self._say_offline(client, flush=False), 1.0)
                raise
            except BaseExceptionGroup as group:
                if group.subgroup(_Stopped) is not None:
                    raise _Stopped from None
                raise
            finally:
                self._online.clear()
                self._client = None

    async def _watch_publishes(self) -> None:
        """End the connection when a publish has waited longer than ``publish_timeout_s``.

        Publishes run without aiomqtt's own per-call timeout, which costs a task and a
        timer per message; this one loop watches the oldest publish in flight instead. A
        dead link is found by the keepalive; this finds a broker that keeps the link up
        but never acknowledges. The connection is then renewed and the outbox replayed.
        """
        period = min(1.0, self.publish_timeout_s / 4)
        inflight = self._inflight
        while True:
            await asyncio.sleep(period)
            if inflight:
                waited = time.monotonic() - next(iter(inflight.values()))  # the oldest: first in
                if waited > self.publish_timeout_s:
                    raise aiomqtt.MqttError(f"a publish unacknowledged for {waited:.1f} s "
                                            f"(limit {self.publish_timeout_s} s)")

    async def _watch_stop(self, client: aiomqtt.Client) -> None:
        await self._stop_evt.wait()
        await self._say_offline(client, flush=True)
        raise _Stopped

    async def _say_offline(self, client: aiomqtt.Client, *, flush: bool) -> None:
        timeout = getattr(self, "_stop_timeout", 5.0)
        if flush:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.outbox.wait_empty(), timeout)
        entry_id = self._enqueue(self.topics.status, "status", {"state": "offline"}, retain=True)
        self._said_offline = True
        if flush and len(self.outbox) == 1:
            await self.outbox.wait_empty()  # the publisher sends it
        else:  # send it now, whatever is still queued (that waits for the next boot)
            await self.outbox.wait_committed(entry_id)
            entry = next(e for e in await self.outbox.read(entry_id - 1, 1) if e.id == entry_id)
            await client.publish(entry.topic, entry.payload, qos=1, retain=True, timeout=timeout)
            self.outbox.remove([entry_id])

    # ---- requests ------------------------------------------------------------------------
    async def _read_commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            props = message.properties
            response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
            correlation = getattr(props, "CorrelationData", None) if props is not None else None
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            req = IncomingRequest(topic=message.topic.value, payload=payload, retain=bool(message.retain),
                                  response_topic=response_topic, correlation_data=correlation)
            if self.topics.verb_of(req.topic) == "abort":
                # an abort never waits behind another request, nor for this connection to live
                task = asyncio.create_task(self._handle(req), name="mqtt-abort")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            else:
                self._requests.put_nowait(req)

    async def _request_worker(self) -> None:
        while True:
            req = await self._requests.get()
            await self._handle(req)

    async def _handle(self, req: IncomingRequest) -> None:
        try:
            outcome = await self.pipeline.handle(req)
        except Exception:
            log.exception("request on %s failed", req.topic)
            return
        if outcome.reply is not None and outcome.reply_topic is not None:
            await self._send_reply(outcome)
        for callback in self._handled:
            try:
                callback(outcome)
            except Exception:
                log.exception("request callback failed")

    async def _send_reply(self, outcome: Outcome) -> None:
        """QoS 1, not retained, live only: with no connection the reply is dropped."""
        client = self._client
        if client is None or not self.connected:
            self.replies_dropped += 1
            return
        props = None
        if outcome.correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = outcome.correlation_data
        try:
            await client.publish(outcome.reply_topic, dumps(outcome.reply), qos=1, retain=False,  # type: ignore[arg-type]
                                 properties=props, timeout=self.publish_timeout_s)
        except Exception as exc:
            self.replies_dropped += 1
            log.warning("reply to %s not sent: %s", outcome.reply_topic, exc)
