"""Train a tagger on a snapshot: from scratch, or fine-tune the champion with replay.

Continual learning here means: start from the champion's weights, grow its head for
labels a trend brought, and train on the posts the champion has not seen mixed with
a replay buffer of the posts it was trained on (reservoir-sampled), which limits
catastrophic forgetting (Rolnick et al., "Experience Replay for Continual
Learning", NeurIPS 2019).

Runs are deterministic for a seed: every epoch reseeds torch and the loader from
``(seed, epoch)``, so a run resumed from its epoch-k checkpoint ends with the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import io
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, WeightedRandomSampler

from components.data.snapshot import Snapshot, Store
from components.errors import ConfigError
from components.features.side import SideReader, group_slices
from components.files import write_atomic
from components.model.datasets import (
    PostImages,
    SplitShares,
    decode_images,
    label_order,
    labelled_posts,
    reservoir_sample,
    targets_for,
)
from components.model.distributed import Peers, device_of, global_batch_norm, launch, world_size
from components.model.preprocess import Rows
from components.model.tagger import Tagger, TaggerSpec, build_tagger, extend_labels
from components.model.train_config import TrainConfig

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Base:
    """The model a fine-tune starts from, and the snapshot it was trained on."""

    tagger: Tagger
    snapshot: Snapshot


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    images_per_second: float
    seconds: float


@dataclass
class TrainResult:
    tagger: Tagger  # the best epoch's weights, on the CPU, in eval mode
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    resumed_from: int  # epochs already done when this call started (0: a fresh run)
    examples: dict[str, int]  # new, replay, val
    labels: tuple[str, ...]
    device: str


@dataclass
class Step:
    epoch: int
    step: int
    steps: int
    loss: float
    accuracy: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but torch sees no CUDA device")
    return device


def training_sets(
    store: Store,
    snapshot: Snapshot,
    base: Base | None,
    config: TrainConfig,
    shares: SplitShares | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(training posts, validation posts, counts). Fine-tuning trains on what is new plus replay."""
    shares = shares or SplitShares()
    posts = labelled_posts(store, snapshot, shares)
    train, val = posts[posts.split == "train"], posts[posts.split == "val"]
    if base is None:
        return train, val, {"new": len(train), "replay": 0, "val": len(val)}
    seen = labelled_posts(store, base.snapshot, shares)
    seen = seen[seen.split == "train"]
    known = set(zip(seen.post_id, seen.label, strict=True))
    is_new = [(p, lab) not in known for p, lab in zip(train.post_id, train.label, strict=True)]
    new = train[is_new]
    if new.empty:
        raise ConfigError(f"snapshot {snapshot.id} has no labelled posts that {base.snapshot.id} lacks")
    if config.replay_share == 0:
        return new, val, {"new": len(new), "replay": 0, "val": len(val)}
    wanted = min(config.replay_capacity, round(len(new) * config.replay_share / (1 - config.replay_share)))
    stream = seen.sort_values(["created_at", "post_id"]).itertuples(index=False)  # oldest first
    replay = pd.DataFrame(reservoir_sample(stream, wanted, random.Random(config.seed)), columns=seen.columns)
    mixed = pd.concat([new, replay], ignore_index=True)
    return mixed, val, {"new": len(new), "replay": len(replay), "val": len(val)}


