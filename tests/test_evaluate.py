"""Metrics, slices, per-post outcomes and the evaluation record, on hand-made predictions (the gate: test_gate.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import torch

from components.errors import ConfigError
from components.model.evaluate import (
    PERTURBATIONS,
    Evaluation,
    Outcomes,
    evaluate,
    expected_calibration_error,
    score,
    stability,
    trend_slices,
)
from components.model.predict import Predictions

pytestmark = pytest.mark.unit


def test_score_counts_the_confusion_and_per_class_figures() -> None:
    true = ["cat", "cat", "cat", "dog", "dog", "meme"]
    pred = ["cat", "cat", "dog", "dog", "cat", "cat"]
    m = score(true, pred, np.full(6, 0.5), labels=("cat", "dog"))
    assert m.classes == ["cat", "dog", "meme"]  # a true label the model lacks is added
    assert m.confusion == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.per_class["cat"] == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert m.per_class["dog"]["precision"] == pytest.approx(1 / 2)
    assert m.per_class["meme"]["recall"] == 0
    assert m.macro_f1 == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)


def test_ece_is_zero_when_calibrated_and_the_gap_when_overconfident() -> None:
    conf = np.array([0.75] * 4)
    assert expected_calibration_error(conf, np.array([1, 1, 1, 0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.95] * 10), np.array([1.0] * 5 + [0.0] * 5)) == pytest.approx(0.45)
    # two bins: 0.2-confident all right (gap 0.8), 0.9-confident all right (gap 0.1); weights 1/2 each
    both = expected_calibration_error(np.array([0.2, 0.2, 0.9, 0.9]), np.ones(4))
    assert both == pytest.approx(0.45)


def test_slices_name_old_classes_new_classes_and_the_newest_trend_from_the_labels() -> None:
    day = lambda d: datetime(2026, 1, d, tzinfo=UTC)  # noqa: E731
    posts = pd.DataFrame(
        {
            "post_id": ["a", "b", "c", "d", "e"],
            "label": ["cat", "dog", "meme", "cat", "meme"],
            "created_at": [day(1), day(2), day(5), day(9), day(6)],
        }
    )
    masks, newest = trend_slices(posts, old_labels=("cat", "dog"))
    assert {k: v.tolist() for k, v in masks.items()} == {
        "old_classes": [True, True, False, True, False],
        "class:meme": [False, False, True, False, True],
    }
    assert newest == "class:meme"
    masks, newest = trend_slices(posts.assign(label=["cat", "dog", "meme", "retro", "meme"]), ("cat", "dog"))
    assert newest == "class:retro"  # first seen on day 9, after the meme


def test_stability_is_the_share_of_labels_each_perturbation_leaves_and_min_the_worst() -> None:
    shares = stability({"crop_90": [True, False, True, True], "brightness_plus_10": [True] * 4})
    assert shares == {"crop_90": 0.75, "brightness_plus_10": 1.0, "min": 0.75}


class Brightness:
    """A stand-in predictor: "dog" when an image's mean pixel is above 100, else "cat"."""

    labels = ("cat", "dog")

    def side_inputs(self, posts: pd.DataFrame) -> None:
        return None

    def predict_base(self, base: torch.Tensor, side: None = None) -> Predictions:
        dog = (base.float().mean(dim=(1, 2, 3)) > 100).numpy()
        probabilities = np.stack([np.where(dog, 0.2, 0.8), np.where(dog, 0.8, 0.2)], axis=1)
        return Predictions(self.labels, probabilities, np.zeros((len(base), 1)))


def test_evaluate_keeps_each_posts_outcome_beside_the_summaries() -> None:
    # flat grey images: 95 turns "dog" at +10% brightness, 105 turns "cat" at -10%; 50 and 200 hold
    base = torch.stack([torch.full((3, 16, 16), v, dtype=torch.uint8) for v in (95, 105, 50, 200)])
    day = lambda d: datetime(2026, 1, d, tzinfo=UTC)  # noqa: E731
    posts = pd.DataFrame(
        {
            "post_id": ["p1", "p2", "p3", "p4"],
            "label": ["cat", "dog", "meme", "dog"],
            "created_at": [day(1), day(2), day(3), day(4)],
        }
    )
    found = evaluate(Brightness(), posts, base, "m/1", "s1", old_labels=("cat", "dog"))
    assert found.outcomes == Outcomes(
        post_id=["p1", "p2", "p3", "p4"],
        label=["cat", "dog", "meme", "dog"],
        predicted=["cat", "dog", "cat", "dog"],
        unchanged={
            "brightness_minus_10": [True, False, True, True],
            "brightness_plus_10": [False, True, True, True],
            "crop_90": [True, True, True, True],
        },
    )
    assert list(found.outcomes.unchanged) == list(PERTURBATIONS)
    assert found.outcomes.correct.tolist() == [True, True, False, True]
    assert found.stability == {"brightness_minus_10": 0.75, "brightness_plus_10": 0.75, "crop_90": 1.0, "min": 0.75}
    assert (found.overall.accuracy, found.newest_slice) == (0.75, "class:meme")


def test_the_evaluation_keeps_its_per_post_outcomes_through_json() -> None:
    outcomes = Outcomes(["a", "b"], ["cat", "meme"], ["cat", "dog"], {"crop_90": [True, False]})
    found = Evaluation(
        model="m/2",
        snapshot="s1",
        labels=["cat", "dog"],
        overall=score(["cat", "meme"], ["cat", "dog"], np.array([0.9, 0.6]), ("cat", "dog")),
        newest_slice="class:meme",
        stability={"crop_90": 0.5, "min": 0.5},
        outcomes=outcomes,
    )
    raw = json.loads(json.dumps(found.to_dict()))
    assert raw["outcomes"] == {
        "post_id": ["a", "b"],
        "label": ["cat", "meme"],
        "predicted": ["cat", "dog"],
        "unchanged": {"crop_90": [True, False]},
    }
    assert Evaluation.from_dict(raw) == found
    # an evaluation written before outcomes were kept still reads (the gate refuses to pair it)
    assert Evaluation.from_dict({k: v for k, v in raw.items() if k != "outcomes"}).outcomes is None
    with pytest.raises(ConfigError, match="unequal lengths"):
        Outcomes(["a", "b"], ["cat"], ["cat", "dog"], {})
