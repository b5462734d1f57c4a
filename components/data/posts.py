"""The post contract (docs/architecture.md, Data contracts) as Arrow schemas."""

from __future__ import annotations

import pyarrow as pa

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
