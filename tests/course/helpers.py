"""Sessions written straight into a record store, at chosen times (course arithmetic)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from devicehub.records.store import RecordStore, new_session_id

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def demo_program() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "configs/programs/demo.yaml").read_text())


def add_session(store: RecordStore, patient: str, start: datetime, end_state: str = "completed", *,
                program: str = "demo", delivered: float = 20.0, course: dict[str, Any] | None = None) -> str:
    """A session created at ``start`` that ends ``end_state`` 30 min later (None: still running)."""
    sid = new_session_id(start.timestamp())
    store.create_session(sid, program_id=program, program_version="1", program_sha256="0" * 64,
                         program_json=demo_program(), patient_ref=patient, operator="dr-a", origin="mqtt",
                         params={}, acknowledgements=[], created_at=start)
    store.append_event(sid, "state", {"state": "created", "previous": None}, start)
    store.append_event(sid, "created", {"program": program, "course": course}, start)
    store.append_event(sid, "state", {"state": "running", "previous": "created"}, start + timedelta(minutes=1))
    if delivered:
        intent = store.delivery_intent(sid, step_id="inject", zone="left", point="left-r1c1", device="inj-1",
                                       planned={"volume_ul": 20}, ts=start + timedelta(minutes=2))
        store.delivery_result(intent, delivered={"volume_ul": delivered, "shots": 1, "depth_mm": 1.5},
                              status="done" if delivered >= 19 else "interrupted", ts=start + timedelta(minutes=3))
    if end_state is not None:
        store.append_event(sid, end_state, {"totals": {"inj-1": {"volume_ul": delivered}}},
                           start + timedelta(minutes=30))
        store.append_event(sid, "state", {"state": end_state, "previous": "running"}, start + timedelta(minutes=30))
    return sid


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
