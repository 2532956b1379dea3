"""``devicehub schema program|config|limits``: the JSON Schema of a hub file, generated
from the pydantic models the hub validates with (so the schema and the hub never differ).

Editors take it for completion and checking of YAML (e.g. a ``# yaml-language-server:
$schema=...`` comment); clinic software takes the program schema for the ``program``
verb's reply.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from devicehub.course.plan import CoursePlan
from devicehub.models import HubConfig, Limits, Program

MODELS: dict[str, Any] = {"program": Program, "config": HubConfig, "limits": Limits, "course": CoursePlan}


def schema_of(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``program``, ``config`` or ``limits``."""
    schema = MODELS[name].model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schema", help="print the JSON Schema of a program, the hub config, the limits or a course plan",
        description="Print the JSON Schema of a hub file, generated from the hub's own models.")
    parser.add_argument("which", choices=sorted(MODELS), help="which file's schema")
    parser.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema_of(args.which), indent=2))
    return 0
