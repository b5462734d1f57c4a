"""Data-parallel training (torch.distributed, gloo) on two CPU processes against one process.

The arithmetic is checked exactly where it can be: global batch norm against
BatchNorm2d on the whole batch. A whole run cannot be compared weight for weight:
training is chaotic at this size (one process run with 1 and then 2 torch threads
differs by 1e-7 in its first gradient and by 1e-5 one step later), so runs are
compared on their losses and accuracy, with margins measured over seeds.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from personal import PSEUDONYMS
from torch import nn

from components.data.ingest import ingest, read_labels
from components.data.snapshot import Store
from components.errors import ConfigError
from components.model.distributed import GlobalBatchNorm2d, Peers, TrainingError
from components.model.preprocess import Preprocessing
from components.model.train import CHECKPOINT, EpochStats, Step, TrainConfig, train
from components.simulator.feed import FeedSpec, simulate
from tests.conftest import free_port

pytestmark = pytest.mark.model

FEED = FeedSpec(seed=3, posts_per_day=200, exif_share=0.0, corrupt_share=0.0, repost_share=0.0, trends=[])
CONFIG = TrainConfig(
    epochs=4, patience=8, batch_size=64, seed=0, device="cpu", preprocessing=Preprocessing(image_size=32, resize=36)
)
# Two seeds of this run, one process against two: per-epoch training loss within 4.6% (relative), last
# validation accuracy within 0.08 on 74 posts; the margins leave room for other machines' rounding.
LOSS_MARGIN = 0.08
ACCURACY_MARGIN = 0.15


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("ddp")
    simulate(FEED, root / "feed", range(4), workers=2)
    store = Store(root / "store")
    oracle = read_labels(root / "feed" / "oracle" / "labels")
    ingest(root / "feed", store, PSEUDONYMS, labels=oracle, label_source="seed", workers=2)
    return store


@pytest.fixture(scope="module")
def single(store: Store, tmp_path_factory: pytest.TempPathFactory):
    return train(store, store.head(), CONFIG, tmp_path_factory.mktemp("one") / "run")


def test_two_processes_train_as_one_does(store: Store, single, tmp_path: Path) -> None:
    two = train(store, store.head(), CONFIG.model_copy(update={"processes": 2}), tmp_path / "run")
    assert two.device == "2 x cpu" and single.device == "cpu"
    assert two.labels == single.labels
    assert [h.epoch for h in two.history] == [1, 2, 3, 4]
    for one_epoch, two_epoch in zip(single.history, two.history, strict=True):
        assert two_epoch.train_loss == pytest.approx(one_epoch.train_loss, rel=LOSS_MARGIN)
    assert abs(two.history[-1].val_accuracy - single.history[-1].val_accuracy) <= ACCURACY_MARGIN
    assert two.history[-1].train_loss < 0.75 * two.history[0].train_loss  # it learned


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(store: Store, tmp_path: Path) -> None:
    config = CONFIG.model_copy(update={"processes": 2, "epochs": 3})
    whole = train(store, store.head(), config, tmp_path / "whole")

    def stop_after_one(stats: EpochStats) -> None:
        if stats.epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(store, store.head(), config, tmp_path / "cut", on_epoch=stop_after_one)
    assert multiprocessing.active_children() == []  # the peer did not outlive the run
    resumed = train(store, store.head(), config, tmp_path / "cut")
    assert resumed.resumed_from == 1
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    a, b = whole.tagger.state_dict(), resumed.tagger.state_dict()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-5


def test_a_peer_that_dies_ends_the_run_with_its_name_and_keeps_the_last_epoch(store: Store, tmp_path: Path) -> None:
    config = CONFIG.model_copy(update={"processes": 2, "epochs": 3})

    def kill_the_peer(step: Step) -> None:
        if step.epoch == 2 and step.step == 1:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(TrainingError, match=r"training process 1 of 2 died \(signal 9\).*checkpoint"):
        train(store, store.head(), config, tmp_path / "run", on_step=kill_the_peer)
    assert multiprocessing.active_children() == []
    kept = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert [h["epoch"] for h in kept["history"]] == [1]  # epoch 1 whole; nothing of epoch 2 written
    assert not dist.is_initialized()
    resumed = train(store, store.head(), config, tmp_path / "run")  # and the run goes on from there
    assert resumed.resumed_from == 1 and len(resumed.history) == 3


def test_more_processes_than_a_batch_has_posts_is_refused(store: Store, tmp_path: Path) -> None:
    config = CONFIG.model_copy(update={"processes": 65})
    with pytest.raises(ConfigError, match="65 training processes for batches of 64 posts"):
        train(store, store.head(), config, tmp_path / "run")
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize(("total", "world"), [(64, 2), (7, 2), (10, 3), (3, 3)])
def test_shares_cover_a_batch_once_in_order(total: int, world: int) -> None:
    shares = [Peers(rank, world).shard(total) for rank in range(world)]
    rows = [i for share in shares for i in range(total)[share]]
    assert rows == list(range(total))
    sizes = [len(range(total)[share]) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def _bn_peer(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bn = GlobalBatchNorm2d(x.shape[1]).train()
        rows = Peers(rank, 2).shard(len(x))
        part = x[rows].clone().requires_grad_(True)
        y = bn(part)
        (y * w[rows]).sum().backward()
        for name, t in (("y", y), ("dx", part.grad), ("dw", bn.weight.grad), ("db", bn.bias.grad)):
            out[(rank, name)] = t.detach().clone()
        out[(rank, "mean")], out[(rank, "var")] = bn.running_mean.clone(), bn.running_var.clone()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shape", [(9, 4, 6, 6), (32, 8, 1, 1)])  # an uneven split; a late layer's 1x1 maps
def test_global_batch_norm_is_batch_norm_over_every_process_rows(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(shape, generator=generator) * 3 + 1)  # after a ReLU: skewed, many zeros
    w = torch.randn(shape, generator=generator)
    port = free_port()
    with multiprocessing.Manager() as manager:
        out = manager.dict()
        context = torch.multiprocessing.get_context("spawn")
        peer = context.Process(target=_bn_peer, args=(1, port, x, w, out))
        peer.start()
        _bn_peer(0, port, x, w, out)
        peer.join(60)
        assert peer.exitcode == 0
        got = dict(out)
    bn = nn.BatchNorm2d(shape[1]).train()
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    (y * w).sum().backward()
    assert torch.allclose(torch.cat([got[(0, "y")], got[(1, "y")]]), y, atol=1e-5)
    assert torch.allclose(torch.cat([got[(0, "dx")], got[(1, "dx")]]), whole.grad, atol=1e-5)
    # each process holds its rows' share of the parameter gradients; DDP adds them up
    assert torch.allclose(got[(0, "dw")] + got[(1, "dw")], bn.weight.grad, atol=1e-4)
    assert torch.allclose(got[(0, "db")] + got[(1, "db")], bn.bias.grad, atol=1e-4)
    for rank in (0, 1):  # both processes keep the whole batch's running statistics
        assert torch.allclose(got[(rank, "mean")], bn.running_mean, atol=1e-6)
        assert torch.allclose(got[(rank, "var")], bn.running_var, atol=1e-6)
