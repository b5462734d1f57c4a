"""Evaluate a tagger on a snapshot's test split, overall and per slice, with behavioural checks.

Slices answer the continual-learning questions: how does the model do on each
trend (a class the labels carry that the champion lacks: what annotators named),
and on the classes the champion already knew (forgetting)? The stability checks ask whether a prediction survives
changes no user would notice (Ribeiro et al., "Beyond Accuracy: Behavioral Testing
of NLP Models with CheckList", ACL 2020: invariance tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from components.errors import ConfigError

if TYPE_CHECKING:  # torch, torchvision and pandas load only where a model is scored: the gate reads evaluations
    import pandas as pd
    import torch

    from components.model.predict import Predictions, Predictor

ECE_BINS = 15
OLD_CLASSES = "old_classes"
CLASS_SLICE = "class:"  # prefix of the slices of labels the reference model lacked: the trends annotators named


@dataclass(frozen=True)
class Metrics:
    posts: int
    accuracy: float
    macro_f1: float  # mean F1 over the classes present in this slice
    ece: float  # expected calibration error of the top-1 confidence
    classes: list[str]  # order of the confusion matrix's rows (true) and columns (predicted)
    confusion: list[list[int]]
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support


@dataclass(frozen=True)
class Outcomes:
    """What the model did with each test post, in the test split's order (all lists have one entry per post).

    The raw material of paired comparisons: two models scored on the same posts are
    compared post by post (the promotion gate), not by their summary metrics alone.
    """

    post_id: list[str]
    label: list[str]  # the label annotators gave
    predicted: list[str]  # the model's top-1 label
    unchanged: dict[str, list[bool]]  # perturbation -> per post: did the top-1 label survive it?

    def __post_init__(self) -> None:
        lengths = {len(self.post_id), len(self.label), len(self.predicted), *map(len, self.unchanged.values())}
        if len(lengths) > 1:
            raise ConfigError(f"an evaluation's per-post outcomes have unequal lengths {sorted(lengths)}")

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: the top-1 label is the annotators' label."""
        return np.asarray(self.label, dtype=object) == np.asarray(self.predicted, dtype=object)


@dataclass(frozen=True)
class Evaluation:
    model: str  # what was evaluated, e.g. "trendloop-tagger/3"
    snapshot: str  # whose test split
    labels: list[str]  # the model's label set
    overall: Metrics
    slices: dict[str, Metrics] = field(default_factory=dict)
    newest_slice: str | None = None  # the newest class the labels carry that the reference model lacked
    stability: dict[str, float] = field(default_factory=dict)  # perturbation -> share of top-1 unchanged
    # per-post outcomes; None only in evaluations written before they were kept (the gate refuses those)
    outcomes: Outcomes | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Evaluation:
        outcomes = raw.get("outcomes")
        return cls(
            model=raw["model"],
            snapshot=raw["snapshot"],
            labels=raw["labels"],
            overall=Metrics(**raw["overall"]),
            slices={k: Metrics(**v) for k, v in raw["slices"].items()},
            newest_slice=raw["newest_slice"],
            stability=raw["stability"],
            outcomes=Outcomes(**outcomes) if outcomes is not None else None,
        )

    def flat(self) -> dict[str, float]:
        """Scalar metrics for a tracking server: test_accuracy, test_old_classes_macro_f1, ..."""
        out = {f"test_{k}": getattr(self.overall, k) for k in ("accuracy", "macro_f1", "ece")}
        for name, m in self.slices.items():
            key = name.replace(":", "_")
            out |= {f"test_{key}_{k}": getattr(m, k) for k in ("accuracy", "macro_f1", "ece")}
        out |= {f"stability_{k}": v for k, v in self.stability.items()}
        return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins.

    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, eq. 3.
    """
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(gap)


def score(true: Sequence[str], predicted: Sequence[str], confidence: np.ndarray, labels: Iterable[str]) -> Metrics:
    """Classification metrics; ``labels`` are the model's, true labels it lacks are added at the end."""
    true_a, pred_a = np.asarray(true, dtype=object), np.asarray(predicted, dtype=object)
    classes = list(labels)
    classes += sorted(set(true_a) - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, ([index[t] for t in true_a], [index[p] for p in pred_a]), 1)
    per_class, f1s = {}, []
    for i, c in enumerate(classes):
        tp, support, claimed = confusion[i, i], confusion[i].sum(), confusion[:, i].sum()
        precision = tp / claimed if claimed else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if support or claimed:
            per_class[c] = {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(support),
            }
        if support:
            f1s.append(f1)
    correct = true_a == pred_a
    return Metrics(
        posts=len(true_a),
        accuracy=float(correct.mean()) if len(true_a) else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        ece=expected_calibration_error(np.asarray(confidence, dtype=float), correct.astype(float)),
        classes=classes,
        confusion=confusion.tolist(),
        per_class=per_class,
    )


