"""Acquisition: which unlabelled posts annotators should see next.

A heuristic turns model outputs into one score per post, higher meaning "ask about
this one first". Each works on softmax probabilities ``(N, C)`` or on Monte Carlo
samples of them ``(N, T, C)`` (averaged over T where the heuristic has no use for
the samples), row by row, so scoring a pool in chunks gives the scores of scoring it
whole. A batch is then picked from the scores by ``select_batch``: a random control
share first (so the benefit of active learning can be measured on live traffic),
then the most informative posts, spread out over the embedding space by k-center
greedy so a batch is not fifty near-copies of one confusing post.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

StrategyName = Literal["least_confidence", "margin", "entropy", "bald", "random"]
ACTIVE, CONTROL = "active", "control"  # the arm a selected post belongs to


class Heuristic(Protocol):
    name: str

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, C) or (N, T, C) probabilities -> (N,) scores; higher is more informative."""
        ...


def _mean(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    return p.mean(1) if p.ndim == 3 else p


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis; 0 log 0 = 0."""
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


@dataclass(frozen=True)
class LeastConfidence:
    """1 - max_c p(c): how far the model's best guess is from certain (Lewis & Gale, SIGIR 1994)."""

    name: str = "least_confidence"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return 1.0 - _mean(probabilities).max(-1)


@dataclass(frozen=True)
class Margin:
    """1 - (p(first) - p(second)): a small gap between the top two labels (Scheffer et al., IDA 2001)."""

    name: str = "margin"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        p = _mean(probabilities)
        if p.shape[-1] < 2:
            return np.zeros(len(p))
        top2 = np.partition(p, -2, axis=-1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])


@dataclass(frozen=True)
class Entropy:
    """H[p]: uncertainty spread over all labels (Shannon; Settles, "Active Learning Literature Survey", 2009)."""

    name: str = "entropy"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return _entropy(_mean(probabilities))


@dataclass(frozen=True)
class BALD:
    """Mutual information between the label and the weights: H[mean_t p_t] - mean_t H[p_t].

    Houlsby et al., "Bayesian Active Learning for Classification and Preference
    Learning" (arXiv:1112.5745), with MC dropout samples as in Gal, Islam &
    Ghahramani, "Deep Bayesian Active Learning with Image Data" (ICML 2017). High
    when the samples disagree, not when each is merely unsure. Needs (N, T, C).
    """

    name: str = "bald"

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 3:
            raise ValueError("BALD needs Monte Carlo samples shaped (N, T, C)")
        return _entropy(p.mean(1)) - _entropy(p).mean(1)


class RandomScores:
    """Uniform scores: the baseline. Drawing N then M numbers equals drawing N + M, so chunks agree."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        return self.rng.random(len(probabilities))


def heuristic(name: StrategyName, seed: int = 0) -> Heuristic:
    """The heuristic called ``name``."""
    return {
        "least_confidence": LeastConfidence(),
        "margin": Margin(),
        "entropy": Entropy(),
        "bald": BALD(),
    }.get(name) or RandomScores(seed)


def stream_scores(scorer: Heuristic, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Score a pool that arrives in chunks (N_i, ...) -> (sum N_i,), equal to scoring it whole."""
    parts = [scorer.score(chunk) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Pool indices, most informative first; ties keep pool order."""
    return np.argsort(-np.asarray(scores), kind="stable")


def k_center_greedy(embeddings: np.ndarray, k: int, centers: np.ndarray | None = None, first: int = 0) -> list[int]:
    """Pick k rows of ``embeddings`` (N, D), each the one farthest from everything picked or given.

    Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach" (ICLR 2018): the greedy 2-approximation of k-center. ``centers`` (M, D)
    are points already covered (labelled posts); without them the first pick is
    row ``first``. Distances are Euclidean on unit vectors (cosine geometry).
    """
    x = _unit(embeddings)
    k = min(k, len(x))
    if k <= 0:
        return []
    nearest = np.full(len(x), np.inf)
    if centers is not None and len(centers):
        c = _unit(centers)
        for start in range(0, len(c), 1024):  # (N, 1024) at a time
            block = c[start : start + 1024]
            nearest = np.minimum(nearest, np.sqrt(np.clip(2 - 2 * x @ block.T, 0, None)).min(1))
    picked: list[int] = []
    for _ in range(k):
        i = int(np.argmax(nearest)) if np.isfinite(nearest).any() else first
        picked.append(i)
        nearest = np.minimum(nearest, np.sqrt(np.clip(2 - 2 * x @ x[i], 0, None)))
        nearest[i] = -1.0  # never pick a row twice
    return picked


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


class SelectionConfig(BaseModel):
    """How a batch for annotators is chosen."""

    model_config = ConfigDict(extra="forbid")
    strategy: StrategyName = "entropy"  # the uncertainty heuristic; random is the baseline
    diversity: bool = True  # spread the batch over the embedding space with k-center greedy
    prefilter: int = Field(default=5, ge=1)  # k-center picks from the prefilter x batch most uncertain posts
    batch_size: int = Field(default=200, ge=1)  # posts queued per selection (query size)
    # the monitor's selections draw from HEAD's newest N days of posts: where a trend it just flagged lives
    pool_days: int = Field(default=2, ge=1)
    control_share: float = Field(default=0.1, ge=0, le=1)  # drawn uniformly from the pool: measures the gain
    mc_samples: int = Field(default=20, ge=2)  # dropout samples per post for BALD
    mc_dropout: float = Field(default=0.25, gt=0, lt=1)  # dropout on the embedding when the tagger has none
    max_centers: int = Field(default=2000, ge=0)  # labelled posts (sampled) that count as covered
    seed: int = 0


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # (k,) pool rows, in the order picked
    arms: list[str]  # ACTIVE or CONTROL, per pick


def select_batch(
    scores: np.ndarray,
    embeddings: np.ndarray | None,
    config: SelectionConfig,
    k: int | None = None,
    centers: np.ndarray | None = None,
) -> Selection:
    """Pick ``k`` (default ``config.batch_size``) pool rows: a uniform control share, then the active picks.

    The control posts are drawn from the whole pool before anything else, so they are
    an unbiased sample of it: the champion's accuracy on them estimates its accuracy
    on the traffic, and the active picks can be compared with them.
    """
    n = len(scores)
    k = min(config.batch_size if k is None else k, n)
    rng = np.random.default_rng(config.seed)
    n_control = round(k * config.control_share)
    control = rng.choice(n, size=n_control, replace=False) if n_control else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), control)
    n_active = k - n_control
    if config.strategy == "random":
        active = rng.choice(rest, size=n_active, replace=False)
    else:
        order = rest[ranking(np.asarray(scores)[rest])]
        if config.diversity and embeddings is not None and n_active > 0:
            candidates = order[: n_active * config.prefilter]
            picks = k_center_greedy(np.asarray(embeddings)[candidates], n_active, centers, first=0)
            active = candidates[picks]
        else:
            active = order[:n_active]
    indices = np.concatenate([np.asarray(active, dtype=np.int64), np.asarray(control, dtype=np.int64)])
    return Selection(indices, [ACTIVE] * len(active) + [CONTROL] * len(control))
