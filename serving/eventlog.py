"""The serving side of the logs: feedback records, and a writer that never holds up a request.

Served predictions go to the prediction log the drift checks read
(``components.data.predlog``); feedback goes to a log of the same layout::

    <feedback root>/day=YYYY-MM-DD/<writer>-<seq>.parquet    FEEDBACK_SCHEMA rows

``EventWriter.append`` puts a record on an in-memory queue and returns: a
background thread writes what is queued as one Parquet file per flush (atomic: a
reader sees a whole file or none). A write that fails (disk full, folder gone)
keeps its records queued and is tried again at the next flush, so logging never
fails or blocks a prediction; ``close`` flushes what is left, so a clean shutdown
loses nothing. A crash loses at most the last ``flush_every_s`` of records. While writes
keep failing at most ``max_queued`` records wait; older ones are dropped and counted.
``state()`` says where each writer stands (``/readyz`` shows it per log): every record
appended is written, pending or dropped.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from pathlib import Path

import pyarrow as pa

from components.data.posts import TIMESTAMP
from components.data.predlog import DayLog

log = logging.getLogger(__name__)

EVENTS = ("impression", "click", "like", "report")
ENGAGEMENTS = ("click", "like")  # what counts towards the engagement rate

# A feedback record (docs/architecture.md, Data contracts), with the request's user, arm and version copied
# in so the A/B analysis reads one log.
FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),  # one of EVENTS
        pa.field("user_id", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("model_version", pa.int64()),
        pa.field("experiment", pa.string()),
        pa.field("time", TIMESTAMP),
    ]
)


class FeedbackLog(DayLog):
    def __init__(self, root: Path):
        super().__init__(root, FEEDBACK_SCHEMA)


class EventWriter:
    """Queue records for ``log`` and write them from a background thread, one file per flush."""

    def __init__(
        self, log: DayLog, name: str, flush_every_s: float = 1.0, max_rows: int = 10_000, max_queued: int = 500_000
    ):
        self.log, self.flush_every_s, self.max_rows, self.max_queued = log, flush_every_s, max_rows, max_queued
        self.name = f"{name}-{secrets.token_hex(4)}"  # a restarted writer never reuses a file name
        self._queue: deque[dict] = deque()
        self._writing: list[dict] = []  # the rows of the write in flight: neither queued nor on disk yet
        self._seq = 0
        self._lock = threading.Lock()  # one flush at a time
        self._queue_lock = threading.Lock()  # the queue's own: held for deque steps only, never across a write
        self._wake = threading.Event()
        self._closed = False
        self.written = 0
        self.failures = 0
        self.dropped = 0  # oldest records let go while writes kept failing and the queue was full
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"event-writer-{name}", daemon=True)
        self._thread.start()

    def append(self, record: dict) -> None:
        """Queue one record (a dict of the log's columns). Never waits for a write, never raises.

        While writes keep failing the queue grows to ``max_queued``; past that the oldest record
        is let go (and counted) rather than the replica running out of memory.
        """
        with self._queue_lock:
            if len(self._queue) >= self.max_queued:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(record)
            full = len(self._queue) >= self.max_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records not written yet: queued, or in the write under way."""
        with self._queue_lock:
            return len(self._writing) + len(self._queue)

    def pending_records(self) -> list[dict]:
        """A copy of what is not written yet, oldest first (a copy taken while no one changes the queue)."""
        with self._queue_lock:
            return [*self._writing, *self._queue]

    def state(self) -> dict:
        """What ``/readyz`` shows of this log: records written, pending and dropped, failed writes (one per
        flush that failed, however many records it held) and the last failure, as ``Type: message``."""
        return {
            "written": self.written,
            "pending": self.pending,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def flush(self) -> int:
        """Write what is queued now; returns the rows written (0 if the write failed: they stay queued)."""
        with self._lock:
            with self._queue_lock:
                rows = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_rows))]
                self._writing = rows
            if not rows:
                return 0
            try:
                table = pa.Table.from_pylist(rows, schema=self.log.schema)
                self.log.write(table, f"{self.name}-{self._seq:09d}")
            except Exception as err:  # noqa: BLE001 - logging must survive anything; the rows go back
                with self._queue_lock:
                    self._queue.extendleft(reversed(rows))
                    self._writing = []
                    # what arrived during the write found a shorter queue: the oldest past max_queued go now
                    over = max(0, len(self._queue) - self.max_queued)
                    for _ in range(over):
                        self._queue.popleft()
                    self.dropped += over
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log.warning("event log %s: write failed, %d records kept queued: %s", self.name, len(rows), err)
                return 0
            with self._queue_lock:
                self._writing = []
            self._seq += 1
            self.written += len(rows)
            return len(rows)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            while self.flush() and len(self._queue) >= self.max_rows:
                pass  # a burst: keep writing full files until the queue is short again

    def close(self, timeout: float = 30.0) -> int:
        """Stop the thread and write everything left; returns the records that could not be written."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        for _ in range(3):  # a transient failure gets a couple more tries
            while self.flush():
                pass
            if not self._queue:
                break
        if self._queue:
            log.error("event log %s: %d records could not be written: %s", self.name, self.pending, self.last_error)
        return self.pending
