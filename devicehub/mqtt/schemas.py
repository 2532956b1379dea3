"""Writes the JSON Schemas of the MQTT interface from devicehub/mqtt/payloads/.

    python -m devicehub.mqtt.schemas docs/schemas          # write
    python -m devicehub.mqtt.schemas docs/schemas --check  # exit 1 if they differ

One file per message or payload, all named ``mqtt-*.json`` so other schemas can live in
the same folder. A test checks that the committed files equal what this writes, so the
documents cannot drift from the code that validates requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from devicehub.mqtt.payloads import (PUBLISHED_DATA_MODELS, REPLY_DATA_MODELS, REQUEST_MODELS, SESSION_EVENT_MODELS,
                                     Alarm, Envelope, ErrorInfo, LimitFinding, Reply)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PREFIX = "mqtt-"


def _schema(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    body = model.model_json_schema()
    body.pop("title", None)
    return {"$schema": DRAFT, "$id": f"{PREFIX}{title}.json", "title": title, "description": description, **body}


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema."""
    out: dict[str, dict[str, Any]] = {}

    def add(model: type[BaseModel], title: str, description: str) -> None:
        out[f"{PREFIX}{title}.json"] = _schema(model, title, description)

    add(Envelope, "envelope", "Envelope of every message the hub publishes under <root>, replies excepted")
    add(Reply, "reply", "A reply on <root>/reply/<client_id>/...: no seq, no tseq")
    add(ErrorInfo, "error", "The error member of a refused request's reply")
    add(LimitFinding, "limit-finding", "One soft or hard limit finding in error.details")
    add(Alarm, "alarm", "One active alarm")
    for verb, model in REQUEST_MODELS.items():
        add(model, f"request-{verb}", f"Payload of a request on <root>/cmd/{verb}")
    for verb, model in REPLY_DATA_MODELS.items():
        add(model, f"reply-data-{verb}", f"The data member of a successful {verb} reply")
    for type_, model in PUBLISHED_DATA_MODELS.items():
        add(model, f"data-{type_.replace('.', '-')}", f"The data member of a {type_} message")
    for event, model in SESSION_EVENT_MODELS.items():
        add(model, f"event-{event.replace('_', '-')}", f"The data member of a session.event message of event {event}")
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = schemas()
    for stale in directory.glob(f"{PREFIX}*.json"):
        if stale.name not in wanted:
            stale.unlink()
    paths = []
    for name, schema in wanted.items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def differences(directory: Path) -> list[str]:
    """Names of schema files that are missing, stale or different."""
    wanted = schemas()
    found = {p.name for p in directory.glob(f"{PREFIX}*.json")}
    out = sorted(found - set(wanted))
    for name, schema in wanted.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(schema):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devicehub.mqtt.schemas", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        diff = differences(args.directory)
        for name in diff:
            print(f"differs: {args.directory / name}", file=sys.stderr)
        return 1 if diff else 0
    for path in write(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
