"""The envelope around everything the hub publishes (shared/mqtt-api.md, "Envelope").

Why a factory: ``seq`` and ``tseq`` are counters of one boot, ``msg_id`` must be unique
per message and ``ts`` has one exact format, so one object per boot builds them all and
nobody hand-writes an envelope.

Field order on the wire: ``v, type, site, room, boot, seq|tseq, msg_id, ts, historical,
session, data`` (``session`` only where there is one). Replies have neither ``seq`` nor
``tseq`` and add ``ok, request_id, correlation_id`` and ``data`` or ``error``.
"""

from __future__ import annotations

import json
import json.encoder
import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

VERSION = 1

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class UlidGenerator:
    """Monotonic ULIDs (26 characters, Crockford base32, 48-bit ms time + 80 random bits).

    Within one millisecond the random part is incremented, so ids made by one process
    sort in the order they were made (useful when a consumer de-duplicates by msg_id
    and wants a stable order).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def new(self, now_ms: int | None = None) -> str:
        with self._lock:
            ms = int(time.time() * 1000) if now_ms is None else now_ms
            if ms <= self._last_ms:
                ms = self._last_ms
                self._last_rand = (self._last_rand + 1) & ((1 << 80) - 1)
                if self._last_rand == 0:  # 2**80 ids in one ms: borrow the next ms
                    ms += 1
            else:
                self._last_rand = int.from_bytes(os.urandom(10), "big")
            self._last_ms = ms
            value = (ms << 80) | self._last_rand
        # 26 characters of 5 bits = 130 bits, two characters (10 bits) per lookup
        pairs = _CROCKFORD_PAIRS
        return "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)
_ULIDS = UlidGenerator()
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_ulid() -> str:
    """A new ULID from the process-wide monotonic generator."""
    return _ULIDS.new()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(ts: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: ``2026-11-21T10:00:00.123456Z``."""
    if ts.tzinfo is not timezone.utc:
        if ts.tzinfo is None:
            raise ValueError("naive datetime: the envelope needs an aware time")
        ts = ts.astimezone(timezone.utc)
    if not 1 <= ts.year <= 9999:  # pragma: no cover - isoformat and strftime agree on 4 digits
        raise ValueError("year out of range")
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"  # drops "+00:00"; a third of strftime's cost


_RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time; an offset (``Z`` or ``+hh:mm``) is required.

    Raises ValueError for anything else (a time without offset is ambiguous, so a
    request's ``expires_at`` without one is a bad request, not a guess).
    """
    if not isinstance(text, str) or not _RFC3339_RE.match(text):
        raise ValueError("not an RFC 3339 date-time with offset")
    body = text.upper()
    frac = re.search(r"\.(\d+)", body)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds
        body = body.replace(frac.group(0), "." + frac.group(1)[:6], 1)
    return datetime.fromisoformat(body.replace("Z", "+00:00"))


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
# The C encoder of the stdlib, made once rather than per call as json.dumps does. No
# circular-reference markers: the hub serialises its own acyclic data, and a cycle would
# still end in RecursionError, not a hang.
_C_ENCODE = (_c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                             False, False, False) if _c_make_encoder is not None else None)


def _json_text(obj: Any) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(obj, 0))
    return _ENCODER.encode(obj)  # pragma: no cover - Python without _json


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as sent on the wire (non-finite floats refused: ValueError)."""
    return _json_text(obj).encode("utf-8")


def mark_historical(payload: bytes) -> bytes:
    """The same message with ``historical: true`` (replay keeps seq, ts and msg_id)."""
    env = json.loads(payload)
    env["historical"] = True
    return dumps(env)


class EnvelopeFactory:
    """Builds the envelopes of one boot; owns the ``seq`` and ``tseq`` counters.

    ``seq`` starts at 1 in each boot and is taken by :meth:`next_seq` at the moment a
    QoS 1 message enters the outbox; ``tseq`` likewise for telemetry, at the moment a
    reading reaches the MQTT side (so thinned readings show as gaps).
    """

    def __init__(self, site: str, room: str, boot: int) -> None:
        self.site = site
        self.room = room
        self.boot = int(boot)
        self._seq = 0
        self._tseq = 0
        self._encoded_heads: dict[str, str] = {}

    @property
    def last_seq(self) -> int:
        return self._seq

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_tseq(self) -> int:
        self._tseq += 1
        return self._tseq

    def _head(self, type_: str) -> dict[str, Any]:
        return {"v": VERSION, "type": type_, "site": self.site, "room": self.room, "boot": self.boot}

    def message(self, type_: str, data: Any, *, seq: int | None = None, tseq: int | None = None,
                session: str | None = None, ts: datetime | None = None, msg_id: str | None = None,
                historical: bool = False) -> dict[str, Any]:
        """An envelope for a published message (status, device.*, session.*, alarms)."""
        env = self._head(type_)
        if seq is not None:
            env["seq"] = seq
        if tseq is not None:
            env["tseq"] = tseq
        env["msg_id"] = msg_id or new_ulid()
        env["ts"] = rfc3339(ts or utcnow())
        env["historical"] = historical
        if session is not None:
            env["session"] = session
        env["data"] = data
        return env

    def encode(self, type_: str, data: Any, *, seq: int | None = None, tseq: int | None = None,
               session: str | None = None, ts: datetime | None = None) -> bytes:
        """``dumps(self.message(...))``, byte for byte, without building the dict.

        The head (``v, type, site, room, boot``) is encoded once per type; only the
        counters, ``msg_id``, ``ts``, ``session`` and ``data`` are encoded per message.
        Telemetry and session events go through here thousands of times a second.
        Raises what :func:`dumps` raises for data that is not JSON (TypeError, ValueError).
        """
        head = self._encoded_heads.get(type_)
        if head is None:
            head = self._encoded_heads[type_] = _json_text(self._head(type_))[:-1] + ","
        counters = ""
        if seq is not None:
            counters = f'"seq":{seq if type(seq) is int else _json_text(seq)},'
        if tseq is not None:
            counters += f'"tseq":{tseq if type(tseq) is int else _json_text(tseq)},'
        where = "" if session is None else f'"session":{_json_text(session)},'
        return (f'{head}{counters}"msg_id":"{new_ulid()}","ts":"{rfc3339(ts or utcnow())}",'
                f'"historical":false,{where}"data":{_json_text(data)}}}').encode("utf-8")

    def will(self) -> dict[str, Any]:
        """The will of one connection: ``offline`` with its boot, own msg_id and ts, no seq."""
        return self.message("status", {"state": "offline"})

    def reply(self, *, ok: bool, request_id: str | None, correlation_id: str | None,
              data: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """A reply envelope: no seq, no tseq; ``data`` and/or ``error``.

        A plain success has ``data``; a refusal has ``error``. An ``abort`` that acted
        although something was wrong has both (see docs/mqtt.md).
        """
        env = self._head("reply")
        env["msg_id"] = new_ulid()
        env["ts"] = rfc3339(utcnow())
        env["historical"] = False
        env["ok"] = ok
        env["request_id"] = request_id
        env["correlation_id"] = correlation_id
        if data is not None or ok:
            env["data"] = data if data is not None else {}
        if error is not None:
            env["error"] = error
        return env
