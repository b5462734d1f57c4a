"""Serving throughput and latency: the full Ray Serve HTTP path next to the same model called in-process.

    uv run python benchmarks/bench_serving.py [--requests 400] [--concurrency 1 8 32] [--gpu]
                                              [--arch resnet18] [--image-size 32] [--paths ray inprocess fastapi]

Three paths, the same two model versions (champion and challenger, an untrained
tagger each: serving cost does not depend on what the weights learnt), the same
uploads (512x512 JPEGs, about 40 kB), the same ``@serve.batch`` settings:

- ``ray``: the deployed app, as ``trendloop serve up`` runs it: HTTP client -> Ray
  Serve proxy -> router replica (FastAPI) -> arm replica (batched) and back, with
  prediction logging on;
- ``inprocess``: the same ``Router`` and ``ArmModel`` in this process, each arm
  behind a batcher with ``@serve.batch``'s policy and settings, called directly
  (no HTTP, no Ray);
- ``fastapi``: the same router and API in plain uvicorn (one process, no Ray):
  what the Ray hops cost on top of HTTP.

It prints requests/s and p50/p95/p99 latency per path and concurrency, and the
ray / in-process throughput ratio. ``--gpu`` puts both arms on the GPU (half a
GPU each in Ray Serve).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.predlog import PredictionLog
from components.data.pseudonyms import Pseudonyms
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger, save_tagger
from infra.processes import free_port
from infra.ray import LocalRay, RayPorts
from serving.deploy import ArmSpec, ServeAdmin, serve_config
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import Experiments
from serving.router import RequestBook, Router, Traffic
from serving.tagging import ArmModel
from serving.traffic import Audience, DriveStats, drive, plain_posts

LABELS = ("food", "pets", "fitness", "travel", "fashion", "meme")


def uploads(n: int = 16, side: int = 512) -> list[bytes]:
    """Photo-like JPEGs: smooth gradients plus noise, deterministic."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y, x = np.mgrid[0:side, 0:side] / side
        base = np.stack([x * 255, y * 255, (1 - x) * (i * 16 % 255)], -1)
        pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def make_models(root: Path, arch: str, image_size: int) -> None:
    pre = Preprocessing(image_size=image_size, resize=image_size * 9 // 8)
    for version in (1, 2):
        torch.manual_seed(version)
        save_tagger(build_tagger(TaggerSpec(arch, LABELS, pre)), root / "models" / str(version))


def router_for(root: Path, arms: dict, traffic: Traffic) -> Router:
    predictions = PredictionLog(root / "predictions")
    return Router(
        arms,
        EventWriter(predictions, "bench"),
        EventWriter(FeedbackLog(root / "feedback"), "bench"),
        RequestBook(predictions),
        traffic,
        pseudonyms=Pseudonyms.from_file(root / "pseudonym.key"),
    )


class Batcher:
    """``@serve.batch``'s policy outside Ray (it needs a replica context): a batch closes when it holds
    ``max_batch_size`` requests or ``wait_s`` after its first request arrived, and runs in a thread."""

    def __init__(self, fn, max_batch_size: int, wait_s: float):
        self.fn, self.max_batch_size, self.wait_s = fn, max_batch_size, wait_s
        self.queue: asyncio.Queue | None = None

    async def __call__(self, item: bytes, context: dict | None = None):  # image-only versions: no context
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._loop())
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((item, done))
        return await done

    async def _loop(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            for (_, done), result in zip(batch, results, strict=True):
                done.set_result(result)


def in_process_arms(root: Path, device: str, spec: ArmSpec) -> dict:
    arms = {}
    for arm, version in (("champion", 1), ("challenger", 2)):
        model = ArmModel(lambda v: Predictor.from_folder(root / "models" / str(v), device))
        model.use(version)
        arms[arm] = Batcher(model.predict, spec.max_batch_size, spec.batch_wait_ms / 1000)
    return arms


async def drive_in_process(router: Router, images: list[bytes], requests: int, concurrency: int) -> DriveStats:
    users = Audience(viewers=2000).user_ids()
    rng = np.random.default_rng(0)
    who = rng.integers(0, len(users), requests)
    stats, next_i = DriveStats(), iter(range(requests))

    async def worker() -> None:
        for i in next_i:
            start = time.perf_counter()
            body = await router.predict(images[i % len(images)], users[who[i]])
            stats.latencies_ms.append(1000 * (time.perf_counter() - start))
            stats.ok += 1
            stats.arms[body["arm"]] = stats.arms.get(body["arm"], 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.seconds = time.perf_counter() - start
    return stats


def serve_plain_fastapi(root: str, device: str, spec: ArmSpec, traffic: Traffic, port: int) -> None:
    """Child process: the same router and API in uvicorn, no Ray."""
    import uvicorn  # noqa: PLC0415

    from serving.api import build_api  # noqa: PLC0415

    torch.set_num_threads(1)
    router = router_for(Path(root) / "fastapi", in_process_arms(Path(root), device, spec), traffic)
    api = build_api(router, {}, dict)
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning")


def wait_http(url: str, timeout: float = 120.0) -> None:
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def row(path: str, c: int, stats: DriveStats) -> dict:
    failed = sum(stats.failed.values())
    print(
        f"| {path:9} | {c:3d} | {stats.requests_per_second:8.1f} | {stats.percentile(50):7.1f} | "
        f"{stats.percentile(95):7.1f} | {stats.percentile(99):7.1f} | {failed:4d} |",
        flush=True,
    )
    return {"rps": stats.requests_per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per path and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--paths", nargs="+", default=["ray", "inprocess", "fastapi"])
    parser.add_argument("--gpu", action="store_true", help="both arms on the GPU (half a GPU each in Ray)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs the Ray head offers")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: CUDA is not available here")
    device = "cuda" if args.gpu else "cpu"
    torch.set_num_threads(1)
    spec = ArmSpec(
        num_cpus=0.5, num_gpus=0.5 if args.gpu else 0.0, max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms, max_ongoing_requests=128,
    )  # fmt: skip
    images = uploads()
    posts = plain_posts(images)  # load only: what the models answer does not matter here
    print(
        f"# serving benchmark: {args.arch} at {args.image_size} px, {device}, {len(images[0]) // 1024} kB JPEG "
        f"uploads, batch <= {spec.max_batch_size} / {spec.batch_wait_ms} ms, {args.requests} requests per cell"
    )
    print("| path      |   c |    req/s |  p50 ms |  p95 ms |  p99 ms | fail |\n|---|---|---|---|---|---|---|")
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="tl-bench-serve-") as tmp:
        root = Path(tmp)
        make_models(root, args.arch, args.image_size)
        exp = Experiments(root / "experiments").start(1, 2, 0.5, {})
        traffic = Traffic(0.5, exp.salt, exp.id, 1, 2)

        if "inprocess" in args.paths:
            router = router_for(root / "inprocess", in_process_arms(root, device, spec), traffic)

            async def in_process() -> None:  # one event loop: the batchers' queues live in it
                for c in args.concurrency:
                    await drive_in_process(router, images, min(64, args.requests), c)  # warm-up
                    results["inprocess", c] = row(
                        "inprocess", c, await drive_in_process(router, images, args.requests, c)
                    )

            asyncio.run(in_process())
            router.close()

        if "fastapi" in args.paths:
            port = free_port()
            ctx = multiprocessing.get_context("spawn")
            server = ctx.Process(target=serve_plain_fastapi, args=(tmp, device, spec, traffic, port), daemon=True)
            server.start()
            try:
                url = f"http://127.0.0.1:{port}"
                wait_http(url)
                for c in args.concurrency:
                    asyncio.run(drive(url, posts, Audience(), min(64, args.requests), c, feedback=False))
                    stats = asyncio.run(drive(url, posts, Audience(), args.requests, c, feedback=False, seed=1))
                    results["fastapi", c] = row("fastapi", c, stats)
            finally:
                server.terminate()
                server.join(10)

        if "ray" in args.paths:
            ports = RayPorts(gcs=free_port(), dashboard=free_port(), agent=free_port(), client=free_port())
            ray = LocalRay(root / "ray", ports, num_cpus=args.cpus, num_gpus=1 if args.gpu else 0)
            ray.up()
            try:
                http_port = free_port()
                config = serve_config(
                    {
                        "models": {"folders": str(root / "models")},
                        "logs": {k: str(root / "ray-logs" / k) for k in ("predictions", "feedback", "experiments")},
                        "privacy": {"key_file": str(root / "pseudonym.key")},
                    },
                    {"champion": 1, "challenger": 2},
                    traffic,
                    {"champion": spec, "challenger": spec},
                    port=http_port,
                )
                admin = ServeAdmin(ray.dashboard_url)
                started = time.perf_counter()
                admin.deploy(config)
                admin.wait_running(900)
                print(f"# ray serve app deployed in {time.perf_counter() - started:.1f} s", flush=True)
                url = f"http://127.0.0.1:{http_port}"
                for c in args.concurrency:
                    asyncio.run(drive(url, posts, Audience(), min(64, args.requests), c, feedback=False))
                    stats = asyncio.run(drive(url, posts, Audience(), args.requests, c, feedback=False, seed=1))
                    results["ray", c] = row("ray", c, stats)
                admin.shutdown()
                admin.wait_gone()
            finally:
                ray.down()

    for c in args.concurrency:
        if ("ray", c) in results and ("inprocess", c) in results:
            ratio = results["ray", c]["rps"] / max(results["inprocess", c]["rps"], 1e-9)
            print(f"# concurrency {c}: Ray Serve HTTP reaches {ratio:.2f}x the in-process throughput")


if __name__ == "__main__":
    main()
