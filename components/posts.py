"""The post contract (see DESIGN.md, Data contracts) as Arrow schemas, and atomic file writes."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.errors import ConfigError

TIMESTAMP = pa.timestamp("us", tz="UTC")
ENGAGEMENT = ("views", "likes", "comments", "shares")

# A post as a source delivers it: the image is a path relative to the source.
POST_SCHEMA = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("created_at", TIMESTAMP),
        pa.field("image", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("hashtags", pa.list_(pa.string())),
        *(pa.field(name, pa.int64()) for name in ENGAGEMENT),
    ]
)

# What the simulator's oracle knows about each post (never shown to a model as input).
ORACLE_SCHEMA = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("filter", pa.string()),  # the trending filter applied, if any
        pa.field("corruption", pa.string()),  # how the upload was broken, if it was
        pa.field("orientation", pa.int8()),  # EXIF Orientation the upload carries (1: none)
        pa.field("has_gps", pa.bool_()),
        pa.field("repost_of", pa.string()),  # the post whose image this one re-uploads, if any
    ]
)

# A post inside a snapshot: its image is stored by content hash; it may carry a label.
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("post_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("created_at", TIMESTAMP),
        pa.field("image_sha256", pa.string(), nullable=False),  # of the normalised RGB pixels
        pa.field("image", pa.string(), nullable=False),  # path relative to the store root
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("caption", pa.string()),
        pa.field("hashtags", pa.list_(pa.string())),
        *(pa.field(name, pa.int64()) for name in ENGAGEMENT),
        pa.field("label", pa.string()),  # content tag, null while unlabelled
        pa.field("label_source", pa.string()),  # who gave the label: folder, manifest, seed, annotators
        pa.field("source", pa.string()),  # the ingest batch the post came in with
    ]
)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write through a unique temporary name and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue().to_pybytes())


def write_rows(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    write_table(pa.Table.from_pylist(rows, schema=schema), path)


def parse_time(value: str | None, what: str) -> datetime | None:
    """An ISO date or date and time from a user (UTC unless it names a zone); None or empty gives None."""
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a date (YYYY-MM-DD) or date and time") from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
