"""The outbox's ledger of published session events (for the ``events`` verb): written with
the event's outbox row, kept after its PUBACK, there again after a restart."""

from __future__ import annotations

from devicehub.mqtt.outbox import Outbox


async def test_ledger_is_written_with_the_message_and_outlives_its_puback(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    a = box.add("t/sessions/S1/events", b"{}", False, ("S1", 1, 7, 41, "2026-12-01T10:00:00.000001Z"))
    b = box.add("t/session", b"{}", True)  # not an event: no ledger row
    c = box.add("t/sessions/S1/events", b"{}", False, ("S1", 2, 7, 43, "2026-12-01T10:00:00.000002Z"))
    box.add("t/sessions/S2/events", b"{}", False, ("S2", 1, 7, 44, "2026-12-01T10:00:00.000003Z"))
    # the same event queued again (never happens on purpose): the first publication stays on record
    box.add("t/sessions/S1/events", b"{}", False, ("S1", 2, 8, 5, "2026-12-01T11:00:00.000000Z"))
    assert await box.published_events("S1", [1, 2, 3]) == {1: (7, 41, "2026-12-01T10:00:00.000001Z"),
                                                           2: (7, 43, "2026-12-01T10:00:00.000002Z")}
    box.remove([a, b, c])  # PUBACKed: gone from the queue, not from the ledger
    await box.wait_committed(box.last_id)
    assert await box.published_events("S1", [2]) == {2: (7, 43, "2026-12-01T10:00:00.000002Z")}
    await box.aclose()

    again = Outbox(path)
    try:
        assert await again.published_events("S1", [1, 2]) == {1: (7, 41, "2026-12-01T10:00:00.000001Z"),
                                                              2: (7, 43, "2026-12-01T10:00:00.000002Z")}
        assert await again.published_events("S2", [1]) == {1: (7, 44, "2026-12-01T10:00:00.000003Z")}
        assert await again.published_events("S3", [1]) == {}
    finally:
        await again.aclose()
