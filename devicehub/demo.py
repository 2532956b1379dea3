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
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from devicehub.simroom import ROOT, SimulatedRoom

DEMO_DIR = ROOT / "var" / "demo"


@contextlib.asynccontextmanager
async def _mqtt(room: Any, store: Any, boot: int, config: Any) -> AsyncIterator[None]:
    try:
        from devicehub.daemon import mqtt_frontend
    except ImportError:  # the MQTT interface is optional for the demo
        yield
        return
    async with mqtt_frontend(config, room, boot):
        yield


async def _demo(args: argparse.Namespace) -> int:
    from simulators.control import ControlClient

    from devicehub.commands.run import run_session
    from devicehub.local_broker import LocalBroker
    from devicehub.models.config import HubConfig

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
            # a new demo patient each run: the course limit (days between sessions) holds per patient
            patient = time.strftime("DEMO-%Y%m%d-%H%M%S")
            await _enrol(config, patient)
            run_args = argparse.Namespace(program="demo", patient=patient, operator="demo-technician",
                                          ack=[], param=[], preflight_done=True, yes=True, plain=args.plain,
                                          config=str(room.config_path))
            attach = None
            if broker is not None:
                attach = lambda r, s, b: _mqtt(r, s, b, config)  # noqa: E731
            return await run_session(config, run_args, {}, attach=attach)
    finally:
        if broker is not None:
            broker.stop()


async def _enrol(config: Any, patient: str) -> None:
    """The demo patient in the demo course (configs/courses/demo-course.yaml)."""
    from types import SimpleNamespace

    from devicehub.clinical.course_verbs import enrol
    from devicehub.records.async_store import AsyncRecordStore

    store = await AsyncRecordStore.open(config.store)
    try:
        view = await enrol(SimpleNamespace(store=store, current=None, config=config), patient_ref=patient,
                           course="demo-course", by="demo-technician")
        print(f"patient {patient} enrolled in {view['course']} (phase {view['phase']})")
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devicehub.demo", description=__doc__)
    p.add_argument("--dir", default=str(DEMO_DIR), help="where the demo's config, record and report go")
    p.add_argument("--plain", action="store_true", help="plain event lines instead of the live view")
    args = p.parse_args(argv)
    return asyncio.run(_demo(args))


if __name__ == "__main__":
    sys.exit(main())
