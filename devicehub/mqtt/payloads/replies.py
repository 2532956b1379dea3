"""The reply models of the MQTT interface: errors with their limit findings, the reply
envelope, and the data of each verb's reply."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from devicehub.mqtt.payloads.common import TS_PATTERN, ErrorCode, SessionState


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
