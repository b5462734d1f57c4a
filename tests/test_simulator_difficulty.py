"""The simulated task is learnable but not trivial: a small CNN lands around 85-95%.

Slow (about three minutes on two cores): run with ``make test-slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from components.simulator.feed import FeedSpec, simulate

pytestmark = [pytest.mark.slow, pytest.mark.model]


def load(feed: Path, spec: FeedSpec, days: range) -> tuple[torch.Tensor, torch.Tensor]:
    posts = pd.read_parquet(feed / "posts", columns=["post_id", "image", "created_at"])
    posts = posts.merge(pd.read_parquet(feed / "oracle" / "labels", columns=["post_id", "label"]), on="post_id")
    posts = posts[posts.created_at.dt.date.isin([spec.day_date(d) for d in days])]
    tags = spec.tags()
    images = np.stack([np.asarray(Image.open(feed / p).convert("RGB")) for p in posts.image])  # (N, 64, 64, 3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.tensor([tags.index(label) for label in posts.label])
    return x, y


def small_cnn(classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, classes),
    )


def test_a_small_cnn_lands_between_85_and_95_percent(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    spec = FeedSpec(seed=21, posts_per_day=500, trends=[], exif_share=0.0, corrupt_share=0.0, repost_share=0.0)
    simulate(spec, tmp_path, range(8), workers=2)
    x_train, y_train = load(tmp_path, spec, range(6))  # 3,000 posts
    x_test, y_test = load(tmp_path, spec, range(6, 8))  # 1,000 later posts
    assert len(y_train) == 3_000 and len(y_test) == 1_000
    model = small_cnn(len(spec.tags()))
    epochs, batch = 18, 64
    steps = epochs * ((len(y_train) + batch - 1) // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            flip = torch.rand(len(idx), 1, 1, 1) < 0.5
            xb = torch.where(flip, x_train[idx].flip(3), x_train[idx])
            loss = nn.functional.cross_entropy(model(xb), y_train[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"small CNN, 3,000 training posts, 18 epochs: test accuracy {accuracy:.3f}")
    assert 0.83 <= accuracy <= 0.97
