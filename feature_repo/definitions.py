"""Entities, sources and feature views of the loop.

Every batch source is a folder of Parquet files under the repo path: trendloop
writes one file per batch, whole and atomically (``components.features.store``), and Feast
reads the folder. Event timestamps say when a value became known:

- ``post_meta_fv``: caption, hashtag and engagement features, known when the post
  was created (``created_at``).
- ``post_image_fv``: the champion's embedding, tag and confidence for a post. A
  post is scored as it arrives, so the event time is the post's ``created_at``;
  ``scored_at`` (the created timestamp) picks the newest score of a post.
- ``user_profile_fv``: a user's posting activity, interests over tags (from the
  champion's tags, never from labels) and engagement rate over trailing 7 and 28
  days, as of the end of each day (``as_of``): a post is only ever joined to its
  author's history before it.
- ``post_label_fv``: labels, fed by the ``post_label_push`` push source when
  annotations arrive; the event time is when the label was given (``labelled_at``),
  so a label never reaches a row of an earlier time.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

post = Entity(
    name="post",
    join_keys=["post_id"],
    value_type=ValueType.STRING,
    description="A post: one image with its caption and hashtags.",
)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A user who posts.")

post_meta_source = FileSource(
    name="post_meta_source",
    path="sources/post_meta",
    timestamp_field="created_at",
    created_timestamp_column="ingested_at",
)
post_image_source = FileSource(
    name="post_image_source",
    path="sources/post_image",
    timestamp_field="created_at",
    created_timestamp_column="scored_at",
)
user_profile_source = FileSource(
    name="user_profile_source",
    path="sources/user_profile",
    timestamp_field="as_of",
    created_timestamp_column="computed_at",
)
post_label_batch = FileSource(
    name="post_label_batch",
    path="sources/post_label",
    timestamp_field="labelled_at",
    created_timestamp_column="recorded_at",
)
post_label_push = PushSource(name="post_label_push", batch_source=post_label_batch)

post_meta_fv = FeatureView(
    name="post_meta_fv",
    entities=[post],
    ttl=timedelta(0),  # never stale: a post's caption does not change
    schema=[
        Field(name="post_id", dtype=String),  # the join key: Feast joins on schema fields only
        Field(name="caption_length", dtype=Int64),
        Field(name="hashtag_count", dtype=Int64),
        Field(name="hashtags", dtype=Array(String)),
        Field(name="caption_embedding", dtype=Array(Float32), description="caption and hashtags, 384-d"),
        Field(name="views", dtype=Int64),
        Field(name="likes", dtype=Int64),
        Field(name="comments", dtype=Int64),
        Field(name="shares", dtype=Int64),
        Field(name="engagement_rate", dtype=Float32, description="(likes + comments + shares) / views"),
    ],
    source=post_meta_source,
    online=True,
    description="Caption, hashtag and engagement features of a post, known when it was posted.",
)

post_image_fv = FeatureView(
    name="post_image_fv",
    entities=[post],
    ttl=timedelta(0),
    schema=[
        Field(name="post_id", dtype=String),  # the join key: Feast joins on schema fields only
        Field(name="image_embedding", dtype=Array(Float32)),
        Field(name="predicted_tag", dtype=String),
        Field(name="confidence", dtype=Float32),
        Field(name="model_version", dtype=Int64),
    ],
    source=post_image_source,
    online=True,
    description="The champion's view of a post's image: penultimate-layer embedding, top tag, confidence.",
)

user_profile_fv = FeatureView(
    name="user_profile_fv",
    entities=[user],
    ttl=timedelta(days=2),  # a profile older than two days is stale: the daily job did not run
    schema=[
        Field(name="user_id", dtype=String),  # the join key: Feast joins on schema fields only
        Field(name="posts_7d", dtype=Int64),
        Field(name="posts_28d", dtype=Int64),
        Field(name="engagement_rate_7d", dtype=Float32),
        Field(name="engagement_rate_28d", dtype=Float32),
        Field(name="interest_tags", dtype=Array(String), description="tags, most posted first (28 days)"),
        Field(name="interest_shares", dtype=Array(Float32), description="share of posts per interest tag"),
    ],
    source=user_profile_source,
    online=True,
    description="A user's activity, interests and engagement over trailing windows, as of the end of a day.",
)

post_label_fv = FeatureView(
    name="post_label_fv",
    entities=[post],
    ttl=timedelta(0),
    schema=[
        Field(name="post_id", dtype=String),  # the join key: Feast joins on schema fields only
        Field(name="label", dtype=String),
        Field(name="label_source", dtype=String),
    ],
    source=post_label_push,
    online=True,
    description="Content tags given to posts (seed labels, annotators), as of when they were given.",
)

ENTITIES = [post, user]
FEATURE_VIEWS = [post_meta_fv, post_image_fv, user_profile_fv, post_label_fv]
OBJECTS = [*ENTITIES, post_label_push, *FEATURE_VIEWS]
