"""One arm's model as a plain object: uploads in, tags out. The Ray Serve deployment wraps it thinly.

``ArmModel.predict`` takes a batch of uploads and returns one result per upload:
an upload that does not decode gets a ``Rejection`` in its place and the rest of
the batch is predicted as usual. Swapping the model version loads the new
predictor first and replaces the old one in one assignment, so requests in flight
finish on the old model and none is refused in between.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.predict import Predictor
from components.validate import ImageLimits, Rejection, decode_image

log = logging.getLogger(__name__)


class ModelNotLoaded(RuntimeError):
    """The arm has no model version to serve (e.g. no challenger yet)."""


@dataclass(frozen=True)
class Tagged:
    """One upload's prediction."""

    model_version: int
    labels: list[str]  # top-k, most likely first
    scores: list[float]  # their probabilities
    probabilities: np.ndarray  # (C,) over the version's labels, for the prediction log
    embedding: np.ndarray  # (D,) penultimate layer, for the drift checks

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def confidence(self) -> float:
        return self.scores[0]


def pick_device(num_gpus: float) -> str:
    """``cuda`` when this replica was given a GPU (or a share of one) and CUDA works, else ``cpu``."""
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


class ArmModel:
    """The model version one arm serves; ``load_version(version) -> Predictor`` comes from the caller."""

    def __init__(
        self,
        load_version: Callable[[int], Predictor],
        top_k: int = 3,
        limits: ImageLimits | None = None,
    ):
        self._load_version = load_version
        self.top_k = top_k
        self.limits = limits or ImageLimits()
        self.version: int | None = None
        self.load_error: str | None = None  # why the last requested version could not be loaded
        self._predictor: Predictor | None = None
        self._swap = threading.Lock()  # one load at a time

    @property
    def ready(self) -> bool:
        return self._predictor is not None

    def use(self, version: int | None) -> bool:
        """Serve ``version`` from now on (None: serve nothing); returns whether anything changed.

        A version that fails to load (registry down, files missing) leaves the one serving in
        place and says why in ``load_error``: a bad rollout never takes the arm down.
        """
        with self._swap:
            if version == self.version and (version is None or self._predictor is not None):
                return False
            try:
                predictor = self._load_version(version) if version is not None else None
            except Exception as err:  # noqa: BLE001 - any loader failure: keep serving what we have
                self.load_error = f"version {version}: {type(err).__name__}: {err}"
                log.error("could not load model %s; still serving version %s", self.load_error, self.version)
                return False
            self._predictor, self.version = predictor, version  # one swap: in-flight batches keep the old one
            self.load_error = None
            return True

    def predict(self, uploads: Sequence[bytes]) -> list[Tagged | Rejection]:
        predictor, version = self._predictor, self.version  # the pair a concurrent swap cannot split
        if predictor is None or version is None:
            raise ModelNotLoaded("this arm has no model version loaded")
        pre = predictor.preprocessing
        decoded: list[torch.Tensor | Rejection] = []
        for data in uploads:
            found = decode_image(data, self.limits, draft_side=pre.resize)
            decoded.append(found if isinstance(found, Rejection) else pre.base(found[0]))
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Rejection)]
        out: list = [d if isinstance(d, Rejection) else None for d in decoded]  # None: filled in below
        if good:
            found = predictor.predict_base(torch.stack([decoded[i] for i in good]))  # type: ignore[misc]
            k = min(self.top_k, len(found.labels))
            top = np.argsort(-found.probabilities, axis=1)[:, :k]  # (N, k)
            for row, i in enumerate(good):
                probs = found.probabilities[row]
                out[i] = Tagged(
                    model_version=version,
                    labels=[found.labels[j] for j in top[row]],
                    scores=[round(float(probs[j]), 6) for j in top[row]],
                    probabilities=probs,
                    embedding=found.embeddings[row],
                )
        return out
