"""Training throughput: the platform's loop next to a bare PyTorch loop, same model, data and batch.

    uv run python benchmarks/bench_train.py [--posts 2000] [--epochs 3] [--arch resnet18] [--image-size 32]

The platform loop is ``components.model.train.train`` on a real snapshot: batched
augmentation, per-step metrics, a validation pass and a checkpoint each epoch (the
figure counts the training steps only, as ``EpochStats.images_per_second`` does).
The bare loop trains the same tagger on the same decoded images, already
normalised, with no augmentation: forward, loss, backward, step. The ratio is what
the platform costs. On a machine with CUDA it adds resnet18 and resnet50 at 224 px
with bf16 autocast and channels_last, both loops.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from components.data.ingest import ingest, read_labels
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Snapshot, Store
from components.model.datasets import decode_images, labelled_posts, targets_for
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger
from components.model.train import TrainConfig, pick_device, train
from components.simulator.feed import FeedSpec, simulate


def make_snapshot(root: Path, posts: int) -> tuple[Store, Snapshot]:
    days = max(1, posts // 500)
    spec = FeedSpec(seed=1, posts_per_day=posts // days, exif_share=0, corrupt_share=0, repost_share=0, trends=[])
    simulate(spec, root / "feed", range(days), workers=2)
    store = Store(root / "store")
    ingest(
        root / "feed", store, Pseudonyms.ephemeral(), labels=read_labels(root / "feed" / "oracle" / "labels"), workers=2
    )
    return store, store.head()


def platform_rate(store: Store, snap: Snapshot, config: TrainConfig, run_dir: Path) -> float:
    result = train(store, snap, config, run_dir)
    steady = result.history[1:] or result.history  # the first epoch warms up allocators and caches
    return sum(h.images_per_second for h in steady) / len(steady)


def bare_rate(store: Store, snap: Snapshot, config: TrainConfig) -> float:
    device = pick_device(config.device)
    posts = labelled_posts(store, snap)
    posts = posts[posts.split == "train"]
    labels = tuple(sorted(set(posts.label)))
    pre = config.preprocessing
    x_all = pre.evaluation(decode_images(posts.path.tolist(), pre)).to(device)  # (N, 3, S, S), normalised
    y_all = targets_for(posts.label, labels).to(device)
    torch.manual_seed(config.seed)
    model = build_tagger(TaggerSpec(config.arch, labels, pre)).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(config.epochs):
        order = torch.randperm(len(y_all), device=device)
        n_full = len(order) // config.batch_size * config.batch_size
        model.train()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, n_full, config.batch_size):
            idx = order[start : start + config.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x_all[idx]).float(), y_all[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if cuda:
            torch.cuda.synchronize()
        rates.append(n_full / (time.perf_counter() - started))
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


def run_case(store: Store, snap: Snapshot, config: TrainConfig, name: str, tmp: Path) -> None:
    ours = platform_rate(store, snap, config, tmp / f"run-{name}")
    bare = bare_rate(store, snap, config)
    print(
        f"{name:<28} device={pick_device(config.device).type:<4} batch={config.batch_size:<4} "
        f"platform img/s={ours:8.1f}  bare img/s={bare:8.1f}  ratio={ours / bare:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store, snap = make_snapshot(tmp, args.posts)
        size = args.image_size
        pre = Preprocessing(image_size=size, resize=round(size * 9 / 8))
        common = {"epochs": args.epochs, "patience": args.epochs, "batch_size": args.batch_size}
        cpu = TrainConfig(arch=args.arch, preprocessing=pre, device="cpu", **common)
        run_case(store, snap, cpu, f"{args.arch} {size}px", tmp)
        if torch.cuda.is_available():
            big = Preprocessing(image_size=224, resize=256)
            for arch in ("resnet18", "resnet50"):
                config = TrainConfig(arch=arch, preprocessing=big, device="cuda", **common | {"batch_size": 128})
                run_case(store, snap, config, f"{arch} 224px amp", tmp)


if __name__ == "__main__":
    main()
