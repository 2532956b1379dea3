#!/usr/bin/env python3
"""A clinic-side client of devicehub's MQTT interface, short enough to copy.

Lists the programs, starts one, follows the session's events live (checking ``seq``
and ``data.index`` for gaps, dropping duplicates by ``msg_id``), aborts on Ctrl-C and
prints the recorded summary. MQTT 5: requests carry a Response Topic and Correlation
Data; the client keeps a persistent session (clean start false from the first
connection, session expiry one hour), so QoS 1 events missed while it is away arrive
when it returns.

    python examples/clinic_client.py --host broker.local --site clinic-a --room room-1 \\
        --program scalp-a --patient-ref P-0042 --operator "dr. a" \\
        --username clinic-app --password "$CLINIC_PASSWORD"

Exit codes: 0 completed, 2 not started, 3 aborted, 4 failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import uuid
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

FINAL = {"completed": 0, "aborted": 3, "failed": 4}
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # 88 ms -> <1 ms per request (Nagle)


class Room:
    """One room's topics, a request/reply helper and the event stream, over one client."""

    def __init__(self, client: aiomqtt.Client, site: str, room: str, client_id: str) -> None:
        self.client = client
        self.root = f"devicehub/v1/{site}/{room}"
        self.reply_topic = f"{self.root}/reply/{client_id}"
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.msg_ids: set[str] = set()
        self.seqs: dict[int, set[int]] = {}  # boot -> seq numbers seen (live and historical)
        self.last_index: dict[str, int] = {}

    async def subscribe(self) -> None:
        for topic in (self.reply_topic, f"{self.root}/status", f"{self.root}/devices/+/state",
                      f"{self.root}/session", f"{self.root}/sessions/+/events", f"{self.root}/alarms"):
            await self.client.subscribe(topic, qos=1)

    async def dispatch(self) -> None:
        """The one reader of the connection: replies to their callers, events to the queue."""
        async for message in self.client.messages:
            body = json.loads(message.payload)
            if message.topic.value == self.reply_topic:
                future = self.waiting.pop(body.get("correlation_id") or "", None)
                if future is not None and not future.done():
                    future.set_result(body)
                continue
            if body["msg_id"] in self.msg_ids:
                continue  # a QoS 1 resend or a replay of something already seen
            self.msg_ids.add(body["msg_id"])
            if "seq" in body and not message.retain:
                self.check_seq(body)
            if body["type"] == "session.event":
                self.events.put_nowait(body)
            elif body["type"] == "status" and body["data"]["state"] == "offline":
                print("hub offline: retained states are stale until it is back", file=sys.stderr)

    def check_seq(self, body: dict[str, Any]) -> None:
        seen = self.seqs.setdefault(body["boot"], set())
        if seen and body["seq"] > max(seen) + 1:
            print(f"gap: boot {body['boot']} seq {max(seen) + 1}..{body['seq'] - 1} not (yet) seen",
                  file=sys.stderr)
        seen.add(body["seq"])
        if body["historical"]:
            missing = set(range(min(seen), max(seen) + 1)) - seen
            print(f"replayed seq {body['seq']}; {len(missing)} still missing", file=sys.stderr)

    async def request(self, verb: str, payload: dict[str, Any] | None = None, *, timeout: float = 10.0,
                      attempts: int = 3) -> dict[str, Any]:
        """Send a request; on no reply repeat it with the same request_id (never acted twice)."""
        request_id = str(uuid.uuid4())
        body = json.dumps({"request_id": request_id, **(payload or {})})
        for _ in range(attempts):
            correlation = str(uuid.uuid4())
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = correlation.encode()
            future = asyncio.get_running_loop().create_future()
            self.waiting[correlation] = future
            await self.client.publish(f"{self.root}/cmd/{verb}", body, qos=1, properties=props)
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                self.waiting.pop(correlation, None)
        raise TimeoutError(f"no reply to {verb} after {attempts} attempts")

    async def next_event(self, session: str) -> dict[str, Any]:
        while True:
            event = await self.events.get()
            if event["session"] != session:
                continue
            index, last = event["data"]["index"], self.last_index.get(session, 0)
            if index != last + 1 and not event["historical"]:
                print(f"gap: events {last + 1}..{index - 1} of the session not (yet) seen", file=sys.stderr)
            self.last_index[session] = max(last, index)
            return event


def show_error(reply: dict[str, Any]) -> None:
    error = reply["error"]
    print(f"refused: {error['code']}: {error['message']}", file=sys.stderr)
    for finding in error.get("details", []):
        print(f"  {finding}", file=sys.stderr)


async def run(args: argparse.Namespace) -> int:
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 3600  # the broker keeps our session (and queues events) for an hour
    client = aiomqtt.Client(args.host, args.port, identifier=args.client_id, username=args.username,
                            password=args.password, protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                            properties=connect, socket_options=[NODELAY])
    async with client:
        room = Room(client, args.site, args.room, args.client_id)
        await room.subscribe()
        reader = asyncio.create_task(room.dispatch())
        try:
            reply = await room.request("programs")
            for p in reply["data"]:
                print(f"{p['program']:<20} v{p['version']:<6} {p['steps']:>3} steps  ~{p['est_duration_s'] / 60:.0f} min"
                      f"  {p['title']}")
            program = args.program or reply["data"][0]["program"]
            reply = await room.request("start", {"program": program, "patient_ref": args.patient_ref,
                                                 "operator": args.operator, "acknowledge": args.acknowledge})
            if not reply["ok"]:
                show_error(reply)
                return 2
            session = reply["data"]["session"]
            print(f"session {session}: {reply['data']['state']}"
                  + (" (confirm it at the chair)" if reply["data"]["state"] == "awaiting_confirmation" else ""))

            interrupted = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, interrupted.set)
            try:
                outcome = None
                while outcome is None:
                    next_event = asyncio.ensure_future(room.next_event(session))
                    stop = asyncio.ensure_future(interrupted.wait())
                    done, _ = await asyncio.wait({next_event, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if next_event not in done:
                        next_event.cancel()
                        interrupted.clear()
                        reply = await room.request("abort", {"session": session, "reason": "clinic client Ctrl-C"})
                        print(f"abort: {reply.get('data')}" + ("" if reply["ok"] else f" ({reply['error']['code']})"))
                        continue
                    stop.cancel()
                    event = next_event.result()
                    data = {k: v for k, v in event["data"].items() if k not in ("event", "index")}
                    flag = " (replayed)" if event["historical"] else ""
                    print(f"{event['ts']}  #{event['data']['index']:<4} {event['data']['event']:<18} {data}{flag}")
                    outcome = FINAL.get(event["data"]["event"])
            finally:
                loop.remove_signal_handler(signal.SIGINT)

            summary = await room.request("session", {"session": session})
            print(json.dumps(summary.get("data"), indent=2))
            return outcome
        finally:
            reader.cancel()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--client-id", default=f"clinic-{socket.gethostname()}",
                   help="fixed, so the broker keeps this client's session")
    p.add_argument("--site", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--program", help="default: the first one listed")
    p.add_argument("--patient-ref", required=True)
    p.add_argument("--operator", required=True)
    p.add_argument("--acknowledge", action="append", default=None, metavar="SOFT_LIMIT_ID",
                   help="a soft limit the operator accepts (<step id>.<parameter>); repeatable")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
