"""Active learning without a server: heuristics, batch selection, votes, the queue and relabelling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from personal import PSEUDONYMS

from active_learning.consensus import OTHER, agreement, decide, decide_all, normalise_trend
from active_learning.labelstudio import config_labels, label_config, parse_annotation
from active_learning.pool import mc_dropout_probabilities, score_pool
from active_learning.queue import Annotation, Decision, LabelQueue, QueuedPost
from active_learning.strategies import (
    ACTIVE,
    BALD,
    CONTROL,
    Entropy,
    LeastConfidence,
    Margin,
    RandomScores,
    SelectionConfig,
    heuristic,
    k_center_greedy,
    ranking,
    select_batch,
    stream_scores,
)
from components.data.ingest import ingest, read_labels, relabel
from components.data.snapshot import Store
from components.errors import SnapshotError
from components.model.datasets import labelled_posts
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger

pytestmark = pytest.mark.unit

# Five posts over three labels, made so the heuristics disagree on the order.
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # 0: sure
        [0.50, 0.49, 0.01],  # 1: two-way coin flip
        [0.40, 0.30, 0.30],  # 2: spread over all three
        [0.34, 0.33, 0.33],  # 3: uniform-ish
        [0.60, 0.20, 0.20],  # 4: leaning
    ]
)


def test_least_confidence_ranks_by_top_probability():
    assert LeastConfidence().score(PROBS) == pytest.approx([0.10, 0.50, 0.60, 0.66, 0.40])
    assert ranking(LeastConfidence().score(PROBS)).tolist() == [3, 2, 1, 4, 0]


def test_margin_ranks_by_gap_between_top_two():
    assert Margin().score(PROBS) == pytest.approx([0.15, 0.99, 0.90, 0.99, 0.60])
    # posts 1 and 3 tie on the gap (0.01); ties keep pool order
    assert ranking(Margin().score(PROBS)).tolist() == [1, 3, 2, 4, 0]


def test_entropy_ranks_by_spread():
    expected = [-(row * np.log(row)).sum() for row in PROBS]
    assert Entropy().score(PROBS) == pytest.approx(expected)
    assert ranking(Entropy().score(PROBS)).tolist() == [3, 2, 4, 1, 0]


def test_bald_prefers_disagreeing_samples_to_agreeing_uncertain_ones():
    agree = np.array([[0.5, 0.5], [0.5, 0.5]])  # every sample unsure in the same way: no information
    disagree = np.array([[1.0, 0.0], [0.0, 1.0]])  # samples sure of opposite labels: maximal information
    sure = np.array([[0.99, 0.01], [0.99, 0.01]])
    mixed = np.array([[0.9, 0.1], [0.1, 0.9]])
    samples = np.stack([agree, disagree, sure, mixed])  # (4, T=2, C=2)
    scores = BALD().score(samples)
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    assert scores[1] == pytest.approx(np.log(2), abs=1e-6)
    assert ranking(scores).tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="Monte Carlo"):
        BALD().score(PROBS)


def test_heuristics_average_monte_carlo_samples():
    samples = np.stack([PROBS, PROBS[::-1]], axis=1)  # (5, 2, 3)
    mean = samples.mean(1)
    for h in (LeastConfidence(), Margin(), Entropy()):
        assert h.score(samples) == pytest.approx(h.score(mean))


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(2, 6)), elements=st.floats(0.01, 1.0)),
    st.integers(1, 9),
)
def test_streamed_scores_equal_batch_scores(raw, chunk):
    probs = raw / raw.sum(1, keepdims=True)
    chunks = [probs[i : i + chunk] for i in range(0, len(probs), chunk)]
    for name in ("least_confidence", "margin", "entropy"):
        h = heuristic(name)
        assert np.array_equal(stream_scores(h, chunks), h.score(probs))
    samples = np.stack([probs, probs[::-1]], axis=1)
    assert np.array_equal(
        stream_scores(BALD(), [samples[i : i + chunk] for i in range(0, len(samples), chunk)]), BALD().score(samples)
    )
    assert np.array_equal(stream_scores(RandomScores(5), chunks), RandomScores(5).score(probs))


def test_k_center_greedy_spreads_picks_over_clusters():
    # three tight clusters on the unit circle; the first two rows are near-copies
    angles = np.array([0.0, 0.01, 0.02, 2.0, 2.01, 4.0, 4.02])
    x = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert k_center_greedy(x, 3, first=0) == [0, 5, 3]
    # a labelled point inside the first cluster: the first pick is the farthest cluster instead
    assert k_center_greedy(x, 2, centers=x[:1]) == [5, 3]
    assert k_center_greedy(x, 0) == []
    assert sorted(k_center_greedy(x, 10)) == list(range(7))


def test_select_batch_keeps_a_random_control_share_and_never_repeats():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    config = SelectionConfig(strategy="entropy", diversity=False, batch_size=40, control_share=0.25, seed=1)
    picked = select_batch(scores, None, config)
    assert len(picked.indices) == 40 and len(set(picked.indices.tolist())) == 40
    assert picked.arms.count(CONTROL) == 10 and picked.arms.count(ACTIVE) == 30
    active = picked.indices[np.array(picked.arms) == ACTIVE]
    control = set(picked.indices[np.array(picked.arms) == CONTROL].tolist())
    expected = [i for i in ranking(scores).tolist() if i not in control][:30]
    assert active.tolist() == expected  # the top-scored posts outside the control draw
    # the control draw does not depend on the scores: same seed, other scores, same control
    again = select_batch(rng.random(200), None, config)
    assert set(again.indices[np.array(again.arms) == CONTROL].tolist()) == control


def test_select_batch_with_diversity_picks_among_the_most_uncertain():
    rng = np.random.default_rng(3)
    scores = rng.random(100)
    embeddings = rng.normal(size=(100, 8))
    config = SelectionConfig(strategy="margin", diversity=True, prefilter=3, batch_size=10, control_share=0.0)
    picked = select_batch(scores, embeddings, config)
    top30 = set(ranking(scores)[:30].tolist())
    assert len(picked.indices) == 10 and set(picked.indices.tolist()) <= top30
    assert picked.indices[0] == ranking(scores)[0]  # k-center starts from the most uncertain


def test_select_batch_random_and_small_pools():
    config = SelectionConfig(strategy="random", batch_size=50, control_share=0.1)
    picked = select_batch(np.zeros(8), None, config)
    assert sorted(picked.indices.tolist()) == list(range(8))  # a pool smaller than the batch is taken whole


def test_trend_names_are_normalised():
    assert normalise_trend("  #Meme Face ") == "meme_face"
    assert normalise_trend("meme-face") == "meme_face"
    assert normalise_trend("¡¡!!") is None
    assert normalise_trend("x" * 41) is None
    assert normalise_trend(None) is None


def _ann(i: int, post: str, choice: str | None, trend: str | None = None, cancelled: bool = False) -> Annotation:
    return Annotation(i, 100, post, i, choice, trend, cancelled, None)


def test_majority_vote_ties_unnamed_and_new_classes():
    known = ("food", "pets")
    food = decide("a", [_ann(1, "a", "food"), _ann(2, "a", "food"), _ann(3, "a", "pets")], known)
    assert food == Decision("a", "food", "decided", 3, pytest.approx(2 / 3), False)
    assert decide("b", [_ann(1, "b", "food"), _ann(2, "b", "pets")], known).status == "tied"
    meme = [_ann(1, "c", OTHER, "meme"), _ann(2, "c", OTHER, "meme"), _ann(3, "c", "pets")]
    assert decide("c", meme, known) == Decision("c", "meme", "decided", 3, pytest.approx(2 / 3), True)
    unnamed = [_ann(1, "d", OTHER), _ann(2, "d", OTHER), _ann(3, "d", "food")]
    assert decide("d", unnamed, known).status == "unnamed"
    skipped = [_ann(1, "e", "food"), _ann(2, "e", None, cancelled=True)]
    assert decide("e", skipped, known, min_votes=2).status == "waiting"
    assert [d.post_id for d in decide_all([*meme, *unnamed], known)] == ["c", "d"]


def test_agreement_is_fleiss_kappa():
    # Fleiss (1971) worked example shape: perfect agreement gives kappa 1, and a post with one vote is ignored
    perfect = [_ann(i, p, label) for i, (p, label) in enumerate([("a", "x"), ("a", "x"), ("b", "y"), ("b", "y")])]
    assert agreement([*perfect, _ann(9, "c", "x")]) == agreement(perfect)
    assert agreement(perfect).kappa == pytest.approx(1.0) and agreement(perfect).posts == 2
    # two posts, three raters each: votes (x, x, y) and (y, y, y)
    votes = [("a", "x"), ("a", "x"), ("a", "y"), ("b", "y"), ("b", "y"), ("b", "y")]
    a = agreement([_ann(i, p, label) for i, (p, label) in enumerate(votes)])
    p_bar = (2 / 6 + 6 / 6) / 2  # P_i = sum n(n-1) / (n(n-1))
    p_e = (2 / 6) ** 2 + (4 / 6) ** 2
    assert a.pairwise == pytest.approx(p_bar)
    assert a.kappa == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert agreement([]).kappa is None


def test_label_config_offers_labels_and_other_and_parses_back():
    config = label_config(["food", "pets & co"])
    assert config_labels(config) == ["food", "pets & co"]
    assert OTHER in config and 'name="trend"' in config
    raw = {
        "id": 7,
        "completed_by": 3,
        "was_cancelled": False,
        "updated_at": "2026-01-05T10:00:00.5Z",
        "result": [
            {"from_name": "label", "value": {"choices": [OTHER]}},
            {"from_name": "trend", "value": {"text": ["#Vintage Cars"]}},
        ],
    }
    assert parse_annotation(1, "p", raw) == Annotation(
        7, 1, "p", 3, OTHER, "vintage_cars", False, "2026-01-05T10:00:00.500000Z"
    )


def _queued(post_id: str, **kw) -> QueuedPost:
    values = dict(image=f"images/{post_id}.png", batch="b1", arm=ACTIVE, strategy="entropy", score=1.0)
    values.update(predicted="food", confidence=0.4, model_version="1")
    return QueuedPost(post_id, **{**values, **kw})


def test_queue_is_idempotent(tmp_path: Path):
    queue = LabelQueue(tmp_path / "queue.db")
    assert queue.add([_queued("a"), _queued("b", hashtags=("x",))]) == 2
    assert queue.add([_queued("a", score=9.0), _queued("c")]) == 1  # a is queued already: kept as it was
    assert {p.post_id: p.score for p in queue.posts()} == {"a": 1.0, "b": 1.0, "c": 1.0}
    queue.mark_pushed({"a": 11}, project_id=1)
    assert [p.post_id for p in queue.pending()] == ["b", "c"]
    assert queue.posts()[1].hashtags == ("x",)
    notes = [_ann(1, "a", "pets"), _ann(2, "a", "pets")]
    assert queue.record_annotations(notes, "t1") == 2
    assert queue.record_annotations(notes, "t2") == 0  # pulled again: nothing new
    assert len(queue.annotations()) == 2 and queue.get("pull_cursor") == "t2"
    queue.save_decisions(decide_all(queue.annotations(), ("food", "pets")))
    assert queue.uncommitted() == {"a": "pets"}
    queue.mark_committed(["a"], "snap1")
    queue.save_decisions(decide_all(queue.annotations(), ("food", "pets")))  # same verdict: stays committed
    assert queue.uncommitted() == {} and queue.counts()["committed"] == 1


def test_relabel_commits_labels_once_and_reports_missing_posts(small_feed: Path, store: Store):
    ingest(small_feed, store, PSEUDONYMS)
    head = store.head()
    unlabelled = [r["post_id"] for r in head.manifest().select(["post_id", "label"]).to_pylist() if r["label"] is None]
    unlabelled = unlabelled[:3]
    assert len(unlabelled) == 3
    labels = {unlabelled[0]: "food", unlabelled[1]: "meme", "no-such-post": "pets"}
    report = relabel(store, labels, "annotators", {"batch": "labels-1"})
    assert report.new_snapshot and report.relabelled == sorted(unlabelled[:2]) and report.missing == ["no-such-post"]
    rows = {r["post_id"]: r for r in store.head().manifest().to_pylist()}
    assert rows[unlabelled[0]]["label"] == "food" and rows[unlabelled[0]]["label_source"] == "annotators"
    assert rows[unlabelled[2]]["label"] is None
    assert store.head().parent == head.id
    again = relabel(store, labels, "annotators", {"batch": "labels-1"})
    assert again.snapshot == report.snapshot and not again.new_snapshot and again.relabelled == []
    assert again.unchanged == 2


def test_relabel_needs_a_snapshot(store: Store):
    with pytest.raises(SnapshotError, match="no snapshots"):
        relabel(store, {"a": "food"}, "annotators", {})


@pytest.fixture(scope="module")
def scored_store(small_feed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Predictor, list, list]:
    store = Store(tmp_path_factory.mktemp("pool") / "store")
    ingest(small_feed, store, PSEUDONYMS, labels=read_labels(small_feed / "oracle" / "labels"))
    posts = labelled_posts(store, store.head()).head(50)
    torch.manual_seed(0)
    spec = TaggerSpec("resnet18", ("a", "b", "c"), Preprocessing(image_size=32, resize=36))
    return store, Predictor(build_tagger(spec)), list(posts.path), list(posts.post_id)


def test_pool_scores_do_not_depend_on_chunking(scored_store):
    _, predictor, paths, ids = scored_store
    for scorer in (Entropy(), BALD()):
        whole = score_pool(predictor, paths, ids, scorer, mc_samples=8, chunk=1024)
        chunked = score_pool(predictor, paths, ids, scorer, mc_samples=8, chunk=7)
        assert np.allclose(whole.scores, chunked.scores, atol=1e-6)
        assert np.allclose(whole.predictions.probabilities, chunked.predictions.probabilities, atol=1e-6)
        assert whole.predictions.embeddings.shape == (50, 512)
    empty = score_pool(predictor, [], [], Entropy())
    assert empty.scores.shape == (0,) and empty.predictions.probabilities.shape == (0, 3)


def test_mc_dropout_samples_depend_on_the_post_not_its_neighbours(scored_store):
    _, predictor, _, ids = scored_store
    emb = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    together = mc_dropout_probabilities(predictor, emb, ids[:4], samples=5, rate=0.3)
    alone = mc_dropout_probabilities(predictor, emb[2:3], ids[2:3], samples=5, rate=0.3)
    assert together.shape == (4, 5, 3)
    assert np.allclose(together[2], alone[0], atol=1e-6)
    assert not np.allclose(together[2, 0], together[2, 1])  # the samples differ from each other
    assert np.allclose(together.sum(-1), 1.0, atol=1e-5)
