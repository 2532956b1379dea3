"""devicehub's MQTT interface (shared/mqtt-api.md): the clinic's way into a room.

- :class:`MqttFrontend` publishes the room's bus and serves requests;
- :class:`Outbox` keeps every QoS 1 message on disk until the broker acknowledges it;
- :class:`IdempotencyStore` remembers the reply to every request id;
- ``payloads`` holds the pydantic models (``python -m devicehub.mqtt.schemas`` writes
  the JSON Schemas from them); docs/mqtt.md explains it all.
"""

from devicehub.mqtt.frontend import MqttFrontend
from devicehub.mqtt.idempotency import IdempotencyStore
from devicehub.mqtt.outbox import Outbox, OutboxEntry
from devicehub.mqtt.topics import Topics

__all__ = ["IdempotencyStore", "MqttFrontend", "Outbox", "OutboxEntry", "Topics"]
