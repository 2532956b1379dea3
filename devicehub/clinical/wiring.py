"""What the MQTT pipeline asks of the clinical verbs before it dispatches one."""

from __future__ import annotations

from devicehub.clinical.adverse import urgent_payload

__all__ = ["urgent_payload"]
