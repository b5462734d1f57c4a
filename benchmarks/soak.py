"""A soak of the deployed app: minutes of mixed predict and feedback traffic while an operator works on it.

    uv run python -m benchmarks.soak [--minutes 10] [--concurrency 8] [--viewers 2000] [--home DIR]
    make soak MINUTES=10

It starts a home of its own (a temporary folder unless ``--home``), a local Ray head and the app as
``trendloop serve up`` deploys it (default settings: the per-user rate limit on, logs flushed every
second), with three untrained versions in the registry (what serving costs does not depend on what
the weights learnt). Run as a module from the repository's root (it reuses the serving benchmark's
uploads and the serving tests' versions). Viewers (``serving.traffic.drive``) send uploads and their feedback without a
pause while the operator, through the same control functions as the CLI, does at fractions of the run:

    0%   v1 champion, v2 challenger, a test at 50/50
    20%  the split to 20%            (`trendloop serve split 0.2`)
    40%  the split back to 50%
    55%  v2 promoted by hand         (`trendloop serve promote`)
    70%  rolled back to v1           (`trendloop serve rollback`)
    85%  v3 the challenger: a new test at 50/50

At the end the app is shut down (its writers flush what they hold) and the logs are read back. It
prints the requests, the errors (any answer but 200, or none: must be 0), the records lost (answers
missing from the prediction log, acknowledged feedback missing from the feedback log: must be 0),
p50/p99/max latency, what each operation took and whether the traffic saw it, and the replicas'
memory at the start and the end. Exit status 1 when an error or a lost record is found.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from benchmarks.bench_serving import uploads  # the serving benchmark's photo-like JPEGs
from components.data.predlog import PredictionLog
from infra.processes import free_port
from serving import control
from serving.deploy import APP
from serving.eventlog import FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION
from serving.traffic import Audience, DriveStats, drive, plain_posts
from tests.models import register_untrained  # the serving tests' untrained versions
from trendloop import wiring
from trendloop.settings import Settings

EVERY_S = 30  # a progress line this often


@dataclass
class Step:
    """One operation of the schedule: when (a fraction of the run), what, and what the traffic should then see."""

    at: float
    name: str
    act: Callable[[], None]
    done_s: float | None = None  # seconds into the run it finished
    took_s: float | None = None


def schedule(s: control.Serving, versions: list[int]) -> list[Step]:
    v1, v2, v3 = versions

    def new_challenger() -> None:
        s.registry.set_challenger(v3)
        control.follow(s, split=0.5, note="soak: a new challenger")

    return [
        Step(0.20, "split to 20%", lambda: control.follow(s, split=0.2, note="soak: ramp down")),
        Step(0.40, "split to 50%", lambda: control.follow(s, split=0.5, note="soak: ramp up")),
        Step(0.55, f"promote v{v2}", lambda: control.promote(s)),
        Step(0.70, f"roll back to v{v1}", lambda: control.rollback(s)),
        Step(0.85, f"v{v3} challenger, 50/50", new_challenger),
    ]


def operate(steps: list[Step], start: float, seconds: float, failures: list[str]) -> None:
    """Run each step when its time comes (in this thread: the traffic does not wait for it)."""
    for step in steps:
        time.sleep(max(0.0, start + step.at * seconds - time.monotonic()))
        began = time.monotonic()
        try:
            step.act()
        except Exception as err:  # noqa: BLE001 - the soak reports a failed operation, it does not stop on it
            failures.append(f"{step.name}: {type(err).__name__}: {err}")
            continue
        step.done_s, step.took_s = time.monotonic() - start, time.monotonic() - began


def replica_memory_mb(s: control.Serving) -> dict[str, int]:
    """Resident memory (MB) of each deployment's replicas, summed, read from /proc by pid."""
    found: dict[str, int] = {}
    for name, deployment in s.admin.applications()[APP]["deployments"].items():
        total = 0
        for replica in deployment.get("replicas", []):
            try:
                status = Path(f"/proc/{replica['pid']}/status").read_text()
            except (KeyError, OSError):
                continue
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        found[name] = total // 1024
    return found


def reporter(start: float, seconds: float) -> Callable[[DriveStats], None]:
    """``drive``'s progress callback: a line every ``EVERY_S`` seconds."""
    last = [start]

    def progress(stats: DriveStats) -> None:
        now = time.monotonic()
        if now - last[0] >= EVERY_S:
            last[0] = now
            errors = sum(stats.failed.values())
            print(f"  {clock(now - start)} / {clock(seconds)}  requests {stats.done:,}  errors {errors}  "
                  f"{stats.ok / (now - start):.0f} answered/s", flush=True)  # fmt: skip

    return progress


def clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def lost_records(settings: Settings, stats: DriveStats) -> tuple[int, int]:
    """(answers missing from the prediction log, acknowledged feedback events missing from the feedback log)."""
    ids = [body["request_id"] for body in stats.responses]
    where = pc.field("request_id").isin(ids)
    predictions = len(set(PredictionLog(settings.predictions_dir).read(where=where).column("request_id").to_pylist()))
    feedback = len(FeedbackLog(settings.serving_dir / "feedback").read(where=where))
    return len(ids) - predictions, stats.feedback - feedback


def soak(home: Path, minutes: float, concurrency: int, viewers: int) -> int:
    settings = Settings(
        home=home,
        serving={
            "port": free_port(),
            "ray_ports": {"gcs": free_port(), "dashboard": free_port(), "agent": free_port(), "client": free_port()},
            "split": 0.5,
        },
    )
    s = wiring.serving_control(settings)
    versions = [register_untrained(s.registry, seed=seed) for seed in (1, 2, 3)]
    s.registry.promote(versions[0])
    s.registry.set_challenger(versions[1])
    ray = wiring.local_ray(settings)
    print(f"soak: {minutes:g} min, {concurrency} requests at a time from {viewers:,} viewers; home {home}", flush=True)
    print("starting a local Ray head and the app (a minute or two) ...", flush=True)
    ray.up(settings.serving.port)
    failures: list[str] = []
    try:
        control.up(s, timeout=600)
        memory_before = replica_memory_mb(s)
        seconds = 60 * minutes
        steps = schedule(s, versions)
        start = time.monotonic()
        operator = threading.Thread(target=operate, args=(steps, start, seconds, failures), daemon=True)
        operator.start()
        posts = plain_posts(uploads(16))
        stats = asyncio.run(
            drive(settings.serving.url, posts, Audience(viewers=viewers, seed=1), requests=10**7,
                  concurrency=concurrency, seed=2, keep_responses=True, progress=reporter(start, seconds),
                  until=start + seconds)
        )  # fmt: skip
        operator.join(timeout=600)
        memory_after = replica_memory_mb(s)
    finally:
        if s.admin.reachable():
            s.admin.shutdown()  # the writers flush what they hold as their replicas stop
            s.admin.wait_gone()
        ray.down()
    lost_predictions, lost_feedback = lost_records(settings, stats)
    errors = sum(stats.failed.values())
    served = sorted({(b["arm"], b["model_version"]) for b in stats.responses})
    print()
    print(f"requests        {stats.sent:,} in {stats.seconds:.0f} s ({stats.requests_per_second:.1f} answered/s)")
    print(f"answered        {stats.ok:,}")
    print(f"errors          {errors}" + (f"  {dict(sorted(stats.failed.items()))}" if errors else ""))
    print(f"feedback        {stats.feedback:,} events recorded")
    print(f"records lost    {lost_predictions + lost_feedback}  "
          f"(predictions {lost_predictions}, feedback {lost_feedback})")  # fmt: skip
    print(f"latency ms      p50 {stats.percentile(50):.1f}  p99 {stats.percentile(99):.1f}  "
          f"max {max(stats.latencies_ms, default=float('nan')):.1f}")  # fmt: skip
    print(f"served          {', '.join(f'{arm} v{version}' for arm, version in served)}")
    for step in steps:
        when = f"at {clock(step.done_s)}, took {step.took_s:.1f} s" if step.done_s is not None else "not done"
        print(f"operation       {step.name:24} {when}")
    for name in sorted(memory_before):
        print(f"memory MB       {name:10} {memory_before[name]} -> {memory_after.get(name, 0)}")
    for failure in failures:
        print(f"failed          {failure}")
    v1, v2, v3 = versions
    unseen = {(CHAMPION, v1), (CHALLENGER, v2), (CHAMPION, v2), (CHALLENGER, v3)} - set(served)
    if unseen:  # an operation that took effect reaches the traffic: each arm's version in turn answered
        failures.append("the traffic never saw " + ", ".join(f"{arm} v{version}" for arm, version in sorted(unseen)))
    bad = errors or lost_predictions or lost_feedback or failures or any(step.done_s is None for step in steps)
    print("soak: FAILED" if bad else "soak: passed (0 errors, 0 records lost)")
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--viewers", type=int, default=2000, help="distinct users the traffic comes from")
    parser.add_argument("--home", type=Path, help="the soak's state folder (kept); unset: a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trendloop-soak-") as tmp:
        home = args.home or Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        log = home / "soak.log"
        logging.basicConfig(filename=log, level=logging.INFO, force=True)  # library chatter: not the terminal
        logging.captureWarnings(True)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # as the CLI: MLflow's INFO lines go nowhere
        print(f"log: {log}")
        sys.exit(soak(home, args.minutes, args.concurrency, args.viewers))


if __name__ == "__main__":
    main()
