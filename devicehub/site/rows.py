"""One envelope -> the rows it writes: plain functions, no I/O.

Every statement is idempotent (``ON CONFLICT DO NOTHING`` on the row's own key, or an
update guarded by the envelope ``ts`` / ``boot``), so a message taken twice, an outbox
replay (``historical``) or an event filled through ``events`` and then received as well
leaves the database as once. Statements run in the order of :data:`ORDER`.
"""

from __future__ import annotations

import re

import orjson
from dataclasses import dataclass, field
from typing import Any

from devicehub.mqtt.envelope import parse_rfc3339

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TERMINAL = ("completed", "aborted", "failed")
QOS1_TYPES = ("status", "device.state", "session.state", "session.event", "alarms")

S = {
    "message": "INSERT INTO messages (msg_id, site, room, boot, seq, type, topic, ts, historical, session)"
               " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
    "seen": "INSERT INTO rooms AS r (site, room, last_seen) VALUES (%s,%s,%s) ON CONFLICT (site, room)"
            " DO UPDATE SET last_seen = GREATEST(r.last_seen, EXCLUDED.last_seen)",
    "status": "INSERT INTO rooms AS r (site, room, status, status_boot, status_ts) VALUES (%s,%s,%s,%s,%s)"
              " ON CONFLICT (site, room) DO UPDATE SET status = EXCLUDED.status,"
              " status_boot = EXCLUDED.status_boot, status_ts = EXCLUDED.status_ts"
              " WHERE r.status_boot IS NULL OR EXCLUDED.status_boot > r.status_boot"
              " OR (EXCLUDED.status_boot = r.status_boot AND (%s OR EXCLUDED.status_ts >= r.status_ts))",
    "device": "INSERT INTO device_states AS d (site, room, device, connected, state, fault, data, ts)"
              " VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (site, room, device) DO UPDATE SET"
              " connected = EXCLUDED.connected, state = EXCLUDED.state, fault = EXCLUDED.fault,"
              " data = EXCLUDED.data, ts = EXCLUDED.ts WHERE EXCLUDED.ts >= d.ts",
    "session_state": "INSERT INTO sessions AS s (session, site, room, state, state_ts) VALUES (%s,%s,%s,%s,%s)"
                     " ON CONFLICT (session) DO UPDATE SET state = EXCLUDED.state, state_ts = EXCLUDED.state_ts"
                     " WHERE s.state_ts IS NULL OR EXCLUDED.state_ts >= s.state_ts",
    "room_session": "INSERT INTO rooms AS r (site, room, session, session_state, session_ts) VALUES (%s,%s,%s,%s,%s)"
                    " ON CONFLICT (site, room) DO UPDATE SET session = EXCLUDED.session,"
                    " session_state = EXCLUDED.session_state, session_ts = EXCLUDED.session_ts"
                    " WHERE r.session_ts IS NULL OR EXCLUDED.session_ts >= r.session_ts",
    "event": "INSERT INTO session_events (session, idx, site, room, event, boot, seq, ts, msg_id, source, data)"
             " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
    "created": "INSERT INTO sessions AS s (session, site, room, program, version, sha256, patient_ref, operator,"
               " origin, course, created) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (session) DO UPDATE"
               " SET program = EXCLUDED.program, version = EXCLUDED.version, sha256 = EXCLUDED.sha256,"
               " patient_ref = EXCLUDED.patient_ref, operator = EXCLUDED.operator, origin = EXCLUDED.origin,"
               " course = EXCLUDED.course, created = EXCLUDED.created",
    "ended": "INSERT INTO sessions AS s (session, site, room, ended, reason, totals) VALUES (%s,%s,%s,%s,%s,%s)"
             " ON CONFLICT (session) DO UPDATE SET ended = EXCLUDED.ended, reason = EXCLUDED.reason,"
             " totals = EXCLUDED.totals",
    "delivery": "INSERT INTO deliveries (session, idx, site, room, step, zone, point, device, delivered, ts)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
    "adverse": "INSERT INTO adverse_events (session, idx, site, room, kind, severity, score, onset, note, by_name,"
               " action, ts) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
    "alarm": "INSERT INTO alarms (site, room, id, since, priority, source, code, text, latched, session, first_ts,"
             " data) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
    "alarms_cleared": "UPDATE alarms SET cleared = %s WHERE site = %s AND room = %s AND cleared IS NULL"
                      " AND first_ts <= %s AND NOT ((id || ' ' || since) = ANY(%s))",
    "room_alarms": "INSERT INTO rooms AS r (site, room, alarms, alarms_ts) VALUES (%s,%s,%s,%s)"
                   " ON CONFLICT (site, room) DO UPDATE SET alarms = EXCLUDED.alarms, alarms_ts = EXCLUDED.alarms_ts"
                   " WHERE r.alarms_ts IS NULL OR EXCLUDED.alarms_ts >= r.alarms_ts",
    "telemetry": "INSERT INTO telemetry (ts, site, room, device, boot, tseq, session, data)"
                 " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
}
ORDER = tuple(S)

