"""The prediction log: every prediction the platform made, one Parquet file per day and batch.

Layout under the log root::

    day=YYYY-MM-DD/<batch>.parquet    PREDICTION_SCHEMA rows whose ``time`` falls on that day

Serving appends request batches; before serving exists, the monitor's batch scoring
(``components.monitor.batch``) writes the champion's predictions over the stored posts
of each day. A batch file is written whole and atomically and rewriting one with the
same name replaces it, so running a batch again never duplicates a record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from components.data.posts import TIMESTAMP
from components.files import write_table

# A prediction record (docs/architecture.md, Data contracts).
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("post_id", pa.string()),  # the stored post predicted, when there is one
        pa.field("user_id", pa.string()),
        pa.field("arm", pa.string()),  # champion, challenger
        pa.field("model_version", pa.int64()),
        pa.field("predicted", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("probabilities", pa.list_(pa.float32())),  # in the order of the version's labels
        pa.field("embedding", pa.list_(pa.float32())),  # (D,) penultimate layer
        pa.field("latency_ms", pa.float32()),
        pa.field("time", TIMESTAMP),
        pa.field("experiment", pa.string()),  # the A/B experiment a served request belonged to; null for batches
        pa.field("source", pa.string()),  # served (a request to the app) or batch (a stored post scored offline)
    ]
)
SERVED, BATCH = "served", "batch"


def served() -> pc.Expression:
    """The records of requests the app served (files written before ``source`` existed: no post id).

    Never null, so ``~served()`` keeps every other record (a null would drop the old ones from both)."""
    source = pc.field("source")
    return pc.if_else(source.is_null(), pc.field("post_id").is_null(), source == SERVED)


class DayLog:
    """Records of one schema, one Parquet file per day and batch, each written whole and atomically.

    Files written before a column was added read back with nulls in it.
    """

    def __init__(self, root: Path, schema: pa.Schema):
        self.root, self.schema = root, schema

    def write(self, records: pa.Table, batch: str) -> int:
        """Write ``records`` as batch ``batch``, split by day; returns the rows written."""
        records = records.cast(self.schema)
        days = pc.strftime(records.column("time"), format="%Y-%m-%d")
        for day in pc.unique(days).to_pylist():
            part = records.filter(pc.equal(days, day))
            write_table(part, self.root / f"day={day}" / f"{batch}.parquet")
        return len(records)

    def read(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        where: pc.Expression | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Records with ``since <= time < until`` that match ``where``, oldest first."""
        files = sorted(self.root.glob("day=*/*.parquet"))
        if since is not None:  # whole days before the window need not be opened
            first = f"day={(since.astimezone(UTC) if since.tzinfo else since).strftime('%Y-%m-%d')}"
            files = [f for f in files if f.parent.name >= first]
        if not files:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns else empty
        dataset = ds.dataset([str(f) for f in files], schema=self.schema, format="parquet")
        condition = pc.scalar(True)
        if since is not None:
            condition &= pc.field("time") >= pc.scalar(since)
        if until is not None:
            condition &= pc.field("time") < pc.scalar(until)
        if where is not None:
            condition &= where
        if columns and "time" not in columns:
            return dataset.to_table(filter=condition, columns=[*columns, "time"]).sort_by("time").select(columns)
        return dataset.to_table(filter=condition, columns=columns).sort_by("time")


class PredictionLog(DayLog):
    def __init__(self, root: Path):
        super().__init__(root, PREDICTION_SCHEMA)

    def read(  # type: ignore[override]
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        version: int | None = None,
        where: pc.Expression | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Records with ``since <= time < until`` (of one model version if given), oldest first."""
        if version is not None:
            where = (pc.field("model_version") == version) & (where if where is not None else pc.scalar(True))
        return super().read(since, until, where, columns)

    def batch_posts(self, day: str, batch: str) -> set[str]:
        path = self.root / f"day={day}" / f"{batch}.parquet"
        if not path.exists():
            return set()
        return set(pq.read_table(path, columns=["post_id"]).column("post_id").to_pylist())
