"""The loop closed, measured: the main job at full size for several seeds, and what it bought.

    uv run python benchmarks/bench_loop.py [--seeds 0 1 2] [--days 12] [--seed-days 7] [--posts-per-day 200]

For each seed (the feed's and training's), the main job (``trendloop.demo.run_demo``, the
``make demo`` job) runs in its own state folder against one Label Studio started up front
(so its first start is not counted) and a fresh local Ray. Printed per seed and as mean,
min and max over seeds:

- wall clock of the whole job, and from the trend's first day to the promotion
  (``trend -> promoted``: the day the trend starts is ingested, served and checked, drift
  is flagged, labels are bought, a challenger trained, gated, A/B tested and promoted);
- the A/B verdict and the lift with its always-valid interval;
- the labels bought;
- accuracy of the first champion and of the challenger on a large fresh set the loop
  never saw (the oracle-labelled posts of the three days after the job's last day): on
  the new trend's class, and on the old classes (the change in points).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from components.data.validate import ImageLimits, Rejection, decode_image
from components.model.datasets import decode_images
from components.simulator.feed import read_feed, simulate
from infra.labelstudio import LocalLabelStudio
from trendloop import render, wiring
from trendloop.demo import DemoSize, run_demo
from trendloop.settings import Settings


def fresh_accuracy(settings: Settings, days: range, versions: dict[str, int], trend: str) -> dict[str, dict]:
    """Each version's accuracy on the trend's posts and on the old classes' posts of ``days`` (oracle labels)."""
    feed = Path(tempfile.mkdtemp(prefix="fresh-", dir=settings.home))
    simulate(settings.simulate, feed, days, workers=2)
    posts = read_feed(feed, days)
    registry = wiring.open_registry(settings)
    out = {}
    for name, version in versions.items():
        predictor = registry.load_predictor(version)
        readable = [p for p in posts.itertuples() if _decodes(p.path)]
        images = decode_images([p.path for p in readable], predictor.preprocessing)
        predicted = np.asarray(predictor.predict_base(images).predicted, dtype=object)
        truth = np.asarray([p.label for p in readable], dtype=object)
        new = truth == trend
        out[name] = {
            "trend": float((predicted[new] == truth[new]).mean()),
            "old": float((predicted[~new] == truth[~new]).mean()),
            "trend_posts": int(new.sum()),
            "old_posts": int((~new).sum()),
        }
    return out


def _decodes(path: str) -> bool:
    return not isinstance(decode_image(Path(path).read_bytes(), ImageLimits()), Rejection)


def one_seed(seed: int, size: DemoSize, server: LocalLabelStudio) -> dict:
    home = server.document_root / f"seed-{seed}"
    base = Settings(home=home)
    settings = base.model_copy(
        update={
            "simulate": base.simulate.model_copy(update={"seed": 7 + seed, "posts_per_day": size.posts_per_day}),
            "train": base.train.model_copy(update={"seed": seed}),
            "labelstudio": base.labelstudio.model_copy(
                update={
                    "url": server.url,
                    "token": server.credentials().token,
                    "project": f"bench loop seed {seed}",
                    "image_url": f"/data/local-files/?d={home.name}/store/{{image}}",
                }
            ),
            "serving": base.serving.model_copy(update={"ray_cpus": 2}),
        }
    )
    started = time.perf_counter()
    try:
        outcome = run_demo(settings, size)
    finally:
        admin = wiring.serve_admin(settings)
        if admin.reachable():
            admin.shutdown()
            admin.wait_gone()
        wiring.local_ray(settings).down()
    total = time.perf_counter() - started
    trend = outcome.timeline.first("the trend starts")
    promoted = outcome.timeline.first("promoted version")
    row = {
        "seed": seed,
        "total_s": total,
        "trend_to_promoted_s": promoted.seconds - trend.seconds if trend and promoted else float("nan"),
        "verdict": outcome.verdict or "no test",
        "lift": (outcome.report or {}).get("lift", {}),
        "labels": outcome.labels_committed,
        "champion": outcome.champion,
        "challenger": outcome.challenger,
    }
    if outcome.challenger is not None and outcome.trend is not None:
        versions = {"champion v1": 1, "challenger": outcome.challenger}
        row["fresh"] = fresh_accuracy(settings, range(size.days, size.days + 3), versions, outcome.trend)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--days", type=int, default=DemoSize.days)
    parser.add_argument("--seed-days", type=int, default=DemoSize.seed_days)
    parser.add_argument("--posts-per-day", type=int, default=DemoSize.posts_per_day)
    parser.add_argument("--root", type=Path, default=None, help="Where the runs' state goes (default: a temp dir).")
    args = parser.parse_args(argv)
    size = DemoSize(days=args.days, seed_days=args.seed_days, posts_per_day=args.posts_per_day)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-loop-"))
    server = LocalLabelStudio(root / "labelstudio", 8189, Settings().labelstudio.version, root / "homes")
    (root / "homes").mkdir(parents=True, exist_ok=True)
    print(f"starting Label Studio (not counted) under {root}", flush=True)
    server.up(timeout=900)
    rows = []
    try:
        for seed in args.seeds:
            print(f"\n=== seed {seed} ===", flush=True)
            rows.append(one_seed(seed, size, server))
    finally:
        server.down()
    print("\nseed  total   trend->promoted  verdict   lift (interval)            labels  "
          "trend acc v1 -> challenger  old acc v1 -> challenger (change)")  # fmt: skip
    for r in rows:
        lift = r["lift"]
        fresh = r.get("fresh") or {}
        champion, challenger = fresh.get("champion v1", {}), fresh.get("challenger", {})
        print(
            f"{r['seed']:>4}  {r['total_s'] / 60:5.1f}m  {r['trend_to_promoted_s'] / 60:13.1f}m  {r['verdict']:<8}  "
            f"{render.signed_share(lift.get('relative'))} ({render.signed_share(lift.get('cs_low'))} to "
            f"{render.signed_share(lift.get('cs_high'))})  {r['labels']:>6}  "
            f"{champion.get('trend', float('nan')):.3f} -> {challenger.get('trend', float('nan')):.3f}"
            f" (n={challenger.get('trend_posts', 0)})      "
            f"{champion.get('old', float('nan')):.3f} -> {challenger.get('old', float('nan')):.3f} "
            f"({100 * (challenger.get('old', float('nan')) - champion.get('old', float('nan'))):+.1f} pt)"
        )
    for name, values in {
        "total minutes": [r["total_s"] / 60 for r in rows],
        "trend -> promoted minutes": [r["trend_to_promoted_s"] / 60 for r in rows],
        "challenger trend accuracy": [r["fresh"]["challenger"]["trend"] for r in rows if "fresh" in r],
        "old-class change (points)": [
            100 * (r["fresh"]["challenger"]["old"] - r["fresh"]["champion v1"]["old"]) for r in rows if "fresh" in r
        ],
    }.items():
        if values:
            print(
                f"{name}: mean {statistics.fmean(values):.2f}, min {min(values):.2f}, max {max(values):.2f}"
                f" (sd {statistics.pstdev(values):.2f})"
            )
    promoted = sum(r["verdict"] == "promote" for r in rows)
    print(f"promoted in {promoted} of {len(rows)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
