"""Label efficiency: test accuracy against labels bought, per acquisition strategy, on a feed with a new trend.

    uv run python benchmarks/bench_active_learning.py [--seeds 3] [--rounds 6] [--query 50] [--posts-per-day 300]

The feed: days 0-1 are the labelled seed set (base classes only); from day 2 a
new class ("meme") takes a quarter of the posts. Days 2-6 are the unlabelled
pool, days 7-8 the test set. For each seed, one tagger is trained on the seed set;
then each strategy, from that same start, runs ``rounds`` rounds: score the pool,
buy ``query`` labels (the simulator's truth stands in for annotators: this measures
the strategies, not Label Studio), fine-tune on everything labelled so far, test.
Every strategy gets the same budget and the same seeds; random is the baseline.
The head has a row for every class from the start (the new class's row is untrained
until its posts are bought), as a model grown by ``extend_labels`` would.

Printed: mean test accuracy (and its spread over seeds) per strategy after each
round, accuracy on the new class, and how many labels each strategy needs to reach
random's final accuracy.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from active_learning.pool import mc_dropout_probabilities
from active_learning.strategies import SelectionConfig, heuristic, select_batch
from components.model.datasets import decode_images, targets_for
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import Tagger, TaggerSpec, build_tagger
from components.simulator.feed import FeedSpec, read_feed, simulate
from components.simulator.trends import NewClass

# name -> (heuristic, diversity)
STRATEGIES = {
    "random": ("random", False),
    "least_confidence": ("least_confidence", False),
    "margin": ("margin", False),
    "entropy": ("entropy", False),
    "bald": ("bald", False),
    "entropy+kcenter": ("entropy", True),
}
PRE = Preprocessing(image_size=32, resize=36)


def fit(model: Tagger, images: torch.Tensor, targets: torch.Tensor, epochs: int, lr: float, seed: int) -> Tagger:
    """Train in place with one-cycle AdamW and the platform's augmentation; images are uint8 base tensors."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    steps = epochs * ((len(images) + 63) // 64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            idx = order[start : start + 64]
            x = PRE.training(images[idx], generator)
            loss = loss_fn(model(x), targets[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def evaluate(predictor: Predictor, images: torch.Tensor, targets: torch.Tensor, new: int) -> tuple[float, float]:
    """(accuracy, accuracy on the new class's posts)."""
    predicted = torch.from_numpy(predictor.predict_base(images).probabilities.argmax(1))
    right = predicted == targets
    on_new = targets == new
    return float(right.float().mean()), float(right[on_new].float().mean()) if on_new.any() else float("nan")


def run(args: argparse.Namespace) -> pd.DataFrame:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = FeedSpec(
        seed=11,
        posts_per_day=args.posts_per_day,
        exif_share=0,
        corrupt_share=0,
        repost_share=0,
        trends=[NewClass(name="meme", look="meme", start_day=2, ramp_days=0, share=0.25)],
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "feed"
        simulate(spec, out, range(9), workers=2)
        feed = read_feed(out)
        day = (feed.created_at - pd.Timestamp(spec.day_start(0))).dt.days
        parts = {
            name: feed[mask].reset_index(drop=True)
            for name, mask in (("seed", day < 2), ("pool", (day >= 2) & (day < 7)), ("test", day >= 7))
        }
        decoded = {name: decode_images(part.path.tolist(), PRE) for name, part in parts.items()}
    labels = tuple(spec.tags())
    targets = {name: targets_for(part.label, labels) for name, part in parts.items()}
    new = labels.index("meme")
    print(
        f"feed: seed {len(parts['seed'])} labelled posts (no meme), pool {len(parts['pool'])} "
        f"({(targets['pool'] == new).float().mean():.0%} meme), test {len(parts['test'])}; "
        f"{args.rounds} rounds x {args.query} labels, {args.seeds} seeds, arch {args.arch} at {PRE.image_size} px"
    )
    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        start = time.perf_counter()
        base = fit(
            build_tagger(TaggerSpec(args.arch, labels, PRE)),
            decoded["seed"],
            targets["seed"],
            args.seed_epochs,
            3e-3,
            seed,
        )
        base_acc, base_new = evaluate(Predictor(base), decoded["test"], targets["test"], new)
        print(f"seed {seed}: seed model {base_acc:.3f} test accuracy ({time.perf_counter() - start:.0f} s)")
        for name in args.strategies:
            strategy, diversity = STRATEGIES[name]
            rows.append({"seed": seed, "strategy": name, "labels": 0, "accuracy": base_acc, "new_class": base_new})
            model = copy.deepcopy(base)
            bought = np.zeros(0, dtype=np.int64)
            config = SelectionConfig(
                strategy=strategy, diversity=diversity, control_share=0.0, prefilter=args.prefilter, seed=seed
            )
            scorer = heuristic(strategy, seed)
            started = time.perf_counter()
            for round_ in range(1, args.rounds + 1):
                rest = np.setdiff1d(np.arange(len(parts["pool"])), bought)
                predictor = Predictor(model)
                out = predictor.predict_base(decoded["pool"][rest])
                if strategy == "bald":
                    ids = parts["pool"].post_id.iloc[rest].tolist()
                    probs = mc_dropout_probabilities(
                        predictor, out.embeddings, ids, config.mc_samples, config.mc_dropout
                    )
                    scores = scorer.score(probs)
                else:
                    scores = scorer.score(out.probabilities)
                centers = (
                    predictor.predict_base(torch.cat([decoded["seed"], decoded["pool"][bought]])).embeddings
                    if diversity
                    else None
                )
                picked = select_batch(scores, out.embeddings, config, args.query, centers)
                bought = np.concatenate([bought, rest[picked.indices]])
                images = torch.cat([decoded["seed"], decoded["pool"][bought]])
                y = torch.cat([targets["seed"], targets["pool"][bought]])
                model = fit(model, images, y, args.epochs, args.lr, seed * 100 + round_)
                acc, acc_new = evaluate(Predictor(model), decoded["test"], targets["test"], new)
                rows.append(
                    {"seed": seed, "strategy": name, "labels": len(bought), "accuracy": acc, "new_class": acc_new}
                )
            print(
                f"  {name:<18} final {acc:.3f} (new class {acc_new:.3f}) in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return pd.DataFrame(rows)


def report(results: pd.DataFrame) -> None:
    order = [name for name in STRATEGIES if name in set(results.strategy)]
    mean = results.pivot_table(index="strategy", columns="labels", values="accuracy", aggfunc="mean", dropna=False).loc[
        order
    ]
    spread = results.pivot_table(
        index="strategy", columns="labels", values="accuracy", aggfunc="std", dropna=False
    ).loc[order]
    new = results.pivot_table(index="strategy", columns="labels", values="new_class", aggfunc="mean", dropna=False).loc[
        order
    ]
    print("\ntest accuracy, mean (std) over seeds, by labels bought")
    print("| strategy | " + " | ".join(str(c) for c in mean.columns) + " |")
    print("|---" * (len(mean.columns) + 1) + "|")
    for name in order:
        cells = [f"{mean.loc[name, c]:.3f} ({spread.loc[name, c]:.3f})".replace(" (nan)", "") for c in mean.columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\naccuracy on the new class (meme), mean over seeds")
    print("| strategy | " + " | ".join(str(c) for c in new.columns) + " |")
    print("|---" * (len(new.columns) + 1) + "|")
    for name in order:
        print(f"| {name} | " + " | ".join(f"{new.loc[name, c]:.3f}" for c in new.columns) + " |")
    if "random" not in order:
        return
    target = mean.loc["random"].iloc[-1]
    print(f"\nlabels needed to reach random's final accuracy ({target:.3f} at {mean.columns[-1]} labels)")
    for name in order:
        reached = [c for c in mean.columns if c > 0 and mean.loc[name, c] >= target]
        needed = f"{reached[0]}" if reached else f"not reached in {mean.columns[-1]}"
        print(f"  {name:<18} {needed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--query", type=int, default=50, help="labels bought per round")
    parser.add_argument("--posts-per-day", type=int, default=300)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--seed-epochs", type=int, default=12, help="epochs of the seed model")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per round")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of each round's fine-tuning")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument(
        "--prefilter", type=int, default=5, help="k-center picks among prefilter x query most uncertain"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args)
    report(results)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
