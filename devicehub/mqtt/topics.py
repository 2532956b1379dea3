"""Topic names of one room under ``devicehub/v1/<site>/<room>`` (shared/mqtt-api.md).

Why one place: the ACLs of a site are written against these names, and a reply path
given by a client must be checked against exactly the same root the hub publishes under.
"""

from __future__ import annotations

import re

PREFIX = "devicehub/v1"
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: a device or session id becomes one topic level: no separators, no wildcards
_LEVEL_RE = re.compile(r"^[^/+#\x00]{1,128}$")
MAX_TOPIC_BYTES = 65535


def valid_id(value: str) -> bool:
    """Site and room ids: letters, digits, ``-``, ``_``."""
    return isinstance(value, str) and bool(ID_RE.match(value))


def valid_level(value: str) -> bool:
    """Can this id be one topic level (no ``/``, ``+``, ``#``, NUL; 1..128 characters)?"""
    return isinstance(value, str) and bool(_LEVEL_RE.match(value))


class Topics:
    """The topics of one room."""

    def __init__(self, site: str, room: str) -> None:
        if not valid_id(site):
            raise ValueError(f"site id {site!r}: letters, digits, '-' and '_' only")
        if not valid_id(room):
            raise ValueError(f"room id {room!r}: letters, digits, '-' and '_' only")
        self.site = site
        self.room = room
        self.root = f"{PREFIX}/{site}/{room}"
        self.status = f"{self.root}/status"
        self.session = f"{self.root}/session"
        self.alarms = f"{self.root}/alarms"
        # every level below cmd: a request on a deeper topic is answered unknown_verb, not ignored
        self.cmd_filter = f"{self.root}/cmd/#"
        self.reply_prefix = f"{self.root}/reply/"
        self._telemetry_topics: dict[str, str] = {}

    def device_state(self, device_id: str) -> str:
        return f"{self.root}/devices/{self._level(device_id, 'device id')}/state"

    def device_telemetry(self, device_id: str) -> str:
        # asked for every reading (thousands a second at most): validated once per device
        topic = self._telemetry_topics.get(device_id)
        if topic is None:
            topic = f"{self.root}/devices/{self._level(device_id, 'device id')}/telemetry"
            if len(self._telemetry_topics) >= 1024:  # a room has a handful of devices
                self._telemetry_topics.clear()
            self._telemetry_topics[device_id] = topic
        return topic

    def session_events(self, session_id: str) -> str:
        return f"{self.root}/sessions/{self._level(session_id, 'session id')}/events"

    def cmd(self, verb: str) -> str:
        return f"{self.root}/cmd/{self._level(verb, 'verb')}"

    def reply(self, client_id: str, *rest: str) -> str:
        """A reply path a client may give: ``<root>/reply/<client_id>[/...]``."""
        return "/".join([self.root, "reply", self._level(client_id, "client id"), *rest])

    def verb_of(self, topic: str) -> str | None:
        """The verb of a ``<root>/cmd/<verb>`` topic, else None."""
        prefix = f"{self.root}/cmd/"
        if not topic.startswith(prefix):
            return None
        verb = topic[len(prefix):]
        return verb if verb and "/" not in verb else None

    def is_reply_path(self, topic: object) -> bool:
        """Is ``topic`` a publishable topic under ``<root>/reply/<client_id>``?

        Refused: anything outside the root, a missing client id level, wildcards,
        NUL, more than 65 535 bytes.
        """
        if not isinstance(topic, str) or not topic.startswith(self.reply_prefix):
            return False
        if any(c in topic for c in "+#\x00"):
            return False
        if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
            return False
        client_level = topic[len(self.reply_prefix):].split("/", 1)[0]
        return bool(client_level)

    @staticmethod
    def _level(value: str, what: str) -> str:
        if not valid_level(value):
            raise ValueError(f"{what} {value!r} cannot be a topic level")
        return value
