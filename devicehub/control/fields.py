"""The members of each verb's request, as pydantic models.

One model per verb, shared by every front end: the MQTT request models
(``devicehub.mqtt.payloads``) add the request envelope (``request_id``, ``expires_at``,
the reply path) to these; the console socket validates the same models. Unknown members
are refused, because a misspelt ``acknowledge`` must not silently start a session
without it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=1000)]
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]  # not blank


class Fields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoFields(Fields):
    pass


class ProgramFields(Fields):
    program: Id


class SessionFields(Fields):
    session: Id


class EventsFields(Fields):
    session: Id
    after: int = Field(0, ge=0, description="an event index: events above it are returned")
    limit: int = Field(500, ge=1, le=1000, description="at most this many events (1-1000)")


class StartFields(Fields):
    program: Id
    patient_ref: Name
    operator: Name
    params: dict[str, dict[str, Any]] | None = Field(
        None, description="overrides: {<step id>: {<parameter>: value}}")
    acknowledge: list[Id] | None = Field(None, description="soft-limit ids (<step id>.<parameter>) accepted")


class ConsoleStartFields(StartFields):
    """A start at the chair: who acknowledged each soft limit, and the preflight taken as done."""

    acknowledged_by: dict[Id, Name] | None = Field(
        None, description="who acknowledged each soft limit (id -> name); recorded with the session")
    preflight_done_by: Name | None = Field(
        None, description="every preflight item taken as done by this person (recorded as such)")
    wait_for_start: bool = Field(
        False, description="with the checklist done, wait in awaiting_confirmation for the chair's "
                           "start (a confirm) instead of running at once (the console's start button)")


class CheckFields(Fields):
    program: Id
    patient_ref: Name | None = None
    params: dict[str, dict[str, Any]] | None = None
    acknowledge: list[Id] | None = None


class PreflightFields(Fields):
    session: Id
    item: Id
    done: bool
    by: Name


class ConfirmFields(Fields):
    session: Id
    by: Name


class PauseFields(Fields):
    session: Id
    reason: Text | None = None


class ResumeFields(Fields):
    session: Id


class ConsoleResumeFields(ResumeFields):
    by: Name


class AbortFields(Fields):
    session: Id | None = None
    reason: Text | None = None


class ClearFaultFields(Fields):
    device: Id
    by: Name


class RecoverFields(Fields):
    session: Id
    by: Name


class PromptAckFields(Fields):
    by: Name


class AlarmAckFields(Fields):
    id: Id | None = None
