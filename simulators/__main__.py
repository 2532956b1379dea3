"""``python -m simulators epg|inj|led|pemf|room ...``

Prints exactly one JSON line per device on start (flushed), then serves until SIGTERM
or SIGINT:
``{"device": "epg", "endpoint": "socket://127.0.0.1:40123", "control": "127.0.0.1:40124"}``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from simulators.registry import SIMULATORS
from simulators.server import ServedSimulator, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators", description="Device simulators of devicehub")
    p.add_argument("kind", choices=[*SIMULATORS, "room"], help="device type, or 'room' for all of a config")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="device port (0: the OS chooses)")
    p.add_argument("--control-port", type=int, default=0, help="control port (0: the OS chooses)")
    p.add_argument("--pty", action="store_true", help="serial devices: serve on a pseudo-terminal")
    p.add_argument("--rtu-pty", action="store_true", help="Modbus devices: Modbus RTU on a pseudo-terminal")
    p.add_argument("--unit", type=int, default=None, help="Modbus unit id (LED 1, PEMF 2 by default)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the physics (scatter, noise)")
    p.add_argument("--config", type=Path, help="room: YAML listing the devices")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_room(path: Path) -> list[dict[str, Any]]:
    import yaml

    doc = yaml.safe_load(path.read_text()) or {}
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(devices, list) or not devices:
        raise SystemExit(f"{path}: expected a 'devices' list")
    out = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict) or dev.get("type") not in SIMULATORS:
            raise SystemExit(f"{path}: devices[{i}].type must be one of {', '.join(SIMULATORS)}")
        out.append({**dev, "host": dev.get("host", doc.get("host", "127.0.0.1"))})
    return out


async def _main(args: argparse.Namespace) -> int:
    served: list[ServedSimulator] = []
    try:
        if args.kind == "room":
            if args.config is None:
                raise SystemExit("room needs --config")
            for dev in load_room(args.config):
                s = await serve(
                    dev["type"], host=dev["host"], port=int(dev.get("port", 0)),
                    control_port=int(dev.get("control_port", 0)), pty=bool(dev.get("pty", False)),
                    rtu_pty=bool(dev.get("rtu_pty", False)), unit=dev.get("unit"), seed=dev.get("seed"),
                )
                served.append(s)
                print(json.dumps(s.announcement(dev.get("id"))), flush=True)
        else:
            s = await serve(
                args.kind, host=args.host, port=args.port, control_port=args.control_port,
                pty=args.pty, rtu_pty=args.rtu_pty, unit=args.unit, seed=args.seed,
            )
            served.append(s)
            print(json.dumps(s.announcement()), flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for s in served:
            await s.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        return asyncio.run(_main(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
