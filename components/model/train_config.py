"""How a tagger is trained: the recipe every training run logs, apart from the code that runs it.

Kept light to import (no torch): the settings, the CLI's help and pipeline steps
that never train read it too.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.features.side import check_side
from components.model.preprocess import Preprocessing


class TrainConfig(BaseModel):
    """How a tagger is trained. Every field is logged with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: str = "resnet18"  # one of components.model.tagger.ARCHITECTURES
    # the simulator's 64 px images at full size: 32 px trains twice as fast and loses ~10 points of accuracy
    preprocessing: Preprocessing = Preprocessing(image_size=64, resize=72)
    epochs: int = Field(default=10, ge=1)  # upper bound; early stopping may end sooner
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=3e-3, gt=0)  # peak of the one-cycle schedule, from scratch
    finetune_lr: float = Field(default=1e-3, gt=0)  # peak when fine-tuning the champion
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.05, ge=0, lt=1)
    warmup_share: float = Field(default=0.3, gt=0, lt=1)  # of the one-cycle schedule spent raising the rate
    patience: int = Field(default=3, ge=1)  # epochs after the warm-up without a better validation loss: stop
    keep: Literal["best", "last"] = "best"  # weights returned: the best validation loss's epoch, or the last
    seed: int = 0
    replay_share: float = Field(default=0.8, ge=0, lt=1)  # share of a fine-tuning set replayed; 0: no replay
    replay_capacity: int = Field(default=5000, ge=0)  # most earlier posts replayed
    # fine-tuning draws every class equally often and selects its epoch on the mean of per-class validation
    # losses: a new class with a few dozen labels is otherwise drowned by the replayed ones
    balanced_finetune: bool = True
    # fine-tuning also matches the champion's softened scores on its own classes (learning without forgetting,
    # Li & Hoiem 2016), weighted so; 0 turns it off. It keeps what the champion got right, and how it behaves
    # under the brightness and crop changes the gate checks, where replay alone drifts post by post
    distill: float = Field(default=1.0, ge=0)
    distill_temperature: float = Field(default=2.0, gt=0)
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:1 ...
    # data-parallel training processes (torch.distributed DDP: gloo on a CPU, NCCL with process k on cuda:k);
    # 0: one per CUDA device (1 on a CPU). The result matches one process's to float rounding
    processes: int = Field(default=1, ge=0)
    loader_workers: int | None = Field(default=None, ge=0)  # None: 0 on a CPU, 8 with CUDA
    weights: Path | None = None  # torchvision state dict a from-scratch backbone starts from
    # feature groups a fusion tagger reads beside the image (components.features.side: caption, user); () image only
    side: tuple[str, ...] = ()
    side_dropout: float = Field(default=0.1, ge=0, lt=1)  # chance a training row's side group reads as unknown

    @field_validator("side", mode="before")
    @classmethod
    def _known_side(cls, value: object) -> tuple[str, ...]:
        if value is not None and not isinstance(value, str | list | tuple):
            raise ValueError("side is a list of groups (caption, user) or one comma-separated string")
        return check_side(value)  # type: ignore[arg-type]

    def record(self) -> dict[str, object]:
        """Flat, loggable parameters."""
        flat = {k: v for k, v in self.model_dump().items() if k != "preprocessing"}
        flat["weights"] = str(self.weights) if self.weights else None
        flat.update({f"pre_{k}": v for k, v in asdict(self.preprocessing).items()})
        return flat