def trend_slices(posts: pd.DataFrame, old_labels: Iterable[str]) -> tuple[dict[str, np.ndarray], str | None]:
    """Boolean masks over ``posts`` and the newest trend slice's name, from the labels alone.

    ``old_classes``: posts whose label the reference model (the champion) knew.
    ``class:<label>``: each label it did not know. The newest trend slice is the
    ``class:`` slice whose first post is latest.
    """
    old = set(old_labels)
    masks: dict[str, np.ndarray] = {}
    if old:
        masks[OLD_CLASSES] = posts.label.isin(old).to_numpy()
    for label in sorted(set(posts.label) - old) if old else []:
        masks[f"{CLASS_SLICE}{label}"] = (posts.label == label).to_numpy()
    trends = {
        name: posts.created_at[mask].min()
        for name, mask in masks.items()
        if name.startswith(CLASS_SLICE) and mask.any()
    }
    newest = max(trends, key=lambda n: (trends[n], n)) if trends else None
    return masks, newest


def _brightness(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def change(x: torch.Tensor) -> torch.Tensor:
        import torch  # noqa: PLC0415  (here, not at the top: the gate imports this module and never a model)

        return (x.float() * factor).round().clamp(0, 255).to(torch.uint8)

    return change


def _crop(share: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def crop(x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F  # noqa: PLC0415  (as in _brightness)

        size = x.shape[-1]
        return F.resize(F.center_crop(x, [round(size * share)]), [size, size], antialias=True)

    return crop


# Changes a person would not call a different picture.
PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "brightness_minus_10": _brightness(0.9),
    "brightness_plus_10": _brightness(1.1),
    "crop_90": _crop(0.9),
}


def unchanged_under_perturbations(
    predictor: Predictor,
    base: torch.Tensor,
    reference: Predictions | None = None,
    side: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per perturbation, (N,) bool: does each image's top-1 label survive it?

    Only the image changes: a fusion tagger's side inputs (``side``) stay as they were.
    """
    reference = reference or predictor.predict_base(base, side=side)
    before = reference.probabilities.argmax(1)
    return {
        name: predictor.predict_base(change(base), side=side).probabilities.argmax(1) == before
        for name, change in PERTURBATIONS.items()
    }


def stability(unchanged: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Share of images whose top-1 label survives each perturbation; ``min`` is the worst."""
    shares = {name: float(np.mean(kept)) if len(kept) else 1.0 for name, kept in unchanged.items()}
    shares["min"] = min(shares.values()) if shares else 1.0
    return shares


def evaluate(
    predictor: Predictor,
    posts: pd.DataFrame,
    base: torch.Tensor,
    model: str,
    snapshot: str,
    old_labels: Iterable[str] = (),
) -> Evaluation:
    """Score ``predictor`` on ``posts`` (label, post_id, user_id, created_at), whose decoded images are ``base``.

    A fusion tagger reads the posts' side inputs as they were when each was posted.
    The evaluation keeps each post's outcome beside the summaries (``Outcomes``).
    """
    side = predictor.side_inputs(posts)
    found = predictor.predict_base(base, side=side)
    predicted = found.predicted
    overall = score(posts.label.tolist(), predicted, found.confidence, predictor.labels)
    masks, newest = trend_slices(posts, old_labels)
    slices = {
        name: score(
            posts.label[mask].tolist(),
            [p for p, m in zip(predicted, mask, strict=True) if m],
            found.confidence[mask],
            predictor.labels,
        )
        for name, mask in masks.items()
        if mask.any()
    }
    unchanged = unchanged_under_perturbations(predictor, base, found, side)
    outcomes = Outcomes(
        post_id=[str(p) for p in posts.post_id],
        label=posts.label.tolist(),
        predicted=list(predicted),
        unchanged={name: kept.tolist() for name, kept in unchanged.items()},
    )
    return Evaluation(
        model=model,
        snapshot=snapshot,
        labels=list(predictor.labels),
        overall=overall,
        slices=slices,
        newest_slice=newest,
        stability=stability(unchanged),
        outcomes=outcomes,
    )
