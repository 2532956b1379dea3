"""The hub's in-process message bus: the runner publishes, observers (MQTT, console) follow.

Publishing never blocks and never fails the publisher: telemetry observes the runner
and must not slow it. Each subscriber has its own queue. A *lossless* subscriber gets
every message; a *lossy* one (a console view) has a bounded queue from which the oldest
telemetry is dropped when it falls behind, never session events, states or alarms. A
*listener* (the MQTT frontend) is called synchronously for every message; it must be
cheap and do no I/O (the frontend only builds the envelope and queues it for its outbox
writer thread), and its exceptions are logged, never raised to the publisher.

Message kinds follow shared/mqtt-api.md's ``type`` names: ``status``, ``device.state``,
``device.telemetry``, ``session.state``, ``session.event``, ``alarms``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devicehub.timefmt import rfc3339, utcnow  # noqa: F401 - re-exported for the bus's users

log = logging.getLogger(__name__)

KINDS = ("status", "device.state", "device.telemetry", "session.state", "session.event", "alarms")


@dataclass(frozen=True)
class HubMessage:
    kind: str
    data: dict[str, Any]
    session: str | None = None
    device: str | None = None
    ts: datetime = field(default_factory=utcnow)


class Subscription:
    def __init__(self, bus: "Bus", lossy: bool, maxsize: int) -> None:
        self._bus = bus
        self.lossy = lossy
        self.maxsize = maxsize
        self._items: collections.deque[HubMessage] = collections.deque()
        self._event = asyncio.Event()
        self.dropped = 0

    def _put(self, msg: HubMessage) -> None:
        if self.lossy and len(self._items) >= self.maxsize:
            # thin telemetry first; keep everything else
            for i, old in enumerate(self._items):
                if old.kind == "device.telemetry":
                    del self._items[i]
                    self.dropped += 1
                    break
            else:
                if msg.kind == "device.telemetry":
                    self.dropped += 1
                    return
        self._items.append(msg)
        self._event.set()

    def get_nowait(self) -> HubMessage | None:
        if self._items:
            return self._items.popleft()
        return None

    async def get(self) -> HubMessage:
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> HubMessage:
        return await self.get()

    def close(self) -> None:
        self._bus._subs.discard(self)


class Bus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[HubMessage], None]] = []

    def publish(self, msg: HubMessage) -> None:
        for sub in list(self._subs):
            sub._put(msg)
        for fn in list(self._listeners):
            try:
                fn(msg)
            except Exception:  # noqa: BLE001 - an observer never breaks the publisher
                log.exception("bus listener failed on %s", msg.kind)

    def add_listener(self, fn: Callable[[HubMessage], None]) -> Callable[[], None]:
        """Call ``fn(msg)`` synchronously for every message; returns the remover.

        For observers whose handling is cheap and does no I/O (the MQTT frontend only
        builds the envelope and queues it for its outbox writer): no task hand-off per
        message. Anything slower subscribes with a queue instead.
        """
        self._listeners.append(fn)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(fn)

        return remove

    def emit(self, kind: str, data: dict[str, Any], *, session: str | None = None, device: str | None = None) -> HubMessage:
        msg = HubMessage(kind, data, session=session, device=device)
        self.publish(msg)
        return msg

    def subscribe(self, *, lossy: bool = False, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, lossy, maxsize)
        self._subs.add(sub)
        return sub

    @contextlib.asynccontextmanager
    async def subscription(self, *, lossy: bool = False, maxsize: int = 1000) -> AsyncIterator[Subscription]:
        sub = self.subscribe(lossy=lossy, maxsize=maxsize)
        try:
            yield sub
        finally:
            sub.close()
