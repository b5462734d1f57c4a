"""Drift checks: calibrated false alarms on unchanged traffic, each trend type flagged, emerging clusters.

The calibration tests draw both windows from one synthetic distribution many times
(fast, no model); the trend tests run a real champion over simulated days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import torch
from personal import PSEUDONYMS
from sklearn.metrics import roc_auc_score

from components.data.ingest import ingest, read_labels
from components.data.snapshot import Store
from components.errors import DriftError, QuietWindow
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.train import TrainConfig, train
from components.monitor.checks import predict_window, reference_windows
from components.monitor.drift import SIGNALS, DriftConfig, Window, auc_threshold, detect_drift, hashtag_rarity
from components.monitor.emerging import find_emerging
from components.monitor.triggers import (
    DriftTrigger,
    NewLabelsTrigger,
    PerformanceTrigger,
    RetrainPolicy,
    ScheduleTrigger,
    TriggerContext,
)
from components.simulator.feed import FeedSpec, read_feed, simulate
from components.simulator.trends import NewClass, PriorShift, StyleShift

# the input size these tests' margins were measured with (the default [train] preprocessing is larger)
SMALL = Preprocessing(image_size=32, resize=36)
TAGS = [f"#t{i}" for i in range(40)]
WORDS = ["brunch", "goals", "sunday", "drive", "garden", "bloom", "city", "lights", "nap", "walkies"]


def synthetic(rng: np.random.Generator, n: int, new_share: float = 0.0) -> Window:
    """Posts from 8 Gaussian clusters in 32-D; ``new_share`` of them from a ninth, with a new hashtag."""
    centres = np.random.default_rng(0).normal(0, 1, (9, 32))
    centres[8] = np.r_[np.zeros(24), np.full(8, 4.0)]  # the new cluster points its own way
    cluster = rng.integers(0, 8, n)
    cluster[rng.random(n) < new_share] = 8
    emb = np.maximum(centres[cluster] + rng.normal(0, 0.7, (n, 32)), 0)  # ReLU features
    hashtags = [[TAGS[(5 * c + k) % 40] for k in rng.integers(0, 5, 2)] + (["#new"] if c == 8 else []) for c in cluster]
    posts = pd.DataFrame(
        {
            "post_id": [f"p{i}" for i in range(n)],
            "created_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 86400, n), "s"),
            "predicted": [f"c{min(c, 7)}" if rng.random() < 0.8 else f"c{rng.integers(8)}" for c in cluster],
            "confidence": rng.beta(5, 2, n),
            "hashtags": hashtags,
            "caption": [" ".join(rng.choice(WORDS, 3)) for _ in range(n)],
        }
    )
    return Window(posts, emb.astype(np.float32))


@pytest.mark.unit
def test_false_alarms_stay_within_the_configured_rate() -> None:
    # A loose overall rate (0.3, so 0.05 per test) makes each test's false alarms countable in 120 checks.
    config = DriftConfig(false_alarm_rate=0.3, outliers=0)
    checks, alarms = 120, dict.fromkeys(SIGNALS, 0)
    any_alarm = 0
    for seed in range(checks):
        rng = np.random.default_rng(seed)
        verdict, _, _ = detect_drift(synthetic(rng, 300), synthetic(rng, 150), config)
        any_alarm += verdict.drifted
        for name in verdict.drifted_signals:
            alarms[name] += 1
    # Binomial(120, 0.05) exceeds 13 with probability under 1%; a test that treats a sample as
    # the truth (Evidently's goodness-of-fit chi-square on a 300-post reference) goes well past it.
    assert all(count <= 13 for count in alarms.values()), alarms
    assert any_alarm / checks <= 0.3, any_alarm


@pytest.mark.unit
def test_a_new_cluster_is_flagged_with_its_hashtag() -> None:
    rng = np.random.default_rng(1)
    verdict, ref_novelty, cur_novelty = detect_drift(synthetic(rng, 400), synthetic(rng, 300, new_share=0.1))
    assert verdict.drifted
    assert {"novelty", "hashtags"} <= set(verdict.drifted_signals)
    assert cur_novelty.mean() > np.nanmean(ref_novelty)


@pytest.mark.unit
def test_auc_threshold_matches_the_simulated_null() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(150), np.ones(75)]
    aucs = [roc_auc_score(y, rng.random(len(y))) for _ in range(4000)]
    assert auc_threshold(300, 150, 0.05) == pytest.approx(np.quantile(aucs, 0.95), abs=0.01)


@pytest.mark.unit
def test_hashtag_rarity_is_the_surprise_of_the_rarest_tag() -> None:
    index = pd.Series([["#a"], ["#a"], ["#a", "#b"], []])
    scores = hashtag_rarity(index, pd.Series([["#a"], ["#b", "#a"], ["#zzz"], []]))
    assert scores == pytest.approx([-np.log(3.5 / 5), -np.log(1.5 / 5), -np.log(0.5 / 5), 0.0])


@pytest.mark.unit
def test_small_or_mismatched_windows_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(QuietWindow, match="current window holds 12 posts"):  # too little traffic: not drift
        detect_drift(synthetic(rng, 300), synthetic(rng, 12))
    with pytest.raises(DriftError, match="reference window holds 12 posts") as small:  # a setup problem
        detect_drift(synthetic(rng, 12), synthetic(rng, 300))
    assert not isinstance(small.value, QuietWindow)
    window = synthetic(rng, 40)
    with pytest.raises(DriftError, match="40 posts but 39 embeddings"):
        Window(window.posts, window.embeddings[:39])


@pytest.mark.unit
def test_captions_without_comparable_words_are_skipped_not_fatal() -> None:
    rng = np.random.default_rng(0)
    ref, cur = synthetic(rng, 200), synthetic(rng, 100)
    ref.posts["caption"], cur.posts["caption"] = "the", "the"  # stop words only
    verdict, _, _ = detect_drift(ref, cur)
    captions = verdict.signal("captions")
    assert not captions.drifted and captions.detail == "no comparable words"
    assert len(verdict.signals) == len(SIGNALS)


def context(**changes) -> TriggerContext:
    base = dict(
        now=pd.Timestamp("2026-01-20", tz="UTC").to_pydatetime(),
        drift=None,
        new_labels=0,
        champion_since=pd.Timestamp("2026-01-15", tz="UTC").to_pydatetime(),
        feedback_accuracy=None,
        feedback_posts=0,
        champion_accuracy=0.8,
    )
    return TriggerContext(**(base | changes))


@pytest.mark.unit
def test_triggers_fire_on_their_own_evidence() -> None:
    rng = np.random.default_rng(1)
    drifted, _, _ = detect_drift(synthetic(rng, 400), synthetic(rng, 300, new_share=0.1))
    assert DriftTrigger().should_retrain(context(drift=drifted)).fire
    assert not DriftTrigger(min_signals=6).should_retrain(context(drift=drifted)).fire
    assert not DriftTrigger().should_retrain(context()).fire
    assert NewLabelsTrigger(500).should_retrain(context(new_labels=500)).fire
    assert not NewLabelsTrigger(500).should_retrain(context(new_labels=499)).fire
    assert not ScheduleTrigger(timedelta(days=7)).should_retrain(context()).fire  # 5 days old
    assert ScheduleTrigger(timedelta(days=5)).should_retrain(context()).fire
    assert not ScheduleTrigger().should_retrain(context(champion_since=None)).fire  # the policy's call
    drop = context(feedback_accuracy=0.74, feedback_posts=150)
    assert PerformanceTrigger(0.05, 100).should_retrain(drop).fire
    assert not PerformanceTrigger(0.07, 100).should_retrain(drop).fire
    assert not PerformanceTrigger(0.05, 200).should_retrain(drop).fire  # too little feedback to tell
    policy = RetrainPolicy(new_labels=0, every_days=0, max_accuracy_drop=0)
    decisions = policy.decide(context(drift=drifted, new_labels=20))
    assert [d.trigger for d in decisions] == ["labels", "drift"] and policy.due(decisions)
    assert not policy.due(policy.decide(context(drift=drifted, new_labels=19)))  # drift alone is not enough


# -- a real champion over simulated days ---------------------------------------------------

FEED = FeedSpec(seed=5, posts_per_day=250, exif_share=0.0, corrupt_share=0.0, repost_share=0.0, trends=[])
TREND_DAY = 4
SCENARIOS = {
    "none": [],
    "new_class": [NewClass(name="meme", look="meme", start_day=TREND_DAY, share=0.2)],
    "style_shift": [StyleShift(filter="vintage", start_day=TREND_DAY, share=0.2)],
    # fitness 12% -> 55%. At x3 (12% -> 30%) this champion (~60% accurate) against a 267-post reference
    # flagged the shift for PRIOR_X3; at x8 for PRIOR_X8.
    "prior_shift": [PriorShift(start_day=TREND_DAY, weights={"fitness": 8.0})],
}


@dataclass
class Traffic:
    reference: Window
    index: Window  # the champion's training posts
    days: dict[str, pd.DataFrame]  # scenario -> the trend's first two days of posts, with oracle labels
    windows: dict[str, Window]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("drift")
    simulate(FEED, root / "seed", range(TREND_DAY), workers=2)
    store = Store(root / "store")
    ingest(root / "seed", store, PSEUDONYMS, labels=read_labels(root / "seed" / "oracle" / "labels"), workers=2)
    snapshot = store.head()
    result = train(store, snapshot, TrainConfig(epochs=6, patience=6, preprocessing=SMALL), root / "run")
    champion = Predictor(result.tagger)
    days, windows = {}, {}
    for name, trends in SCENARIOS.items():
        spec = FEED.model_copy(update={"trends": trends})
        simulate(spec, root / name, range(TREND_DAY, TREND_DAY + 2), workers=2)  # two days of traffic
        days[name] = read_feed(root / name)
        windows[name] = predict_window(champion, days[name].drop(columns=["label", "filter"]))
    return Traffic(*reference_windows(store, snapshot, champion, 5000), days, windows)


@pytest.mark.model
def test_unchanged_traffic_is_not_flagged(traffic: Traffic) -> None:
    verdict, _, _ = detect_drift(traffic.reference, traffic.windows["none"], index=traffic.index)
    assert not verdict.drifted, verdict.drifted_signals


@pytest.mark.parametrize("scenario", ["new_class", "style_shift", "prior_shift"])
@pytest.mark.model
def test_each_trend_type_is_flagged_at_a_modest_share(traffic: Traffic, scenario: str) -> None:
    verdict, _, _ = detect_drift(traffic.reference, traffic.windows[scenario], index=traffic.index)
    assert verdict.drifted, [(s.name, s.score) for s in verdict.signals]


@pytest.mark.model
def test_the_new_class_forms_an_emerging_cluster(traffic: Traffic) -> None:
    current = traffic.windows["new_class"]
    verdict, ref_novelty, cur_novelty = detect_drift(traffic.reference, current, index=traffic.index)
    clusters = find_emerging(traffic.reference, current, ref_novelty, cur_novelty)
    is_meme = traffic.days["new_class"].set_index("post_id").label.eq("meme")  # 18% of the 500 posts
    # Margins measured over 24 champions: feed seeds 1-15 with training seeds 0-9 on 1 and 2 torch
    # threads, and this test's seeds (feed 5, training 0) retrained under 1 and 2 threads and
    # without vectorised kernels (ATEN_CPU_CAPABILITY=default), as another machine may train.
    emerging = [post for cluster in clusters for post in cluster.post_ids]
    assert is_meme[emerging].mean() >= 0.6  # measured 0.78-0.97; random posts: 0.18
    assert is_meme[emerging].sum() >= 0.2 * is_meme.sum()  # measured 0.32-0.79 of the memes
    best = max(clusters, key=lambda c: is_meme[c.post_ids].mean())
    assert any(tag in {"#meme", "#memes", "#relatable", "#lol", "#newformat"} for tag in best.top_hashtags)
    # The verdict lists the 20 posts of highest novelty, highest first...
    novelty = pd.Series(cur_novelty, index=current.posts.post_id)
    listed = [o.post_id for o in verdict.outliers]
    assert len(listed) == 20 and novelty[listed].is_monotonic_decreasing
    assert novelty[listed].min() >= novelty.drop(listed).max()
    # ...and novelty ranks the new class above the rest. Checked over the whole window by ROC AUC:
    # the meme share of 20 listed posts measured 0.20-0.65, while 20 random posts exceed 0.40 one
    # time in 100 (hypergeometric), too few posts to tell a ranking from chance. The AUC measured
    # 0.64-0.76 (median 0.71); random scores give 0.5 +- 0.033 (Hanley & McNeil), so 0.6 is 3 sd above chance.
    assert roc_auc_score(is_meme[current.posts.post_id], cur_novelty) >= 0.6
