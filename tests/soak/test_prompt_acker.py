"""The soak's technician acknowledges every prompt the session shows, the one shown again
after a pause included (the 22:33 hour's #330: a pause cut the confirm step after the
acknowledgement was taken and before it was recorded; after the resume the prompt came
again, and the old count of prompts against acknowledgements never answered it)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.soaklib.session import _ack_prompts


class _Tech:
    def __init__(self, room: "_Room") -> None:
        self.room = room
        self.acks = 0
        self.acked = asyncio.Event()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert op == "prompt_ack"
        self.acks += 1
        self.acked.set()
        return {"ok": True}


class _Room:
    """A session's record as the soak reads it; the technician's console."""

    def __init__(self, events: list[str]) -> None:
        self.events = [{"event": e, "data": {}} for e in events]
        self.tech = _Tech(self)

    async def aread(self, what: str, sid: str) -> list[dict[str, Any]]:
        assert what == "events"
        return list(self.events)


async def test_a_prompt_shown_again_after_a_pause_is_acknowledged_again() -> None:
    room = _Room(["started", "step_started", "prompt"])
    acker = asyncio.create_task(_ack_prompts(room, "S"))  # type: ignore[arg-type]
    try:
        await room.tech.acked.wait()
        assert room.tech.acks == 1
        # taken, but the pause came before it was recorded; resumed, the prompt again
        room.tech.acked.clear()
        room.events += [{"event": e, "data": {}} for e in ("safe_state", "paused", "resumed", "step_started", "prompt")]
        await room.tech.acked.wait()
        assert room.tech.acks == 2
        # recorded this time: nothing more to acknowledge until the next prompt
        room.tech.acked.clear()
        room.events += [{"event": "prompt_acknowledged", "data": {}}, {"event": "prompt", "data": {}}]
        await room.tech.acked.wait()
        assert room.tech.acks == 3
    finally:
        acker.cancel()
        await asyncio.gather(acker, return_exceptions=True)
