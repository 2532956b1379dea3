"""The envelope around everything the hub publishes (shared/mqtt-api.md, "Envelope").

Why a factory: ``seq`` and ``tseq`` are counters of one boot, ``msg_id`` must be unique
per message and ``ts`` has one exact format, so one object per boot builds them all and
nobody hand-writes an envelope.

Field order on the wire: ``v, type, site, room, boot, seq|tseq, msg_id, ts, historical,
session, data`` (``session`` only where there is one). Replies have neither ``seq`` nor
``tseq`` and add ``ok, request_id, correlation_id`` and ``data`` or ``error``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from devicehub.ids import ULID_RE, new_ulid  # noqa: F401 - re-exported: the envelope's ids
from devicehub.timefmt import parse_rfc3339, rfc3339, utcnow  # noqa: F401 - re-exported: the envelope's times

VERSION = 1


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as sent on the wire (orjson: a non-finite float is sent as null,
    what is not JSON raises TypeError)."""
    return orjson.dumps(obj)


def mark_historical(payload: bytes) -> bytes:
    """The same message with ``historical: true`` (replay keeps seq, ts and msg_id)."""
    env = orjson.loads(payload)
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
        """``dumps(self.message(...))``: the bytes of a new envelope (telemetry and session
        events go through here thousands of times a second; orjson makes that cheap).
        Raises TypeError for data that is not JSON."""
        return orjson.dumps(self.message(type_, data, seq=seq, tseq=tseq, session=session, ts=ts))

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
