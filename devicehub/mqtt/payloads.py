"""Pydantic models of everything on the MQTT interface (shared/mqtt-api.md).

Two uses: requests are validated with these models (strict types, unknown members
refused, every error naming its field), and docs/schemas/*.json are generated from them
(``python -m devicehub.mqtt.schemas docs/schemas``) so the documents and the code say
the same. Models of what the hub publishes describe the members the contract names
and let the room add more (``extra="allow"``); request models refuse unknown members,
because a misspelt ``acknowledge`` must not silently start a session without it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model, field_validator

from devicehub.clinical.fields import AdverseKind, Severity
from devicehub.control import fields as vf
from devicehub.control.table import MQTT, TABLE, validate_with, verbs_for
from devicehub.mqtt.envelope import parse_rfc3339
from devicehub.room_api import ERROR_CODES

Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=1000)]
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]  # not blank
ErrorCode = Literal[ERROR_CODES]  # type: ignore[valid-type]
TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
SessionState = Literal["created", "preflight", "awaiting_confirmation", "running", "paused",
                       "completed", "aborted", "failed"]


# ---- requests ----------------------------------------------------------------------
class Request(BaseModel):
    """Members every request may carry."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: Annotated[str, Field(min_length=1, max_length=256,
                                     description="unique per attempt; a repeat gets the first reply")]
    expires_at: str | None = Field(None, description="RFC 3339 with offset; later arrivals are refused (expired)",
                                   json_schema_extra={"format": "date-time"})
    reply_to: str | None = Field(None, description="MQTT 3.1.1 reply path, under <root>/reply/")
    correlation_id: str | None = Field(None, description="MQTT 3.1.1 correlation, echoed in the reply")

    @field_validator("expires_at")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rfc3339(value)
        return value


class ProgramsRequest(Request, vf.NoFields):
    pass


class ProgramRequest(Request, vf.ProgramFields):
    pass


class StatusRequest(Request, vf.NoFields):
    pass


class SessionRequest(Request, vf.SessionFields):
    pass


class StartRequest(Request, vf.StartFields):
    pass


class PreflightRequest(Request, vf.PreflightFields):
    pass


class PauseRequest(Request, vf.PauseFields):
    pass


class ResumeRequest(Request, vf.ResumeFields):
    pass


class AbortRequest(Request, vf.AbortFields):
    pass


class RebirthRequest(Request, vf.NoFields):
    pass


_NAMED: dict[str, type[Request]] = {
    "programs": ProgramsRequest,
    "program": ProgramRequest,
    "status": StatusRequest,
    "session": SessionRequest,
    "start": StartRequest,
    "preflight": PreflightRequest,
    "pause": PauseRequest,
    "resume": ResumeRequest,
    "abort": AbortRequest,
    "rebirth": RebirthRequest,
}


def _request_model(name: str) -> type[Request]:
    """The MQTT request of a verb: the request envelope plus the verb's members from the table."""
    if name in _NAMED:
        return _NAMED[name]
    members = TABLE[name].fields[MQTT]
    title = "".join(part.title() for part in name.split("_")) + "Request"
    return create_model(title, __base__=(Request, members))  # type: ignore[call-overload,no-any-return]


#: every verb the command table serves over MQTT, with its request model
VERBS = verbs_for(MQTT)
REQUEST_MODELS: dict[str, type[Request]] = {name: _request_model(name) for name in VERBS}


class _CommonOnly(Request):
    """The common members of a request whose verb is unknown (its own members are not judged)."""

    model_config = ConfigDict(extra="ignore", strict=True)


def validate_request(verb: str, payload: dict[str, Any]) -> Request:
    """Validate a request payload; raise ``CommandError("bad_request")`` naming the field.

    With several findings ``details`` lists them all as ``{field, message}``.
    """
    return validate_with(REQUEST_MODELS.get(verb, _CommonOnly), verb, payload)  # type: ignore[no-any-return]


# ---- errors and replies ------------------------------------------------------------
class LimitFinding(BaseModel):
    """One soft or hard limit finding in ``error.details``."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(description="<step id>.<parameter> for soft limits")
    field: str
    value: Any
    limit: Any
    unit: str | None = None
    severity: Literal["hard", "soft", "error"] | None = Field(
        None, description="hard or soft limit, or error: outside the device's capability")


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: ErrorCode
    message: str
    field: str | None = None
    details: list[dict[str, Any]] | None = Field(
        None, description="every finding where there are several (limits: LimitFinding; bad_request: {field, message})")


class Reply(BaseModel):
    """What the hub sends to a reply path: no seq, no tseq."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1]
    type: Literal["reply"]
    site: str
    room: str
    boot: int
    msg_id: str
    ts: str = Field(pattern=TS_PATTERN)
    historical: Literal[False]
    ok: bool
    request_id: str | None = Field(description="null when the payload gave none readable")
    correlation_id: str | None
    data: Any = Field(None, description="the verb's reply data; with ok false only on an abort that acted")
    error: ErrorInfo | None = None


class ProgramInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    program: str
    version: str | int
    title: str
    sha256: str
    steps: int
    est_duration_s: float
    preflight: list[str]
    soft_limits: list[str]


class ProgramsReplyData(RootModel[list[ProgramInfo]]):
    pass


class ProgramReplyData(RootModel[dict[str, Any]]):
    """The whole program as JSON."""


class HubInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    boot: int
    since: str


class DeviceSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: str
    connected: bool
    state: str | None
    fault: Any = None


class SessionRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: str
    state: SessionState


class Alarm(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    priority: Literal["high", "medium", "low"]
    source: str
    code: str
    text: str
    since: str
    latched: bool
    session: str | None = None


class StatusReplyData(BaseModel):
    model_config = ConfigDict(extra="allow")
    hub: HubInfo
    devices: list[DeviceSummary]
    session: SessionRef | None
    alarms: list[Alarm]


class SessionSummaryData(BaseModel):
    """The recorded summary of a session (states, totals, per-step results)."""

    model_config = ConfigDict(extra="allow")
    session: str


class SessionStateReplyData(BaseModel):
    """Reply of start, pause and resume."""

    model_config = ConfigDict(extra="allow")
    session: str
    state: SessionState


class CoursePosition(BaseModel):
    """Where a session stands in its patient's course."""

    model_config = ConfigDict(extra="forbid")
    course: str
    phase: str
    number: int = Field(ge=1, description="its place among the course's completed sessions, if it completes")


class StartReplyData(SessionStateReplyData):
    course: CoursePosition | None = Field(description="for an enrolled patient, else null")


class AdverseEventReplyData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str
    index: int = Field(ge=1, description="the adverse_event event's index in its session")
    action: Literal["recorded", "safe_state"]


class DueWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_: str = Field(alias="from", description="RFC 3339 UTC")
    to: str = Field(description="RFC 3339 UTC")


class CourseSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str
    program: str
    state: SessionState
    created: str
    ended: str | None
    phase: str | None = Field(description="the phase it counted for; null when it did not complete")
    number: int | None = Field(description="its place among the completed sessions; null when it did not complete")


class CourseReplyData(BaseModel):
    """The reply of course, enrol and course_end: the patient's latest course."""

    model_config = ConfigDict(extra="forbid")
    patient_ref: str
    course: str
    enrolled: str
    ended: str | None
    ended_reason: str | None
    phase: str = Field(description="the current phase's id (the last one once the course ended)")
    sessions: list[CourseSession]
    next_due: DueWindow | None
    overdue: bool


class PreflightReplyData(SessionStateReplyData):
    pending_items: list[str]


class AbortReplyData(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: str | None
    state: str
    safe_state_ms: float | None


class RebirthReplyData(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishedEvent(BaseModel):
    """A recorded session event: its message's ``data`` plus that message's ts, boot and seq
    (``boot`` and ``seq`` null for an event the hub recorded but never published)."""

    model_config = ConfigDict(extra="allow")
    event: str
    index: int = Field(ge=1)
    ts: str = Field(pattern=TS_PATTERN)
    boot: int | None
    seq: int | None


class EventsReplyData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str
    events: list[PublishedEvent]
    more: bool = Field(description="true when limit cut the page: ask again with after = the last index")


REPLY_DATA_MODELS: dict[str, type[BaseModel]] = {
    "programs": ProgramsReplyData,
    "program": ProgramReplyData,
    "status": StatusReplyData,
    "session": SessionSummaryData,
    "start": StartReplyData,
    "preflight": PreflightReplyData,
    "pause": SessionStateReplyData,
    "resume": SessionStateReplyData,
    "abort": AbortReplyData,
    "rebirth": RebirthReplyData,
    "events": EventsReplyData,
    "adverse_event": AdverseEventReplyData,
    "course": CourseReplyData,
    "enrol": CourseReplyData,
    "course_end": CourseReplyData,
}


# ---- what the hub publishes ----------------------------------------------------------
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
