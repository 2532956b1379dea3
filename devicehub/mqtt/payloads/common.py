"""The value types the MQTT payload models share (ids, texts, names, error codes, times,
session states)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from devicehub.room_api import ERROR_CODES

Id = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=1000)]
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]  # not blank
ErrorCode = Literal[ERROR_CODES]  # type: ignore[valid-type]
TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
SessionState = Literal["created", "preflight", "awaiting_confirmation", "running", "paused",
                       "completed", "aborted", "failed"]
