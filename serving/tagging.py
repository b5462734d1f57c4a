"""One arm's model as a plain object: uploads in, tags out. The Ray Serve deployment wraps it thinly.

``ArmModel.predict`` takes a batch of uploads and returns one result per upload:
an upload that does not decode gets a ``Rejection`` in its place and the rest of
the batch is predicted as usual. Swapping the model version loads the new
predictor first and replaces the old one in one assignment, so requests in flight
finish on the old model and none is refused in between.

A fusion version (one reading side inputs, see ``components.features.side``) also gets each
upload's ``PostContext``: the arm reads the poster's profile from the online store
and encodes the caption the request carries (or reads a stored post's). When the
feature store does not answer, the batch is still tagged, with every side input
unknown (the model was trained to fall back to the image for that), and the
result says so (``Tagged.side``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from components.data.validate import ImageLimits, Rejection, decode_image
from components.errors import ConfigError
from components.features import captions
from components.features.side import SideReader

if TYPE_CHECKING:  # torch loads where a model does (the router and `trendloop serve` import this module)
    import torch

    from components.model.predict import Predictor

log = logging.getLogger(__name__)


ALIAS = "@"  # a version written "@champion" is the one that alias names when the replica loads it


def alias_ref(alias: str) -> str:
    """How a Serve config asks an arm for an alias's version rather than a number."""
    return f"{ALIAS}{alias}"


class ModelNotLoaded(RuntimeError):
    """The arm has no model version to serve (e.g. no challenger yet)."""


@dataclass(frozen=True)
class PostContext:
    """What a request says about the post besides its image: read by fusion versions only."""

    user_id: str | None = None
    post_id: str | None = None  # a post the feature store may know already
    caption: str | None = None
    hashtags: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return captions.caption_text(self.caption, self.hashtags)


@dataclass(frozen=True)
class Tagged:
    """One upload's prediction."""

    model_version: int
    labels: list[str]  # top-k, most likely first
    scores: list[float]  # their probabilities
    probabilities: np.ndarray  # (C,) over the version's labels, for the prediction log
    embedding: np.ndarray  # (D,) penultimate layer, for the drift checks
    side: str = "none"  # the version's side inputs: none (image only), online, unavailable (read as unknown)

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def confidence(self) -> float:
        return self.scores[0]


def warm(predictor: Predictor, largest_batch: int) -> None:
    """Predict blank batches of sizes 1..``largest_batch`` (side inputs unknown for a fusion version)."""
    import torch  # noqa: PLC0415

    pre = predictor.preprocessing
    for n in range(1, largest_batch + 1):
        blank = torch.zeros((n, 3, pre.resize, pre.resize), dtype=torch.uint8)
        side = np.zeros((n, predictor.tagger.side_width), np.float32) if predictor.side else None
        predictor.predict_base(blank, side=side)


def pick_device(num_gpus: float) -> str:
    """``cuda`` when this replica was given a GPU (or a share of one) and CUDA works, else ``cpu``."""
    import torch  # noqa: PLC0415

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


class ArmModel:
    """The model version one arm serves; ``load_version(version) -> Predictor`` comes from the caller."""

    def __init__(
        self,
        load_version: Callable[[int], Predictor],
        top_k: int = 3,
        limits: ImageLimits | None = None,
        side_reader: SideReader | None = None,
        alias_of: Callable[[str], int | None] | None = None,
    ):
        self._load_version = load_version
        self._alias_of = alias_of  # an alias's version now (the registry's); None: numbers only
        self.side_reader = side_reader  # the online store fusion versions read
        self.top_k = top_k
        self.limits = limits or ImageLimits()
        self.version: int | None = None
        self.load_error: str | None = None  # why the last requested version could not be loaded
        self._predictor: Predictor | None = None
        self._swap = threading.Lock()  # one load at a time

    @property
    def ready(self) -> bool:
        return self._predictor is not None

    def use(self, wanted: int | str | None, warm_up: int = 0) -> bool:
        """Serve version ``wanted`` from now on (None: serve nothing; "@alias": the version the alias names
        now, nothing if it names none); returns whether anything changed.

        With ``warm_up`` the new model first predicts blank batches of every size up to it (the
        sizes dynamic batching will hand it), so its first requests do not pay for kernel
        selection a model serving for days paid long ago: an A/B test's latency guardrail
        compares the two arms, not a cold replica with a warm one. A version that fails to
        load or to predict (registry down, files missing, a broken model) leaves the one
        serving in place and says why in ``load_error``: a bad rollout never takes the arm down.
        """
        with self._swap:
            try:
                version = self._resolve(wanted)
                if version == self.version and (version is None or self._predictor is not None):
                    return False
                predictor = self._load_version(version) if version is not None else None
                if predictor is not None and predictor.side:
                    if self.side_reader is None:
                        raise ConfigError(f"it reads {', '.join(predictor.side)} features and no feature store is set")
                    self.side_reader.features  # noqa: B018 - a misconfigured store fails the load, not each request
                if predictor is not None:
                    warm(predictor, warm_up)
            except Exception as err:  # noqa: BLE001 - any loader failure: keep serving what we have
                self.load_error = f"version {wanted}: {type(err).__name__}: {err}"
                log.error("could not load model %s; still serving version %s", self.load_error, self.version)
                return False
            self._predictor, self.version = predictor, version  # one swap: in-flight batches keep the old one
            self.load_error = None
            return True

    def _resolve(self, wanted: int | str | None) -> int | None:
        if not isinstance(wanted, str):
            return wanted
        if not wanted.startswith(ALIAS) or self._alias_of is None:
            raise ConfigError(f"{wanted!r} is not a version number, and this arm resolves no aliases")
        return self._alias_of(wanted.removeprefix(ALIAS))

    def predict(
        self, uploads: Sequence[bytes], contexts: Sequence[PostContext] | None = None
    ) -> list[Tagged | Rejection]:
        """One result per upload; ``contexts[i]`` describes upload i (needed by fusion versions only)."""
        import torch  # noqa: PLC0415

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
            side, how = self._side(predictor, [contexts[i] if contexts else PostContext() for i in good])
            found = predictor.predict_base(torch.stack([decoded[i] for i in good]), side=side)  # type: ignore[misc]
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
                    side=how,
                )
        return out

    def _side(self, predictor: Predictor, contexts: list[PostContext]) -> tuple[np.ndarray | None, str]:
        """The batch's side vectors from the online store, and how they were had."""
        if not predictor.side:
            return None, "none"
        assert self.side_reader is not None  # `use` refuses a fusion version without one
        try:
            side = self.side_reader.online(
                predictor.side,
                predictor.labels,
                [c.user_id for c in contexts],
                [c.post_id for c in contexts],
                [c.text for c in contexts],
            )
            return side, "online"
        except Exception as err:  # noqa: BLE001 - a store that is down must not take tagging down with it
            log.warning("side inputs unavailable (%s: %s); tagging from the image alone", type(err).__name__, err)
            return np.zeros((len(contexts), predictor.tagger.side_width), np.float32), "unavailable"
