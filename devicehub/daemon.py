"""``devicehub serve``: the hub daemon of one room.

It owns the room's devices (no other process opens them), serves clinic software over
MQTT (devicehub.mqtt.frontend) and the technicians in the room over a local Unix
socket (devicehub.local_console), and keeps serving through broker outages. A clean
stop ends any running session in the safe state and publishes ``offline``; a crash
leaves the devices to their watchdogs and the record to the next start, which marks
the interrupted session ``failed`` with reason ``hub_restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from devicehub.room_api import CommandError

log = logging.getLogger(__name__)


def _tls_context(config: Any) -> ssl.SSLContext | None:
    tls = config.mqtt.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def data_dir(config: Any) -> Path:
    return Path(config.store).parent


@contextlib.asynccontextmanager
async def mqtt_frontend(config: Any, room: Any, boot: int) -> AsyncIterator[Any]:
    """Run the MQTT interface of ``room`` for the block's duration; yields the frontend."""
    from devicehub.mqtt.envelope import parse_rfc3339
    from devicehub.mqtt.frontend import MqttFrontend
    from devicehub.mqtt.idempotency import IdempotencyStore
    from devicehub.mqtt.outbox import Outbox

    directory = data_dir(config)
    outbox = Outbox(directory / "outbox.sqlite", bound=config.mqtt.outbox_max)
    idem = IdempotencyStore(directory / "requests.sqlite")

    def outbox_alarm(level: str | None) -> None:
        if level is None:
            room.alarms.clear("outbox:outbox_filling")
            room.alarms.clear("outbox:outbox_full")
        elif level == "medium":
            room.alarms.clear("outbox:outbox_full")  # back under the bound, still past 80 %
            room.alarms.raise_alarm(priority="medium", source="outbox", code="outbox_filling", latched=False,
                                    text="the MQTT outbox is past 80 % of its bound", key="outbox:outbox_filling")
        else:
            room.alarms.raise_alarm(priority="high", source="outbox", code="outbox_full", latched=False,
                                    text="the MQTT outbox is full: no new session until it drains",
                                    key="outbox:outbox_full")

    frontend = MqttFrontend(
        room, site=config.site, room_id=config.room, boot=boot, host=config.mqtt.host, port=config.mqtt.port,
        username=config.mqtt.username, password=config.mqtt.resolved_password(), tls=_tls_context(config),
        client_id=config.mqtt_client_id, keepalive=config.mqtt.keepalive, outbox=outbox, idempotency=idem,
        on_outbox_alarm=outbox_alarm, since=parse_rfc3339(room.since),  # the birth's since = status' hub.since
    )

    def outbox_check() -> CommandError | None:
        if frontend.outbox_full():
            return CommandError("outbox_full", "the outbox reached its bound; no new session until it drains")
        return None

    room.admission_checks.append(outbox_check)
    room.published_events = outbox.published_events  # a restart publishes what a crash left unpublished
    task = asyncio.get_running_loop().create_task(frontend.run(), name="mqtt")
    try:
        yield frontend
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(frontend.stop(), 10.0)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(ValueError):
            room.admission_checks.remove(outbox_check)
        for closer in (outbox.close, idem.close):
            with contextlib.suppress(Exception):
                result = closer()
                if asyncio.iscoroutine(result):
                    await result


async def serve(config: Any, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                lock: Any = None) -> int:
    """Serve the room until ``stop`` (or SIGTERM/SIGINT). The room's lock is taken here
    before anything else (raises :class:`~devicehub.control.room_lock.RoomHeld`), unless
    the caller passes the ``lock`` it already holds."""
    from devicehub.control.room_lock import RoomLock, lock_path

    own = lock is None
    if own:
        lock = RoomLock(lock_path(config))
        lock.acquire()  # before any device, any store, any socket
    try:
        return await serve_room(config, ready=ready, stop=stop)
    finally:
        if own:
            lock.release()


async def serve_room(config: Any, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                     mqtt: bool = True, options: Any = None) -> int:
    """The room, its console socket and (with ``mqtt``) its MQTT interface, until ``stop``.
    The caller holds the room's lock (:func:`serve` takes it; ``devicehub run`` with no
    daemon takes it and serves the room without MQTT for its one session)."""
    from devicehub.local_console import ConsoleServer
    from devicehub.records.hub_store import HubStore
    from devicehub.room import Room

    store = HubStore(config.store)
    boot = await store.next_boot()
    room = Room(config, store=store, boot=boot, options=options)
    room.owner = "serve" if mqtt else "run"
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with (mqtt_frontend(config, room, boot) if mqtt else contextlib.nullcontext()):
            await room.open()
            console = ConsoleServer(room, config.console_socket)
            await console.start()
            log.info("devicehub serving room %s/%s (boot %d)", config.site, config.room, boot)
            if mqtt:
                print(f"devicehub serving {config.site}/{config.room} boot {boot}; "
                      f"console socket {config.console_socket}", flush=True)
            if ready is not None:
                ready.set()
            try:
                await stop.wait()
            finally:
                await console.close()
                await room.close()
    finally:
        await store.close()
    return 0
