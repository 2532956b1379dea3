"""The models of what the hub publishes: the message envelope, the data of each message
type, and the session events with a schema of their own. They name the members the
contract names and let the room add more (``extra="allow"``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from devicehub.clinical.fields import AdverseKind, Severity
from devicehub.mqtt.payloads.common import TS_PATTERN, SessionState
from devicehub.mqtt.payloads.replies import Alarm, CoursePosition


class Envelope(BaseModel):
    """Every message the hub publishes under <root> except replies."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1]
    type: Literal["status", "device.state", "device.telemetry", "session.state", "session.event", "alarms"]
    site: str
    room: str
    boot: int = Field(description="grows by one at every hub start")
    seq: int | None = Field(None, description="QoS 1 messages: +1 per message in one boot")
    tseq: int | None = Field(None, description="telemetry only: its own counter")
    msg_id: str = Field(description="ULID, unique per message: drop duplicates with it")
    ts: str = Field(description="RFC 3339 UTC with microseconds", pattern=TS_PATTERN)
    historical: bool = Field(description="true when replayed from the outbox after an outage")
    session: str | None = None
    data: Any


class StatusData(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: Literal["online", "offline"]
    version: str | None = None
    boot: int | None = None
    since: str | None = None


class DeviceStateData(BaseModel):
    model_config = ConfigDict(extra="allow")
    connected: bool
    state: str | None
    fault: Any = None


class TelemetryData(BaseModel):
    """Readings of one device; members depend on the device type."""

    model_config = ConfigDict(extra="allow")


class SessionStateData(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: str
    state: SessionState


SessionEvent = Literal["created", "preflight_item", "confirmed", "started", "paused", "resumed",
                       "step_started", "step_done", "point_done", "train_done", "exposure_progress",
                       "alarm", "safe_state", "recovered", "completed", "aborted", "failed", "adverse_event",
                       # recorded and published beyond the document's table (docs/mqtt.md):
                       "state", "prompt", "prompt_acknowledged", "point_skipped", "alongside_started"]


class SessionEventData(BaseModel):
    model_config = ConfigDict(extra="allow")
    event: SessionEvent
    index: int = Field(ge=1, description="position in its session, from 1")


class CreatedEventData(SessionEventData):
    """The ``created`` event: who, what, for whom, and where it stands in a course."""

    course: CoursePosition | None = Field(description="{course, phase, number} for an enrolled patient, else null")


class AdverseEventData(SessionEventData):
    """The ``adverse_event`` event (also after the session's terminal event)."""

    kind: AdverseKind
    severity: Severity
    score: int | None
    onset: str | None
    note: str | None
    by: str
    action: Literal["recorded", "safe_state"]


class AlarmsData(RootModel[list[Alarm]]):
    """The active alarms ([] when none)."""


PUBLISHED_DATA_MODELS: dict[str, type[BaseModel]] = {
    "status": StatusData,
    "device.state": DeviceStateData,
    "device.telemetry": TelemetryData,
    "session.state": SessionStateData,
    "session.event": SessionEventData,
    "alarms": AlarmsData,
}

#: session events with a schema of their own (docs/schemas/mqtt-event-*.json)
SESSION_EVENT_MODELS: dict[str, type[BaseModel]] = {
    "created": CreatedEventData,
    "adverse_event": AdverseEventData,
}
