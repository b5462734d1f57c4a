"""The Feast feature store: point-in-time joins, row order, the online round trip, feature services.

Every test of a store runs on the embedded default (SQLite online store, file registry) and on the cluster's
(``feature_store.redis.yaml``: the session's redis-server and a SQL registry in a PostgreSQL database).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from personal import PSEUDONYMS

from components.data.ingest import ingest, read_labels
from components.data.predlog import PredictionLog
from components.data.snapshot import Store
from components.errors import ConfigError, FeatureError
from components.features.store import SOURCE_SCHEMAS, Features
from components.features.sync import sync
from tests.databases import BACKENDS, fresh_name

pytestmark = pytest.mark.integration

DAY0 = datetime(2026, 1, 5, tzinfo=UTC)
PROFILE = ["user_profile_fv:posts_7d", "user_profile_fv:engagement_rate_28d"]


def at(hours: float) -> datetime:
    return DAY0 + timedelta(hours=hours)


@pytest.fixture(params=BACKENDS)
def features(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Features:
    if request.param == "sqlite":
        store = Features.open(tmp_path / "features")
    else:
        redis_server, postgres = request.getfixturevalue("redis_server"), request.getfixturevalue("postgres")
        redis.Redis(host="127.0.0.1", port=redis_server.port).flushall()  # what an earlier test put online
        monkeypatch.setenv("TRENDLOOP_REDIS", redis_server.connection_string)
        monkeypatch.setenv("TRENDLOOP_FEAST_REGISTRY", postgres.url(postgres.create_database(fresh_name("feast"))))
        store = Features.open(tmp_path / "features", "feature_store.redis.yaml")
    store.apply()
    return store


def profiles(rows: list[tuple[str, datetime, int]], computed: datetime | None = None) -> pa.Table:
    """User profile rows (user, as_of, posts_7d); the other columns follow from posts_7d."""
    n = len(rows)
    return (
        pa.Table.from_pylist(
            [
                {
                    "user_id": user,
                    "as_of": as_of,
                    "computed_at": computed or as_of,
                    "posts_7d": posts,
                    "posts_28d": posts,
                    "engagement_rate_7d": posts / 100,
                    "engagement_rate_28d": posts / 100,
                    "interest_tags": ["cat"] * min(posts, 1),
                    "interest_shares": [1.0] * min(posts, 1),
                }
                for user, as_of, posts in rows
            ],
            schema=SOURCE_SCHEMAS["user_profile"],
        )
        if n
        else SOURCE_SCHEMAS["user_profile"].empty_table()
    )


def as_of_join(entities: pd.DataFrame, rows: list[tuple[str, datetime, int]], ttl: timedelta) -> list[float]:
    """The reference answer: the newest row of the same user at or before the event, within the TTL."""
    out = []
    for user, when in zip(entities["user_id"], entities["event_timestamp"], strict=True):
        seen = [(t, p) for u, t, p in rows if u == user and when - ttl <= t <= when]
        out.append(float(max(seen)[1]) if seen else np.nan)
    return out


def test_a_value_written_after_an_event_is_never_joined_to_it(features: Features) -> None:
    features.write("user_profile", profiles([("u1", at(0), 1), ("u1", at(24), 5), ("u2", at(24), 9)]), "a")
    entities = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u1"],
            "event_timestamp": [at(-1), at(0), at(23.99), at(23.99), at(24)],
        }
    )
    out = features.historical(entities, ["user_profile_fv:posts_7d"])
    assert np.isnan(out["posts_7d"].iloc[0])  # before anything was known
    assert out["posts_7d"].iloc[1] == 1
    assert out["posts_7d"].iloc[2] == 1  # the day-1 value exists already but is newer than the event
    assert np.isnan(out["posts_7d"].iloc[3])  # u2's only value comes after the event: none, and the row stays
    assert out["posts_7d"].iloc[4] == 5


def test_a_label_never_leaks_into_an_earlier_time(features: Features) -> None:
    labelled = at(48)
    features.push_labels(pd.DataFrame({"post_id": ["p1", "p2"], "label": ["cat", "dog"]}), "annotators", labelled)
    entities = pd.DataFrame(
        {
            "post_id": ["p1", "p1", "p2", "p3"],
            "event_timestamp": [at(1), labelled, labelled - timedelta(seconds=1), at(99)],
        }
    )
    out = features.historical(entities, ["post_label_fv:label", "post_label_fv:label_source"])
    assert out["label"].isna().tolist() == [True, False, True, True]
    assert out.loc[1, "label"] == "cat" and out.loc[1, "label_source"] == "annotators"
    # a later relabel is seen from its own time on, the old label before it
    features.push_labels(pd.DataFrame({"post_id": ["p1"], "label": ["meme"]}), "annotators", at(72))
    later = features.historical(
        pd.DataFrame({"post_id": ["p1", "p1"], "event_timestamp": [at(60), at(80)]}), ["post_label_fv:label"]
    )
    assert later["label"].tolist() == ["cat", "meme"]


def test_the_newest_written_value_wins_for_the_same_event_time(features: Features) -> None:
    features.write("user_profile", profiles([("u1", at(0), 1)], computed=at(1)), "first")
    features.write("user_profile", profiles([("u1", at(0), 2)], computed=at(2)), "recomputed")
    out = features.historical(
        pd.DataFrame({"user_id": ["u1"], "event_timestamp": [at(5)]}), ["user_profile_fv:posts_7d"]
    )
    assert out["posts_7d"].tolist() == [2]


def test_rows_asking_the_same_key_and_time_each_get_the_answer(features: Features) -> None:
    """Feast's file store answers a repeated (key, time) pair once; every asking row still gets it."""
    features.write("user_profile", profiles([("u1", at(0), 1)]), "rows")
    asks = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "event_timestamp": [at(0), at(0), at(1)]}, index=[5, 3, 9])
    out = features.historical(asks, PROFILE)
    assert out.index.tolist() == [5, 3, 9]
    np.testing.assert_array_equal(out["posts_7d"].astype(float).to_numpy(), [1.0, 1.0, np.nan])


events = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.integers(-24, 24 * 5)), min_size=1, max_size=30
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=events, asks=events, seed=st.integers(0, 2**16))
def test_rows_come_back_one_for_one_in_the_callers_order(features: Features, rows, asks, seed: int) -> None:
    """Feast drops rows it has nothing for and returns its own order; the caller gets its frame back."""
    stored = sorted({(u, at(24 * (h // 24)), h % 7 + 1) for u, h in rows})  # one profile per user and day
    stored = list({(u, t): (u, t, p) for u, t, p in stored}.values())
    features.write("user_profile", profiles(stored), "rows")
    rng = np.random.default_rng(seed)
    entities = pd.DataFrame(
        {
            "user_id": [u for u, _ in asks],
            "event_timestamp": [at(h) for _, h in asks],
            "request": [f"r{i}" for i in range(len(asks))],
        },
        index=rng.permutation(1000)[: len(asks)],  # a caller's own index, not 0..n-1
    )
    out = features.historical(entities, PROFILE)
    assert out.index.tolist() == entities.index.tolist()
    assert out["request"].tolist() == entities["request"].tolist()
    assert out["user_id"].tolist() == entities["user_id"].tolist()
    expected = as_of_join(entities, stored, ttl=timedelta(days=2))
    np.testing.assert_array_equal(out["posts_7d"].astype(float).to_numpy(), np.array(expected))


def test_materialize_then_read_online(features: Features) -> None:
    features.write("user_profile", profiles([("u1", at(0), 1), ("u1", at(24), 3), ("u2", at(24), 4)]), "a")
    features.materialize(end=at(30))
    online = features.online(PROFILE, {"user_id": ["u2", "u9", "u1"]})
    assert online["user_id"].tolist() == ["u2", "u9", "u1"]
    assert online["posts_7d"].tolist()[0] == 4 and online["posts_7d"].tolist()[2] == 3
    assert pd.isna(online["posts_7d"].iloc[1])  # a user the store never saw
    # incremental: only what arrived since the last run is loaded, and the newest wins
    features.write("user_profile", profiles([("u1", at(48), 7)]), "b")
    features.materialize(end=at(54))
    assert features.online(PROFILE, {"user_id": ["u1"]})["posts_7d"].tolist() == [7]


@pytest.mark.parametrize("features", ["postgresql"], indirect=True)
def test_the_cluster_store_keeps_values_in_redis_and_definitions_in_postgresql(features: Features) -> None:
    """What the round trip above read on the cluster's store came from the servers, not from files."""
    client = redis.Redis(host="127.0.0.1", port=int(os.environ["TRENDLOOP_REDIS"].rsplit(":", 1)[1]))
    assert client.dbsize() == 0
    features.write("user_profile", profiles([("u1", at(0), 1), ("u2", at(0), 4)]), "a")
    features.materialize(end=at(6))
    assert client.dbsize() == 2  # one hash per user entity
    assert all(2 * 86400 - 60 < client.ttl(key) <= 2 * 86400 for key in client.scan_iter())  # they expire in two days
    with psycopg.connect(os.environ["TRENDLOOP_FEAST_REGISTRY"].replace("postgresql+psycopg", "postgresql")) as conn:
        views = {name for (name,) in conn.execute("SELECT feature_view_name FROM feature_views")}
    assert "user_profile_fv" in views
    assert not list(features.data_dir.glob("*.db"))  # no SQLite registry or online store beside the sources


def test_each_model_version_names_its_own_features(features: Features) -> None:
    features.write("user_profile", profiles([("u1", at(0), 2)]), "a")
    features.register_service("tagger_v1", ["user_profile_fv:posts_7d"], {"model_version": "1"})
    features.register_service("tagger_v2", [*PROFILE, "post_meta_fv:caption_embedding"], {"model_version": "2"})
    assert features.services() == ["tagger_v1", "tagger_v2"]
    entities = pd.DataFrame({"user_id": ["u1"], "post_id": ["p1"], "event_timestamp": [at(1)]})
    v1 = features.historical(entities, "tagger_v1")
    assert [c for c in v1.columns if c not in entities.columns] == ["posts_7d"]
    v2 = features.historical(entities, "tagger_v2")
    assert [c for c in v2.columns if c not in entities.columns] == [
        "posts_7d",
        "engagement_rate_28d",
        "caption_embedding",
    ]
    # a version's service never changes; registering it again with the same features is a no-op
    features.register_service("tagger_v1", ["user_profile_fv:posts_7d"])
    with pytest.raises(FeatureError, match="tagger_v1 already names"):
        features.register_service("tagger_v1", PROFILE)
    # applying the repository again keeps the services
    features.apply()
    assert features.service_features("tagger_v1") == ["user_profile_fv:posts_7d"]


def test_bad_requests_get_a_precise_error(features: Features) -> None:
    good = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [at(0)]})
    with pytest.raises(FeatureError, match="event_timestamp"):
        features.historical(good.drop(columns="event_timestamp"), PROFILE)
    with pytest.raises(FeatureError, match="need user_id"):
        features.historical(good.rename(columns={"user_id": "uid"}), PROFILE)
    with pytest.raises(FeatureError, match="no feature nope"):
        features.historical(good, ["user_profile_fv:nope"])
    with pytest.raises(FeatureError, match="no feature view"):
        features.historical(good, ["nope_fv:x"])
    with pytest.raises(FeatureError, match="view:feature"):
        features.online(["posts_7d"], {"user_id": ["u1"]})
    with pytest.raises(FeatureError, match="no feature service tagger_v9"):
        features.historical(good, "tagger_v9")
    with pytest.raises(FeatureError, match="no event_timestamp"):
        features.historical(good.assign(event_timestamp=[pd.NaT]), PROFILE)


def test_the_store_is_chosen_by_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRENDLOOP_REDIS", raising=False)
    monkeypatch.delenv("TRENDLOOP_FEAST_REGISTRY", raising=False)
    with pytest.raises(ConfigError, match="needs environment variables TRENDLOOP_FEAST_REGISTRY, TRENDLOOP_REDIS"):
        Features.open(tmp_path, "feature_store.redis.yaml")
    monkeypatch.setenv("TRENDLOOP_REDIS", "redis.example:6379")
    monkeypatch.setenv("TRENDLOOP_FEAST_REGISTRY", f"sqlite:///{tmp_path / 'registry.sqlite'}")
    cluster = Features.open(tmp_path, "feature_store.redis.yaml")
    assert cluster.store.config.online_store.type == "redis"
    assert cluster.store.config.online_store.connection_string == "redis.example:6379"
    local = Features.open(tmp_path / "local")
    assert local.store.config.online_store.type == "sqlite"
    with pytest.raises(ConfigError, match="does not exist"):
        Features.open(tmp_path, "feature_store.nope.yaml")


def test_sync_writes_the_offline_store_once_per_batch(small_feed: Path, store: Store, features: Features) -> None:
    ingest(small_feed, store, PSEUDONYMS, labels=read_labels(small_feed / "oracle" / "labels"), label_source="seed")
    head = store.head()
    log = PredictionLog(store.root.parent / "predictions")
    first = sync(features, head, log)
    manifest = head.manifest().to_pandas()
    assert first.posts == len(manifest) and first.post_batches == manifest["source"].nunique()
    assert first.labels == int(manifest["label"].notna().sum())
    meta = features.read("post_meta").to_pandas()
    assert sorted(meta["post_id"]) == sorted(manifest["post_id"])
    vectors = np.stack(meta["caption_embedding"].to_numpy())
    assert vectors.shape == (len(manifest), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # posts with the same caption and hashtags embed alike, different ones do not
    row = manifest.set_index("post_id")
    meta = meta.set_index("post_id")
    text = row["caption"] + "|" + row["hashtags"].map(",".join)
    twins = text[text.duplicated(keep=False)]
    if len(twins):
        a, b = twins[twins == twins.iloc[0]].index[:2]
        np.testing.assert_allclose(meta.loc[a, "caption_embedding"], meta.loc[b, "caption_embedding"], atol=1e-5)
    # each post's engagement rate follows its counts
    expected = (row["likes"] + row["comments"] + row["shares"]) / row["views"].clip(lower=1)
    np.testing.assert_allclose(meta["engagement_rate"], expected.loc[meta.index], rtol=1e-5)
    # user profiles: a post's author history never includes the post itself
    profile = features.read("user_profile").to_pandas()
    assert not profile.empty
    assert (profile["posts_28d"] >= profile["posts_7d"]).all()
    for as_of, users in profile.groupby("as_of"):
        before = manifest[manifest["created_at"] < as_of]
        window = before[before["created_at"] >= as_of - pd.Timedelta(days=7)].groupby("user_id").size()
        assert users.set_index("user_id")["posts_7d"].to_dict() == window.reindex(users["user_id"]).fillna(0).to_dict()
    # online: the pushed seed labels read back
    some = manifest.dropna(subset=["label"]).head(3)
    online = features.online(["post_label_fv:label"], {"post_id": some["post_id"].tolist()})
    assert online["label"].tolist() == some["label"].tolist()
    # again: nothing new, nothing written
    again = sync(features, head, log)
    assert (again.posts, again.labels, again.profile_days) == (0, 0, 0)
