"""The A/B test tells a better model from a worse one, and the verdict is the models' doing.

Real taggers trained on a simulated feed serve the feed's unseen posts through the real
router and FastAPI app (in process: ``httpx.ASGITransport``, no Ray); simulated viewers
(``serving.traffic``) engage with a post by their interest in what it truly shows and by
whether its served top-1 tag is right. Nothing tells the viewers which arm is which. The
verdict is ``serving.report.ab_report`` over the prediction and feedback logs the router
wrote, under a rule declared before each test starts.

The feed: a meme format is 30% of posts from the first day. The champion never saw a
meme label (annotators had not named the class yet), so it tags every meme wrong.

- the good challenger is the champion fine-tuned with replay on the meme labels (the
  loop's continual-learning step): it knows the new class;
- the worse challenger is trained like the champion but on one day of posts instead of
  four: a real model, clearly less accurate on the old classes, and it knows no memes.

Sizes: at serving.traffic's default audience and the default rule a lift like these needs
tens of thousands of requests (see serving.traffic); here an engaged, picky audience and a
rule whose tau is the lift hoped for decide in 5,000 requests per test. About 80 s of CPU,
single-threaded: a minute and a half on two idle cores, two and a half on two busy ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from personal import PSEUDONYMS

from components.data.ingest import ingest, read_labels
from components.data.predlog import PredictionLog
from components.data.snapshot import Store
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.train import Base, TrainConfig, train
from components.simulator.feed import FeedSpec, simulate
from components.simulator.trends import NewClass
from serving.abtest import DecisionRule
from serving.api import build_api
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION, Experiments
from serving.report import ab_report
from serving.router import RequestBook, Router, Traffic
from serving.tagging import ArmModel, PostContext
from serving.traffic import Audience, DriveStats, Engagement, FeedPost, drive, feed_posts

# the input size these tests' margins were measured with (the default [train] preprocessing is larger)
SMALL = Preprocessing(image_size=32, resize=36)
SEED = 21
FEED = FeedSpec(
    seed=SEED,
    posts_per_day=100,
    difficulty=0.3,  # an easier feed than the default: a tagger learns it in a few CPU seconds
    exif_share=0.2,
    corrupt_share=0.02,  # a few broken uploads among the served posts: refused with a 4xx, counted, not fatal
    repost_share=0.0,
    trends=[NewClass(name="meme", look="meme", start_day=0, ramp_days=0, share=0.3)],
)
TRAIN_DAYS, SERVED_DAYS = range(4), range(4, 6)  # the A/B test serves posts no model was trained on
CONFIG = TrainConfig(epochs=5, patience=5, batch_size=32, keep="last", seed=0, preprocessing=SMALL)
# with the default replay: 4 old posts per meme. Four epochs: with two, seed 21 on an AMD EPYC machine (float
# rounding of its own) learnt memes to 0.35 and the test could not decide
FINETUNE = CONFIG.model_copy(update={"epochs": 4, "patience": 4})
# An engaged, picky audience so that a few thousand requests decide: a median viewer engages with 30% of the
# fitting posts of average interest it is served, and with a tenth as many when the top tag is wrong.
AUDIENCE = Audience(viewers=1200, tags=tuple(FEED.tags()), base_rate=0.3, miss=0.1, seed=SEED)
# Declared before the tests start: tau at the lift hoped for (a 30% class the champion always misses),
# the default alpha and minimum sample. In process, latencies are the event loop's scheduling noise
# (sub-millisecond), not the models' cost: the latency guardrail is set out of reach here (its own tests
# are in tests/test_abtest.py).
RULE = DecisionRule(tau=0.3, max_latency_increase=1000.0)
REQUESTS = 5_000  # per test: about 4 per viewer, so nearly every viewer is in the test


@dataclass(frozen=True)
class World:
    posts: list[FeedPost]  # the served days' posts, broken uploads included
    champion: Predictor  # no meme label
    good: Predictor  # the champion fine-tuned with replay on the meme labels
    worse: Predictor  # trained like the champion on day 0 only


def build_world(root: Path, seed: int = SEED) -> World:
    """Simulate the feed, ingest it twice and train the three taggers."""
    spec = FEED.model_copy(update={"seed": seed})
    simulate(spec, root / "feed", range(SERVED_DAYS.stop))
    oracle = read_labels(root / "feed" / "oracle" / "labels")
    old = {post: label for post, label in oracle.items() if label != "meme"}
    memes = {post: label for post, label in oracle.items() if label == "meme"}
    until = spec.day_start(TRAIN_DAYS.stop)
    config = CONFIG.model_copy(update={"seed": seed})

    store = Store(root / "store")
    ingest(root / "feed", store, PSEUDONYMS, labels=old, label_source="seed", until=until)
    before = store.head()
    ingest(root / "feed", store, PSEUDONYMS, labels=memes, label_source="annotators", until=until)  # memes named
    champion = train(store, before, config, root / "runs" / "champion").tagger
    finetune = FINETUNE.model_copy(update={"seed": seed})
    good = train(store, store.head(), finetune, root / "runs" / "good", base=Base(champion, before)).tagger

    one_day = Store(root / "one-day")
    ingest(root / "feed", one_day, PSEUDONYMS, labels=old, label_source="seed", until=spec.day_start(1))
    worse = train(one_day, one_day.head(), config, root / "runs" / "worse").tagger
    posts = feed_posts(root / "feed", SERVED_DAYS)
    return World(posts, Predictor(champion), Predictor(good), Predictor(worse))


def in_process_arm(predictor: Predictor, version: int):
    """An arm as the app has one: an ``ArmModel`` serving ``version``, called per request."""
    model = ArmModel(lambda _: predictor)
    model.use(version)
    answers: dict[bytes, object] = {}

    async def arm(upload: bytes, context: dict):
        # the model is deterministic: a post seen again gets the answer it got the first time (two hundred
        # posts are viewed thousands of times; running the network again each time would cost minutes)
        if upload not in answers:
            answers[upload] = model.predict([upload], [PostContext(**context)])[0]
        return answers[upload]

    return arm


def run_ab(
    root: Path, champion: Predictor, challenger: Predictor, posts: list[FeedPost], requests: int, seed: int = SEED
) -> tuple[dict, DriveStats]:
    """Start an experiment, drive ``requests`` through the app, close the logs; (the A/B report, what was sent)."""
    experiments = Experiments(root / "experiments")
    experiment = experiments.start(1, 2, 0.5, RULE.to_dict(), salt=f"ab-models-{seed}")
    predictions, feedback = PredictionLog(root / "predictions"), FeedbackLog(root / "feedback")
    router = Router(
        {CHAMPION: in_process_arm(champion, 1), CHALLENGER: in_process_arm(challenger, 2)},
        EventWriter(predictions, "ab"),
        EventWriter(feedback, "ab"),
        RequestBook(predictions),
        Traffic(0.5, experiment.salt, experiment.id, 1, 2),
        pseudonyms=PSEUDONYMS,
    )
    api = build_api(router, {}, dict)
    transport = httpx.ASGITransport(app=api)
    traffic = drive("http://app", posts, replace(AUDIENCE, seed=seed), requests, seed=seed, transport=transport,
                    impressions=False)  # fmt: skip
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever the caller runs
        stats = pool.submit(asyncio.run, traffic).result()
    assert router.close() == 0
    return ab_report(predictions, feedback, experiments.get(experiment.id)), stats


@pytest.mark.unit
def test_engagement_is_propensity_times_interest_times_fit() -> None:
    audience = Audience(viewers=20_000, tags=("cars", "pets", "meme"), seed=4)
    engagement = Engagement(audience)
    propensity, interest = engagement.propensity, engagement.interest  # (V,), (V, T)
    assert abs(np.median(propensity) / audience.base_rate - 1) < 0.02  # log-normal around base_rate
    assert interest.shape == (20_000, 3) and interest.mean() == pytest.approx(1.0)  # 1 on average, by construction
    for v in range(50):
        right, wrong = engagement.probability(v, "pets", "pets"), engagement.probability(v, "pets", "cars")
        assert right == pytest.approx(min(propensity[v] * interest[v, 1], 0.95))
        assert wrong == pytest.approx(min(propensity[v] * interest[v, 1] * audience.miss, 0.95))
        assert engagement.probability(v, None, "cars") == pytest.approx(min(propensity[v], 0.95))  # truth unknown
    again = Engagement(audience)
    assert np.array_equal(again.propensity, propensity) and np.array_equal(again.interest, interest)
    post = FeedPost("p1", b"jpeg", "Nap champion", ("#puppy", "#love"), "pets")
    assert post.params("viewer-1") == {
        "user_id": "viewer-1", "post_id": "p1", "caption": "Nap champion", "hashtags": ["#puppy", "#love"]
    }  # fmt: skip
    assert FeedPost(None, b"jpeg").params("viewer-1") == {"user_id": "viewer-1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    threads = torch.get_num_threads()
    # one thread while this module trains and serves: the same answers on any machine, and on two busy cores
    # one thread is faster than two (waiting threads spin)
    torch.set_num_threads(1)
    try:
        yield build_world(tmp_path_factory.mktemp("ab-models"))
    finally:
        torch.set_num_threads(threads)


def check_traffic(report: dict, stats: DriveStats, requests: int) -> None:
    """What the viewers sent is what the analysis read: every readable post served, broken ones refused
    (400 empty, 415 not an image, 422 truncated or too many pixels)."""
    assert set(stats.failed) <= {400, 415, 422} and stats.ok + sum(stats.failed.values()) == requests
    for arm in (CHAMPION, CHALLENGER):
        assert report["arms"][arm]["exposures"] == stats.arms[arm]
        assert report["arms"][arm]["engagements"] == stats.engagements[arm]
    assert report["srm"]["ok"] and min(report["arms"][a]["users"] for a in (CHAMPION, CHALLENGER)) >= 500


@pytest.mark.model
def test_a_challenger_that_knows_the_new_class_is_promoted(world: World, tmp_path: Path) -> None:
    report, stats = run_ab(tmp_path, world.champion, world.good, world.posts, REQUESTS)
    check_traffic(report, stats, REQUESTS)
    # why: the champion has no meme label; the fine-tune tags memes right (0.28 to 0.81 over seeds 21 and 1-3
    # on an AMD EPYC machine; 0.65 for seed 21)
    assert stats.fit_rate(CHAMPION, "meme") == 0.0 and stats.fit_rate(CHALLENGER, "meme") > 0.2
    # Over 10 seeds (21 and 1-9: feed, training, viewers and traffic all drawn anew) every verdict was
    # "promote" with a two-epoch fine-tune on the machine these bounds were first measured on: the always-valid
    # lower bound on the lift was +0.08 to +0.46, the lift +0.38 to +0.95, the fit rate going from 0.24-0.41 to
    # 0.50-0.71. With four epochs on the AMD EPYC machine, seeds 21 and 1-3 all promoted (fit 0.27-0.36 to
    # 0.47-0.61).
    assert report["decision"]["verdict"] == "promote", report["decision"]


@pytest.mark.model
def test_a_less_accurate_challenger_is_rolled_back(world: World, tmp_path: Path) -> None:
    report, stats = run_ab(tmp_path, world.champion, world.worse, world.posts, REQUESTS)
    check_traffic(report, stats, REQUESTS)
    # why: trained on a quarter of the posts, it tags fewer of them right (0.11 to 0.28 fewer
    # of the served posts over 10 seeds)
    assert stats.fit_rate(CHALLENGER) < stats.fit_rate(CHAMPION) - 0.05
    # Over the same 10 seeds every verdict was "rollback": the always-valid upper bound on the lift was
    # -0.07 to -0.30 (seed 21: -0.30), the lift -0.28 to -0.47.
    assert report["decision"]["verdict"] == "rollback", report["decision"]
