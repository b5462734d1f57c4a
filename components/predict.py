"""A ready predictor: the tagger, its own preprocessing and its labels, in one object."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.model import Tagger, load_tagger
from components.preprocess import Preprocessing


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

    def __init__(self, tagger: Tagger, device: str | torch.device = "cpu", batch_size: int = 256):
        self.tagger = tagger.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(load_tagger(folder), device)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.tagger.labels

    @property
    def preprocessing(self) -> Preprocessing:
        return self.tagger.spec.preprocessing

    def predict(self, images: Sequence[Image.Image | bytes]) -> Predictions:
        """Decoded images or encoded image bytes (any format Pillow reads)."""
        pre = self.preprocessing
        if not images:
            return self.empty()
        base = torch.stack([pre.base(_open(im)) for im in images])
        return self.predict_base(base)

    @torch.no_grad()
    def predict_base(self, base: torch.Tensor) -> Predictions:
        """uint8 (N, 3, resize, resize) images already through ``Preprocessing.base``."""
        if len(base) == 0:
            return self.empty()
        probs, embs = [], []
        for start in range(0, len(base), self.batch_size):
            x = self.preprocessing.evaluation(base[start : start + self.batch_size].to(self.device))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits, emb = self.tagger.forward_with_embeddings(x)
            probs.append(logits.float().softmax(1).cpu())
            embs.append(emb.float().cpu())
        return Predictions(self.labels, torch.cat(probs).numpy(), torch.cat(embs).numpy())

    def empty(self) -> Predictions:
        """No predictions: (0, C) probabilities and (0, D) embeddings."""
        c, d = len(self.labels), self.tagger.embedding_dim
        return Predictions(self.labels, np.zeros((0, c), np.float32), np.zeros((0, d), np.float32))


def _open(image: Image.Image | bytes) -> Image.Image:
    return Image.open(io.BytesIO(image)) if isinstance(image, bytes | bytearray) else image
