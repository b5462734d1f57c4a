"""How posts arrive as files: encoded, sometimes with phone EXIF, sometimes broken.

Phones store pixels as the sensor saw them and record the rotation in the EXIF
Orientation tag, along with GPS coordinates; networks and clients truncate or
replace uploads. The simulator reproduces both so ingestion meets them for real.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

CORRUPTIONS = ("zero_byte", "truncated", "not_an_image", "pixel_bomb")
EXIF_ORIENTATION = 0x0112
EXIF_GPS_IFD = 0x8825
# Orientation tag value -> the transpose that turns upright pixels into what the phone stores.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def phone_exif(rng: np.random.Generator, orientation: int) -> Image.Exif:
    """EXIF a phone camera writes: make, model, orientation and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "Pixelfone"  # Make
    exif[0x0110] = f"P{int(rng.integers(5, 10))}"  # Model
    exif[EXIF_ORIENTATION] = orientation
    lat, lon = rng.uniform(-60, 60), rng.uniform(-180, 180)
    exif[EXIF_GPS_IFD] = {
        1: "N" if lat >= 0 else "S",
        2: _dms(abs(lat)),
        3: "E" if lon >= 0 else "W",
        4: _dms(abs(lon)),
    }
    return exif


def _dms(degrees: float) -> tuple[float, float, float]:
    d = int(degrees)
    m = int((degrees - d) * 60)
    return float(d), float(m), round((degrees - d - m / 60) * 3600, 2)


def encode(image: Image.Image, fmt: str, exif: Image.Exif | None = None) -> bytes:
    """The file bytes of ``image``; with ``exif``, pixels are stored the way its Orientation says."""
    params: dict = {"quality": 90} if fmt == "JPEG" else {}
    if exif is not None:
        orientation = exif.get(EXIF_ORIENTATION, 1)
        if orientation in STORED_AS:
            image = image.transpose(STORED_AS[orientation])
        params["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data holds one row.

    The shape of a decompression bomb: tiny on disk, gigapixels once decoded.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    row = b"\x00" + b"\x00" * (3 * min(width, 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def corrupt(data: bytes, kind: str) -> bytes:
    """What arrives when an upload goes wrong in the way ``kind`` names."""
    if kind == "zero_byte":
        return b""
    if kind == "truncated":
        return data[: len(data) * 6 // 10]
    if kind == "not_an_image":
        return b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\n"
    if kind == "pixel_bomb":
        return png_header_only(30_000, 30_000)
    raise ValueError(f"unknown corruption {kind!r}")