#: the bulk statements, written with COPY into a staging table (the columns in the order of
#: their parameters above) and moved with one INSERT ... SELECT; see devicehub/site/writer.py
STAGED = {
    "message": ("messages", ("msg_id", "site", "room", "boot", "seq", "type", "topic", "ts", "historical",
                             "session")),
    "event": ("session_events", ("session", "idx", "site", "room", "event", "boot", "seq", "ts", "msg_id",
                                 "source", "data")),
    "delivery": ("deliveries", ("session", "idx", "site", "room", "step", "zone", "point", "device", "delivered",
                                "ts")),
    "telemetry": ("telemetry", ("ts", "site", "room", "device", "boot", "tseq", "session", "data")),
}
#: upserts guarded by ts: per batch only the newest per key matters (key = leading params,
#: ts = the param at the index given; the last of equal ts wins, as applied in order)
LATEST = {"seen": (2, 2), "status": (2, 4), "device": (3, 7), "session_state": (1, 4), "room_session": (2, 4),
          "room_alarms": (2, 3)}


class BadMessage(ValueError):
    """Not a devicehub envelope (or not the one its topic says): stored nowhere, acknowledged."""


@dataclass
class Rows:
    """Parameters per statement, in arrival order."""

    by: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def add(self, name: str, params: tuple[Any, ...]) -> None:
        self.by.setdefault(name, []).append(params)

    def extend(self, other: "Rows") -> None:
        for name, params in other.by.items():
            self.by.setdefault(name, []).extend(params)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by.values())


