"""An acknowledgement that a pause cuts (the soak's notes: "a prompt acknowledgement cut
by a pause is answered ok but not recorded; the prompt shows again").

The technician acknowledges the confirm step and, in the same moment, the session is
paused. The reply said ok, so the record must hold the acknowledgement, and the prompt
must not be asked again after the resume.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from devicehub.control.table import Caller, dispatch, validate
from devicehub.runner.session import RunnerOptions

from .conftest import open_hub

FAST = {"ep": {"period_ms": 10}, "light": {"duration_s": 1}, "field": {"duration_s": 1}}


async def test_an_acknowledgement_a_pause_cuts_is_recorded_and_not_asked_again(tmp_path: Path) -> None:
    async with open_hub(tmp_path / "room", options=RunnerOptions(auto_acknowledge_prompts=False)) as hub:
        await hub.auto_trigger(20)
        runner = await hub.start("demo", params=FAST)
        sid = runner.session_id
        prompt = await hub.next_event("prompt", timeout=60)
        console = Caller(origin="console")
        # both on their way in the same turn of the loop: the acknowledgement first
        ack = asyncio.ensure_future(dispatch(hub.room, "prompt_ack",
                                             validate("prompt_ack", "console", {"by": "tech"}), console))
        pause = asyncio.ensure_future(dispatch(hub.room, "pause", validate("pause", "console", {"session": sid}),
                                               console))
        assert await ack == {"session": sid}
        await pause
        await hub.next_event("paused", timeout=30)
        acked = [(e["data"]["step"], e["data"]["by"]) for e in await hub.store.events(sid)
                 if e["event"] == "prompt_acknowledged"]
        assert acked == [(prompt["step"], "tech")], acked
        await hub.room.resume(session=sid, origin="console", by="tech")
        assert await hub.finish(runner, 60) == "completed", runner.reason
        events = await hub.store.events(sid)
        assert [e["data"]["step"] for e in events if e["event"] == "prompt"] == [prompt["step"]]
        assert [e["data"]["step"] for e in events if e["event"] == "prompt_acknowledged"] == [prompt["step"]]
        assert (await hub.store.verify(sid)).ok
