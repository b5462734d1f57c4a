"""How an image becomes a model input, saved with every model so nothing downstream re-invents it.

Two stages. ``base`` runs once per image (decode, scale the shorter side to
``resize``, centre-crop a square) and gives uint8 (3, resize, resize): the part
worth caching. The rest runs on whole batches on the training device: a
per-sample random resized crop (one ``roi_align`` call), flips and colour jitter
for training; a centre crop for evaluation and serving; then normalisation.
Per-sample torchvision transforms cost about 0.7 ms an image on a CPU core, as
much as a training step of a small model; batched, the same augmentation is
nearly free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: a recipe names a Preprocessing without loading torch
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 64  # side of the square the model sees
    resize: int = 72  # shorter side scaled to this before cropping (about image_size * 9 / 8)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.6, 1.0)  # training crops keep this share of the base image's area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and this range of aspect ratios
    jitter: float = 0.1  # training brightness, contrast and saturation vary by up to this factor

    def base(self, image: Image.Image) -> torch.Tensor:
        """A decoded image -> uint8 (3, resize, resize)."""
        from torchvision.transforms import v2  # noqa: PLC0415

        base = v2.Compose([v2.ToImage(), v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.resize)])
        return base(image.convert("RGB"))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> normalised."""
        import torch  # noqa: PLC0415

        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def evaluation(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, resize, resize) -> normalised float (B, 3, image_size, image_size)."""
        top = (batch.shape[-1] - self.image_size) // 2
        crop = batch[..., top : top + self.image_size, top : top + self.image_size]
        return self.normalise(crop.float() / 255)

    def training(self, batch: torch.Tensor, generator: torch.Generator, rows: Rows | None = None) -> torch.Tensor:
        """uint8 (B, 3, resize, resize) -> augmented, normalised float (B, 3, image_size, image_size).

        Random parameters are drawn on the CPU from ``generator``, so a seed gives the
        same augmentation on any device. ``rows``: ``batch`` is these rows of a larger
        batch (one data-parallel process's share); parameters are drawn for the whole
        batch and these rows' taken, so every share is augmented as in one process.
        """
        import torch  # noqa: PLC0415
        from torchvision.ops import roi_align  # noqa: PLC0415

        n, size = batch.shape[0], batch.shape[-1]
        rows = rows or Rows(slice(0, n), n)
        x = batch.float() / 255
        boxes = self._crop_boxes(rows.total, size, generator)[rows.share]
        boxes[:, 0] = torch.arange(n, dtype=boxes.dtype)  # each box's image index within this share
        # sampling_ratio=0: as many samples per output pixel as the crop shrinks by (antialiasing)
        x = roi_align(x, boxes.to(x.device), output_size=self.image_size, sampling_ratio=0, aligned=True)
        flip = (torch.rand(rows.total, generator=generator)[rows.share] < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        if self.jitter > 0:
            draws = torch.rand(3, rows.total, 1, 1, 1, generator=generator)[:, rows.share]
            factors = 1 + (draws * 2 - 1) * self.jitter
            brightness, contrast, saturation = factors.to(x.device)
            x = (x * brightness).clamp(0, 1)
            grey = _grey(x)
            x = ((x - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
            grey = _grey(x)
            x = ((x - grey) * saturation + grey).clamp(0, 1)
        return self.normalise(x)

    def _crop_boxes(self, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 5) rows of (batch index, x1, y1, x2, y2), as torchvision's RandomResizedCrop samples them."""
        import torch  # noqa: PLC0415

        area = torch.empty(n).uniform_(*self.crop_scale, generator=generator) * size * size
        log_ratio = torch.empty(n).uniform_(
            math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), generator=generator
        )
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=size)
        h = (area / ratio).sqrt().clamp(max=size)
        x1 = torch.rand(n, generator=generator) * (size - w)
        y1 = torch.rand(n, generator=generator) * (size - h)
        return torch.stack([torch.arange(n, dtype=torch.float32), x1, y1, x1 + w, y1 + h], dim=1)


@dataclass(frozen=True)
class Rows:
    """Which rows of a batch of ``total`` a tensor holds (components.model.distributed.Peers.shard)."""

    share: slice
    total: int


def _grey(x: torch.Tensor) -> torch.Tensor:
    import torch  # noqa: PLC0415

    w = torch.tensor(GREY, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)
