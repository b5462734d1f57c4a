"""From a snapshot to tensors: labelled posts, a split that never moves, decoded images, replay.

The split is a hash of the post id, not a random draw, so a post that was once in
the test set stays there in every later snapshot: a model fine-tuned on a newer
snapshot has never trained on the posts its champion is judged by.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from components.data.snapshot import Snapshot, Store
from components.errors import SnapshotError
from components.model.preprocess import Preprocessing

SplitName = Literal["train", "val", "test"]
T = TypeVar("T")


@dataclass(frozen=True)
class SplitShares:
    """Shares of posts held out, by hash of post_id (stable across snapshots)."""

    test: float = 0.15
    val: float = 0.10

    def of(self, post_id: str) -> SplitName:
        u = int(hashlib.sha256(post_id.encode()).hexdigest()[:12], 16) / 16**12  # uniform in [0, 1)
        if u < self.test:
            return "test"
        return "val" if u < self.test + self.val else "train"


def labelled_posts(store: Store, snapshot: Snapshot, shares: SplitShares = SplitShares()) -> pd.DataFrame:
    """The snapshot's labelled posts: post_id, user_id, created_at, label, path (absolute), split; in post_id order."""
    table = snapshot.manifest().select(["post_id", "user_id", "created_at", "image", "label"])
    posts = table.to_pandas()
    posts = posts[posts.label.notna()].reset_index(drop=True)
    posts["path"] = [str(store.root / ref) for ref in posts.pop("image")]
    posts["split"] = [shares.of(p) for p in posts.post_id]
    return posts


def label_order(known: Iterable[str], posts: pd.DataFrame) -> tuple[str, ...]:
    """The labels a model needs: the ones it knows in their order, then new ones alphabetically."""
    known = tuple(known)
    return known + tuple(sorted(set(posts.label) - set(known)))


def reservoir_sample(stream: Iterable[T], k: int, rng: random.Random) -> list[T]:
    """A uniform sample of k items from a stream of unknown length, in one pass.

    Vitter's Algorithm R (ACM TOMS 11(1), 1985): keep the first k; item i (0-based)
    replaces a random kept one with probability k / (i + 1).
    """
    kept: list[T] = []
    for i, item in enumerate(stream):
        if i < k:
            kept.append(item)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                kept[j] = item
    return kept


def decode_images(
    paths: list[str],
    preprocessing: Preprocessing,
    workers: int = 2,
) -> torch.Tensor:
    """Decode and resize every image once: uint8 (N, 3, resize, resize), ready for crops and flips."""

    def one(path: str) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                return preprocessing.base(im)
        except (OSError, ValueError) as err:
            raise SnapshotError(f"cannot read stored image {path}: {err}; run `trendloop snapshot verify`") from None

    size = preprocessing.resize
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        for i, tensor in enumerate(pool.map(one, paths, chunksize=64)):
            out[i] = tensor
    return out


class PostImages(Dataset):
    """Decoded posts and their targets: uint8 base images (N, 3, resize, resize), class indices (N,),
    and side vectors (N, S) for a fusion tagger (S = 0 for an image-only one)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, side: torch.Tensor | None = None):
        self.images, self.targets = images, targets
        self.side = side if side is not None else torch.zeros((len(targets), 0))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.side[i], self.targets[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch in one indexing op (the DataLoader calls this instead of N __getitem__s)."""
        idx = torch.as_tensor(indices)
        return self.images[idx], self.side[idx], self.targets[idx]


def targets_for(labels: pd.Series, order: tuple[str, ...]) -> torch.Tensor:
    index = {label: i for i, label in enumerate(order)}
    return torch.tensor([index[label] for label in labels], dtype=torch.long)
