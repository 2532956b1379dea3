"""The request models of the MQTT interface: the request envelope and one model per verb
(strict types, unknown members refused, every error naming its field)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from devicehub.control import fields as vf
from devicehub.control.table import MQTT, TABLE, validate_with, verbs_for
from devicehub.mqtt.envelope import parse_rfc3339


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