def train(
    store: Store,
    snapshot: Snapshot,
    config: TrainConfig,
    run_dir: Path,
    base: Base | None = None,
    on_step: Callable[[Step], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    side_reader: SideReader | None = None,
) -> TrainResult:
    """Train on ``snapshot`` (fine-tuning ``base`` if given), checkpointing into ``run_dir`` each epoch.

    Calling it again with the same ``run_dir`` resumes after the last finished epoch;
    a finished run returns its result without training again. A fusion tagger
    (``config.side``) reads its side inputs through ``side_reader``, point in time at
    each post's ``created_at``. With ``config.processes`` above 1 the epochs run
    data-parallel (components.model.distributed); the callbacks run in this process.
    """
    device = pick_device(config.device)
    world = world_size(config.processes, device)
    torch.manual_seed(config.seed)
    if config.side and side_reader is None:
        raise ConfigError(f"a tagger reading {', '.join(config.side)} features needs the feature store to train")
    if base is not None and base.tagger.spec.side != config.side:
        had = ", ".join(base.tagger.spec.side) or "none"
        raise ConfigError(
            f"the base model reads side inputs {had}, not {', '.join(config.side) or 'none'}: fine-tune with the "
            "same [train] side, or train from scratch"
        )
    train_posts, val_posts, counts = training_sets(store, snapshot, base, config)
    if train_posts.empty or val_posts.empty:
        raise ConfigError(f"snapshot {snapshot.id} has too few labelled posts to train and validate on")
    if world > min(config.batch_size, len(train_posts)):
        raise ConfigError(
            f"{world} training processes for batches of {min(config.batch_size, len(train_posts))} posts: "
            "every process needs a share of each batch"
        )
    if base is None:
        labels = label_order((), train_posts)
        spec = TaggerSpec(config.arch, labels, config.preprocessing, config.side)
        tagger = build_tagger(spec, config.weights)
    else:
        labels = label_order(base.tagger.labels, train_posts)
        tagger = extend_labels(copy.deepcopy(base.tagger).cpu(), labels)
    pre = tagger.spec.preprocessing
    unknown_val = set(val_posts.label) - set(labels)
    if unknown_val:  # a label with no training example cannot be learned; validate on what can be
        val_posts = val_posts[~val_posts.label.isin(unknown_val)]

    state = _load_checkpoint(run_dir / CHECKPOINT)
    if state is not None and tuple(state["labels"]) != labels:
        raise ConfigError(f"checkpoint in {run_dir} was trained for other labels; use a new run folder")
    resumed_from = 0 if state is None else len(state["history"])
    if state is None or not state["finished"]:  # a finished run needs no images: its checkpoint holds the result
        both = _side_inputs(tagger, pd.concat([train_posts, val_posts]), side_reader)  # one store read for both
        n = len(train_posts)
        train_set, val_set = [
            PostImages(
                decode_images(part.path.tolist(), pre),
                targets_for(part.label, labels),
                both[rows] if both is not None else None,
            )
            for part, rows in ((train_posts, slice(0, n)), (val_posts, slice(n, None)))
        ]
        teacher = _teacher(base, config)
        job = _Job(
            config=config,
            spec=tagger.spec,
            start=_cpu_copy(tagger),
            teacher=(teacher.spec, _cpu_copy(teacher)) if teacher is not None else None,
            train_set=train_set,
            val_set=val_set,
            groups=group_slices(config.side, labels),
            balanced=base is not None and config.balanced_finetune,
            fine_tune=base is not None,
            run_dir=run_dir,
            device=str(device),
        )
        if world == 1:
            _fit(job, None, on_step, on_epoch)
        else:
            launch(_fit, job, world, device, on_step, on_epoch)
        state = _load_checkpoint(run_dir / CHECKPOINT)
    assert state is not None  # _fit writes one every epoch

    history = [EpochStats(**h) for h in state["history"]]
    if state["best_model"] is None:
        raise ConfigError(f"training diverged: validation loss was {history[-1].val_loss} at every epoch")
    best = build_tagger(TaggerSpec(tagger.spec.arch, labels, pre, tagger.spec.side))
    best.load_state_dict(state["best_model"])
    return TrainResult(
        tagger=best.eval(),
        history=history,
        best_epoch=state["best_epoch"],
        stopped_early=history[-1].epoch < config.epochs,
        resumed_from=resumed_from,
        examples=counts,
        labels=labels,
        device=str(device) if world == 1 else f"{world} x {device}",
    )


@dataclass(frozen=True)
class _Job:
    """What each training process needs, picklable: data-parallel peers get it whole (tensors by shared memory)."""

    config: TrainConfig
    spec: TaggerSpec
    start: dict[str, torch.Tensor]  # the weights epoch 1 starts from (built, or the grown champion)
    teacher: tuple[TaggerSpec, dict[str, torch.Tensor]] | None  # the frozen champion distilled from
    train_set: PostImages
    val_set: PostImages
    groups: list[slice]  # the side vector's feature groups (modality dropout)
    balanced: bool  # classes drawn evenly, epochs picked on a class-balanced loss
    fine_tune: bool
    run_dir: Path
    device: str  # rank 0's; peers on CUDA take cuda:rank


def _fit(
    job: _Job,
    peers: Peers | None,
    on_step: Callable[[Step], None] | None,
    on_epoch: Callable[[EpochStats], None] | None,
) -> None:
    """The epoch loop, in one process or as one of ``peers``; every epoch ends in ``job.run_dir``'s checkpoint.

    Data-parallel, every process takes its share of the same global batches and
    reduces the epoch's sums, so all of them take the same decisions (early stop,
    best epoch) from the same numbers; only rank 0 writes and reports.
    """
    config, pre = job.config, job.spec.preprocessing
    device = device_of(torch.device(job.device), peers)
    world, lead = (1, True) if peers is None else (peers.world, peers.rank == 0)
    if peers is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives (and Peers.sum's .cuda()) use this process's own GPU
    tagger = build_tagger(job.spec)
    tagger.load_state_dict(job.start)
    if peers is not None:
        tagger = global_batch_norm(tagger, device)
    tagger = tagger.to(device)
    if device.type == "cuda":
        tagger = tagger.to(memory_format=torch.channels_last)
    model: nn.Module = tagger
    if peers is not None:  # buffers need no syncing each step: batch norm statistics are global already
        model = DistributedDataParallel(
            tagger, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    teacher = _frozen(job.teacher, device)
    workers = config.loader_workers if config.loader_workers is not None else (0 if device.type == "cpu" else 8)
    peak = config.finetune_lr if job.fine_tune else config.lr
    optimiser = torch.optim.AdamW(tagger.parameters(), lr=peak, weight_decay=config.weight_decay)
    train_set, val_set = job.train_set, job.val_set
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=peak, total_steps=config.epochs * steps_per_epoch, pct_start=config.warmup_share
    )
    # epochs that end inside the warm-up: their validation loss swings with the rising learning rate,
    # so they never count towards early stopping nor stand as the best (a run once stopped at epoch 4
    # keeping epoch 1's weights)
    warmup_epochs = math.ceil(config.warmup_share * config.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    drop_last = len(train_set) > config.batch_size
    batch_rows = config.batch_size if drop_last else len(train_set)  # every global batch has this many
    rows = Rows(slice(0, batch_rows), batch_rows) if peers is None else Rows(peers.shard(batch_rows), batch_rows)

    state = _load_checkpoint(job.run_dir / CHECKPOINT)
    history: list[EpochStats] = []
    best_loss, best_epoch, best_state, stale, finished = math.inf, 0, None, 0, False
    if state is not None:
        tagger.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        history = [EpochStats(**h) for h in state["history"]]
        best_loss, best_epoch, best_state = state["best_loss"], state["best_epoch"], state["best_model"]
        stale, finished = state["stale"], state["finished"]

    for epoch in range(len(history) + 1, config.epochs + 1):
        if finished:
            break
        epoch_seed = config.seed * 1_000_003 + epoch
        torch.manual_seed(epoch_seed)  # dropout draws
        augment = torch.Generator().manual_seed(epoch_seed)
        blanks = torch.Generator().manual_seed(epoch_seed + 1)  # its own stream: fusion keeps image-only's crops
        order = torch.Generator().manual_seed(epoch_seed)
        draws = (
            _balanced_sampler(train_set.targets, order) if job.balanced else RandomSampler(train_set, generator=order)
        )
        loader = DataLoader(
            train_set,
            batch_sampler=_Shares(BatchSampler(draws, config.batch_size, drop_last), rows.share),
            generator=None if job.balanced else order,  # as DataLoader(shuffle=True) draws its seeds
            collate_fn=_whole_batch,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        started = time.perf_counter()
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for step, (images, side_batch, targets) in enumerate(loader, 1):
            x = _to(pre.training(images.to(device, non_blocking=True), augment, rows), device)
            y = targets.to(device, non_blocking=True)
            side = _blank_groups(side_batch, job.groups, config.side_dropout, blanks, rows) if job.groups else None
            side = side.to(device) if side is not None else None
            with _autocast(device):
                logits = model(x, side)
                loss = loss_fn(logits.float(), y)
                if teacher is not None:
                    loss = loss + config.distill * _distillation(logits.float(), teacher, x, side, config)
            n = len(y)
            optimiser.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients: weighting each share's mean by its size makes that average
            # the gradient of the global batch's mean loss, whatever the shares' sizes
            (loss * (n * world / rows.total) if peers is not None else loss).backward()
            optimiser.step()
            if schedule.last_epoch + 1 < schedule.total_steps:
                schedule.step()
            total_loss += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            if on_step is not None:
                on_step(Step(epoch, step, len(loader), total_loss / seen, correct / seen))
        if peers is not None:
            total_loss, correct, seen = peers.sum(torch.tensor([total_loss, correct, seen], dtype=torch.float64))
            total_loss, correct, seen = total_loss.item(), int(correct.item()), int(seen.item())
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = _validate(tagger, val_set, loss_fn, device, config.batch_size * 4, job.balanced, peers)
        stats = EpochStats(epoch, total_loss / seen, correct / seen, val_loss, val_accuracy, seen / seconds, seconds)
        history.append(stats)
        # a warm-up epoch is kept only until the warm-up ends: its weights never stand as the best of a run
        # that goes on (a fine-tune once returned epoch 2 of 10, before the new class was learned)
        warming = epoch <= warmup_epochs
        improved = not warming and val_loss < best_loss - 1e-4
        best_loss, stale = (val_loss, 0) if improved else (best_loss, stale + (not warming))
        if improved or ((warming or config.keep == "last") and not math.isnan(val_loss)):
            best_epoch = epoch
            best_state = _cpu_copy(tagger)
        finished = stale >= config.patience or epoch == config.epochs
        if lead:
            _save_checkpoint(
                job.run_dir / CHECKPOINT,
                {
                    "labels": list(job.spec.labels),
                    "model": tagger.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "history": [asdict(h) for h in history],
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                    "stale": stale,
                    "finished": finished,
                },
            )
        if on_epoch is not None:
            on_epoch(stats)


class _Shares:
    """A batch sampler's batches, cut to one process's rows of each (all of them in one process)."""

    def __init__(self, batches: BatchSampler, share: slice) -> None:
        self.batches, self.share = batches, share

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.share]

    def __len__(self) -> int:
        return len(self.batches)


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # PostImages.__getitems__ already returns stacked tensors


def _side_inputs(tagger: Tagger, posts: pd.DataFrame, reader: SideReader | None) -> torch.Tensor | None:
    """(N, S) side vectors of ``posts`` for a fusion tagger, read as of each post's creation; None otherwise."""
    if not tagger.spec.side:
        return None
    assert reader is not None  # train() refuses a fusion run without one
    return torch.from_numpy(reader.historical(tagger.spec.side, tagger.labels, posts))


def _blank_groups(
    side: torch.Tensor, groups: list[slice], rate: float, generator: torch.Generator, rows: Rows
) -> torch.Tensor:
    """``side`` (``rows`` of a batch) with each row's groups zeroed (read as unknown) at ``rate``: modality dropout.

    A model that always saw every input leans on it; serving meets new users and
    captionless posts, and such a model then falls to worse than image-only.
    """
    if rate == 0:
        return side
    keep = torch.rand((rows.total, len(groups)), generator=generator)[rows.share] >= rate  # (N, G)
    out = side.clone()
    for g, cols in enumerate(groups):
        out[:, cols] *= keep[:, g : g + 1].to(out.dtype)
    return out


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA: no loss scaling needed; full precision on the CPU
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _teacher(base: Base | None, config: TrainConfig) -> Tagger | None:
    """The champion whose scores a fine-tune keeps matching on its classes; None when not distilling.

    A fusion tagger's side inputs widen with its labels, so the champion could not read the grown model's
    side vectors: fusion fine-tunes rely on replay alone.
    """
    if base is None or config.distill == 0 or base.tagger.spec.side:
        return None
    return base.tagger


def _frozen(teacher: tuple[TaggerSpec, dict[str, torch.Tensor]] | None, device: torch.device) -> Tagger | None:
    """The teacher rebuilt in this process, on ``device``, in eval mode and without gradients."""
    if teacher is None:
        return None
    spec, weights = teacher
    model = build_tagger(spec)
    model.load_state_dict(weights)
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def _distillation(
    logits: torch.Tensor, teacher: Tagger, x: torch.Tensor, side: torch.Tensor | None, config: TrainConfig
) -> torch.Tensor:
    """KL divergence from the teacher's softened distribution over its classes to the student's on the same
    classes (the student's first rows: extend_labels keeps old rows in place), scaled by T squared."""
    t = config.distill_temperature
    with torch.no_grad():
        target = nn.functional.softmax(teacher(x, side).float() / t, dim=1)
    known = logits[:, : target.shape[1]] / t
    return nn.functional.kl_div(nn.functional.log_softmax(known, dim=1), target, reduction="batchmean") * t * t


def _balanced_sampler(targets: torch.Tensor, generator: torch.Generator) -> WeightedRandomSampler:
    """An epoch's worth of draws in which every class present is equally likely (with replacement)."""
    counts = torch.bincount(targets).double()
    return WeightedRandomSampler(1.0 / counts[targets], len(targets), replacement=True, generator=generator)


@torch.no_grad()
def _validate(
    tagger: Tagger,
    data: PostImages,
    loss_fn: nn.Module,
    device: torch.device,
    batch: int,
    balanced: bool = False,
    peers: Peers | None = None,
) -> tuple[float, float]:
    """(loss, accuracy) on ``data``; a balanced loss is the mean of each class's mean loss.

    Data-parallel, each process scores its share of ``data`` and the per-class sums are
    added up, so every process gets the same two numbers.
    """
    tagger.eval()
    rows = range(len(data))[peers.shard(len(data))] if peers is not None else range(len(data))
    classes = len(tagger.labels)
    sums = torch.zeros(2 * classes + 1, dtype=torch.float64)  # per-class loss sums, per-class counts, correct
    pre = tagger.spec.preprocessing
    for start in range(rows.start, rows.stop, batch):
        end = min(start + batch, rows.stop)
        x = pre.evaluation(data.images[start:end].to(device))
        y = data.targets[start:end].to(device)
        side = data.side[start:end].to(device) if tagger.side_net is not None else None
        with _autocast(device):
            logits = tagger(_to(x, device), side).float()
        per_post = nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=loss_fn.label_smoothing)
        y = y.cpu()
        sums[:classes] += torch.bincount(y, weights=per_post.cpu().double(), minlength=classes)
        sums[classes:-1] += torch.bincount(y, minlength=classes).double()
        sums[-1] += (logits.argmax(1).cpu() == y).sum().item()
    if peers is not None:
        sums = peers.sum(sums)
    loss_sums, counts, correct = sums[:classes], sums[classes:-1], sums[-1].item()
    present = counts > 0
    if balanced:
        return (loss_sums[present] / counts[present]).mean().item(), correct / len(data)
    return (loss_sums.sum() / counts.sum()).item(), correct / len(data)


def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())  # a crash mid-write leaves the previous epoch's checkpoint whole


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
