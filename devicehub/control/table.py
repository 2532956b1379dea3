"""The command table: one entry per verb, for every front end.

A :class:`Verb` names its handler and, per front end, the model of its members; a front
end that is not listed does not serve the verb (it answers ``unknown_verb``). The
rules that differ by front end are explicit here: a start or a resume over MQTT waits
for the chair, ``confirm``, ``prompt_ack``, ``alarm_ack`` and ``check`` are console
only, ``rebirth`` is MQTT only.

Front ends (``devicehub.mqtt.requests``, ``devicehub.local_console``) do their own
transport checks (reply path, request ids, expiry; line framing), then call
:func:`validate` and :func:`dispatch`. ``abort`` is the one verb a front end acts on
before anything else: see :meth:`devicehub.room.Room.safe_state_now`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from devicehub.room_api import CommandError

MQTT = "mqtt"
CONSOLE = "console"
FRONTS = (MQTT, CONSOLE)

Handler = Callable[[Any, Any, "Caller"], Awaitable[Any]]


@dataclass(frozen=True)
class Caller:
    """Who asks: the front end, and when the request arrived (``time.monotonic()``)."""

    origin: str
    t_arrival: float = field(default_factory=time.monotonic)
    #: the MQTT front end's rebirth (status and every retained state); None elsewhere
    rebirth: Callable[[], Any] | None = None
    #: the MQTT front end's ledger of published session events:
    #: ``await published(session, indices) -> {index: (boot, seq, ts)}``; None elsewhere
    published: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Verb:
    name: str
    handler: Handler
    #: front end -> model of the verb's members there; a front end absent does not serve it
    fields: dict[str, type[BaseModel]]
    #: False for verbs that only read (a repeated read is not "acted on")
    acts: bool = True
    summary: str = ""


TABLE: dict[str, Verb] = {}


def verb(name: str, *, mqtt: type[BaseModel] | None = None, console: type[BaseModel] | None = None,
         acts: bool = True, summary: str = "") -> Callable[[Handler], Handler]:
    """Register ``handler`` as the verb ``name`` (a decorator)."""

    def register(handler: Handler) -> Handler:
        if name in TABLE:
            raise ValueError(f"verb {name!r} is defined twice")
        fronts = {f: m for f, m in ((MQTT, mqtt), (CONSOLE, console)) if m is not None}
        TABLE[name] = Verb(name, handler, fronts, acts, summary or (handler.__doc__ or "").strip().split("\n")[0])
        return handler

    return register


def _loaded() -> dict[str, Verb]:
    # the handlers register themselves when their modules are imported
    from devicehub.control import verbs  # noqa: F401

    return TABLE


def verbs_for(front: str) -> tuple[str, ...]:
    return tuple(name for name, v in _loaded().items() if front in v.fields)


def lookup(name: str, front: str) -> Verb:
    v = _loaded().get(name)
    if v is None or front not in v.fields:
        raise CommandError("unknown_verb", f"unknown verb {name!r}; verbs: {', '.join(verbs_for(front))}")
    return v


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) if loc else "(payload)"


def validation_error(exc: ValidationError, verb: str) -> CommandError:
    """``bad_request`` naming the field; with several findings ``details`` lists them all."""
    findings = []
    for err in exc.errors(include_url=False):
        name = _field_name(tuple(err.get("loc", ())))
        if err.get("type") == "missing":
            message = f"{name} is required"
        elif err.get("type") == "extra_forbidden":
            message = f"{name} is not a member of a {verb} request"
        else:
            text = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            message = f"{name}: {text}"
        findings.append({"field": name, "message": message})
    first = findings[0]
    return CommandError("bad_request", first["message"], field=first["field"],
                        details=findings if len(findings) > 1 else None)


def validate_with(model: type[BaseModel], verb: str, payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc, verb) from None


def validate(name: str, front: str, payload: dict[str, Any]) -> Any:
    """The verb's members from ``payload``; ``unknown_verb`` or ``bad_request`` naming the field."""
    v = lookup(name, front)
    return validate_with(v.fields[front], name, payload)


async def dispatch(room: Any, name: str, request: Any, caller: Caller) -> Any:
    """Carry out a validated request through the room."""
    return await lookup(name, caller.origin).handler(room, request, caller)
