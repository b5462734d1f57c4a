"""``find_emerging``: which groups of posts is the champion seeing for the first time?

Candidates are the current window's posts far from the reference (novelty above
the reference's 90th percentile), low in confidence (below its 10th percentile) or
carrying a hashtag rare in the reference. They are clustered by k-means on the
unit-length embedding joined with the post's hashtags weighted by their rarity
(a new trend brings its own words even where the champion's embedding cannot tell
it from a known class); each cluster is then
compared with the reference: the reference's own candidates (scored the same way)
are assigned to the nearest centre, and a cluster is *emerging* when it holds a
much larger share of the current window than of the reference. That comparison is
what separates a new trend from the hard posts every window has.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.monitor.drift import Window

CANDIDATE_QUANTILE = 0.9  # novelty above the reference's 90th percentile, or confidence below its 10th
RARE_HASHTAG = 0.01  # or a hashtag on fewer than 1% of reference posts


class EmergingConfig(BaseModel):
    """What counts as an emerging cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_size: int = Field(default=10, ge=2)  # fewer current posts: not reported
    min_lift: float = Field(default=2.0, ge=1)  # share of the current window over share of the reference
    posts_per_cluster: int = Field(default=40, ge=5)  # k-means k is candidates / this, within 2..max_clusters
    max_clusters: int = Field(default=12, ge=2)
    examples: int = Field(default=8, ge=1)  # post ids listed per cluster, nearest the centre first
    hashtags: int = Field(default=5, ge=0)  # top hashtags listed per cluster
    seed: int = 0


@dataclass(frozen=True)
class EmergingCluster:
    size: int  # current posts in the cluster
    share: float  # of the current window
    reference_share: float  # of the reference window that falls in the same region
    lift: float  # share / reference_share (reference count smoothed by one post)
    per_day: dict[str, int]  # date -> posts of the cluster that day
    growth_per_day: float  # least-squares slope of the daily share, in share points per day
    examples: list[str]  # post ids, nearest the cluster centre first
    post_ids: list[str]  # every member, nearest the centre first (active learning draws from these)
    top_hashtags: list[str]  # most over-represented against the reference
    predicted_as: dict[str, int]  # what the champion calls these posts, most common first
    mean_confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def find_emerging(
    reference: Window,
    current: Window,
    reference_novelty: np.ndarray,
    current_novelty: np.ndarray,
    config: EmergingConfig | None = None,
) -> list[EmergingCluster]:
    """Emerging clusters in ``current``, largest first. Novelty scores come from ``detect_drift``
    (NaN for the reference posts that served as its kNN index: those are left out here)."""
    config = config or EmergingConfig()
    from sklearn.cluster import KMeans  # noqa: PLC0415

    held = ~np.isnan(reference_novelty)  # the reference posts scored against the rest
    reference, reference_novelty = reference.take(np.flatnonzero(held)), reference_novelty[held]
    far = np.quantile(reference_novelty, CANDIDATE_QUANTILE)
    unsure = np.quantile(reference.posts.confidence, 1 - CANDIDATE_QUANTILE)
    ref_tags = Counter(tag for tags in reference.posts.hashtags for tag in set(tags))
    rare = RARE_HASHTAG * len(reference)

    def candidates(window: Window, novelty: np.ndarray) -> np.ndarray:
        new_words = np.array([any(ref_tags[t] < rare for t in tags) for tags in window.posts.hashtags], bool)
        return np.flatnonzero((novelty > far) | (window.posts.confidence.to_numpy() < unsure) | new_words)

    cur_cand, ref_cand = candidates(current, current_novelty), candidates(reference, reference_novelty)
    if len(cur_cand) < max(config.min_size, 2):
        return []
    points = _features(current.take(cur_cand), ref_tags, len(reference))  # (M, D + H)
    k = int(np.clip(len(cur_cand) // config.posts_per_cluster, 2, config.max_clusters))
    k = min(k, len(cur_cand))
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=config.seed).fit(points)
    members = kmeans.labels_
    ref_members = np.array([], int)
    if len(ref_cand):
        ref_members = kmeans.predict(_features(reference.take(ref_cand), ref_tags, len(reference), points.shape[1]))
    days = current.posts.created_at.dt.strftime("%Y-%m-%d")
    posts_per_day = days.value_counts()
    clusters = []
    for c in range(k):
        rows = cur_cand[members == c]
        share = len(rows) / len(current)
        ref_share = (int((ref_members == c).sum()) + 1) / len(reference)  # smoothed: never divide by zero
        lift = share / ref_share
        if len(rows) < config.min_size or lift < config.min_lift:
            continue
        centre = kmeans.cluster_centers_[c]
        nearest = rows[np.argsort(np.linalg.norm(points[members == c] - centre, axis=1))]
        per_day = days.iloc[rows].value_counts().sort_index()
        clusters.append(
            EmergingCluster(
                size=len(rows),
                share=share,
                reference_share=ref_share,
                lift=lift,
                per_day={d: int(n) for d, n in per_day.items()},
                growth_per_day=_growth(per_day, posts_per_day),
                examples=[str(p) for p in current.posts.post_id.iloc[nearest[: config.examples]]],
                post_ids=[str(p) for p in current.posts.post_id.iloc[nearest]],
                top_hashtags=_top_hashtags(
                    current.posts.hashtags.iloc[rows], ref_tags, len(reference), config.hashtags
                ),
                predicted_as=dict(Counter(current.posts.predicted.iloc[rows]).most_common()),
                mean_confidence=float(current.posts.confidence.iloc[rows].mean()),
            )
        )
    return sorted(clusters, key=lambda c: -c.size)


def _features(window: Window, reference: Counter, n_reference: int, width: int | None = None) -> np.ndarray:
    """(N, D + H): unit embedding, then a unit-length bag of hashtags weighted by surprise under
    the reference (-log share, add-half smoothed), hashed into H = D buckets."""
    emb = window.unit_embeddings()
    width = width or 2 * emb.shape[1]
    bag = np.zeros((len(window), width - emb.shape[1]), np.float32)
    for i, tags in enumerate(window.posts.hashtags):
        for tag in set(tags):
            bucket = int(hashlib.md5(tag.encode()).hexdigest()[:8], 16) % bag.shape[1]
            bag[i, bucket] += -math.log((reference[tag] + 0.5) / (n_reference + 1))
    bag /= np.maximum(np.linalg.norm(bag, axis=1, keepdims=True), 1e-12)
    return np.hstack([emb, bag])


def _growth(per_day, posts_per_day) -> float:
    """Slope of the cluster's daily share of posts (share points per day); 0 over a single day."""
    days = sorted(posts_per_day.index)
    if len(days) < 2:
        return 0.0
    share = np.array([per_day.get(d, 0) / posts_per_day[d] for d in days])
    x = np.arange(len(days), dtype=float)
    return float(np.polyfit(x, share, 1)[0])


def _top_hashtags(tag_lists, reference: Counter, n_reference: int, n: int) -> list[str]:
    """Hashtags ranked by their contribution to KL(cluster || reference): p log(p / q)."""
    counts = Counter(tag for tags in tag_lists for tag in set(tags))
    size = len(tag_lists)

    def gain(tag: str) -> float:
        p, q = counts[tag] / size, (reference[tag] + 0.5) / (n_reference + 1)
        return p * math.log(p / q)

    return sorted((t for t in counts if gain(t) > 0), key=gain, reverse=True)[:n]