def _j(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def parse(topic: str, payload: bytes) -> dict[str, Any]:
    """The envelope of a message on ``topic``; :class:`BadMessage` says why not."""
    try:
        env = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BadMessage("not JSON") from None
    if not isinstance(env, dict) or env.get("v") != 1:
        raise BadMessage("not a version 1 envelope")
    parts = topic.split("/")
    if len(parts) < 5 or parts[:2] != ["devicehub", "v1"]:
        raise BadMessage(f"not a devicehub topic: {topic!r}")
    site, room = env.get("site"), env.get("room")
    if (site, room) != (parts[2], parts[3]) or not (isinstance(site, str) and _ID.match(site)
                                                   and isinstance(room, str) and _ID.match(room)):
        raise BadMessage("site/room of the envelope differ from its topic")
    if type(env.get("boot")) is not int or not isinstance(env.get("msg_id"), str) or not env["msg_id"]:
        raise BadMessage("boot or msg_id missing")
    if env.get("seq") is not None and type(env["seq"]) is not int:
        raise BadMessage("seq is not an integer")
    try:
        env["_ts"] = parse_rfc3339(env.get("ts"))  # type: ignore[arg-type]
    except ValueError:
        raise BadMessage("ts is not RFC 3339") from None
    env["_topic"] = topic
    return env


def rows_of(env: dict[str, Any], *, source: str = "mqtt") -> Rows:
    """The rows of one parsed envelope (see :func:`parse`)."""
    out = Rows()
    type_, site, room, boot, seq, ts = env.get("type"), env["site"], env["room"], env["boot"], env.get("seq"), env["_ts"]
    data = env.get("data")
    session = env.get("session") if isinstance(env.get("session"), str) else None
    if type_ == "device.telemetry":
        device = env["_topic"].split("/")[-2]
        out.add("telemetry", (ts, site, room, device, boot, _int(env.get("tseq")), session, _j(data)))
        return out
    if type_ not in QOS1_TYPES:
        raise BadMessage(f"type {type_!r} is not collected")
    if env.get("msg_id") is not None:
        out.add("message", (env["msg_id"], site, room, boot, seq, type_, env.get("_topic"), ts,
                            bool(env.get("historical")), session))
    out.add("seen", (site, room, ts))
    if type_ == "status":
        state = data.get("state") if isinstance(data, dict) else None
        if state in ("online", "offline"):
            out.add("status", (site, room, state, boot, ts, seq is None and state == "offline"))
    elif type_ == "device.state" and isinstance(data, dict):
        device = env["_topic"].split("/")[-2]
        out.add("device", (site, room, device, data.get("connected"), _text(data.get("state")),
                           _j(data.get("fault")), _j(data), ts))
    elif type_ == "session.state" and isinstance(data, dict):
        sid = data.get("session") or session
        if isinstance(sid, str) and isinstance(data.get("state"), str):
            out.add("session_state", (sid, site, room, data["state"], ts))
            out.add("room_session", (site, room, sid, data["state"], ts))
    elif type_ == "session.event" and isinstance(data, dict):
        _event_rows(out, env, site, room, boot, seq, ts, session, data, source)
    elif type_ == "alarms" and isinstance(data, list):
        keys = []
        for a in data:
            if isinstance(a, dict) and a.get("id") is not None:
                _alarm_row(out, site, room, a, ts)
                keys.append(f"{a['id']} {a.get('since')}")
        out.add("alarms_cleared", (ts, site, room, ts, keys))
        out.add("room_alarms", (site, room, _j(data), ts))
    return out


def _alarm_row(out: Rows, site: str, room: str, a: dict[str, Any], ts: Any) -> None:
    out.add("alarm", (site, room, str(a["id"]), str(a.get("since")), _text(a.get("priority")),
                      _text(a.get("source")), _text(a.get("code")), _text(a.get("text")),
                      a.get("latched") if isinstance(a.get("latched"), bool) else None,
                      _text(a.get("session")), ts, _j(a)))


def _event_rows(out: Rows, env: dict[str, Any], site: str, room: str, boot: int | None, seq: int | None, ts: Any,
                session: str | None, data: dict[str, Any], source: str) -> None:
    idx, name = data.get("index"), data.get("event")
    if session is None or type(idx) is not int or idx < 1 or not isinstance(name, str):
        raise BadMessage("a session event needs session, data.index and data.event")
    out.add("event", (session, idx, site, room, name, boot, seq, ts, env.get("msg_id"), source, _j(data)))
    # the state from the events as well as from the retained session state: events are
    # complete (gaps are filled), a lost session.state message is not refilled
    state = data.get("state") if name == "state" else name if name in TERMINAL else None
    if isinstance(state, str):
        out.add("session_state", (session, site, room, state, ts))
        out.add("room_session", (site, room, session, state, ts))
    if name == "created":
        out.add("created", (session, site, room, _text(data.get("program")), _text(data.get("version")),
                            _text(data.get("sha256")), _text(data.get("patient_ref")), _text(data.get("operator")),
                            _text(data.get("origin")), _j(data.get("course")), ts))
    elif name in TERMINAL:
        out.add("ended", (session, site, room, ts, _text(data.get("reason")), _j(data.get("totals"))))
    elif name == "point_done":
        out.add("delivery", (session, idx, site, room, _text(data.get("step")), _text(data.get("zone")),
                             _text(data.get("point")), _text(data.get("device")), _j(data.get("delivered")), ts))
    elif name == "adverse_event":
        out.add("adverse", (session, idx, site, room, _text(data.get("kind")), _text(data.get("severity")),
                            _int(data.get("score")), _text(data.get("onset")), _text(data.get("note")),
                            _text(data.get("by")), _text(data.get("action")), ts))
    elif name == "alarm":
        alarm = data.get("alarm") if isinstance(data.get("alarm"), dict) else data
        if alarm.get("id") is not None:
            _alarm_row(out, site, room, {**alarm, "session": alarm.get("session") or session}, ts)


def filled(site: str, room: str, session: str, ev: dict[str, Any]) -> Rows:
    """The rows of one event returned by the ``events`` verb (no msg_id: a made-up one per
    (session, index), so its seq closes the boot's gap and a later copy changes nothing)."""
    data = {k: v for k, v in ev.items() if k not in ("ts", "boot", "seq")}
    env = {"v": 1, "type": "session.event", "site": site, "room": room, "boot": ev.get("boot"),
           "seq": ev.get("seq"), "session": session, "data": data,
           "msg_id": f"events:{session}:{data.get('index')}" if ev.get("boot") is not None else None,
           "_topic": f"devicehub/v1/{site}/{room}/sessions/{session}/events", "_ts": parse_rfc3339(ev["ts"])}
    out = Rows()
    if env["msg_id"] is not None and type(env["boot"]) is int:
        out.add("message", (env["msg_id"], site, room, env["boot"], _int(env["seq"]), "session.event",
                            env["_topic"], env["_ts"], True, session))
    _event_rows(out, env, site, room, _int(env["boot"]), _int(env["seq"]), env["_ts"], session, data, "events")
    return out
