"""The members of the clinical verbs' requests (the command table validates them for MQTT
and the console alike; the MQTT request models add the request envelope)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from devicehub.control.fields import Fields, Id, Name, Text

AdverseKind = Literal["pain", "redness", "swelling", "bruising", "itching", "allergic_reaction", "infection", "other"]
Severity = Literal["mild", "moderate", "severe"]


class AdverseEventFields(Fields):
    session: Id
    kind: AdverseKind
    severity: Severity = Field(description="severe (or any allergic_reaction) brings a session not ended to its "
                                           "safe state")
    by: Name
    score: Annotated[int, Field(ge=0, le=10)] | None = Field(None, description="pain score 0-10, only with kind pain")
    onset: str | None = Field(None, description="RFC 3339 with offset, not in the future",
                              json_schema_extra={"format": "date-time"})
    note: Text | None = None

    @field_validator("onset")
    @classmethod
    def _onset(cls, value: str | None) -> str | None:
        if value is not None:
            from devicehub.timefmt import parse_rfc3339

            parse_rfc3339(value)  # ValueError: not RFC 3339 with an offset
        return value


class CourseFields(Fields):
    patient_ref: Name


class EnrolFields(Fields):
    patient_ref: Name
    course: Id = Field(description="a course plan id (configs/courses/<id>.yaml)")
    by: Name


class CourseEndFields(Fields):
    patient_ref: Name
    by: Name
    reason: Name
