"""Real image files for validation tests, each made the way the problem arises in the wild."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def marker_image() -> Image.Image:
    """60 wide x 40 high, upright: red top-left block, blue bottom-right block, grey elsewhere.

    Any rotation or mirror moves the blocks, so orientation can be checked by colour.
    """
    pixels = np.full((40, 60, 3), 128, np.uint8)
    pixels[:15, :20] = (220, 30, 30)
    pixels[25:, 40:] = (30, 30, 220)
    return Image.fromarray(pixels, "RGB")


def truncated_jpeg() -> bytes:
    data = encode(noise_rgb(128, 128), "JPEG", quality=95)
    return data[: len(data) * 6 // 10]


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width`` x ``height`` with one row of data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(3 * 64)))
        + chunk(b"IEND", b"")
    )


def cmyk_jpeg() -> bytes:
    """Pure cyan (C=255) left half, pure yellow (Y=255) right half, as print workflows save them."""
    pixels = np.zeros((32, 64, 4), np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    return encode(Image.fromarray(pixels, "CMYK"), "JPEG", quality=95)


def rgba_png() -> bytes:
    """Opaque red left half, fully transparent (black underneath) right half."""
    pixels = np.zeros((32, 64, 4), np.uint8)
    pixels[:, :32] = (255, 0, 0, 255)
    return encode(Image.fromarray(pixels, "RGBA"), "PNG")


def png_16bit() -> bytes:
    """16-bit greyscale: three bands at 0, 32896 (mid grey) and 65535."""
    pixels = np.zeros((30, 30), np.uint16)
    pixels[10:20] = 32896
    pixels[20:] = 65535
    return encode(Image.fromarray(pixels), "PNG")


def exif_rotated_jpeg(orientation: int) -> bytes:
    """``marker_image`` as a phone stores it: pixels turned, with the EXIF tag that turns them back."""
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(marker_image().transpose(stored[orientation]), "JPEG", quality=95, exif=exif.tobytes())


def gps_jpeg() -> bytes:
    """A JPEG whose EXIF carries GPS coordinates, a camera make and a date."""
    exif = Image.Exif()
    exif[0x010F] = "Pixelfone"
    exif[0x0132] = "2026:01:05 10:00:00"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return encode(noise_rgb(), "JPEG", quality=90, exif=exif.tobytes())


def gif_cut_in_its_second_frame() -> tuple[bytes, bytes]:
    """(a two-frame GIF, the same bytes cut five bytes into its second frame's image descriptor)."""
    frames = [noise_rgb(16, 12, seed=1), noise_rgb(16, 12, seed=2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    whole = buf.getvalue()
    second = whole.index(b"\x21\xf9", whole.index(b"\x21\xf9") + 1)  # the second frame's graphic control block
    return whole, whole[: second + 8 + 1 + 5]  # the 8-byte block, the descriptor's 0x2c, 5 of its 9 bytes
