"""Score a pool of unlabelled posts with a tagger, chunk by chunk.

Images are decoded and predicted one chunk at a time, so a pool of any size costs
one chunk of pixels in memory; what is kept per post is its probabilities (C),
embedding (D) and score. BALD needs samples from a posterior: they come from
dropout on the embedding in front of the head (last-layer MC dropout), with a mask
drawn from the post's own id, so a post's samples do not depend on which chunk it
arrived in. The embedding is computed once per post; each sample only reruns the head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from active_learning.strategies import Heuristic
from components.model.datasets import decode_images
from components.model.predict import Predictions, Predictor


@dataclass(frozen=True)
class PoolScores:
    post_ids: list[str]
    scores: np.ndarray  # (N,) higher: ask annotators first
    predictions: Predictions  # the tagger's own outputs (no dropout): probabilities (N, C), embeddings (N, D)


def mc_dropout_probabilities(
    predictor: Predictor, embeddings: np.ndarray, post_ids: Sequence[str], samples: int, rate: float, seed: int = 0
) -> np.ndarray:
    """(N, D) embeddings -> (N, T, C) softmax samples of the head under dropout at ``rate``."""
    n, d = embeddings.shape
    masks = np.empty((n, samples, d), dtype=np.float32)
    for i, post_id in enumerate(post_ids):
        rng = np.random.default_rng([seed, _key(post_id)])
        masks[i] = rng.random((samples, d)) >= rate
    x = torch.from_numpy(embeddings).unsqueeze(1) * torch.from_numpy(masks) / (1 - rate)  # (N, T, D)
    head = predictor.tagger.head
    with torch.no_grad():
        logits = head(x.to(head.weight.device, head.weight.dtype))
    return logits.float().softmax(-1).cpu().numpy()


def _key(post_id: str) -> int:
    return int.from_bytes(hashlib.sha256(post_id.encode()).digest()[:8], "little")


def score_pool(
    predictor: Predictor,
    paths: Sequence[str],
    post_ids: Sequence[str],
    scorer: Heuristic,
    *,
    mc_samples: int = 20,
    mc_dropout: float = 0.25,
    chunk: int = 1024,
    workers: int = 2,
    posts: pd.DataFrame | None = None,
) -> PoolScores:
    """Predict and score every post; ``paths[i]`` is the stored image of ``post_ids[i]``.

    ``posts`` (post_id, user_id, created_at; row i is post i) is what a fusion tagger
    reads its side inputs for; an image-only tagger needs none.
    """
    probs, embs, scores = [], [], []
    for start in range(0, len(paths), chunk):
        ids = post_ids[start : start + chunk]
        base = decode_images(list(paths[start : start + chunk]), predictor.preprocessing, workers)
        part = posts.iloc[start : start + chunk] if posts is not None else None
        out = predictor.predict_base(base, part)
        if scorer.name == "bald":
            scores.append(
                scorer.score(mc_dropout_probabilities(predictor, out.embeddings, ids, mc_samples, mc_dropout))
            )
        else:
            scores.append(scorer.score(out.probabilities))
        probs.append(out.probabilities)
        embs.append(out.embeddings)
    predictions = (
        Predictions(predictor.labels, np.concatenate(probs), np.concatenate(embs)) if probs else predictor.empty()
    )
    return PoolScores(list(post_ids), np.concatenate(scores) if scores else np.zeros(0), predictions)
