"""Image validation and normalisation, one real file per failure mode."""

from __future__ import annotations

import io

import files
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from components.data.validate import CleanImage, ImageLimits, Rejection, pixel_hash, validate_image

pytestmark = pytest.mark.unit


def clean(data: bytes, **limits) -> CleanImage:
    result = validate_image(data, ImageLimits(**limits))
    assert isinstance(result, CleanImage), result
    return result


def decoded(result: CleanImage) -> np.ndarray:
    with Image.open(io.BytesIO(result.data)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"", "empty_file", "zero bytes"),
        (files.truncated_jpeg(), "truncated", "truncated"),
        (b"just some notes, saved as photo.png\n", "not_an_image", "just some notes"),
        (b"<!DOCTYPE html><html>502 Bad Gateway</html>", "not_an_image", "<!DOCTYPE html>"),
        (files.png_claiming(30_000, 30_000), "too_many_pixels", "900,000,000"),
        (files.encode(files.noise_rgb(), "ICO"), "unsupported_format", "ICO"),
    ],
    ids=["zero-byte", "truncated-jpeg", "text-as-png", "html-as-jpg", "30000x30000-png", "ico"],
)
def test_bad_files_are_rejected_with_reason(data: bytes, reason: str, detail: str) -> None:
    result = validate_image(data)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert detail in result.detail


def test_pixel_cap_is_checked_on_the_header_before_decoding() -> None:
    # 10000 x 9000 is below Pillow's own bomb limit, so only our cap can refuse it; the file
    # holds one row of pixels, so a decoder that got this far would fail as truncated instead.
    result = validate_image(files.png_claiming(10_000, 9_000), ImageLimits(max_pixels=50_000_000))
    assert result == Rejection(
        "too_many_pixels", "PNG header declares 10000x9000 = 90,000,000 pixels; the limit is 50,000,000"
    )
    assert isinstance(validate_image(files.png_claiming(100, 100), ImageLimits(max_pixels=10_000)), Rejection)


def test_file_size_cap() -> None:
    data = files.encode(files.noise_rgb(), "PNG")
    assert validate_image(data, ImageLimits(max_bytes=len(data) - 1)).reason == "file_too_large"
    assert isinstance(validate_image(data, ImageLimits(max_bytes=len(data))), CleanImage)


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours() -> None:
    result = clean(files.cmyk_jpeg())
    pixels = decoded(result).astype(int)
    assert "cmyk-to-rgb" in result.fixes
    np.testing.assert_allclose(pixels[16, 8], (0, 255, 255), atol=12)  # cyan
    np.testing.assert_allclose(pixels[16, 56], (255, 255, 0), atol=12)  # yellow


def test_rgba_png_is_flattened_onto_white() -> None:
    result = clean(files.rgba_png())
    pixels = decoded(result)
    assert "alpha-flattened" in result.fixes
    assert tuple(pixels[5, 5]) == (255, 0, 0)
    assert tuple(pixels[5, 60]) == (255, 255, 255)  # transparent reads as white, not as the black beneath


def test_16bit_png_is_scaled_not_clipped() -> None:
    result = clean(files.png_16bit())
    pixels = decoded(result)
    assert "16bit-to-8bit" in result.fixes
    assert tuple(pixels[0, 0]) == (0, 0, 0)
    assert tuple(pixels[15, 0]) == (128, 128, 128)  # 32896 / 257; clipping would give 255
    assert tuple(pixels[25, 0]) == (255, 255, 255)


def test_palette_and_greyscale_become_rgb() -> None:
    grey = clean(files.encode(files.noise_rgb().convert("L"), "PNG"))
    assert decoded(grey).shape == (48, 64, 3)
    gif = clean(files.encode(files.noise_rgb().convert("P"), "GIF"))
    assert gif.source_format == "GIF" and decoded(gif).shape == (48, 64, 3)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_out_upright(orientation: int) -> None:
    result = clean(files.exif_rotated_jpeg(orientation))
    pixels = decoded(result).astype(int)
    assert "exif-rotated" in result.fixes
    assert (result.width, result.height) == (60, 40)
    np.testing.assert_allclose(pixels[5, 5], (220, 30, 30), atol=25)  # red stays top-left
    np.testing.assert_allclose(pixels[35, 55], (30, 30, 220), atol=25)  # blue stays bottom-right
    np.testing.assert_allclose(pixels[35, 5], (128, 128, 128), atol=25)


def test_gps_exif_is_stripped() -> None:
    data = files.gps_jpeg()
    with Image.open(io.BytesIO(data)) as original:
        assert original.getexif().get_ifd(0x8825)  # the upload does carry GPS
    result = clean(data)
    assert "metadata-stripped" in result.fixes
    with Image.open(io.BytesIO(result.data)) as im:
        assert not im.getexif()
        assert not {"exif", "icc_profile", "XML:com.adobe.xmp"} & set(im.info)
    assert b"Exif" not in result.data and b"Pixelfone" not in result.data


def test_large_photos_are_downscaled_to_max_side() -> None:
    photo = files.encode(files.noise_rgb(3000, 2000), "JPEG", quality=85)
    result = clean(photo, max_side=1080)
    assert (result.width, result.height) == (1080, 720)
    assert "downscaled" in result.fixes
    full = clean(photo, max_side=None)
    assert (full.width, full.height) == (3000, 2000)


def test_hash_depends_on_pixels_only() -> None:
    image = files.noise_rgb()
    plain = clean(files.encode(image, "PNG"))
    with_text = clean(files.encode(image, "PNG", pnginfo=_pnginfo("comment", "hello")))
    assert plain.sha256 == with_text.sha256 == pixel_hash(image)
    assert clean(files.encode(files.noise_rgb(seed=1), "PNG")).sha256 != plain.sha256


def _pnginfo(key: str, value: str) -> PngInfo:
    info = PngInfo()
    info.add_text(key, value)
    return info


def test_a_gif_cut_after_its_first_frame_keeps_that_frame() -> None:
    # found by tests/test_decoder_fuzz.py: counting the frames raised struct.error out of validate_image
    whole, cut = files.gif_cut_in_its_second_frame()
    kept, full = clean(cut), clean(whole)
    assert "later-frames-unreadable" in kept.fixes and "first-frame-only" in full.fixes
    assert kept.sha256 == full.sha256  # the same first frame, pixel for pixel
