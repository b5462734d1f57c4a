"""Ingestion throughput: simulated 64x64 posts, real photos, and phone-size photos.

    uv run python benchmarks/bench_ingest.py [--posts 10000] [--photos 200] [--phone-photos 40] [--workers N]

Prints one line per case: images, seconds, images/s, MB/s of input. The photos are
the real ones scikit-image ships (astronaut, coffee, chelsea, rocket, the Hubble deep
field, a retina, ...), saved as JPEGs with phone EXIF (GPS, orientation); each copy is
cropped and mirrored a little so none is a duplicate. "Phone-size" upscales them to
4032x3024 (12 MP, what phones shoot), which exercises JPEG draft decoding and the
downscale to ``max_side``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data  # a development dependency: real photos shipped in the package
from PIL import Image

from components.data.ingest import ingest
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.data.validate import ImageLimits
from components.simulator.feed import FeedSpec, simulate
from components.simulator.uploads import phone_exif

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "camera")


def shipped_photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]


def write_photo_files(folder: Path, count: int, size: tuple[int, int] | None, seed: int) -> int:
    """``count`` distinct JPEGs with phone EXIF made from the shipped photos; returns total bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    photos = shipped_photos()
    total = 0
    for n in range(count):
        photo = photos[n % len(photos)]
        w, h = photo.size
        dx, dy = int(rng.integers(0, w // 20 + 1)), int(rng.integers(0, h // 20 + 1))
        variant = photo.crop((dx, dy, w - int(rng.integers(0, w // 20 + 1)), h - int(rng.integers(0, h // 20 + 1))))
        if n // len(photos) % 2:
            variant = variant.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if size is not None:
            variant = variant.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=90, exif=phone_exif(rng, int(rng.choice([1, 6]))).tobytes())
        (folder / f"photo-{n:05d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(name: str, source: Path, work: Path, workers: int, input_bytes: int) -> None:
    store = Store(work / f"store-{name}-{workers}")
    start = time.perf_counter()
    report = ingest(source, store, Pseudonyms.ephemeral(), limits=ImageLimits(), workers=workers)
    seconds = time.perf_counter() - start
    images = report.offered
    print(
        f"{name:<28} workers={workers:<2} images={images:<6} seconds={seconds:7.2f} "
        f"images/s={images / seconds:8.1f} MB/s={input_bytes / 2**20 / seconds:6.1f} "
        f"accepted={report.accepted} rejected={report.rejected_total}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=10_000, help="simulated 64x64 posts")
    parser.add_argument("--photos", type=int, default=200, help="shipped photos at their own size")
    parser.add_argument("--phone-photos", type=int, default=40, help="photos upscaled to 4032x3024")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, workers: 1 and {args.workers}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        feed = work / "feed"
        spec = FeedSpec(posts_per_day=max(1, args.posts // 10), corrupt_share=0.0, repost_share=0.0, exif_share=0.2)
        start = time.perf_counter()
        simulate(spec, feed, range(10), workers=args.workers)
        print(
            f"{'simulate 64x64 posts':<28} workers={args.workers:<2} images={spec.posts_per_day * 10:<6} "
            f"seconds={time.perf_counter() - start:7.2f} (not ingestion; for reference)",
            flush=True,
        )
        posts_bytes = folder_bytes(feed / "images")
        photo_bytes = write_photo_files(work / "photos", args.photos, None, seed=1)
        phone_bytes = write_photo_files(work / "phone", args.phone_photos, (4032, 3024), seed=2)
        for workers in sorted({1, args.workers}):
            measure("simulated 64x64", feed, work, workers, posts_bytes)
            measure("shipped photos (native)", work / "photos", work, workers, photo_bytes)
            measure("phone-size photos (12 MP)", work / "phone", work, workers, phone_bytes)


if __name__ == "__main__":
    main()
