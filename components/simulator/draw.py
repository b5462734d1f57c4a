"""Drawing primitives shared by the scene renderers: colours, backgrounds, placement.

Every function takes a numpy ``Generator`` so that a post's image depends only on
its own random stream (seed, day, index), never on what was drawn before it.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]


def hsv_color(
    rng: np.random.Generator,
    hue: tuple[float, float],
    sat: tuple[float, float] = (0.5, 1.0),
    val: tuple[float, float] = (0.5, 1.0),
) -> RGB:
    """A colour drawn uniformly from a box in HSV space; hue in degrees, may wrap (350, 370)."""
    h = (rng.uniform(*hue) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def shade(color: RGB, factor: float) -> RGB:
    """The colour darkened (factor < 1) or lightened (factor > 1), clipped to 0..255."""
    return tuple(int(min(255, max(0, c * factor))) for c in color)  # type: ignore[return-value]


def opaque(color: RGB, alpha: int = 255) -> RGBA:
    return (*color, alpha)


def vertical_gradient(width: int, top: RGB, bottom: RGB) -> Image.Image:
    """An RGBA square whose colour runs linearly from ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, width, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    rows = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)  # (H, 1, 3)
    pixels = np.broadcast_to(rows, (width, width, 3)).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert("RGBA")


def noise_texture(rng: np.random.Generator, width: int, base: RGB, amount: float, cells: int) -> Image.Image:
    """Smooth value noise around ``base``: a ``cells`` x ``cells`` grid upsampled bilinearly."""
    grid = rng.normal(0.0, amount, size=(cells, cells, 1)).astype(np.float32)
    small = np.clip(np.array(base, np.float32) + grid * 255, 0, 255).astype(np.uint8)  # (c, c, 3)
    return Image.fromarray(small, "RGB").resize((width, width), Image.Resampling.BILINEAR).convert("RGBA")


def background(rng: np.random.Generator, width: int) -> Image.Image:
    """A generic backdrop for object posts: a wall and floor, a gradient, or a texture."""
    kind = rng.integers(3)
    if kind == 0:  # indoor: wall over floor
        canvas = Image.new("RGBA", (width, width), opaque(hsv_color(rng, (0, 360), (0.0, 0.35), (0.55, 0.95))))
        floor_y = int(width * rng.uniform(0.55, 0.8))
        ImageDraw.Draw(canvas).rectangle(
            (0, floor_y, width, width), fill=opaque(hsv_color(rng, (0, 60), (0.1, 0.5), (0.25, 0.7)))
        )
        return canvas
    if kind == 1:
        return vertical_gradient(
            width,
            hsv_color(rng, (0, 360), (0.0, 0.6), (0.4, 1.0)),
            hsv_color(rng, (0, 360), (0.0, 0.6), (0.2, 0.9)),
        )
    return noise_texture(rng, width, hsv_color(rng, (0, 360), (0.0, 0.5), (0.3, 0.9)), 0.12, int(rng.integers(3, 9)))


def place(
    canvas: Image.Image,
    layer: Image.Image,
    rng: np.random.Generator,
    scale: tuple[float, float],
    max_rotation: float,
    jitter: float,
) -> None:
    """Paste an RGBA ``layer`` (same size as ``canvas``) scaled, rotated and shifted at random.

    ``jitter`` is the largest shift of the layer's centre from the canvas centre, as a
    share of the canvas width; parts pushed outside the frame are cropped, as in a photo.
    """
    width = canvas.width
    side = max(4, int(width * rng.uniform(*scale)))
    obj = layer.resize((side, side), Image.Resampling.BILINEAR)
    if max_rotation:
        obj = obj.rotate(rng.uniform(-max_rotation, max_rotation), Image.Resampling.BILINEAR)
    cx = width / 2 + rng.uniform(-jitter, jitter) * width
    cy = width / 2 + rng.uniform(-jitter, jitter) * width
    canvas.paste(obj, (int(cx - side / 2), int(cy - side / 2)), obj)


def blocky_text(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int], color: RGBA
) -> None:
    """Glyph-like blocks in rows, standing in for a line of caption text inside ``box``."""
    x0, y0, x1, y1 = box
    height = y1 - y0
    rows = 1 if height < 14 else 2
    row_h = height / rows
    for row in range(rows):
        top = y0 + row * row_h + row_h * 0.2
        x = x0 + rng.uniform(0, (x1 - x0) * 0.15)
        end = x1 - rng.uniform(0, (x1 - x0) * 0.15)
        while x < end:
            glyph_w = rng.uniform(0.5, 1.0) * row_h * 0.5
            draw.rectangle((x, top, min(end, x + glyph_w), top + row_h * 0.6), fill=color)
            x += glyph_w + row_h * (0.45 if rng.random() < 0.2 else 0.12)
