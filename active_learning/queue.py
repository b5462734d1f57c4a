"""The labelling queue: what was selected, pushed, annotated and decided, in one SQLite file.

It is the local side of the Label Studio project and the reason nothing is lost when
Label Studio is down: a selected post is written here first and stays ``pending``
until Label Studio has answered with its task id; pulled annotations and the
cursor they were pulled up to are written in one transaction, so a pull that fails
half-way leaves the queue as it was. Posts are keyed by ``post_id`` and
annotations by Label Studio's annotation id, so adding or pulling twice changes
nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    post_id TEXT PRIMARY KEY,
    image TEXT NOT NULL,          -- the stored image, relative to the store root
    caption TEXT,
    hashtags TEXT,                -- JSON list
    created_at TEXT,
    batch TEXT NOT NULL,          -- the selection it came in
    arm TEXT NOT NULL,            -- active or control
    strategy TEXT NOT NULL,
    score REAL,
    predicted TEXT,
    confidence REAL,
    model_version TEXT,
    queued_at TEXT NOT NULL,
    project_id INTEGER,           -- set with task_id once Label Studio holds the task
    task_id INTEGER,
    pushed_at TEXT
);
CREATE TABLE IF NOT EXISTS annotations (
    annotation_id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    post_id TEXT NOT NULL,
    annotator INTEGER,
    choice TEXT,                  -- the label chosen, or the "other / new trend" choice
    trend TEXT,                   -- the name typed for a new trend, normalised
    cancelled INTEGER NOT NULL,   -- skipped by the annotator
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS annotations_post ON annotations (post_id);
CREATE TABLE IF NOT EXISTS labels (
    post_id TEXT PRIMARY KEY,
    label TEXT,                   -- null while undecided
    status TEXT NOT NULL,         -- decided, tied, unnamed (other without a name), waiting
    votes INTEGER NOT NULL,
    agreement REAL,               -- share of the votes that went to the label
    new_class INTEGER NOT NULL,   -- the label is not one the model knew
    decided_at TEXT,
    snapshot TEXT                 -- the snapshot that took the label in, once committed
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class QueuedPost:
    post_id: str
    image: str
    batch: str
    arm: str
    strategy: str
    score: float
    predicted: str | None
    confidence: float | None
    model_version: str | None
    caption: str | None = None
    hashtags: tuple[str, ...] = ()
    created_at: str | None = None
    queued_at: str = ""
    project_id: int | None = None
    task_id: int | None = None
    pushed_at: str | None = None


@dataclass(frozen=True)
class Annotation:
    annotation_id: int
    task_id: int
    post_id: str
    annotator: int | None
    choice: str | None
    trend: str | None
    cancelled: bool
    updated_at: str | None


@dataclass(frozen=True)
class Decision:
    post_id: str
    label: str | None
    status: str  # decided, tied, unnamed, waiting
    votes: int
    agreement: float | None
    new_class: bool


def now() -> str:
    return datetime.now(UTC).isoformat()


class LabelQueue:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed if the block ends, rolled back if it raises."""
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # -- selected posts ------------------------------------------------------------------

    def add(self, posts: Iterable[QueuedPost]) -> int:
        """Queue posts not queued before; returns how many were new."""
        stamp = now()
        rows = [
            {**asdict(p), "hashtags": json.dumps(list(p.hashtags)), "queued_at": p.queued_at or stamp} for p in posts
        ]
        names = [f.name for f in fields(QueuedPost)]
        with self._db() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT OR IGNORE INTO queue ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})", rows
            )
            return db.total_changes - before

    def queued_ids(self) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT post_id FROM queue")}

    def posts(self, pending_only: bool = False) -> list[QueuedPost]:
        where = "WHERE task_id IS NULL" if pending_only else ""
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM queue {where} ORDER BY queued_at, score DESC, post_id").fetchall()
        return [_post(r) for r in rows]

    def pending(self) -> list[QueuedPost]:
        """Posts Label Studio does not hold yet, oldest selection first."""
        return self.posts(pending_only=True)

    def mark_pushed(self, tasks: dict[str, int], project_id: int) -> None:
        stamp = now()
        with self._db() as db:
            db.executemany(
                "UPDATE queue SET task_id = ?, project_id = ?, pushed_at = ? WHERE post_id = ?",
                [(task, project_id, stamp, post) for post, task in tasks.items()],
            )

    # -- annotations and decisions --------------------------------------------------------

    def record_annotations(self, annotations: list[Annotation], cursor: str | None) -> int:
        """Store pulled annotations (new or edited) and the pull cursor together; returns how many were new."""
        with self._db() as db:
            known = {r[0] for r in db.execute("SELECT annotation_id FROM annotations")}
            db.executemany(
                "INSERT OR REPLACE INTO annotations VALUES "
                "(:annotation_id, :task_id, :post_id, :annotator, :choice, :trend, :cancelled, :updated_at)",
                [asdict(a) for a in annotations],
            )
            if cursor is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('pull_cursor', ?)", (cursor,))
        return sum(a.annotation_id not in known for a in annotations)

    def annotations(self, post_ids: Iterable[str] | None = None) -> list[Annotation]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM annotations ORDER BY annotation_id").fetchall()
        wanted = set(post_ids) if post_ids is not None else None
        out = [Annotation(**{**dict(r), "cancelled": bool(r["cancelled"])}) for r in rows]
        return [a for a in out if wanted is None or a.post_id in wanted]

    def save_decisions(self, decisions: Iterable[Decision]) -> None:
        """Record each post's current verdict; a label already committed keeps its snapshot if unchanged."""
        stamp = now()
        with self._db() as db:
            for d in decisions:
                old = db.execute("SELECT label, snapshot FROM labels WHERE post_id = ?", (d.post_id,)).fetchone()
                snapshot = old["snapshot"] if old is not None and old["label"] == d.label else None
                db.execute(
                    "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (d.post_id, d.label, d.status, d.votes, d.agreement, int(d.new_class), stamp, snapshot),
                )

    def decisions(self) -> list[Decision]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM labels ORDER BY post_id").fetchall()
        return [
            Decision(r["post_id"], r["label"], r["status"], r["votes"], r["agreement"], bool(r["new_class"]))
            for r in rows
        ]

    def uncommitted(self) -> dict[str, str]:
        """post_id -> label for decided labels no snapshot holds yet."""
        with self._db() as db:
            rows = db.execute("SELECT post_id, label FROM labels WHERE status = 'decided' AND snapshot IS NULL")
            return {r[0]: r[1] for r in rows}

    def mark_committed(self, post_ids: Iterable[str], snapshot: str) -> None:
        with self._db() as db:
            db.executemany("UPDATE labels SET snapshot = ? WHERE post_id = ?", [(snapshot, p) for p in post_ids])

    # -- small state ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def counts(self) -> dict[str, int]:
        """queued, pending (not in Label Studio yet), pushed, annotated, decided, committed, new_class."""
        with self._db() as db:
            one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "queued": one("SELECT COUNT(*) FROM queue"),
                "pending": one("SELECT COUNT(*) FROM queue WHERE task_id IS NULL"),
                "pushed": one("SELECT COUNT(*) FROM queue WHERE task_id IS NOT NULL"),
                "annotations": one("SELECT COUNT(*) FROM annotations"),
                "annotated": one("SELECT COUNT(DISTINCT post_id) FROM annotations"),
                "decided": one("SELECT COUNT(*) FROM labels WHERE status = 'decided'"),
                "undecided": one("SELECT COUNT(*) FROM labels WHERE status != 'decided'"),
                "committed": one("SELECT COUNT(*) FROM labels WHERE snapshot IS NOT NULL"),
                "new_class": one("SELECT COUNT(*) FROM labels WHERE status = 'decided' AND new_class = 1"),
            }


def _post(row: sqlite3.Row) -> QueuedPost:
    values = dict(row)
    values["hashtags"] = tuple(json.loads(values["hashtags"] or "[]"))
    return QueuedPost(**values)
