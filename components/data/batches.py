"""An ingest's records and their check outcomes as one Parquet file, so read, check and commit can be separate steps.

A pipeline passes this file from step to step: the ingest step writes the records a
source offers, the validate step adds each image's outcome, the snapshot step
commits them (``components.data.ingest.commit_checked``). The source's kind, URI,
skipped and forgotten counts travel in the file's schema metadata. User ids in it are
pseudonyms already (``read_source`` made them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.data.ingest import Checked, Outcome
from components.data.posts import TIMESTAMP
from components.data.sources import BadRecord, Candidate, Source
from components.data.validate import Rejection
from components.errors import SourceError
from components.files import write_table

RECORD_FIELDS = [
    ("post_id", pa.string()),  # a candidate's post id, or a bad record's position ("where")
    ("bad", pa.bool_()),  # a record that is not a post: reason and detail say why
    ("image_path", pa.string()),
    ("user_id", pa.string()),
    ("created_at", TIMESTAMP),
    ("caption", pa.string()),
    ("hashtags", pa.list_(pa.string())),
    ("engagement", pa.string()),  # JSON object: counts by kind
    ("label", pa.string()),
    ("label_source", pa.string()),
    ("reason", pa.string()),  # why a record is bad or an image was rejected
    ("detail", pa.string()),
]
OUTCOME_FIELDS = [
    ("checked", pa.bool_()),  # whether the validate step has seen this record
    ("sha256", pa.string()),  # an accepted image's content hash (it is in the store)
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("fixes", pa.list_(pa.string())),
]
SCHEMA = pa.schema(RECORD_FIELDS + OUTCOME_FIELDS)


def write_batch(source: Source, outcomes: list[Outcome] | None, path: Path) -> None:
    """Write ``source``'s records (and, once checked, their outcomes) to ``path`` atomically."""
    if outcomes is not None and len(outcomes) != len(source.records):
        raise ValueError(f"{len(outcomes)} outcomes for {len(source.records)} records")
    rows = [
        _row(r, None if outcomes is None else outcomes[n], outcomes is not None) for n, r in enumerate(source.records)
    ]
    meta = {"kind": source.kind, "uri": source.uri, "skipped": str(source.skipped), "forgotten": str(source.forgotten)}
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {f"trendloop.{k}": v for k, v in meta.items()}
    )
    write_table(table, path)


def read_batch(path: Path) -> tuple[Source, list[Outcome] | None]:
    """The records of a batch file and their outcomes (None when the batch has not been checked)."""
    try:
        table = pq.read_table(path)
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise SourceError(f"{path}: not an ingest batch (columns {table.schema.names})")
    except (OSError, pa.ArrowInvalid) as err:
        raise SourceError(f"{path}: not an ingest batch: {err}") from None
    meta = {k.decode().removeprefix("trendloop."): v.decode() for k, v in (table.schema.metadata or {}).items()}
    rows = table.to_pylist()
    source = Source(
        meta.get("kind", "unknown"),
        meta.get("uri", str(path)),
        [_record(r) for r in rows],
        int(meta.get("skipped", 0)),
        int(meta.get("forgotten", 0)),
    )
    if rows and not all(r["checked"] for r in rows):
        return source, None
    return source, [_outcome(r) for r in rows]


def _row(record: Candidate | BadRecord, outcome: Outcome, checked: bool) -> dict:
    empty = {name: None for name, _ in RECORD_FIELDS + OUTCOME_FIELDS} | {"checked": checked}
    if isinstance(record, BadRecord):
        return empty | {"post_id": record.where, "bad": True, "reason": record.reason, "detail": record.detail}
    row = empty | {
        "post_id": record.post_id,
        "bad": False,
        "image_path": str(record.image_path),
        "user_id": record.user_id,
        "created_at": record.created_at,
        "caption": record.caption,
        "hashtags": list(record.hashtags),
        "engagement": json.dumps(record.engagement),
        "label": record.label,
        "label_source": record.label_source,
    }
    if isinstance(outcome, Rejection):
        row |= {"reason": outcome.reason, "detail": outcome.detail}
    elif isinstance(outcome, Checked):
        row |= {
            "sha256": outcome.sha256,
            "width": outcome.width,
            "height": outcome.height,
            "fixes": list(outcome.fixes),
        }
    return row


def _record(row: dict) -> Candidate | BadRecord:
    if row["bad"]:
        return BadRecord(row["post_id"], row["reason"], row["detail"])
    return Candidate(
        post_id=row["post_id"],
        image_path=Path(row["image_path"]),
        user_id=row["user_id"],
        created_at=row["created_at"],
        caption=row["caption"],
        hashtags=tuple(row["hashtags"] or ()),
        engagement=json.loads(row["engagement"] or "{}"),
        label=row["label"],
        label_source=row["label_source"],
    )


def _outcome(row: dict) -> Outcome:
    if row["bad"]:
        return None
    if row["sha256"] is None:
        return Rejection(row["reason"], row["detail"])
    return Checked(row["sha256"], row["width"], row["height"], tuple(row["fixes"] or ()))
