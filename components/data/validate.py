"""``validate_image``: decide whether uploaded bytes are an image we keep, and normalise it.

A kept image comes out as 8-bit RGB, upright (EXIF orientation applied), in sRGB
where it carried an ICC profile, no larger than ``max_side``, with every piece of
metadata (EXIF, GPS, ICC, text chunks) gone, encoded as PNG. A refused one comes
out as a ``Rejection`` naming one of ``REASONS`` and what exactly was wrong.

The pixel cap is checked on the header, before the pixels are decoded: a 30000 x
30000 PNG is a few hundred bytes on disk and 2.7 GB once decoded.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

REASONS = (
    "empty_file",  # zero bytes
    "file_too_large",  # more bytes than max_bytes
    "not_an_image",  # no image format recognises the bytes (text, HTML, archives)
    "unsupported_format",  # an image, but of a format we do not decode (PSD, EPS, ICO, ...)
    "too_many_pixels",  # the header declares more pixels than max_pixels
    "truncated",  # the file ends before the image data does
    "corrupt",  # the image data cannot be decoded
    "unsupported_mode",  # decoded, but its pixel mode has no sensible RGB rendering
)
EXIF_ORIENTATION = 0x0112
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # multi-picture JPEGs (MPO) open as JPEG


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50 * 2**20  # largest upload accepted, in bytes
    max_pixels: int = 50_000_000  # largest width x height accepted, checked before decoding
    max_side: int | None = 1080  # longer side is scaled down to this (platforms do); None keeps full size
    formats: tuple[str, ...] = FORMATS  # Pillow format names we decode; anything else is refused


@dataclass(frozen=True)
class CleanImage:
    data: bytes  # PNG bytes of the normalised image, no metadata
    sha256: str  # content hash of the normalised pixels (size + RGB bytes)
    width: int
    height: int
    source_format: str  # what the upload was (JPEG, PNG, ...)
    fixes: tuple[str, ...] = field(default=())  # what normalisation changed, e.g. "cmyk-to-rgb"


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of REASONS
    detail: str  # what exactly was wrong, for the quarantine record


def pixel_hash(image: Image.Image) -> str:
    """The content hash of an RGB image: its size and raw pixel bytes, nothing else."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def validate_image(data: bytes, limits: ImageLimits | None = None) -> CleanImage | Rejection:
    """Validate and normalise one upload. Never raises for bad bytes: it returns a ``Rejection``."""
    limits = limits or ImageLimits()
    fixes: list[str] = []
    decoded = decode_image(data, limits, fixes)
    if isinstance(decoded, Rejection):
        return decoded
    rgb, fmt, had_metadata = decoded
    if limits.max_side and max(rgb.size) > limits.max_side:
        rgb = rgb.resize(_fit(rgb.size, limits.max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        fixes.append("downscaled")
    # A fresh image from raw pixels carries no info dict: no EXIF, GPS, ICC or text chunks survive.
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    buf = io.BytesIO()
    clean.save(buf, "PNG", compress_level=1)
    if had_metadata:
        fixes.append("metadata-stripped")
    return CleanImage(buf.getvalue(), pixel_hash(clean), clean.width, clean.height, fmt, tuple(fixes))


def decode_image(
    data: bytes, limits: ImageLimits, fixes: list[str] | None = None, draft_side: int | None = None
) -> tuple[Image.Image, str, bool] | Rejection:
    """Bytes -> (upright 8-bit RGB image, source format, whether it carried metadata), or a ``Rejection``.

    ``fixes`` collects what was changed. A JPEG much larger than ``draft_side`` (default:
    ``limits.max_side``) is decoded at a reduced scale by libjpeg.
    """
    fixes = [] if fixes is None else fixes
    if not data:
        return Rejection("empty_file", "the file has zero bytes")
    if len(data) > limits.max_bytes:
        return Rejection("file_too_large", f"{len(data)} bytes; the limit is {limits.max_bytes}")
    opened = _open(data, limits)
    if isinstance(opened, Rejection):
        return opened
    image = opened
    fmt = image.format or "unknown"
    try:
        frames = getattr(image, "n_frames", 1)
    except Exception:  # noqa: BLE001 - a later frame's header is cut or garbled (struct.error from GIF): keep the first
        reopened = _open(data, limits)  # counting left the decoder past the first frame
        if isinstance(reopened, Rejection):
            return reopened
        image, frames = reopened, 1
        fixes.append("later-frames-unreadable")
    if frames > 1:
        fixes.append("first-frame-only")
    draft_side = draft_side or limits.max_side
    if draft_side and fmt == "JPEG" and max(image.size) > 2 * draft_side:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: big phone photos decode several times faster.
        image.draft("RGB", _fit(image.size, draft_side))
    try:
        image.load()
    except Image.DecompressionBombError as err:
        return Rejection("too_many_pixels", str(err))
    except OSError as err:
        reason = "truncated" if "truncated" in str(err) or "broken data stream" in str(err) else "corrupt"
        return Rejection(reason, f"{fmt}: {err}")
    except Exception as err:  # noqa: BLE001 - decoders raise anything (SyntaxError, struct.error, ...)
        return Rejection("corrupt", f"{fmt}: {type(err).__name__}: {err}")

    had_metadata = bool(image.info.get("exif") or image.info.get("icc_profile") or image.getexif())
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
            fixes.append("exif-rotated")
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost us the image
        fixes.append("exif-unreadable")
    rgb = _to_rgb(image, fixes)
    if isinstance(rgb, Rejection):
        return rgb
    return rgb, fmt, had_metadata


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _open(data: bytes, limits: ImageLimits) -> Image.Image | Rejection:
    """Identify the image from its header only, and check the declared size against the cap."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
        try:
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
        except Image.DecompressionBombError as err:  # Pillow's own cap (2 x MAX_IMAGE_PIXELS) tripped first
            declared = re.search(r"\((\d+) pixels\)", str(err))
            size = f"{int(declared.group(1)):,} pixels" if declared else "too many pixels"
            return Rejection("too_many_pixels", f"header declares {size}; the limit is {limits.max_pixels:,}")
        except UnidentifiedImageError:
            return _unidentified(data)
        except Exception as err:  # noqa: BLE001 - a malformed header can raise from any plugin
            return Rejection("corrupt", f"unreadable header: {type(err).__name__}: {err}")
    width, height = image.size
    if width * height > limits.max_pixels:
        return Rejection(
            "too_many_pixels",
            f"{image.format} header declares {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,}",
        )
    if width == 0 or height == 0:
        return Rejection("corrupt", f"{image.format} header declares an empty {width}x{height} image")
    return image


def _unidentified(data: bytes) -> Rejection:
    """Name what the bytes are, without decoding them, to tell 'not an image' from 'not ours'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            other = Image.open(io.BytesIO(data))
            return Rejection("unsupported_format", f"{other.format} images are not accepted")
        except Exception:  # noqa: BLE001
            pass
    head = data[:24].decode("ascii", "replace")
    shown = "".join(ch if ch.isprintable() else "." for ch in head)
    return Rejection("not_an_image", f"no image format recognises these bytes (starts with {shown!r})")


def _to_rgb(image: Image.Image, fixes: list[str]) -> Image.Image | Rejection:
    """8-bit sRGB from whatever mode the decoder produced."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    if icc and mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if mode == "RGBA" else "RGB"
            image = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
            fixes.append("icc-to-srgb")
            mode = image.mode
        except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain conversion below
            fixes.append("icc-unreadable")
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _deep_to_rgb(image, fixes)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        fixes.append("alpha-flattened")
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent reads as white, as on a feed
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("CMYK", "L", "1", "P", "YCbCr", "LAB", "HSV"):
        fixes.append(f"{mode.lower()}-to-rgb")
        return image.convert("RGB")
    return Rejection("unsupported_mode", f"pixel mode {mode} has no RGB rendering")


def _deep_to_rgb(image: Image.Image, fixes: list[str]) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float greyscale to 8 bits instead of clipping at 255."""
    pixels = np.asarray(image).astype(np.float64)  # (H, W)
    if image.mode == "F":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        scaled = pixels * 255.0 if low >= 0.0 and high <= 1.0 else (pixels - low) / max(high - low, 1e-12) * 255.0
        fixes.append("float-to-8bit")
    elif pixels.max() <= 65535 and pixels.min() >= 0:
        scaled = pixels / 257.0  # 65535 -> 255 exactly
        fixes.append("16bit-to-8bit")
    else:
        low, high = pixels.min(), pixels.max()
        scaled = (pixels - low) / max(high - low, 1.0) * 255.0
        fixes.append("32bit-to-8bit")
    grey = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
