"""The request pipeline: one MQTT request in, at most one reply out.

The checks run in the order of shared/mqtt-api.md: reply path, retained, request id
seen, ``bad_request``, ``expired``, ``unknown_verb``, then the verb's own checks, which
belong to the room (:class:`devicehub.room_api.RoomAPI` raises ``CommandError``).

``abort`` is the exception: every abort that is not retained acts, whatever else is
wrong (reply path outside the root, repeated request id, unreadable payload, past
``expires_at``, stale session id); its reply then has ``ok: false``, the ``error`` saying
what was wrong, and ``data`` saying what the abort did.

Nothing here touches MQTT: the front end hands in an :class:`IncomingRequest` and
publishes the :class:`Outcome`'s reply, so the pipeline is tested without a network.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devicehub.mqtt.envelope import EnvelopeFactory, parse_rfc3339, utcnow
from devicehub.mqtt.idempotency import IdempotencyStore, fingerprint
from devicehub.control.table import MQTT, TABLE, Caller, dispatch
from devicehub.mqtt.payloads import VERBS, AbortRequest, Request, validate_request
from devicehub.mqtt.topics import Topics
from devicehub.clinical.adverse import urgent_payload
from devicehub.room_api import CommandError, RoomAPI

log = logging.getLogger(__name__)

#: requests larger than this are refused (bad_request) without being parsed
MAX_REQUEST_BYTES = 64 * 1024
_MAX_REQUEST_ID = 256
_ENDED = ("completed", "aborted", "failed")


@dataclass
class IncomingRequest:
    """A message received on ``<root>/cmd/<verb>`` with what MQTT told about it."""

    topic: str
    payload: bytes
    retain: bool = False
    #: MQTT 5 Response Topic and Correlation Data properties (None when absent)
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_at: datetime = field(default_factory=utcnow)
    #: ``time.monotonic()`` at arrival: a safe state is timed from here
    t_arrival: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """What happened to a request and what to send back."""

    verb: str | None
    acted: bool
    #: where to send ``reply``; None when there is no (valid) reply path
    reply_topic: str | None = None
    reply: dict[str, Any] | None = None
    #: echoed as the reply's MQTT 5 Correlation Data property
    correlation_data: bytes | None = None
    #: why nothing was sent (logs and tests)
    note: str | None = None


class _DuplicateKey(ValueError):
    pass


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"member {key!r} appears twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_payload(payload: bytes, max_bytes: int = MAX_REQUEST_BYTES) -> tuple[dict[str, Any] | None, CommandError | None]:
    """The payload as a JSON object, or the ``bad_request`` saying why not.

    Strict JSON: UTF-8, no NaN/Infinity, no member given twice (which one would count
    is a guess, and a request must not be guessed).
    """
    if len(payload) > max_bytes:
        return None, CommandError("bad_request", f"payload larger than {max_bytes} bytes", field="(payload)")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None, CommandError("bad_request", "payload is not UTF-8", field="(payload)")
    try:
        obj = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        return None, CommandError("bad_request", f"payload is not valid: {exc}", field="(payload)")
    except (ValueError, RecursionError):
        return None, CommandError("bad_request", "payload is not JSON", field="(payload)")
    if not isinstance(obj, dict):
        return None, CommandError("bad_request", "payload is not a JSON object", field="(payload)")
    return obj, None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class RequestPipeline:
    """Checks a request in the contract's order, acts through the room, builds the reply."""

    def __init__(self, room: RoomAPI, topics: Topics, envelopes: EnvelopeFactory, store: IdempotencyStore, *,
                 rebirth: Callable[[], Any] | None = None, published: Callable[..., Any] | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.room = room
        self.topics = topics
        self.envelopes = envelopes
        self.store = store
        self.rebirth = rebirth
        self.published = published
        self.max_request_bytes = max_request_bytes

    async def handle(self, req: IncomingRequest) -> Outcome:
        verb = self.topics.verb_of(req.topic)
        is_abort = verb == "abort"
        if is_abort and not req.retain:
            # safe state first: the off commands go out before any other wait (the request
            # id's lookup, a session's creation, the record); everything below follows and
            # the room's abort joins this safe state (same trigger time) instead of starting one
            await self._safe_state_now(req)
        body, parse_error = parse_payload(req.payload, self.max_request_bytes)
        # a severe adverse event acts like an abort despite a bad reply path or expires_at
        urgent = verb == "adverse_event" and urgent_payload(body)

        # 1. reply path (MQTT 5 properties win over the payload's reply_to/correlation_id)
        reply_topic, corr_text, corr_bytes, path_error = self._reply_path(req, body)
        if path_error is not None:
            if is_abort and not req.retain:
                await self._abort(body, None, req)
                return Outcome(verb, True, note=f"abort acted; no reply: {path_error}")
            if urgent and not req.retain:
                return await self._urgent_without_reply(req, body, path_error)
            log.warning("request on %s refused: %s", req.topic, path_error)
            return Outcome(verb, False, note=path_error)

        def outcome(reply: dict[str, Any], acted: bool, note: str | None = None) -> Outcome:
            env = self.envelopes.reply(ok=reply["ok"], request_id=request_id, correlation_id=corr_text,
                                       data=reply.get("data"), error=reply.get("error"))
            return Outcome(verb, acted, reply_topic, env, corr_bytes, note)

        raw_id = body.get("request_id") if body is not None else None
        request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= _MAX_REQUEST_ID else None

        # 2. retained: never acted on, abort included
        if req.retain:
            err = CommandError("retained_command", "a command must not be retained; it was not acted on")
            return outcome({"ok": False, "error": err.to_dict()}, False, "retained")

        # 3. request id seen
        fp = fingerprint(verb or "", body) if body is not None else None
        remember = request_id is not None
        problem: CommandError | None = None
        if request_id is not None:
            stored = await self.store.get(request_id)
            if stored is not None:
                remember = False
                if stored.fingerprint == fp:
                    if not is_abort:
                        return outcome(stored.reply, False, "repeat")
                else:
                    problem = CommandError("bad_request", f"request_id {request_id!r} was used with another payload",
                                           field="request_id")
                    if not is_abort:
                        return outcome({"ok": False, "error": problem.to_dict()}, False, "request id reused")

        # 4. bad_request
        model: Request | None = None
        if problem is None and parse_error is not None:
            problem = parse_error
        if problem is None:
            try:
                model = validate_request(verb or "", body or {})
            except CommandError as exc:
                problem = exc

        # 5. expired (a severe adverse event acts all the same; its reply says it was late)
        late: CommandError | None = None
        if problem is None and model is not None and model.expires_at is not None:
            if parse_rfc3339(model.expires_at) <= req.received_at:
                problem = CommandError("expired", f"the request expired at {model.expires_at}", field="expires_at")
                if urgent:
                    late, problem = problem, None

        # 6. unknown_verb
        if problem is None and verb not in VERBS:
            problem = CommandError("unknown_verb", f"unknown verb {verb!r}; verbs: {', '.join(VERBS)}")

        # 7. the verb
        acted = False
        if is_abort:
            data, abort_problem = await self._abort(body, model if isinstance(model, AbortRequest) else None, req)
            problem = problem or abort_problem
            reply: dict[str, Any] = {"ok": problem is None, "data": data}
            if problem is not None:
                reply["error"] = problem.to_dict()
            acted = True
        elif problem is not None:
            reply = {"ok": False, "error": problem.to_dict()}
        else:
            assert model is not None and verb is not None
            try:
                data = await dispatch(self.room, verb, model, Caller(MQTT, req.t_arrival, rebirth=self.rebirth,
                                                                       published=self.published))
                reply = {"ok": True, "data": data}
                if late is not None:  # acted, as an abort does; the reply says what was wrong
                    reply = {"ok": False, "data": data, "error": late.to_dict()}
                acted = TABLE[verb].acts
            except CommandError as exc:
                reply = {"ok": False, "error": exc.to_dict()}
            except Exception as exc:  # a fault in the room must not stop the hub
                log.exception("%s request failed", verb)
                reply = {"ok": False, "error": CommandError(
                    "invalid_state", f"the hub could not carry out {verb}: {type(exc).__name__}").to_dict()}
        if remember and request_id is not None and fp is not None:
            await self.store.put(request_id, fp, reply)
        return outcome(reply, acted, None if reply_topic else "no reply path")

    # ---- helpers --------------------------------------------------------------------
    def _reply_path(self, req: IncomingRequest, body: dict[str, Any] | None
                    ) -> tuple[str | None, str | None, bytes | None, str | None]:
        """(reply topic, correlation id text, correlation bytes, error)."""
        if req.response_topic is not None:
            topic: Any = req.response_topic
        else:
            topic = body.get("reply_to") if body is not None else None
        if req.correlation_data is not None:
            corr_bytes: bytes | None = bytes(req.correlation_data)
            try:
                corr_text: str | None = corr_bytes.decode("utf-8")
            except UnicodeDecodeError:
                corr_text = None  # binary correlation data: echoed in the property only
        else:
            raw = body.get("correlation_id") if body is not None else None
            corr_text = raw if isinstance(raw, str) else None
            corr_bytes = None
        if topic is None:
            return None, corr_text, corr_bytes, None
        if not self.topics.is_reply_path(topic):
            shown = topic if isinstance(topic, str) else type(topic).__name__
            return None, corr_text, corr_bytes, f"reply path {shown!r} is not under {self.topics.reply_prefix}"
        return topic, corr_text, corr_bytes, None

    async def _safe_state_now(self, req: IncomingRequest) -> Any:
        start = getattr(self.room, "safe_state_now", None)
        if start is None:
            return None
        try:
            return await start("abort", req.t_arrival)
        except Exception:  # noqa: BLE001 - the abort below tries again
            log.critical("safe state on abort failed", exc_info=True)
            return None

    async def _urgent_without_reply(self, req: IncomingRequest, body: dict[str, Any] | None,
                                    path_error: str) -> Outcome:
        """A severe adverse event with a reply path outside the root: acted on, no reply."""
        verb = "adverse_event"
        try:
            model = validate_request(verb, body or {})
            stored = await self.store.get(model.request_id)
            if stored is not None:
                return Outcome(verb, False, note=f"repeat; no reply: {path_error}")
            data = await dispatch(self.room, verb, model, Caller(MQTT, req.t_arrival, rebirth=self.rebirth))
            await self.store.put(model.request_id, fingerprint(verb, body), {"ok": True, "data": data})
        except CommandError as exc:
            return Outcome(verb, False, note=f"{exc.code}: {exc.message}; no reply: {path_error}")
        return Outcome(verb, True, note=f"adverse event acted; no reply: {path_error}")

    def _active_session(self) -> str | None:
        try:
            status = self.room.status()
            session = status.get("session") if isinstance(status, dict) else None
            if not isinstance(session, dict) or session.get("state") in _ENDED:
                return None  # an ended session shown in the status is not one an abort can end
            return session.get("session")
        except Exception:
            log.exception("room status failed during abort")
            return None

    async def _abort(self, body: dict[str, Any] | None, model: AbortRequest | None, req: IncomingRequest
                     ) -> tuple[Any, CommandError | None]:
        """Safe state first, questions after: returns (abort data, what was wrong with the session id)."""
        given: str | None = None
        reason: str | None = None
        if model is not None:
            given, reason = model.session, model.reason
        elif body is not None:
            s, r = body.get("session"), body.get("reason")
            given = s if isinstance(s, str) else None
            reason = r if isinstance(r, str) else None
        active = self._active_session()
        stale = given is not None and given != active
        try:
            data = await _maybe_await(self.room.abort(session=None if stale else given, reason=reason,
                                                      t_trigger=req.t_arrival))
        except Exception as exc:
            log.critical("abort failed", exc_info=True)
            return None, CommandError("invalid_state", f"abort failed: {type(exc).__name__}: {exc}")
        if not stale:
            return data, None
        try:
            await _maybe_await(self.room.session_summary(given))  # type: ignore[arg-type]
        except CommandError as exc:
            if exc.code == "not_found":
                return data, CommandError("not_found", f"no session {given!r}; every device was brought to its "
                                                       "safe state and the active session (if any) ended",
                                          field="session")
        except Exception:
            log.exception("session lookup failed during abort")
        return data, CommandError("invalid_state", f"session {given!r} is not the active session; every device "
                                                   "was brought to its safe state and the active session (if any) "
                                                   "ended", field="session")
