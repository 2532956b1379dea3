"""``make demo``: a whole session of every device type on a simulated room, watched live.

Starts the four simulators and a private Mosquitto (when installed), runs the ``demo``
program with the injector's simulated technician pulling the trigger, shows the
technician's live view, and prints where the session record and report are. With the
broker up, the hub publishes the whole session on MQTT as shared/mqtt-api.md says;
``mosquitto_sub -p PORT -t 'devicehub/#' -v`` beside it shows the traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from simulators.simroom import ROOT, SimulatedRoom

DEMO_DIR = ROOT / "var" / "demo"


async def _demo(args: argparse.Namespace) -> int:
    from devicehub.commands.run import run_through
    from devicehub.control.room_lock import RoomLock, lock_path
    from devicehub.daemon import serve_room
    from devicehub.models.config import HubConfig
    from simulators.control import ControlClient
    from simulators.local_broker import LocalBroker

    broker = None
    try:
        broker = LocalBroker().start()
        print(f"private Mosquitto on 127.0.0.1:{broker.port}  (watch: mosquitto_sub -p {broker.port} -t 'devicehub/#' -v)")
    except RuntimeError as exc:
        print(f"no MQTT broker for the demo ({exc}); running without MQTT")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with SimulatedRoom(directory, mqtt_port=broker.port if broker else None, remote_confirmation=True) as room:
            for dev_id, handle in room.sims.items():
                print(f"simulator {dev_id}: {handle.endpoint} (control {handle.control})")
            async with ControlClient(room.sims["inj-1"].control) as c:
                await c.call("auto_trigger", rate_hz=4.0)  # the simulated technician
            config = HubConfig.load(room.config_path)
            # the room's daemon, as a clinic runs it (MQTT when the broker is up), and the
            # technician's devicehub run through its console socket
            with RoomLock(lock_path(config), command="make demo (devicehub serve)"):
                ready, stop = asyncio.Event(), asyncio.Event()
                daemon = asyncio.ensure_future(serve_room(config, ready=ready, stop=stop, mqtt=broker is not None))
                waiter = asyncio.ensure_future(ready.wait())
                await asyncio.wait([daemon, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if daemon.done():
                    return daemon.result()
                try:
                    # a new demo patient each run: the course limit (days between sessions) holds per patient
                    patient = time.strftime("DEMO-%Y%m%d-%H%M%S")
                    await _enrol(config.console_socket, patient)
                    run_args = argparse.Namespace(program="demo", patient=patient, operator="demo-technician",
                                                  ack=[], param=[], preflight_done=True, yes=True, plain=args.plain,
                                                  config=str(room.config_path))
                    return await run_through(config.console_socket, run_args, {}, config.store)
                finally:
                    stop.set()
                    await daemon
    finally:
        if broker is not None:
            broker.stop()


async def _enrol(socket: Any, patient: str) -> None:
    """The demo patient in the demo course (configs/courses/demo-course.yaml), through the daemon."""
    from devicehub.local_console import ConsoleClient

    async with ConsoleClient(socket) as c:
        reply = await c.request("enrol", patient_ref=patient, course="demo-course", by="demo-technician")
    if reply.get("ok"):
        print(f"patient {patient} enrolled in {reply['data']['course']} (phase {reply['data']['phase']})")
    else:
        print(f"patient {patient} not enrolled: {reply.get('error')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.demo", description=__doc__)
    p.add_argument("--dir", default=str(DEMO_DIR), help="where the demo's config, record and report go")
    p.add_argument("--plain", action="store_true", help="plain event lines instead of the live view")
    args = p.parse_args(argv)
    return asyncio.run(_demo(args))


if __name__ == "__main__":
    sys.exit(main())
