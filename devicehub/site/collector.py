"""``devicehub collect``: every message the hubs publish, into PostgreSQL, exactly once.

Threads: paho's network thread receives (``mqtt_link``) and puts each message on a
queue; the writer (the caller of :meth:`Collector.run`) takes a batch (at most
``batch_interval_s`` = 200 ms after its first message, or ``batch_max`` messages),
commits it (``writer``, retried until it succeeds while PostgreSQL is away) and only
then acknowledges the batch's QoS 1 messages to the broker. A message not committed is
never acknowledged, so a collector killed at any moment loses nothing: the broker
redelivers it to the resumed session or to another member of the group, and every row
is idempotent. The gap filler (``gaps``) runs on its own thread.

Telemetry (QoS 0) is thinned on arrival to one reading per device per
``telemetry_every_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import psycopg

from devicehub.site.config import SiteConfig
from devicehub.site.gaps import GapFiller
from devicehub.site.mqtt_link import Incoming, MqttLink
from devicehub.site.rows import BadMessage, Rows, parse, rows_of
from devicehub.site.writer import Writer

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.queue: queue.Queue[Incoming] = queue.Queue()
        self.link = MqttLink(config, self._on_message)
        self.writer = Writer(config.database)
        self.gaps = GapFiller(config.database, self.link, config)
        self._last_reading: dict[str, float] = {}
        self.stop_event = threading.Event()
        #: counters (logs, the bench)
        self.received = 0
        self.committed = 0
        self.thinned = 0
        self.refused = 0
        self.acked = 0

    def _on_message(self, item: Incoming) -> None:
        """paho's thread: keep it short."""
        if item.qos == 0 and item.topic.endswith("/telemetry"):
            device = item.topic.rsplit("/", 2)[0]
            last = self._last_reading.get(device)
            if last is not None and item.received - last < self.config.telemetry_every_s:
                self.thinned += 1
                return
            self._last_reading[device] = item.received
        # parsed here, on paho's thread, while the writer waits for PostgreSQL
        try:
            env = parse(item.topic, item.payload)
            item.rows, item.ts = rows_of(env), env["_ts"]
        except BadMessage as exc:
            self.refused += 1
            log.warning("message on %s not stored: %s", item.topic, exc)
            self.acked += self.link.ack([item])  # nothing to store: sending it again changes nothing
            return
        self.queue.put(item)

    def _take(self) -> list[Incoming]:
        """A batch: waits for a first message, then up to ``batch_interval_s`` for more."""
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.config.batch_interval_s * 0.75  # room for the commit
        while len(batch) < self.config.batch_max:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    @staticmethod
    def _rows(batch: list[Incoming]) -> Rows:
        rows = Rows()
        for item in batch:
            rows.extend(item.rows)
        return rows

    def _open_database(self) -> bool:
        """Connect and migrate, retrying while PostgreSQL is not there (False: stopped first)."""
        delay = 0.2
        while True:
            try:
                self.writer.open()
                return True
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("database not reachable (%s); retrying in %.1f s", str(exc).strip(), delay)
                if self.stop_event.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)

    def run(self, ready: threading.Event | None = None) -> int:
        """Serve until :meth:`stop`; returns an exit code."""
        if not self._open_database():  # the schema first: a collector with no database does not subscribe
            return 0
        self.link.start()
        filler = threading.Thread(target=self.gaps.run, args=(self.stop_event,), name="gaps", daemon=True)
        filler.start()
        while not self.link.subscribed.wait(0.2):  # "collecting" once the broker holds the subscriptions
            if self.stop_event.is_set():
                break
        if ready is not None:
            ready.set()
        try:
            while not self.stop_event.is_set():
                batch = self._take()
                if not batch:
                    continue
                self.received += len(batch)
                rows = self._rows(batch)
                if len(rows) and not self.writer.write_until_done(rows, self.stop_event):
                    break  # stopped while the database was away: nothing of this batch acknowledged
                self.committed += len(batch)
                self.acked += self.link.ack(batch)
        finally:
            self.link.stop()
            filler.join(timeout=self.config.events_timeout_s + 5)
            self.writer.close()
        return 0

    def stop(self) -> None:
        self.stop_event.set()
