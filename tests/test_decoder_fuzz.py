"""Hostile uploads against ``validate_image``: mutated JPEG, PNG, WebP, GIF, TIFF and BMP bytes, and headers that
declare decompression bombs. Every input comes out as a clean image or a rejection with a reason; none raises,
none takes long, and memory stays bounded.

The mutation fuzzer is seeded, so a failure reproduces; a case that fails is written under test-artifacts/.
6,000 cases take about 1 s here; 30,000 per seed, seeds 1-3, found nothing either.
"""

from __future__ import annotations

import io
import random
import resource
import struct
import time
from collections import Counter
from pathlib import Path

import files
import numpy as np
import pytest
from PIL import Image

from components.data.validate import REASONS, CleanImage, ImageLimits, Rejection, pixel_hash, validate_image

# Pillow warns about every broken EXIF block and oversized tag the mutations make: expected here, not news
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::UserWarning")]

LIMITS = ImageLimits(max_pixels=4_000_000, max_side=256)  # an upload's decode is at most 12 MB of RGB
CASES = 6_000
SLOWEST_S = 2.0  # a 4-megapixel decode takes well under this; a hang or a quadratic parser does not
MEMORY_MB = 256  # growth of this process's peak resident size over the whole fuzz run
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def seeds() -> dict[str, bytes]:
    """Small valid files of every accepted format, in the variants decoders branch on."""
    rgb = files.noise_rgb(64, 48)
    return {
        "jpeg": files.encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": files.encode(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": files.encode(rgb.convert("CMYK"), "JPEG"),
        "png": files.encode(rgb, "PNG"),
        "png-rgba": files.encode(rgb.convert("RGBA"), "PNG"),
        "webp": files.encode(rgb, "WEBP", quality=70),
        "gif": files.encode(rgb, "GIF"),
        "tiff-lzw": files.encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-16bit": files.encode(rgb.convert("I;16"), "TIFF"),
        "bmp": files.encode(rgb, "BMP"),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four of: a bit flip, a byte set to an edge value, a truncation, a deleted or duplicated span, a
    32-bit field set to a size a header would not hold."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.randrange(6), rng.randrange(max(len(out) - 4, 1))
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[i] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
        elif op == 2:
            out = out[: max(i, 1)]
        elif op == 3:
            del out[i : i + rng.randint(1, 64)]
        elif op == 4:
            out[i:i] = out[i : i + rng.randint(1, 256)]
        else:
            out[i : i + 4] = struct.pack(rng.choice((">I", "<I")), rng.choice((0, 0xFFFF, 30_000, 0x7FFFFFFF)))
    return bytes(out)


def check(result: CleanImage | Rejection) -> str:
    """What an outcome is, once it is shown to be a well-formed one."""
    if isinstance(result, Rejection):
        assert result.reason in REASONS and result.detail
        return result.reason
    assert isinstance(result, CleanImage)
    with Image.open(io.BytesIO(result.data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (result.width, result.height))
        assert max(image.size) <= LIMITS.max_side and not image.info.get("exif")
        assert pixel_hash(image) == result.sha256
    return "clean"


def test_mutated_images_are_kept_or_refused_with_a_reason_in_bounded_time_and_memory() -> None:
    rng = random.Random(20261207)
    inputs = seeds()
    names = list(inputs)
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in names}
    slowest = 0.0
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for case in range(CASES):
        name = names[case % len(names)]
        data = mutate(inputs[name], rng)
        started = time.perf_counter()
        try:
            outcome = check(validate_image(data, LIMITS))
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / f"fuzz-case-{case}-{name}.bin").write_bytes(data)
            raise
        slowest = max(slowest, time.perf_counter() - started)
        outcomes[name][outcome] += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert slowest < SLOWEST_S
    assert grown_mb < MEMORY_MB
    for name, seen in outcomes.items():  # the mutations reached each decoder: some refused, and some kept
        assert sum(seen.values()) - seen["clean"] > 0, (name, seen)
        # but PNG's chunks carry CRCs, which Pillow checks: a mutated PNG is all but always refused
        assert name.startswith("png") or seen["clean"] > 0, (name, seen)
    every = sum(outcomes.values(), Counter())
    assert {"clean", "truncated", "corrupt", "not_an_image"} <= set(every), every


def _patched(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed) :]


def bombs() -> dict[str, tuple[bytes, int]]:
    """Files whose headers declare (width x height) far more pixels than they hold: (bytes, declared pixels)."""
    tiny = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    jpeg = files.encode(tiny, "JPEG")
    sof = jpeg.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), then height and width
    webp = files.encode(tiny, "WEBP", quality=50)
    frame = webp.index(b"\x9d\x01\x2a") + 3  # VP8 key frame start code, then 14-bit width and height
    tiff = files.encode(tiny, "TIFF")
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for entry in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        tag, kind = struct.unpack("<HH", tiff[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            tiff = _patched(tiff, at + 8, struct.pack("<H" if kind == 3 else "<I", 60_000))
    flat = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(flat, "PNG")  # 27 MB of pixels in about 26 kB: a real zip bomb
    return {
        "jpeg": (_patched(jpeg, sof, struct.pack(">HH", 60_000, 60_000)), 3_600_000_000),
        "gif": (_patched(files.encode(tiny, "GIF"), 6, struct.pack("<HH", 65_535, 65_535)), 65_535**2),
        "webp": (_patched(webp, frame, struct.pack("<HH", 16_383, 16_383)), 16_383**2),
        "tiff": (tiff, 60_000**2),
        "bmp": (_patched(files.encode(tiny, "BMP"), 18, struct.pack("<ii", 30_000, 30_000)), 900_000_000),
        "png": (files.png_claiming(30_000, 30_000), 900_000_000),
        "png-deflate": (flat.getvalue(), 9_000_000),
    }


@pytest.mark.parametrize("name", list(bombs()))
def test_a_decompression_bomb_is_refused_on_its_header_before_decoding(name: str) -> None:
    data, declared = bombs()[name]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = validate_image(data, LIMITS)
    assert isinstance(result, Rejection) and result.reason == "too_many_pixels", result
    assert f"{declared:,}" in result.detail  # it says what the header claimed
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024 < 64  # nothing was decoded
