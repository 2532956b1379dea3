"""Gaps: what is missing is asked of the hub with ``events``, and said when it cannot be.

Two checks, both on the database (several collectors share one stream, so no single
one sees every seq):

* **seq gaps** per (site, room, boot): ``boots`` keeps (counted by the writer) how many distinct seq
  numbers are stored and the highest; where fewer are stored, the holes are listed in
  ``gaps``. A hole still open ``gap_fill_after_s`` after the message that revealed it
  was stored is filled: every session of that room and boot is asked for the events
  after its last contiguous index. A hole that stays after answered fills held no
  session event (a state or alarms message, superseded by the next one): closed as
  ``not_events``.
* **index holes** per session: ``sessions.events < sessions.last_index`` (both kept by
  the writer) for longer than ``gap_fill_after_s``: filled the same way; and **tails**: a
  session with no terminal event whose newest event is older than ``gap_fill_after_s``
  is asked too (a lost last event shows no seq gap until the hub publishes again).

A session still missing events after a fill (the hub did not answer: offline, or the
broker link cut) is marked ``incomplete``; the next pass tries again and clears the mark
when the events arrive. Only one collector of a group runs a pass at a time (an
advisory lock), so a hub is not asked twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from devicehub.site.rows import Rows, filled
from devicehub.site.writer import connect, write_rows

log = logging.getLogger(__name__)

_PASS_LOCK = 0x64686770  # "dhgp"
PAGE = 1000

#: the holes of one boot from seq ``holes_upto`` on (the row at it gives the first ``prev``)
_HOLES = """
SELECT prev, seq FROM (
    SELECT seq, COALESCE(lag(seq) OVER (ORDER BY seq), 0) AS prev
    FROM messages WHERE site = %s AND room = %s AND boot = %s AND seq IS NOT NULL AND seq >= %s) t
