"""The feed simulator: determinism, the schedule as sampled, users, the oracle, uploads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_DAYS, SMALL_FEED
from PIL import Image

from components.errors import ConfigError
from components.simulator.feed import FeedSpec, make_users, plan_day, simulate
from components.simulator.social import engagement_probability

pytestmark = pytest.mark.unit


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (but the metadata file) -> hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_feed_byte_for_byte(tmp_path: Path) -> None:
    spec = SMALL_FEED.model_copy(update={"posts_per_day": 15})
    simulate(spec, tmp_path / "a", range(3))
    simulate(spec, tmp_path / "b", range(3), workers=2)  # parallel days change nothing
    first, second = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(first) == 3 * 15 + 3 * 2 + 3  # images, posts + oracle per day, users x2 + metadata
    assert first == second


def test_days_do_not_depend_on_what_else_is_simulated(tmp_path: Path) -> None:
    spec = SMALL_FEED.model_copy(update={"posts_per_day": 10})
    simulate(spec, tmp_path / "whole", range(4))
    simulate(spec, tmp_path / "parts", range(2, 4))
    simulate(spec, tmp_path / "parts", range(0, 2))  # extends the same folder
    assert tree_digest(tmp_path / "whole") == tree_digest(tmp_path / "parts")


def test_another_seed_gives_another_feed(tmp_path: Path) -> None:
    simulate(SMALL_FEED.model_copy(update={"posts_per_day": 10}), tmp_path / "a", range(1))
    simulate(SMALL_FEED.model_copy(update={"posts_per_day": 10, "seed": 4}), tmp_path / "b", range(1))
    a = pd.read_parquet(tmp_path / "a" / "oracle" / "labels")
    b = pd.read_parquet(tmp_path / "b" / "oracle" / "labels")
    assert list(a.label) != list(b.label)


def test_a_folder_holding_another_scenario_is_refused(tmp_path: Path) -> None:
    simulate(SMALL_FEED.model_copy(update={"posts_per_day": 5}), tmp_path, range(1))
    with pytest.raises(ConfigError, match="different simulation"):
        simulate(SMALL_FEED.model_copy(update={"posts_per_day": 5, "seed": 9}), tmp_path, range(1))


@pytest.mark.parametrize("day", [0, 4, 8, 10, 12, 14, 20])
def test_sampled_class_shares_follow_the_schedule(day: int) -> None:
    spec = FeedSpec(posts_per_day=20_000)  # the default scenario: fitness shift, meme class, vintage filter
    plan = plan_day(spec, day, make_users(spec))
    expected = spec.class_shares(day)
    counts = pd.Series(plan.labels).value_counts()
    for tag, share in expected.items():
        sd = np.sqrt(share * (1 - share) / spec.posts_per_day)
        assert abs(counts.get(tag, 0) / spec.posts_per_day - share) <= 4.5 * sd + 1e-9, tag
    if day < 8:
        assert "meme" not in counts  # a class does not exist before its trend starts
    vintage = sum(f == "vintage" for f in plan.filters) / spec.posts_per_day
    assert vintage == pytest.approx(spec.filter_shares(day).get("vintage", 0.0), abs=0.015)


def test_the_oracle_holds_the_planned_labels_and_posts_hold_none(small_feed: Path) -> None:
    posts = pd.read_parquet(small_feed / "posts")
    oracle = pd.read_parquet(small_feed / "oracle" / "labels")
    assert "label" not in posts.columns
    assert sorted(posts.post_id) == sorted(oracle.post_id)
    users = make_users(SMALL_FEED)
    for day in SMALL_DAYS:
        planned = plan_day(SMALL_FEED, day, users).labels
        ids = [f"s{SMALL_FEED.seed}-d{day:03d}-{i:05d}" for i in range(SMALL_FEED.posts_per_day)]
        assert list(oracle.set_index("post_id").loc[ids, "label"]) == planned
    assert set(oracle.label) == set(SMALL_FEED.tags())


def test_users_post_what_they_are_interested_in() -> None:
    spec = FeedSpec(posts_per_day=5_000, trends=[])
    users = make_users(spec)
    plan = plan_day(spec, 0, users)
    tags = spec.tags()
    for tag in ("food", "cars", "city"):
        authors = plan.authors[np.array(plan.labels) == tag]
        k = tags.index(tag)
        # authors are drawn in proportion to activity x interest: about 3x the mean interest (Dirichlet(0.3))
        assert users.interests[authors, k].mean() > 2 * users.interests[:, k].mean()


def test_engagement_probability_rises_with_interest() -> None:
    p = engagement_probability(np.array([0.0, 0.1, 0.5, 1.0]))
    np.testing.assert_allclose(p, [0.0474, 0.0998, 0.7311, 0.9933], atol=1e-4)


def test_uploads_are_images_of_the_configured_size_with_consistent_exif(small_feed: Path) -> None:
    posts = pd.read_parquet(small_feed / "posts")
    oracle = pd.read_parquet(small_feed / "oracle" / "labels").set_index("post_id")
    intact = oracle[oracle.corruption.isna()]
    assert oracle.corruption.notna().sum() > 0 and intact.has_gps.sum() > 0
    for post_id, image in posts.set_index("post_id").image.items():
        truth = oracle.loc[post_id]
        if truth.corruption is not None:
            continue
        with Image.open(small_feed / image) as im:
            exif = im.getexif()
            assert exif.get(0x0112, 1) == truth.orientation
            assert bool(exif.get_ifd(0x8825)) == truth.has_gps
            expected = (64, 64)
            assert im.size == expected and im.mode == "RGB"


def test_engagement_counts_are_consistent(small_feed: Path) -> None:
    posts = pd.read_parquet(small_feed / "posts")
    assert (posts.views >= posts.likes).all()
    assert (posts.likes >= posts.comments).all() and (posts.likes >= posts.shares).all()
    assert posts.likes.sum() > 0
    assert posts.created_at.dt.tz is not None
