"""The matched torch/torchvision pair works on this machine: real ops, real gradients."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import box_iou, nms
from torchvision.transforms import v2

pytestmark = pytest.mark.unit


def test_torchvision_ops_run() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == [0, 2]  # the overlapping second box is suppressed
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(81 / 119)


def test_torch_and_torchvision_are_the_matched_pair() -> None:
    assert torch.__version__.split("+")[0] == "2.13.0"
    assert torchvision.__version__.split("+")[0] == "0.28.0"
    assert torch.__version__.split("+")[1:] == torchvision.__version__.split("+")[1:]  # same build (cu130)


def test_a_torchvision_model_learns_a_batch() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=3)  # random init: nothing is downloaded
    images = v2.Resize(32)(torch.rand(6, 3, 40, 40))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