WHERE seq > prev + 1"""


class GapFiller:
    def __init__(self, url: str, link: Any, config: Any) -> None:
        self.url = url
        self.link = link
        self.config = config
        self._conn: psycopg.Connection[Any] | None = None
        self.requests = 0
        self.filled_events = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.gap_check_every_s):
            try:
                self.one_pass()
            except (psycopg.Error, OSError) as exc:
                log.warning("gap check failed: %s", exc)
                self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, autocommit=True)
        return self._conn

    def one_pass(self) -> None:
        db = self._db()
        if not db.execute("SELECT pg_try_advisory_lock(%s)", (_PASS_LOCK,)).fetchone()[0]:
            return
        try:
            self._seq_gaps(db)
            self._index_holes(db)
        finally:
            db.execute("SELECT pg_advisory_unlock(%s)", (_PASS_LOCK,))

    # ---- seq gaps ---------------------------------------------------------------------
    def _seq_gaps(self, db: psycopg.Connection[Any]) -> None:
        after = self.config.gap_fill_after_s
        # only boots with seq numbers missing and new messages since their last scan, and
        # only from where that scan ended: a long boot is not read again every pass
        for site, room, boot, upto, top in db.execute(
                "SELECT site, room, boot, holes_upto, max_seq FROM boots"
                " WHERE seqs < max_seq AND max_seq > holes_upto").fetchall():
            for prev, seq in db.execute(_HOLES, (site, room, boot, upto)).fetchall():
                if upto and prev == 0:
                    continue  # the scan's first row: no predecessor in this window
                db.execute("INSERT INTO gaps (site, room, boot, after_seq, before_seq) VALUES (%s,%s,%s,%s,%s)"
                           " ON CONFLICT DO NOTHING", (site, room, boot, prev, seq))
            db.execute("UPDATE boots SET holes_upto = GREATEST(holes_upto, %s) WHERE site = %s AND room = %s"
                       " AND boot = %s", (top, site, room, boot))
        due = db.execute(
            "SELECT site, room, boot, after_seq, before_seq FROM gaps WHERE closed_at IS NULL"
            " AND found_at < now() - make_interval(secs => %s) ORDER BY found_at", (after,)).fetchall()
        for site, room, boot, lo, hi in due:
            if self._present(db, site, room, boot, lo, hi):  # arrived late (another collector's batch)
                self._close_gap(db, site, room, boot, lo, "arrived")
                continue
            sessions = [r[0] for r in db.execute(
                "SELECT DISTINCT session FROM messages WHERE site = %s AND room = %s AND boot = %s"
                " AND session IS NOT NULL UNION SELECT session FROM rooms WHERE site = %s AND room = %s"
                " AND session IS NOT NULL", (site, room, boot, site, room)).fetchall()]
            answered = all([self.fill(db, site, room, s) for s in sessions])
            if self._present(db, site, room, boot, lo, hi):
                outcome = "filled"
            elif answered:
                outcome = "not_events"
            else:
                db.execute("UPDATE gaps SET tries = tries + 1, outcome = 'unanswered' WHERE site = %s AND room = %s"
                           " AND boot = %s AND after_seq = %s", (site, room, boot, lo))
                continue
            self._close_gap(db, site, room, boot, lo, outcome)

    @staticmethod
    def _present(db: psycopg.Connection[Any], site: str, room: str, boot: int, lo: int, hi: int) -> bool:
        n = db.execute("SELECT count(*) FROM messages WHERE site = %s AND room = %s AND boot = %s"
                       " AND seq > %s AND seq < %s", (site, room, boot, lo, hi)).fetchone()[0]
        return bool(n == hi - lo - 1)

    @staticmethod
    def _close_gap(db: psycopg.Connection[Any], site: str, room: str, boot: int, lo: int, outcome: str) -> None:
        db.execute("UPDATE gaps SET closed_at = now(), tries = tries + 1, outcome = %s WHERE site = %s"
                   " AND room = %s AND boot = %s AND after_seq = %s", (outcome, site, room, boot, lo))

    # ---- index holes ------------------------------------------------------------------
    def _index_holes(self, db: psycopg.Connection[Any]) -> None:
        after = self.config.gap_fill_after_s
        # holes, sessions marked incomplete, and sessions with no terminal event yet whose
        # newest event is older than the fill delay (a lost tail shows no seq gap until
        # the hub publishes again; a session waiting long for the chair costs one request
        # per delay)
        # (an unended session quiet for a day is left alone: its hub is gone or the session
        # waits; the hub's next message about it, a failed hub_restart at the latest, wakes it)
        due = db.execute(
            "SELECT session, site, room FROM sessions WHERE (events < last_index OR incomplete"
            " OR (ended IS NULL AND last_event_at > now() - interval '1 day'))"
            " AND last_event_at < now() - make_interval(secs => %s)"
            " AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => %s))"
            " ORDER BY last_event_at DESC LIMIT 100", (after, after)).fetchall()
        for session, site, room in due:
            self.fill(db, site, room, session)

    # ---- one session ------------------------------------------------------------------
    def fill(self, db: psycopg.Connection[Any], site: str, room: str, session: str) -> bool:
        """Ask the hub for every event after the session's last contiguous index and store
        them; marks the session incomplete or not. False when the hub did not answer."""
        have = [r[0] for r in db.execute("SELECT idx FROM session_events WHERE session = %s ORDER BY idx",
                                         (session,)).fetchall()]
        contiguous = 0
        for i in have:
            if i != contiguous + 1:
                break
            contiguous = i
        answered = True
        cursor = contiguous
        while True:
            self.requests += 1
            reply = self.link.request(site, room, "events", {"session": session, "after": cursor, "limit": PAGE},
                                      self.config.events_timeout_s)
            if reply is None or not reply.get("ok"):
                answered = reply is not None and (reply.get("error") or {}).get("code") == "not_found"
                if reply is None:
                    log.warning("no events reply from %s/%s for session %s", site, room, session)
                break
            page = reply.get("data") or {}
            events = [e for e in page.get("events") or [] if isinstance(e, dict)]
            rows = Rows()
            for ev in events:
                try:
                    rows.extend(filled(site, room, session, ev))
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("events reply from %s/%s: bad event: %s", site, room, exc)
            if len(rows):
                write_rows(db, rows)
                self.filled_events += len(events)
            if not page.get("more") or not events:
                break
            cursor = max(int(e.get("index", cursor)) for e in events)
        db.execute("UPDATE sessions SET checked_at = now(), incomplete = NOT %s OR events < last_index"
                   " WHERE session = %s", (answered, session))
        return answered
