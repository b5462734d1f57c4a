"""Fusion against image-only: what the caption and the poster's history add to the tagger.

    uv run python benchmarks/bench_fusion.py [--days 8] [--posts-per-day 400] [--users 200] [--epochs 8]

The loop as it runs for real, on a simulated feed with every post labelled:

1. ingest; write the posts' features to Feast (caption embeddings, user profiles);
2. train an image-only tagger (the champion) and log its batch predictions, which
   become the users' interest profiles, as in the loop;
3. sync the features again, then train taggers reading the caption, the user, and
   both, each with the same seed, schedule and split;
4. score every tagger on the same held-out test posts, their side inputs read point
   in time; and score the fusion tagger once more with every side input unknown (a
   new user posting without a caption), which should fall back to about image-only.

Prints accuracy and macro F1 for each, and the seconds spent training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from components.data.ingest import ingest, read_labels
from components.data.predlog import PredictionLog
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.features.side import SideReader
from components.features.store import Features
from components.features.sync import sync
from components.model.datasets import decode_images, labelled_posts
from components.model.evaluate import evaluate
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.train import TrainConfig, train
from components.monitor.batch import log_batch_predictions
from components.simulator.feed import FeedSpec, simulate

VARIANTS = {"image": (), "caption": ("caption",), "user": ("user",), "fusion": ("caption", "user")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--posts-per-day", type=int, default=400)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        spec = FeedSpec(seed=11, posts_per_day=args.posts_per_day, users=args.users, corrupt_share=0)
        started = time.perf_counter()
        simulate(spec, tmp / "feed", range(args.days), workers=2)
        store = Store(tmp / "store")
        ingest(
            tmp / "feed",
            store,
            Pseudonyms.ephemeral(),
            labels=read_labels(tmp / "feed" / "oracle" / "labels"),
            workers=2,
        )
        snap = store.head()
        features = Features.open(tmp / "features")
        features.apply()
        log = PredictionLog(tmp / "predictions")
        sync(features, snap, log)
        print(f"feed: {snap.posts} posts, {args.users} users, {args.days} days; "
              f"ingest + features {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip

        pre = Preprocessing(image_size=32, resize=36)
        common = {"arch": args.arch, "preprocessing": pre, "epochs": args.epochs, "seed": args.seed, "device": "cpu"}
        reader = SideReader(features)
        results, taggers = {}, {}
        for name, side in VARIANTS.items():
            if name == "caption":  # the champion's scores feed the users' interests from here on
                log_batch_predictions(store, snap, Predictor(taggers["image"]), 1, log)
                sync(features, snap, log)
            config = TrainConfig(side=side, **common)
            began = time.perf_counter()
            result = train(store, snap, config, tmp / f"run-{name}", side_reader=reader)
            taggers[name] = result.tagger
            results[name] = {"train_s": time.perf_counter() - began, "best_epoch": result.best_epoch}

        posts = labelled_posts(store, snap)
        test = posts[posts.split == "test"].reset_index(drop=True)
        base = decode_images(test.path.tolist(), pre)
        print(f"\ntest posts: {len(test)}; classes: {test.label.nunique()}")
        print(f"{'tagger':<26} {'accuracy':>9} {'macro F1':>9} {'train s':>8} {'best epoch':>11}")
        for name, tagger in taggers.items():
            found = evaluate(Predictor(tagger, side_reader=reader), test, base, name, snap.id)
            row = results[name]
            print(f"{'+'.join(('image', *VARIANTS[name])):<26} {found.overall.accuracy:>9.3f} "
                  f"{found.overall.macro_f1:>9.3f} {row['train_s']:>8.0f} {row['best_epoch']:>11}")  # fmt: skip
        fusion = Predictor(taggers["fusion"])
        blank = np.zeros((len(test), taggers["fusion"].side_width), np.float32)
        found = fusion.predict_base(base, side=blank)
        accuracy = float(np.mean(np.asarray(found.predicted) == test.label.to_numpy()))
        print(f"{'image+caption+user, all side inputs unknown':<26} {accuracy:>9.3f}")
        print(f"\ntorch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
