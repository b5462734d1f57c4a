"""Metrics, slices and the promotion gate, on hand-made predictions (no model needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from components.errors import ConfigError
from components.evaluate import Evaluation, expected_calibration_error, score, trend_slices
from components.gate import PromotionGate


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


def test_slices_name_old_classes_new_classes_styles_and_the_newest_trend() -> None:
    day = lambda d: datetime(2026, 1, d, tzinfo=UTC)  # noqa: E731
    posts = pd.DataFrame(
        {
            "post_id": ["a", "b", "c", "d", "e"],
            "label": ["cat", "dog", "meme", "cat", "meme"],
            "created_at": [day(1), day(2), day(5), day(9), day(6)],
        }
    )
    masks, newest = trend_slices(posts, old_labels=("cat", "dog"), styles={"d": "vintage", "b": None})
    assert {k: v.tolist() for k, v in masks.items()} == {
        "old_classes": [True, True, False, True, False],
        "class:meme": [False, False, True, False, True],
        "style:vintage": [False, False, False, True, False],
    }
    assert newest == "style:vintage"  # first seen on day 9, after the meme (day 5)


def metrics(accuracy: float, posts: int = 100) -> dict:
    return {
        "posts": posts,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "ece": 0.05,
        "classes": [],
        "confusion": [],
        "per_class": {},
    }


def evaluation(name: str, old: float, meme: float, overall: float, stable: float, snapshot: str = "s1") -> Evaluation:
    return Evaluation.from_dict(
        {
            "model": name,
            "snapshot": snapshot,
            "labels": ["cat", "dog", "meme"],
            "overall": metrics(overall),
            "slices": {"old_classes": metrics(old), "class:meme": metrics(meme)},
            "newest_slice": "class:meme",
            "stability": {"brightness_minus_10": stable, "crop_90": min(1.0, stable + 0.02), "min": stable},
        }
    )


def test_gate_passes_a_better_challenger_and_says_why() -> None:
    champion = evaluation("m/1", old=0.90, meme=0.0, overall=0.75, stable=0.97)
    challenger = evaluation("m/2", old=0.89, meme=0.80, overall=0.88, stable=0.95)
    verdict = PromotionGate(old_class_margin=0.02).decide(challenger, champion)
    assert verdict.passed
    assert verdict.reasons == [
        "pass old classes: accuracy 0.890 vs champion 0.900 (drop +0.010, allowed 0.020)",
        "pass newest trend: class:meme: accuracy 0.800 vs champion 0.000 (gain +0.800, needs more than +0.000)",
        "pass stability: worst brightness_minus_10: 0.950 of predictions unchanged (needs 0.900)",
    ]


@pytest.mark.parametrize(
    ("old", "meme", "stable", "failing"),
    [
        (0.80, 0.80, 0.95, "old classes"),  # forgot: lost 0.10 on the champion's classes
        (0.90, 0.00, 0.95, "newest trend"),  # learned nothing of the trend
        (0.90, 0.80, 0.70, "stability"),  # flips under a 10% brightness change
    ],
)
def test_gate_rejects_a_worse_challenger_naming_the_failed_check(
    old: float, meme: float, stable: float, failing: str
) -> None:
    champion = evaluation("m/1", old=0.90, meme=0.0, overall=0.75, stable=0.97)
    verdict = PromotionGate().decide(evaluation("m/2", old, meme, 0.8, stable), champion)
    assert not verdict.passed
    assert [c.name for c in verdict.checks if not c.passed] == [failing]
    assert any(r.startswith(f"FAIL {failing}") for r in verdict.reasons)


def test_gate_refuses_to_compare_different_test_sets_and_needs_no_champion_at_first() -> None:
    champion = evaluation("m/1", 0.9, 0.0, 0.75, 0.97, snapshot="s1")
    with pytest.raises(ConfigError, match="compare on one test set"):
        PromotionGate().decide(evaluation("m/2", 0.9, 0.8, 0.8, 0.95, snapshot="s2"), champion)
    first = PromotionGate().decide(evaluation("m/1", 0.9, 0.0, 0.75, 0.97), None)
    assert first.passed and first.champion is None
    assert "no champion yet" in first.reasons[0]
