"""A ready predictor: the tagger, its own preprocessing and its labels, in one object.

A fusion tagger also needs its side inputs. Callers pass the posts being scored
(post_id, user_id, created_at) and the predictor reads their features through its
``SideReader``; or they pass the side vectors themselves (serving does). An
image-only tagger ignores both.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from components.errors import ConfigError
from components.features.side import SideReader
from components.model.preprocess import Preprocessing
from components.model.tagger import Tagger, load_tagger


@dataclass(frozen=True)
class Predictions:
    labels: tuple[str, ...]  # column i of probabilities scores labels[i]
    probabilities: np.ndarray  # (N, C) softmax
    embeddings: np.ndarray  # (N, D) penultimate layer

    @property
    def predicted(self) -> list[str]:
        return [self.labels[i] for i in self.probabilities.argmax(1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(1)


class Predictor:
    """Images in, labels, probabilities and embeddings out; preprocessing is the model's own."""

    def __init__(
        self,
        tagger: Tagger,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        side_reader: SideReader | None = None,
    ):
        self.tagger = tagger.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.side_reader = side_reader

    @classmethod
    def from_folder(
        cls, folder: Path, device: str | torch.device = "cpu", side_reader: SideReader | None = None
    ) -> Predictor:
        return cls(load_tagger(folder), device, side_reader=side_reader)

    @property
    def side(self) -> tuple[str, ...]:
        """The side input groups the tagger reads; () for an image-only tagger."""
        return self.tagger.spec.side

    def side_inputs(self, posts: pd.DataFrame | None) -> np.ndarray | None:
        """The side vectors of ``posts`` (post_id, user_id, created_at) read point in time; None if image-only."""
        if not self.side:
            return None
        if posts is None or self.side_reader is None:
            what = "the posts being scored (posts=)" if posts is None else "a feature store (a SideReader)"
            raise ConfigError(
                f"this tagger reads {', '.join(self.side)} features beside the image: it needs {what}, "
                "or the side vectors themselves (side=)"
            )
        return self.side_reader.historical(self.side, self.labels, posts)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.tagger.labels

    @property
    def preprocessing(self) -> Preprocessing:
        return self.tagger.spec.preprocessing

    def predict(
        self,
        images: Sequence[Image.Image | bytes],
        posts: pd.DataFrame | None = None,
        side: np.ndarray | None = None,
    ) -> Predictions:
        """Decoded images or encoded image bytes (any format Pillow reads)."""
        pre = self.preprocessing
        if not images:
            return self.empty()
        base = torch.stack([pre.base(_open(im)) for im in images])
        return self.predict_base(base, posts, side)

    @torch.no_grad()
    def predict_base(
        self, base: torch.Tensor, posts: pd.DataFrame | None = None, side: np.ndarray | None = None
    ) -> Predictions:
        """uint8 (N, 3, resize, resize) images already through ``Preprocessing.base``.

        ``posts[i]`` is the post of image i (read for a fusion tagger's side inputs),
        or ``side`` (N, S) gives the side vectors directly.
        """
        if len(base) == 0:
            return self.empty()
        if side is None:
            side = self.side_inputs(posts)
        side_t = torch.as_tensor(side, dtype=torch.float32) if side is not None else None
        probs, embs = [], []
        for start in range(0, len(base), self.batch_size):
            x = self.preprocessing.evaluation(base[start : start + self.batch_size].to(self.device))
            s = side_t[start : start + self.batch_size].to(self.device) if side_t is not None else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits, emb = self.tagger.forward_with_embeddings(x, s)
            probs.append(logits.float().softmax(1).cpu())
            embs.append(emb.float().cpu())
        return Predictions(self.labels, torch.cat(probs).numpy(), torch.cat(embs).numpy())

    def empty(self) -> Predictions:
        """No predictions: (0, C) probabilities and (0, D) embeddings."""
        c, d = len(self.labels), self.tagger.embedding_dim
        return Predictions(self.labels, np.zeros((0, c), np.float32), np.zeros((0, d), np.float32))


def _open(image: Image.Image | bytes) -> Image.Image:
    return Image.open(io.BytesIO(image)) if isinstance(image, bytes | bytearray) else image
