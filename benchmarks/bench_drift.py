"""Drift detection delay and false alarms, trend by trend, and the time to check 50,000 embeddings.

    uv run python benchmarks/bench_drift.py [--posts-per-day 250] [--window 250] [--step 125]

A champion trains on four stationary days. Then, for each trend type (new class,
style shift, prior shift) and size (1%, 5%, 20% of traffic), the simulator replays
days 4-7 with the trend switched on at the start of day 5. A drift check runs on
the trailing ``--window`` posts every ``--step`` posts. The delay is the number of
trend-era posts seen when the first check flags drift (and that in days); a false
alarm is a flag on a window that ends before the trend starts. The prior shift
multiplies one class (fitness) so that its share grows by the given size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from components.data.ingest import ingest, read_labels
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.model.predict import Predictor
from components.model.train import TrainConfig, train
from components.monitor.checks import predict_window, reference_windows
from components.monitor.drift import DriftConfig, Window, detect_drift
from components.simulator.feed import FeedSpec, read_feed, simulate
from components.simulator.trends import NewClass, PriorShift, StyleShift

SEED_DAYS, TREND_DAY, LAST_DAY = 4, 5, 7


def trend(kind: str, size: float):
    if kind == "new_class":
        return NewClass(name="meme", look="meme", start_day=TREND_DAY, share=size)
    if kind == "style_shift":
        return StyleShift(filter="vintage", start_day=TREND_DAY, share=size)
    share = 1 / 8 + size  # fitness's share of eight equal classes grows by `size`: w / (w + 7) = share
    return PriorShift(start_day=TREND_DAY, weights={"fitness": 7 * share / (1 - share)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts-per-day", type=int, default=250)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--step", type=int, default=125)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    feed = FeedSpec(seed=21, posts_per_day=args.posts_per_day, corrupt_share=0, repost_share=0, exif_share=0, trends=[])
    config = DriftConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulate(feed, root / "seed", range(SEED_DAYS), workers=2)
        store = Store(root / "store")
        ingest(
            root / "seed",
            store,
            Pseudonyms.ephemeral(),
            labels=read_labels(root / "seed" / "oracle" / "labels"),
            workers=2,
        )
        snapshot = store.head()
        result = train(store, snapshot, TrainConfig(epochs=args.epochs, patience=args.epochs), root / "run")
        champion = Predictor(result.tagger)
        reference, index = reference_windows(store, snapshot, champion, config.max_reference)
        print(f"champion: {result.history[-1].val_accuracy:.3f} val accuracy; reference {len(reference)} posts")
        rows = []
        for kind in ("new_class", "style_shift", "prior_shift"):
            for size in (0.01, 0.05, 0.20):
                spec = feed.model_copy(update={"trends": [trend(kind, size)]})
                out = root / f"{kind}-{size}"
                simulate(spec, out, range(SEED_DAYS, LAST_DAY + 1), workers=2)
                posts = read_feed(out)
                traffic = predict_window(champion, posts.drop(columns=["label", "filter"]))
                start = int((posts.created_at < spec.day_start(TREND_DAY)).sum())  # first trend-era post
                alarms, delay = 0, None
                for end in range(args.window, len(posts) + 1, args.step):
                    window = traffic.take(np.arange(end - args.window, end))
                    verdict, _, _ = detect_drift(reference, window, config, index=index)
                    if end <= start:
                        alarms += verdict.drifted
                    elif verdict.drifted and delay is None:
                        delay = end - start
                checks_before = len(range(args.window, start + 1, args.step))
                rows.append(
                    {
                        "trend": kind,
                        "size": f"{size:.0%}",
                        "delay_posts": delay if delay is not None else "not flagged",
                        "delay_days": f"{delay / args.posts_per_day:.2f}" if delay is not None else "-",
                        "false_alarms": f"{alarms}/{checks_before}",
                    }
                )
                print(rows[-1], flush=True)
        print()
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")

        # the time to check 50,000 embeddings: the traffic resampled with jitter to 50k posts
        rng = np.random.default_rng(0)
        pick = rng.integers(0, len(traffic), 50_000)
        big = Window(
            traffic.posts.iloc[pick].reset_index(drop=True).assign(post_id=[f"p{i}" for i in range(50_000)]),
            traffic.embeddings[pick] * rng.uniform(0.95, 1.05, (50_000, 1)).astype(np.float32),
        )
        big_config = DriftConfig(max_current=50_000)
        start_time = time.perf_counter()
        verdict, _, _ = detect_drift(reference, big, big_config, index=index)
        seconds = time.perf_counter() - start_time
        print(f"\ncheck of {verdict.current_posts} embeddings against {verdict.reference_posts}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
